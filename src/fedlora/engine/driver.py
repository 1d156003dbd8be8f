"""The round driver: the federated run written once, whatever carries the tasks to the clients.

One :class:`RoundDriver` does every step of a round: sample the clients, decide each one's rank
map, serve its factors (and the merges it lacks), hand the tasks to a transport, validate each
reply once, score the clients for a loss-based policy, aggregate, merge into the base (FLoRA),
promote, evaluate, record the metrics, checkpoint; and it starts (round 0: the untuned model and
the trivial baselines) and resumes runs.  When the method lets clients prune their rank
(HetLoRA's self-pruning) it accepts the smaller rank a client sends and serves it that rank from
then on.  The in-process pool and Flower are transports (:mod:`fedlora.engine.transport`), so
both runners produce the same run directory from the same decisions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedlora.aggregation import GlobalState
from fedlora.aggregation.robust import bound_updates
from fedlora.data import label_distribution, write_label_distribution
from fedlora.engine.evaluation import Evaluation, held_out_loss, test_metrics
from fedlora.engine.experiment import Experiment
from fedlora.engine.merging import MergedBase
from fedlora.engine.seeds import sample_clients
from fedlora.engine.traffic import Traffic, total
from fedlora.engine.transport import ClientReply, Roster, TrainTask, Transport
from fedlora.errors import FedloraError
from fedlora.lora import ClientUpdate, LoraFactors, MergedRound
from fedlora.ranks import RankTier, Scoring
from fedlora.report import write_run_report
from fedlora.runs import (
    Checkpoint,
    Expected,
    RoundMetrics,
    RunDir,
    faults,
    load_checkpoint,
    note_environment,
    save_checkpoint,
)
from fedlora.runs.checkpoint import config_digest
from fedlora.runs.spill import save_update, spills

log = logging.getLogger(__name__)

RoundCallback = Callable[[RoundMetrics], None]
PhaseCallback = Callable[[int, str, float], None]
"""``(round, phase, seconds)`` for every phase the driver times (see :data:`PHASES`)."""

PHASES = ("serve", "train", "validate", "score", "aggregate", "evaluate", "record")
"""The phases of a round, in order; ``train`` is the transport's whole exchange."""


@dataclass(frozen=True)
class Served:
    """What the driver keeps of a task once the transport has it: never its factors."""

    ranks: dict[str, int]
    traffic: Traffic
    score: bool


@dataclass(frozen=True)
class Sent:
    """What the driver keeps of an accepted update apart from its factors (which may be on
    disk): the ranks the client sent and what they cost to send."""

    ranks: dict[str, int]
    traffic: Traffic

    @classmethod
    def of(cls, update: ClientUpdate) -> Sent:
        return cls(_ranks(update.modules), Traffic.of(update.modules, update.dense))


@dataclass(frozen=True)
class Exchange:
    """One exchange with the clients: what each was served, the replies that can be aggregated
    (by client; spilled to disk for a large round) with what each sent, and why each other one
    was dropped."""

    tasks: dict[int, Served]
    accepted: list[ClientReply]
    sent: dict[int, Sent]
    dropped: list[str]


@dataclass
class RunResult:
    metrics: list[RoundMetrics]
    state: GlobalState
    wall_seconds: float


class _Timer:
    """Times the phases of one round and reports each to the phase callback."""

    def __init__(self, round_index: int, callback: PhaseCallback | None) -> None:
        self.round = round_index
        self.callback = callback
        self.seconds: dict[str, float] = {}
        self._phase: str | None = None
        self._tick = 0.0
        self._aside: dict[str, float] = {}

    def start(self, phase: str) -> None:
        self.stop()
        self._phase, self._tick = phase, time.perf_counter()

    @contextlib.contextmanager
    def aside(self, phase: str) -> Iterator[None]:
        """Time a part of the current phase as ``phase`` instead, reported when ``phase`` ends
        (replies are validated as they arrive, while the exchange goes on)."""
        tick = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - tick
            self._tick += elapsed
            self._aside[phase] = self._aside.get(phase, 0.0) + elapsed

    def stop(self) -> None:
        if self._phase is None:
            return
        elapsed = time.perf_counter() - self._tick + self._aside.pop(self._phase, 0.0)
        self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + elapsed
        if self.callback is not None:
            self.callback(self.round, self._phase, elapsed)
        self._phase = None


