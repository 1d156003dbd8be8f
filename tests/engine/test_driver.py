"""The round driver: round 0, loss-based scoring and promotion, reply validation, method hooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from fedlora.aggregation import HetLoRA
from fedlora.config import ExperimentConfig
from fedlora.engine import (
    ClientReply,
    InProcessTransport,
    RoundDriver,
    RunResult,
    TrainTask,
    build_experiment,
    run_experiment,
    sample_clients,
)
from fedlora.engine.transport import ClientRunner
from fedlora.lora import ClientUpdate, LoraFactors
from fedlora.runs import RoundMetrics, RunDir
from tests.engine.helpers import tiny_config

pytestmark = pytest.mark.slow


def _run(config: ExperimentConfig) -> RunResult:
    run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=False)
    return run_experiment(build_experiment(config), run_dir)


def _loss_based(model_dir: Path, out: Path, **options: Any) -> ExperimentConfig:
    """Ten clients on Byun & Lee's quality split: two near-balanced, eight strongly skewed."""
    return tiny_config(
        model_dir,
        out,
        **{
            "run.rounds": 2,
            "run.num_clients": 10,
            "run.clients_per_round": 4,
            "data.partition": "quality",
            "data.partition_options": {"high_quality_fraction": 0.2, "low_alpha": 0.05},
            "ranks.policy": "loss_based",
            "ranks.options": {"low": 2, "high": 8, "fraction": 0.2, "score_rows": 100, **options},
            "train.steps": 10,
            "data.max_test_samples": 16,
        },
    )


