"""The Flower ServerApp: the same run directory, metrics and checkpoints as ``fedlora run``.

Run config keys (``[tool.flwr.app.config]`` of the Flower app, or ``flwr run --run-config``):
``config`` (path of a fedlora TOML config; empty = the defaults), ``overrides`` (``key=value``
pairs separated by ``;``), ``out-dir`` (run directory; empty = ``run.out_dir``), ``overwrite``,
``round-timeout`` (seconds to wait for replies), ``min-replies`` (valid replies a round needs).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedlora.config import ExperimentConfig, load_config
from fedlora.engine import Experiment, build_experiment, evaluate_global, test_metrics
from fedlora.flower.records import state_to_record
from fedlora.flower.strategy import FedLoraStrategy
from fedlora.report import write_run_report
from fedlora.runs import Checkpoint, RoundMetrics, RunDir, save_checkpoint

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, context.run_config)


def run_federation(grid: Grid, run_config: Mapping[str, Any]) -> list[RoundMetrics]:
    """Build the experiment, run the rounds through Flower, write the run directory."""
    start = time.perf_counter()
    config = server_config(run_config)
    experiment = build_experiment(config)
    run_dir = RunDir.create(
        Path(config.run.out_dir), config, overwrite=bool(run_config.get("overwrite", False))
    )
    strategy = FedLoraStrategy(
        experiment.aggregator,
        config,
        module_names=experiment.module_names,
        policy=experiment.policy,
        initial=experiment.initial_state(),
        min_replies=int(run_config.get("min-replies", 1)),
    )
    recorder = RoundRecorder(experiment, run_dir, strategy)
    strategy.start(
        grid=grid,
        initial_arrays=state_to_record(strategy.state),
        num_rounds=config.run.rounds,
        timeout=float(run_config.get("round-timeout", 600.0)),
        evaluate_fn=recorder.after_round,
    )
    write_run_report(
        run_dir, config, recorder.rows, time.perf_counter() - start, experiment.data_notes
    )
    return recorder.rows


def server_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    path = str(run_config.get("config", "") or "") or None
    overrides = [item for item in str(run_config.get("overrides", "")).split(";") if item.strip()]
    config = load_config(path, overrides)
    out_dir = str(run_config.get("out-dir", "") or "")
    return config.replace({"run.out_dir": out_dir}) if out_dir else config


class RoundRecorder:
    """Flower's ``evaluate_fn``: evaluates the global adapter and writes the round's metrics."""

    def __init__(self, experiment: Experiment, run_dir: RunDir, strategy: FedLoraStrategy) -> None:
        self.experiment = experiment
        self.run_dir = run_dir
        self.strategy = strategy
        self.rows: list[RoundMetrics] = []
        self._merged_round = 0

    def after_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        config = self.experiment.config
        state = self.strategy.state
        log = self.strategy.rounds[server_round]
        if state.merge_into_base and state.round > self._merged_round:
            # FLoRA: the server's model must hold the merged update it evaluates.
            self.experiment.model.merge_into_base(state.merge_into_base)
            self._merged_round = state.round
        evaluation, seconds_eval = None, 0.0
        if server_round % config.run.eval_every == 0 or server_round == config.run.rounds:
            tick = time.perf_counter()
            evaluation = evaluate_global(self.experiment, state)
            seconds_eval = time.perf_counter() - tick
        row = RoundMetrics(
            round=server_round,
            clients=log.clients,
            ranks=log.ranks,
            train_loss=log.train_loss,
            bytes_up=log.bytes_up,
            bytes_down=log.bytes_down,
            seconds_train=log.seconds_train,
            seconds_aggregate=log.seconds_aggregate,
            seconds_eval=seconds_eval,
            global_rank=max(state.rank_map().values(), default=0),
            **test_metrics(evaluation),
            extra={
                "tiers": log.tiers,
                "client_train_loss": [log.client_train_loss.get(c) for c in log.clients],
                "dropped": log.dropped,
                **({"promoted_clients": log.promoted} if log.promoted else {}),
                "runner": "flower",
                **(evaluation.extra if evaluation else {}),
            },
        )
        self.rows.append(row)
        self.run_dir.append_metrics(row)
        if server_round % config.run.checkpoint_every == 0 or server_round == config.run.rounds:
            save_checkpoint(
                Checkpoint(
                    state=state,
                    base_deltas=dict(self.strategy.base_deltas),
                    policy_state=self.strategy.policy.state_dict(),
                ),
                self.run_dir.checkpoint_dir,
            )
        if evaluation is None:
            return None
        scores: dict[str, int | float | list[int] | list[float]] = {
            key: value for key, value in evaluation.metric_fields().items() if value is not None
        }
        return MetricRecord(scores)