class RoundDriver:
    """Runs the rounds of one experiment through a transport and writes its run directory.

    Everything random in a round derives from ``(seed, round, client)`` and the checkpoint holds
    the global state, the rank policy's state, which merges every client holds and the ranks
    clients pruned, so a resumed run ends with the same numbers as an uninterrupted one, through
    either transport.

    Parameters
    ----------
    experiment : the server's side of the run: model (to evaluate, score and merge), test set,
        rank policy, aggregator.
    run_dir : where the config, metrics, merges and checkpoints go.
    on_phase : called with ``(round, phase, seconds)`` after every timed phase (benchmarks).
    """

    def __init__(
        self,
        experiment: Experiment,
        run_dir: RunDir,
        *,
        on_phase: PhaseCallback | None = None,
    ) -> None:
        self.experiment = experiment
        self.config = experiment.config
        self.lora = experiment.lora
        self.run_dir = run_dir
        self.on_phase = on_phase
        self.base = MergedBase(experiment.model)
        self.merged: list[MergedRound] = []
        self.known_merged: dict[int, int] = {}
        self.pruned: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
        """Per client that pruned: its tier's rank map then, and the rank map it pruned to."""
        self.roster = Roster(clients=frozenset())

    # ------------------------------------------------------------------ the run

    def run(
        self,
        transport: Transport,
        *,
        resume: bool = False,
        on_round: RoundCallback | None = None,
    ) -> RunResult:
        start = time.perf_counter()
        self.run_dir.clear_scratch()  # what a killed round spilled
        self.roster = transport.connect(self.config.run.num_clients)
        self._check_roster()
        self.experiment.aggregator.configure_federation(self._federation_max_rank())
        resumed = resume and self.run_dir.has_checkpoint()
        state, rows = self._restore() if resumed else self._start(transport)
        note_environment(
            self.run_dir.path,
            resumed_after=state.round if resumed else None,
            rounds=self.config.run.rounds,
        )
        for round_index in range(state.round + 1, self.config.run.rounds + 1):
            state, row = self.run_round(transport, state, round_index)
            rows.append(row)
            if on_round is not None:
                on_round(row)
        wall = time.perf_counter() - start
        write_run_report(self.run_dir, self.config, rows, wall, self.experiment.data_notes)
        return RunResult(metrics=rows, state=state, wall_seconds=wall)

    def run_round(
        self, transport: Transport, state: GlobalState, round_index: int
    ) -> tuple[GlobalState, RoundMetrics]:
        """One round from ``state``; its metrics row is written and the state checkpointed.

        The updates a large round spilled to disk are removed at its end, however it ends.
        """
        try:
            return self._round(transport, state, round_index)
        finally:
            self.run_dir.clear_scratch()

    def _round(
        self, transport: Transport, state: GlobalState, round_index: int
    ) -> tuple[GlobalState, RoundMetrics]:
        exp, run = self.experiment, self.config.run
        timer = _Timer(round_index, self.on_phase)
        timer.start("serve")
        clients = [
            c
            for c in sample_clients(run.seed, round_index, run.num_clients, run.sampled_per_round())
            if c in self.roster.clients
        ]
        tiers = {c: self.tier(c) for c in clients}
        scoring = exp.policy.wants_scores(round_index)
        timer.start("train")
        faults.point("round:train")
        served = self._exchange(transport, state, tiers, round_index, scoring, timer)
        accepted, dropped = served.accepted, served.dropped
        timer.start("validate")
        pruned = self._remember_pruning(served)
        scores, promoted = self._scores_and_promotion(accepted, scoring, timer)
        timer.start("aggregate")
        faults.point("round:aggregate")
        notes: dict[str, Any] = {}
        new_state = self._aggregate(accepted, state, round_index, dropped, notes)
        timer.start("evaluate")
        faults.point("round:evaluate")
        evaluation = None
        if round_index % run.eval_every == 0 or round_index == run.rounds:
            evaluation = exp.evaluate(new_state)
        timer.stop()
        row = self._row(round_index, new_state, served, tiers, evaluation, timer.seconds)
        row.extra.update(_score_extra(scores, promoted))
        row.extra.update(notes)
        if pruned:
            row.extra["pruned"] = {str(c): ranks for c, ranks in pruned.items()}
        timer.start("record")
        self._record(row, new_state)
        timer.stop()
        return new_state, row

    def tier(self, client: int) -> RankTier:
        """The tier ``client`` trains now: the one its node announced, else the policy's."""
        announced = self.roster.announced.get(client)
        return announced if announced is not None else self.experiment.policy.tier_of(client)

    def served_ranks(self, client: int, tier: RankTier) -> dict[str, int]:
        """The rank of every module ``client`` is served: its tier's, or what it pruned them to.

        A pruned rank map holds while the client's tier is the one it pruned from; a new tier
        (a loss-based promotion) starts from the new tier's ranks.
        """
        ranks = tier.rank_map(self.experiment.module_names)
        pruned = self.pruned.get(client)
        if pruned is not None and pruned[0] == ranks:
            return dict(pruned[1])
        return ranks

    # ------------------------------------------------------------------ a round's steps

    def _task(
        self, state: GlobalState, client: int, tier: RankTier, round_index: int, scoring: bool
    ) -> TrainTask:
        rank_map = self.served_ranks(client, tier)
        after = self.known_merged.get(client, 0)
        return TrainTask(
            client=client,
            round=round_index,
            factors=state.factors_for(rank_map, self.lora),
            dense=state.dense,
            merged=[m for m in self.merged if m.round > after],
            merged_after=after,
            score=scoring and _scores_locally(self.experiment.policy.scoring),
        )

    def _exchange(
        self,
        transport: Transport,
        state: GlobalState,
        tiers: Mapping[int, RankTier],
        round_index: int,
        scoring: bool,
        timer: _Timer,
    ) -> Exchange:
        """Hand the tasks to the transport, each served only when the transport asks for it, and
        validate each reply as it arrives (timed as ``validate``, not ``train``).

        The in-process transport asks for one task at a time, so one client's factors are in
        memory at once (not every sampled client's: 3.2 GB for an 80-client SmolLM2 round);
        what the driver needs afterwards (ranks, traffic) is kept as :class:`Served`.  When the
        round is large (``aggregation.spill``) each accepted update goes to a file in the run's
        scratch folder before the next reply is taken, so the round's updates are never in
        memory together.
        """
        served: dict[int, Served] = {}
        spill = self._spill_dir(tiers, round_index)

        def tasks() -> Iterator[TrainTask]:
            for client, tier in tiers.items():
                task = self._task(state, client, tier, round_index, scoring)
                served[client] = Served(
                    ranks=_ranks(task.factors),
                    traffic=Traffic.of(task.factors, task.dense, task.merged),
                    score=task.score,
                )
                yield task

        accepted: dict[int, ClientReply] = {}
        sent: dict[int, Sent] = {}
        dropped: list[str] = []
        answered: set[int] = set()
        for reply in transport.train(tasks()):
            with timer.aside("validate"):
                answered.add(reply.client)
                problem = reply.error or self._problem(reply, served, accepted, state)
                if problem is not None:
                    log.warning("dropping client %d: %s", reply.client, problem)
                    dropped.append(f"client {reply.client}: {problem}")
                    if reply.error is not None:
                        self.known_merged.pop(reply.client, None)  # start it over next time
                else:
                    sent[reply.client] = Sent.of(_required(reply.update))
                    accepted[reply.client] = _spilled(reply, spill)
                    self.known_merged[reply.client] = reply.merged_round
                del reply  # a spilled update is in memory only in its file
        if len(served) != len(tiers):
            raise FedloraError(f"internal: the transport took {len(served)} of {len(tiers)} tasks")
        for client in sorted(set(served) - answered):
            log.warning("dropping client %d: no reply", client)
            dropped.append(f"client {client}: no reply")
        accepted_by_client = [accepted[c] for c in sorted(accepted)]
        return Exchange(tasks=served, accepted=accepted_by_client, sent=sent, dropped=dropped)

    def _spill_dir(self, tiers: Mapping[int, RankTier], round_index: int) -> Path | None:
        """Where this round's updates go, or ``None`` to keep them in memory: by the size of
        the factors served (what comes back, float32) and ``aggregation.spill``."""
        shapes = self.experiment.module_shapes
        served_bytes = sum(
            4 * rank * sum(shapes[name])
            for client, tier in tiers.items()
            for name, rank in self.served_ranks(client, tier).items()
        )
        if not spills(self.config.aggregation.spill, served_bytes):
            return None
        return self.run_dir.scratch_dir / f"round-{round_index:05d}"

    def _problem(
        self,
        reply: ClientReply,
        served: Mapping[int, Served],
        accepted: dict[int, ClientReply],
        state: GlobalState,
    ) -> str | None:
        task = served.get(reply.client)
        update = reply.update
        if task is None:
            return "it was not sampled this round"
        if reply.client in accepted:
            return "a second reply"
        if update is None:
            return "no update"
        if update.client_id != reply.client:
            return f"the update is labelled client {update.client_id}"
        if task.score and (reply.local_score is None or math.isnan(reply.local_score)):
            return f"it was asked for its score and sent {reply.local_score}"
        alpha = self.lora.alpha
        prunes = self.experiment.aggregator.prunes_ranks
        for name, factors in update.modules.items():
            expected = task.ranks.get(name)
            if expected is not None and not _rank_accepted(factors.r, expected, prunes):
                return f"module {name!r}: rank {factors.r} but it was served rank {expected}"
            if not math.isclose(factors.alpha, alpha, rel_tol=1e-6):
                return f"module {name!r}: lora alpha {factors.alpha} but the run uses {alpha}"
        try:
            self.experiment.aggregator.validate_update(update, state)
        except FedloraError as error:
            return str(error)
        return None

    def _remember_pruning(self, exchange: Exchange) -> dict[int, dict[str, int]]:
        """Remember the rank maps of the accepted clients that sent fewer slots than served."""
        pruned: dict[int, dict[str, int]] = {}
        for client in sorted(exchange.sent):
            sent = exchange.sent[client].ranks
            if sent != exchange.tasks[client].ranks:
                pruned[client] = sent
                tier = self.tier(client).rank_map(self.experiment.module_names)
                self.pruned[client] = (tier, sent)
                log.info("client %d pruned its ranks to %s", client, _ranks_label(sent))
        return pruned

    def _scores_and_promotion(
        self, accepted: Sequence[ClientReply], scoring: bool, timer: _Timer
    ) -> tuple[dict[int, float], list[int] | None]:
        """Score the clients and feed a loss-based policy, when it asked for this round."""
        if not scoring:
            return {}, None
        timer.start("score")
        scores = {reply.client: self._score(reply) for reply in accepted}
        policy = self.experiment.policy
        changed = policy.observe_losses(scores)
        promoted = None
        if changed is not None:
            top = max(t.max_rank for t in changed)
            promoted = [c for c, t in enumerate(changed) if t.max_rank == top]
            log.info("rank policy: clients %s promoted to rank %d", promoted, top)
        return scores, promoted

    def _score(self, reply: ClientReply) -> float:
        """A client's score: its own held-out loss, or the server's validation loss of it."""
        if _scores_locally(self.experiment.policy.scoring):
            if reply.local_score is None:  # _problem accepted no such reply
                raise FedloraError(f"internal: client {reply.client} has no score")
            return reply.local_score
        update = _required(reply.update)
        exp = self.experiment
        exp.model.activate(_ranks(update.modules), self.lora)
        exp.model.load(update.modules, update.dense)
        loss = held_out_loss(
            exp.model, exp.train, exp.score_rows, self.config.train.eval_batch_size
        )
        return math.inf if math.isnan(loss) else loss  # a diverged adapter scores worst

    def _aggregate(
        self,
        accepted: Sequence[ClientReply],
        state: GlobalState,
        round_index: int,
        dropped: list[str],
        notes: dict[str, Any],
    ) -> GlobalState:
        """The new state, or ``state`` moved to this round when the round cannot change it.

        The robust bounds of ``aggregation`` (off by default) apply first; what they did is
        added to ``notes``.
        """
        kept = replace(state, round=round_index, merge_into_base={})
        method = self.config.aggregation
        bounding = bound_updates(
            [_required(reply.update) for reply in accepted],
            norm_bound=method.norm_bound,
            mode=method.bound_mode,
            max_examples=method.max_examples,
        )
        for client, why in bounding.rejected.items():
            log.warning("dropping client %d: %s", client, why)
            dropped.append(f"client {client}: {why}")
        if bounding.clipped:
            notes["clipped_norms"] = {str(c): n for c, n in bounding.clipped.items()}
        if bounding.capped:
            notes["capped_examples"] = {str(c): n for c, n in bounding.capped.items()}
        updates = bounding.updates
        needed = self.config.run.min_replies
        if len(updates) < needed:
            problem = (
                f"{len(updates)} valid replies, fewer than the {needed} needed; "
                "the global state is kept"
            )
            log.warning("round %d: %s", round_index, problem)
            dropped.append(f"round: {problem}")
            return kept
        try:
            new_state = self.experiment.aggregator.aggregate(updates, state, validated=True)
        except FedloraError as error:
            log.warning("round %d: aggregation failed, the state is kept: %s", round_index, error)
            dropped.append(f"round: {error}")
            return kept
        notes.update(self.experiment.aggregator.round_report())
        if new_state.merge_into_base:
            merged = MergedRound(round=round_index, modules=dict(new_state.merge_into_base))
            self.merged.append(merged)
            self.base.apply([merged], after=self.base.round)
        return new_state

    def _row(
        self,
        round_index: int,
        state: GlobalState,
        exchange: Exchange,
        tiers: dict[int, RankTier],
        evaluation: Evaluation | None,
        seconds: dict[str, float],
    ) -> RoundMetrics:
        """The one place a round's metrics are assembled."""
        tasks, accepted, dropped = exchange.tasks, exchange.accepted, exchange.dropped
        updates = {r.client: _required(r.update) for r in accepted}
        down = {client: task.traffic for client, task in tasks.items()}
        up = {client: sent.traffic for client, sent in exchange.sent.items()}
        total_down, total_up = total(down.values()), total(up.values())
        examples = sum(u.num_examples for u in updates.values())
        train_loss = None
        if examples:
            train_loss = (
                sum(r.train_loss * _required(r.update).num_examples for r in accepted) / examples
            )
        clients = list(tasks)
        served = {client: task.ranks for client, task in tasks.items()}
        losses = {r.client: r.train_loss for r in accepted}
        return RoundMetrics(
            round=round_index,
            clients=clients,
            ranks=[max(served[c].values()) for c in clients],
            train_loss=train_loss,
            bytes_up=total_up.bytes,
            bytes_down=total_down.bytes,
            seconds_train=seconds.get("train", 0.0),
            seconds_aggregate=seconds.get("aggregate", 0.0),
            seconds_eval=seconds.get("evaluate", 0.0),
            global_rank=max(state.rank_map().values(), default=0),
            lora_params_up=total_up.lora_params,
            dense_params_up=total_up.dense_params,
            lora_params_down=total_down.lora_params,
            dense_params_down=total_down.dense_params,
            merged_params_down=total_down.merged_params,
            **test_metrics(evaluation),
            extra={
                "tiers": [self._tier_label(tiers[c], served[c]) for c in clients],
                "client_train_loss": [losses.get(c) for c in clients],
                "client_examples": [
                    updates[c].num_examples if c in updates else None for c in clients
                ],
                "traffic": [
                    {
                        "client": c,
                        "down": down[c].as_dict(),
                        "up": up[c].as_dict() if c in up else None,
                    }
                    for c in clients
                ],
                "dropped": dropped,
                "seconds": seconds,
                **(evaluation.extra if evaluation else {}),
            },
        )

    def _tier_label(self, tier: RankTier, served: dict[str, int]) -> str:
        """The tier's name, and what the client pruned it to when it did."""
        if served == tier.rank_map(self.experiment.module_names):
            return str(tier)
        return f"{tier} pruned to {_ranks_label(served)}"

    def _record(self, row: RoundMetrics, state: GlobalState) -> None:
        self.run_dir.append_metrics(row)
        faults.point("round:record")
        run = self.config.run
        if row.round % run.checkpoint_every == 0 or row.round == run.rounds:
            save_checkpoint(
                Checkpoint(
                    state=state,
                    policy_state=self.experiment.policy.state_dict(),
                    extra={
                        "known_merged": {str(c): r for c, r in self.known_merged.items()},
                        "pruned": {
                            str(c): {"from": tier, "ranks": ranks}
                            for c, (tier, ranks) in self.pruned.items()
                        },
                        "merged_rounds": [m.round for m in self.merged],
                    },
                ),
                self.run_dir.checkpoint_dir,
                self.config.identity_toml(),
            )

    # ------------------------------------------------------------------ start and resume

    def _start(self, transport: Transport) -> tuple[GlobalState, list[RoundMetrics]]:
        """Round 0: a fresh directory, the untuned model, the baselines and the probe."""
        exp = self.experiment
        self.run_dir.rewrite_metrics([])  # a resume before the first checkpoint starts over
        self.run_dir.merged.clear()
        self.base.store = self.run_dir.merged
        counts = label_distribution(exp.groups, exp.partitions, len(exp.group_names))
        write_label_distribution(counts, exp.group_names, self.run_dir.path)
        state = exp.initial_state()
        timer = _Timer(0, self.on_phase)
        extra: dict[str, Any] = {"transport": transport.name}
        if exp.high_quality_clients is not None:
            extra["high_quality_clients"] = exp.high_quality_clients
        if exp.policy.wants_scores(0):
            extra.update(self._probe(transport, state, timer))
        timer.start("evaluate")
        evaluation = exp.evaluate(state)
        baselines = exp.evaluator.baselines()
        timer.stop()
        seen = {n: b.extra["seen_tasks"] for n, b in baselines.items() if "seen_tasks" in b.extra}
        if seen:
            extra["seen_tasks_baselines"] = seen
        row = RoundMetrics(
            round=0,
            clients=[],
            ranks=[],
            train_loss=None,
            bytes_up=0,
            bytes_down=0,
            seconds_train=timer.seconds.get("train", 0.0),
            seconds_aggregate=0.0,
            seconds_eval=timer.seconds.get("evaluate", 0.0),
            **test_metrics(evaluation),
            extra={
                "baselines": {name: b.metric_fields() for name, b in baselines.items()},
                **extra,
                **evaluation.extra,
            },
        )
        self.run_dir.append_metrics(row)
        return state, [row]

    def _probe(self, transport: Transport, state: GlobalState, timer: _Timer) -> dict[str, Any]:
        """Byun & Lee's scoring before round 1: every client trains once from ``state``."""
        timer.start("serve")
        tiers = {c: self.tier(c) for c in sorted(self.roster.clients)}
        timer.start("train")
        served = self._exchange(transport, state, tiers, 0, True, timer)
        accepted, dropped = served.accepted, served.dropped
        timer.start("validate")
        pruned = self._remember_pruning(served)
        scores, promoted = self._scores_and_promotion(accepted, True, timer)
        timer.stop()
        self.run_dir.clear_scratch()
        extra = {**_score_extra(scores, promoted), "probe_dropped": dropped}
        if pruned:
            extra["probe_pruned"] = {str(c): ranks for c, ranks in pruned.items()}
        return extra

    def _restore(self) -> tuple[GlobalState, list[RoundMetrics]]:
        """The newest checkpoint that is this run's and intact; every file checked first."""
        exp = self.experiment
        expected = Expected(
            config_digests=frozenset(
                config_digest(toml)
                for toml in (*self.config.identity_at_lengths(), self.config.to_toml())
            ),
            seed=self.config.run.seed,
            max_round=self.config.run.rounds,
            module_shapes=exp.module_shapes,
            dense_shapes=exp.model.dense_shapes(),
        )
        checkpoint = load_checkpoint(self.run_dir.checkpoint_dir, expected)
        state = checkpoint.state
        self.merged = self.run_dir.merged.load(until=state.round)
        saved = checkpoint.extra.get("merged_rounds", [])
        if [m.round for m in self.merged] != saved:
            raise FedloraError(
                f"{self.run_dir.merged_dir}: merged rounds {[m.round for m in self.merged]}, but "
                f"the checkpoint of round {state.round} merged {saved}"
            )
        rows = self.run_dir.keep_metrics_until(state.round)
        exp.policy.load_state_dict(checkpoint.policy_state)
        self.run_dir.merged.drop_after(state.round)
        self.base.apply(self.merged, after=0)
        self.base.store = self.run_dir.merged
        known = checkpoint.extra.get("known_merged", {})
        self.known_merged = {int(c): int(r) for c, r in known.items()}
        pruned = checkpoint.extra.get("pruned", {})
        self.pruned = {int(c): (dict(p["from"]), dict(p["ranks"])) for c, p in pruned.items()}
        return state, rows

    # ------------------------------------------------------------------ the federation

    def _check_roster(self) -> None:
        if not self.roster.clients:
            raise FedloraError("no client of the federation can be reached")
        top = self.experiment.module_shapes
        for client, tier in self.roster.announced.items():
            for name, rank in tier.rank_map(top).items():
                limit = min(top[name])
                if rank > limit:
                    raise FedloraError(
                        f"client {client} announced rank {rank} on {name!r}, above its limit "
                        f"{limit}"
                    )

    def _federation_max_rank(self) -> int:
        tiers = [*self.experiment.policy.possible_tiers(), *self.roster.announced.values()]
        return max(t.max_rank for t in tiers)