def test_round_zero_is_the_untuned_model(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run", **{"run.rounds": 1})
    rows = _run(config).metrics
    experiment = build_experiment(config)
    untuned = experiment.evaluate(experiment.initial_state())
    assert rows[0].round == 0
    assert rows[0].test_loss == untuned.loss
    assert rows[0].test_accuracy == untuned.accuracy
    assert rows[0].extra["baselines"] == {
        name: b.metric_fields() for name, b in experiment.evaluator.baselines().items()
    }
    assert rows[1].test_loss != untuned.loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_server_scoring_promotes_the_high_quality_clients(
    tiny_bert_dir: Path, tmp_path: Path, seed: int
) -> None:
    # Scored on their own slice, the skewed clients look best; on the server's common set the
    # balanced ones do.  Both modes record every client's score and who was promoted.
    server = _run(_loss_based(tiny_bert_dir, tmp_path / "server", **{"seed": seed})).metrics[0]
    local = _loss_based(tiny_bert_dir, tmp_path / "local", score_on="local", seed=seed)
    own = _run(local).metrics[0]
    high_quality = server.extra["high_quality_clients"]
    assert len(high_quality) == 2
    assert server.extra["promoted_clients"] == high_quality
    assert len(own.extra["promoted_clients"]) == 2
    assert not set(own.extra["promoted_clients"]) & set(high_quality)
    for row in (server, own):
        assert sorted(int(c) for c in row.extra["client_scores"]) == list(range(10))


def test_without_a_probe_round_one_logs_the_ranks_it_trained(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = _loss_based(tiny_bert_dir, tmp_path / "run", probe=False, fraction=0.5)
    rows = _run(config).metrics
    first, second = rows[1], rows[2]
    promoted = first.extra["promoted_clients"]
    assert len(promoted) == 2 and set(promoted) <= set(first.clients)
    assert first.ranks == [2] * len(first.clients)
    assert sorted(int(c) for c in first.extra["client_scores"]) == first.clients
    assert second.ranks == [8 if c in promoted else 2 for c in second.clients]
    assert "promoted_clients" not in rows[0].extra and "promoted_clients" not in second.extra


class CorruptingTransport(InProcessTransport):
    """Trains in process, then spoils the reply of some clients the way a bad node could."""

    def __init__(
        self, inner: InProcessTransport, spoil: dict[int, str], rounds: tuple[int, ...]
    ) -> None:
        super().__init__(inner.runner)
        self.spoil = spoil
        self.rounds = rounds

    def train(self, tasks: Iterable[TrainTask]) -> Iterator[ClientReply]:
        rounds: list[int] = []

        def watched() -> Iterator[TrainTask]:
            for task in tasks:
                rounds.append(task.round)
                yield task

        for reply in super().train(watched()):
            yield self._spoiled(reply) if rounds[0] in self.rounds else reply

    def _spoiled(self, reply: ClientReply) -> ClientReply:
        kind = self.spoil.get(reply.client)
        update = reply.update
        assert update is not None
        if kind == "nan":
            name = next(iter(update.modules))
            bad = update.modules[name]
            A = bad.A.clone()
            A[0, 0] = float("nan")
            modules = {**update.modules, name: replace(bad, A=A)}
            return replace(reply, update=replace(update, modules=modules))
        if kind == "rank":
            modules = {n: _truncated(f) for n, f in update.modules.items()}
            return replace(reply, update=replace(update, modules=modules))
        if kind == "error":
            return ClientReply.failed(reply.client, "the node crashed")
        if kind in ("huge", "overflow"):  # finite; "overflow" sums past the float range
            top = max(float(f.B.abs().max()) for f in update.modules.values())
            scale = 1e30 if kind == "huge" else 1e38 / top
            modules = {
                n: replace(f, B=(f.B.double() * scale).float()) for n, f in update.modules.items()
            }
            return replace(reply, update=replace(update, modules=modules))
        return reply


def _truncated(factors: LoraFactors) -> LoraFactors:
    r = factors.r - 1
    return replace(factors, A=factors.A[:r], B=factors.B[:, :r], r=r)


def _drive(
    config: ExperimentConfig, spoil: dict[int, str], rounds: tuple[int, ...] = (1,)
) -> list[RoundMetrics]:
    """Run ``config`` with the replies of ``spoil``'s clients spoiled in ``rounds``."""
    experiment = build_experiment(config)
    run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=False)
    driver = RoundDriver(experiment, run_dir)
    trainer = experiment.client_trainer(driver.base)
    transport = CorruptingTransport(InProcessTransport(trainer), spoil, rounds)
    return driver.run(transport).metrics


def test_bad_replies_are_dropped_and_the_round_goes_on(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run", **{"run.rounds": 1})
    sampled = sample_clients(0, 1, 6, 3)
    spoil = {sampled[0]: "nan", sampled[1]: "rank"}
    row = _drive(config, spoil)[1]
    reasons = "\n".join(row.extra["dropped"])
    assert f"client {sampled[0]}:" in reasons and "NaN" in reasons
    assert f"client {sampled[1]}:" in reasons and "served rank" in reasons
    assert row.extra["client_train_loss"][2] is not None
    assert [e["up"] is None for e in row.extra["traffic"]] == [True, True, False]
    assert row.train_loss == row.extra["client_train_loss"][2]


def test_too_few_valid_replies_keep_the_global_state(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run", **{"run.rounds": 1, "run.min_replies": 2})
    first, second, _ = sample_clients(0, 1, 6, 3)
    rows = _drive(config, {first: "error", second: "error"})
    assert rows[1].extra["dropped"] == [
        f"client {first}: the node crashed",
        f"client {second}: the node crashed",
        "round: 1 valid replies, fewer than the 2 needed; the global state is kept",
    ]
    assert rows[1].test_loss == rows[0].test_loss
    assert rows[1].global_rank == 0


def test_flexlora_learns_the_federations_largest_rank(tiny_bert_dir: Path, tmp_path: Path) -> None:
    # A round of rank-2 clients must not truncate what the rank-8 clients get next time.
    config = tiny_config(tiny_bert_dir, tmp_path / "x", **{"run.rounds": 1})
    experiment = build_experiment(config)
    run_experiment(experiment, RunDir.create(tmp_path / "x", config, overwrite=False))
    assert experiment.aggregator.max_rank == 8  # type: ignore[attr-defined]
    loss_based = _loss_based(tiny_bert_dir, tmp_path / "y", high=6, probe=False)
    experiment = build_experiment(loss_based)
    run_experiment(experiment, RunDir.create(tmp_path / "y", loss_based, overwrite=False))
    assert experiment.aggregator.max_rank == 6  # type: ignore[attr-defined]


def test_the_clients_add_the_methods_regulariser(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(
        tiny_bert_dir,
        tmp_path / "run",
        **{"aggregation.method": "hetlora", "aggregation.options": {"lam": 0.5, "gamma": 0.5}},
    )
    experiment = build_experiment(config)
    assert isinstance(experiment.aggregator, HetLoRA)
    calls: list[int] = []
    penalty = experiment.aggregator.client_regularizer()
    assert penalty is not None

    def counted(pairs: Any) -> torch.Tensor:
        calls.append(len(pairs))
        return penalty(pairs)

    experiment.aggregator.client_regularizer = lambda: counted  # type: ignore[method-assign]
    trainer = experiment.client_trainer()
    state = experiment.initial_state()
    factors = state.factors_for(4, config.model.lora_settings())
    trainer.train(TrainTask(client=1, round=1, factors=factors, dense=state.dense))
    assert calls == [len(experiment.module_names)] * config.train.steps


def test_ffa_clients_send_back_the_served_A(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run", **{"aggregation.method": "ffa"})
    experiment = build_experiment(config)
    state = experiment.initial_state()
    factors = state.factors_for(4, config.model.lora_settings())
    reply = experiment.client_trainer().train(
        TrainTask(client=0, round=1, factors=factors, dense=state.dense)
    )
    update: ClientUpdate | None = reply.update
    assert update is not None
    for name, served in factors.items():
        assert torch.equal(update.modules[name].A, served.A)
        assert not torch.equal(update.modules[name].B, served.B)


def test_proportion_can_give_the_high_rank_to_the_high_quality_clients(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        tiny_bert_dir,
        tmp_path / "run",
        **{
            "run.num_clients": 10,
            "data.partition": "quality",
            "data.partition_options": {"high_quality_fraction": 0.2},
            "ranks.policy": "proportion",
            "ranks.options": {"high": 8, "low": 2, "fraction": 0.2, "choose": "high_quality"},
        },
    )
    experiment = build_experiment(config)
    allocation = experiment.policy.allocation
    assert allocation is not None
    high = [c for c, tier in enumerate(allocation) if tier.max_rank == 8]
    assert high == experiment.high_quality_clients


def test_an_overflowing_round_keeps_the_state_and_the_run_goes_on(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # Finite updates whose aggregate overflows (1e38 times the scale): the round is refused,
    # the state kept, and the next round goes on with everyone.
    config = tiny_config(
        tiny_bert_dir, tmp_path / "run", **{"run.rounds": 2, "aggregation.method": "hetlora"}
    )
    poisoned = sample_clients(0, 1, 6, 3)[1]
    rows = _drive(config, {poisoned: "overflow"}, rounds=(1,))
    assert any(d.startswith("round: ") and "not finite" in d for d in rows[1].extra["dropped"])
    assert rows[1].test_loss == rows[0].test_loss  # the state was kept
    assert rows[2].extra["dropped"] == []
    assert all(loss is not None for loss in rows[2].extra["client_train_loss"])


def test_a_norm_bound_keeps_one_huge_update_from_stalling_hetlora(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # HetLoRA weights clients by update norm: one update 1e30 times too large takes all the
    # weight, every client then trains from it to NaN and every honest reply is dropped (a
    # stall).  With a norm bound it is clipped to 3 times the round's median instead.
    settings = {"run.rounds": 2, "aggregation.method": "hetlora"}
    poisoned = sample_clients(0, 1, 6, 3)[1]
    stalled = _drive(tiny_config(tiny_bert_dir, tmp_path / "off", **settings), {poisoned: "huge"})
    assert len(stalled[2].extra["dropped"]) >= 3  # the stall the bound prevents
    bounded = {**settings, "aggregation.norm_bound": 3.0}
    rows = _drive(tiny_config(tiny_bert_dir, tmp_path / "on", **bounded), {poisoned: "huge"})
    assert list(rows[1].extra["clipped_norms"]) == [str(poisoned)]
    assert rows[2].extra["dropped"] == []
    assert all(loss is not None for loss in rows[2].extra["client_train_loss"])
    untuned, last = rows[0].test_loss, rows[2].test_loss
    assert untuned is not None and last is not None and last < 2 * untuned


class RecordingRunner:
    """Wraps a client trainer and records when each client is served and when it trained."""

    def __init__(self, runner: ClientRunner, events: list[tuple[str, int]]) -> None:
        self.runner = runner
        self.events = events

    def train(self, task: TrainTask) -> ClientReply:
        self.events.append(("trained", task.client))
        return self.runner.train(task)


def test_in_process_clients_are_served_one_at_a_time(tiny_bert_dir: Path, tmp_path: Path) -> None:
    # The driver builds a client's factors only when the transport takes its task, so an
    # in-process round holds one client's served factors at a time, not the whole round's.
    config = tiny_config(tiny_bert_dir, tmp_path / "run", **{"run.rounds": 1})
    experiment = build_experiment(config)
    driver = RoundDriver(experiment, RunDir.create(tmp_path / "run", config, overwrite=False))
    events: list[tuple[str, int]] = []
    transport = InProcessTransport(RecordingRunner(experiment.client_trainer(driver.base), events))
    serve = driver._task

    def recorded_task(state: Any, client: int, *args: Any, **kwargs: Any) -> TrainTask:
        events.append(("served", client))
        return serve(state, client, *args, **kwargs)

    driver._task = recorded_task  # type: ignore[method-assign]
    row = driver.run(transport).metrics[1]
    assert events == [(kind, c) for c in row.clients for kind in ("served", "trained")]
    assert [e["down"] is not None for e in row.extra["traffic"]] == [True] * len(row.clients)


def test_flexlora_energy_kept_is_in_the_rounds_metrics(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(
        tiny_bert_dir,
        tmp_path / "run",
        **{"run.rounds": 1, "aggregation.options": {"energy": True}},
    )
    row = _run(config).metrics[1]
    experiment = build_experiment(config)
    kept = row.extra["energy_kept"]
    assert set(kept) == set(experiment.module_names)
    for shares in kept.values():
        assert {int(r) for r in shares} >= set(row.ranks)
        assert all(0.0 < s <= 1.0 for s in shares.values())
        assert shares[str(min(row.ranks))] < 1.0  # the low rank truncates a rank-sum update
