"""The in-process runner: every client of a round trains in turn on one shared base model."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from fedlora.aggregation import GlobalState
from fedlora.config import ExperimentConfig
from fedlora.data import label_distribution, write_label_distribution
from fedlora.engine.client import ClientResult, run_client, tensor_bytes
from fedlora.engine.evaluation import evaluate_global, test_metrics
from fedlora.engine.experiment import Experiment, build_experiment
from fedlora.engine.seeds import sample_clients
from fedlora.lora import FoldedFactors
from fedlora.report import write_run_report
from fedlora.runs import Checkpoint, RoundMetrics, RunDir, load_checkpoint, save_checkpoint

RoundCallback = Callable[[RoundMetrics], None]


@dataclass
class RunResult:
    metrics: list[RoundMetrics]
    state: GlobalState
    wall_seconds: float


class Simulation:
    """Runs the rounds of one experiment in this process and writes its run directory.

    The global state, the round and the rank policy's state are checkpointed after every
    ``checkpoint_every`` rounds; everything random in a round derives from ``(seed, round,
    client)``, so a resumed run ends with the same numbers as an uninterrupted one.
    """

    def __init__(self, experiment: Experiment, run_dir: RunDir) -> None:
        self.experiment = experiment
        self.config: ExperimentConfig = experiment.config
        self.run_dir = run_dir
        self.base_deltas: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ the run

    def run(self, *, resume: bool = False, on_round: RoundCallback | None = None) -> RunResult:
        start = time.perf_counter()
        if resume and self.run_dir.has_checkpoint():
            state, rows = self._restore()
        else:
            state, rows = self._start()
        for round_index in range(state.round + 1, self.config.run.rounds + 1):
            state, row = self.run_round(state, round_index)
            rows.append(row)
            self.run_dir.append_metrics(row)
            if (
                round_index % self.config.run.checkpoint_every == 0
                or round_index == self.config.run.rounds
            ):
                self._checkpoint(state)
            if on_round is not None:
                on_round(row)
        wall = time.perf_counter() - start
        self._finish(rows, wall)
        return RunResult(metrics=rows, state=state, wall_seconds=wall)

    def run_round(self, state: GlobalState, round_index: int) -> tuple[GlobalState, RoundMetrics]:
        exp, config = self.experiment, self.config
        clients = sample_clients(
            config.run.seed, round_index, config.run.num_clients, config.run.sampled_per_round()
        )
        results: list[ClientResult] = []
        bytes_down = 0
        for client in clients:
            result, sent = self._train(state, client, round_index)
            results.append(result)
            bytes_down += sent
        seconds_train = sum(r.seconds for r in results)
        tick = time.perf_counter()
        new_state = exp.aggregator.aggregate([r.update for r in results], state)
        if new_state.merge_into_base:
            self._merge(new_state.merge_into_base)
        seconds_aggregate = time.perf_counter() - tick
        promoted = self._observe_losses(results, round_index)
        evaluation, seconds_eval = None, 0.0
        if round_index % config.run.eval_every == 0 or round_index == config.run.rounds:
            tick = time.perf_counter()
            evaluation = evaluate_global(exp, new_state)
            seconds_eval = time.perf_counter() - tick
        total = sum(r.update.num_examples for r in results)
        row = RoundMetrics(
            round=round_index,
            clients=clients,
            ranks=[exp.tier(c).max_rank for c in clients],
            train_loss=sum(r.train_loss * r.update.num_examples for r in results) / total,
            bytes_up=sum(tensor_bytes(r.update.modules, r.update.dense) for r in results),
            bytes_down=bytes_down,
            seconds_train=seconds_train,
            seconds_aggregate=seconds_aggregate,
            seconds_eval=seconds_eval,
            global_rank=max(new_state.rank_map().values(), default=0),
            **test_metrics(evaluation),
            extra={
                "tiers": [str(exp.tier(c)) for c in clients],
                "client_train_loss": [r.train_loss for r in results],
                "client_examples": [r.update.num_examples for r in results],
                **promoted,
                **(evaluation.extra if evaluation else {}),
            },
        )
        return new_state, row

    def _train(self, state: GlobalState, client: int, round_index: int) -> tuple[ClientResult, int]:
        """One client's local training from ``state``; also the bytes it was sent."""
        exp, model = self.experiment, self.config.model
        rank_map = exp.rank_map(client)
        factors = state.factors_for(rank_map, model.lora_alpha, model.use_rslora)
        result = run_client(
            exp.model,
            self.config,
            exp.aggregator,
            client=client,
            round_index=round_index,
            rank_map=rank_map,
            factors=factors,
            dense=state.dense,
            data=exp.train,
            indices=exp.partitions[client],
            validation=None if exp.validation is None else exp.validation[client],
        )
        return result, tensor_bytes(factors, state.dense)

    # ------------------------------------------------------------------ rank policy

    def _observe_losses(self, results: list[ClientResult], round_index: int) -> dict[str, object]:
        """Loss-based allocation: promote after the first round (unless a probe already did)."""
        losses = {int(r.update.client_id): r.validation_loss for r in results}
        if round_index != 1 or self.experiment.validation is None:
            return {}
        return self._promote({c: loss for c, loss in losses.items() if loss is not None})

    def _promote(self, losses: dict[int, float]) -> dict[str, object]:
        changed = self.experiment.policy.observe_losses(losses)
        if changed is None:
            return {}
        top = max(t.max_rank for t in changed)
        high = [c for c, tier in enumerate(changed) if tier.max_rank == top]
        return {"promoted_clients": high}

    def _probe(self, state: GlobalState) -> None:
        """Score every client once before round 1 (Byun & Lee's setup): train, measure, discard."""
        exp = self.experiment
        if exp.validation is None:
            return
        losses: dict[int, float] = {}
        for client in range(self.config.run.num_clients):
            result, _ = self._train(state, client, round_index=0)
            if result.validation_loss is not None:
                losses[client] = result.validation_loss
        self._promote(losses)

    # ------------------------------------------------------------------ state and files

    def _start(self) -> tuple[GlobalState, list[RoundMetrics]]:
        exp = self.experiment
        self.run_dir.rewrite_metrics([])  # a resume before the first checkpoint starts over
        counts = label_distribution(exp.groups, exp.partitions, len(exp.group_names))
        write_label_distribution(counts, exp.group_names, self.run_dir.path)
        state = exp.initial_state()
        if exp.policy.needs_probe:
            self._probe(state)
        return state, []

    def _restore(self) -> tuple[GlobalState, list[RoundMetrics]]:
        checkpoint = load_checkpoint(self.run_dir.checkpoint_dir)
        self.experiment.policy.load_state_dict(checkpoint.policy_state)
        self.experiment.model.add_to_base(checkpoint.base_deltas)
        self.base_deltas = dict(checkpoint.base_deltas)
        rows = self.run_dir.keep_metrics_until(checkpoint.state.round)
        return checkpoint.state, rows

    def _merge(self, updates: Mapping[str, FoldedFactors]) -> None:
        """Merge into the base weights, remembering the total for checkpoints (FLoRA)."""
        self.experiment.model.merge_into_base(updates)
        for name, factors in updates.items():
            delta = factors.delta()
            self.base_deltas[name] = self.base_deltas.get(name, torch.zeros_like(delta)) + delta

    def _checkpoint(self, state: GlobalState) -> None:
        save_checkpoint(
            Checkpoint(
                state=state,
                base_deltas=self.base_deltas,
                policy_state=self.experiment.policy.state_dict(),
            ),
            self.run_dir.checkpoint_dir,
        )

    def _finish(self, rows: list[RoundMetrics], wall: float) -> None:
        write_run_report(self.run_dir, self.config, rows, wall, self.experiment.data_notes)


def run_in_process(
    config: ExperimentConfig,
    run_dir: RunDir,
    *,
    resume: bool = False,
    on_round: RoundCallback | None = None,
) -> RunResult:
    """Build the experiment from ``config`` and run it in this process."""
    return Simulation(build_experiment(config), run_dir).run(resume=resume, on_round=on_round)