def _score_extra(scores: dict[int, float], promoted: list[int] | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if scores:
        extra["client_scores"] = {str(c): s for c, s in sorted(scores.items())}
    if promoted is not None:
        extra["promoted_clients"] = promoted
    return extra


def _scores_locally(scoring: Scoring | None) -> bool:
    return scoring is not None and scoring.on == "local"


def _rank_accepted(sent: int, served: int, prunes: bool) -> bool:
    """The served rank, or a smaller one from a client of a method that prunes."""
    return sent == served or (prunes and sent < served)


def _ranks(factors: Mapping[str, LoraFactors]) -> dict[str, int]:
    return {name: f.r for name, f in factors.items()}


def _ranks_label(ranks: Mapping[str, int]) -> str:
    """``r4``, or ``r2-4`` when the modules differ."""
    low, high = min(ranks.values()), max(ranks.values())
    return f"r{low}" if low == high else f"r{low}-{high}"


def _spilled(reply: ClientReply, directory: Path | None) -> ClientReply:
    """``reply`` with its update in a file of ``directory`` (``None``: kept in memory)."""
    if directory is None:
        return reply
    path = directory / f"client-{reply.client:05d}.safetensors"
    return replace(reply, update=save_update(_required(reply.update), path))


def _required(update: ClientUpdate | None) -> ClientUpdate:
    if update is None:
        raise FedloraError("internal: an accepted reply without an update")
    return update
