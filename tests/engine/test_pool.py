"""The worker pool (``run.workers``): the serial run's numbers bit for bit, and failures contained.

Every process uses one torch thread (the test session's, and the pool gives each worker its
share of that budget), so the serial and pooled runs do the same arithmetic.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fedlora.config import ExperimentConfig
from fedlora.engine import (
    MergedBase,
    RoundDriver,
    RunResult,
    TrainTask,
    build_experiment,
    run_experiment,
)
from fedlora.engine.pool import WorkerPool, WorkerSpec, pool_size
from fedlora.engine.transport import ClientReply
from fedlora.errors import ConfigError, FedloraError
from fedlora.runs import RunDir, faults
from tests.engine.helpers import tiny_causal_config, tiny_config

pytestmark = pytest.mark.slow

PRUNING = {"aggregation.method": "hetlora", "aggregation.options": {"gamma": 0.5, "prune_tol": 1.0}}
LOCAL_SCORES = {
    "ranks.policy": "loss_based",
    "ranks.options": {"low": 2, "high": 8, "fraction": 0.5, "score_on": "local", "probe": True},
}


def _run(config: ExperimentConfig, out: Path) -> RunResult:
    config = config.replace({"run.out_dir": str(out)})
    return run_experiment(build_experiment(config), RunDir.create(out, config, overwrite=False))


def _assert_identical(a: RunResult, b: RunResult) -> None:
    """Same metrics (timings aside) and the same final adapter, every tensor bit for bit."""
    for x, y in zip(a.metrics, b.metrics, strict=True):
        assert (x.round, x.clients, x.ranks) == (y.round, y.clients, y.ranks)
        assert x.train_loss == y.train_loss and x.test_loss == y.test_loss, x.round
        assert x.test_accuracy == y.test_accuracy
        assert x.extra.get("client_train_loss") == y.extra.get("client_train_loss")
        assert x.extra.get("client_scores") == y.extra.get("client_scores")
        assert x.extra.get("pruned") == y.extra.get("pruned")
    assert a.state.rank_map() == b.state.rank_map()
    for name, factors in a.state.modules.items():
        assert torch.equal(factors.A, b.state.modules[name].A), name
        assert torch.equal(factors.B, b.state.modules[name].B), name
    for name, tensor in a.state.dense.items():
        assert torch.equal(tensor, b.state.dense[name]), name


@pytest.mark.parametrize(
    "overrides",
    [
        {"aggregation.method": "fedit", "ranks.options": {"ranks": [4] * 6}},
        {"aggregation.method": "flexlora"},
        {"aggregation.method": "flora"},
        PRUNING,
        {"aggregation.method": "ffa", "ranks.options": {"ranks": [4] * 6}},
        {"aggregation.method": "zero_padding", **LOCAL_SCORES},
    ],
    ids=["fedit", "flexlora", "flora", "hetlora-pruning", "ffa", "local-scores"],
)
def test_two_workers_give_the_serial_run_bit_for_bit(
    tiny_bert_dir: Path, tmp_path: Path, overrides: dict[str, Any]
) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path, **{"run.clients_per_round": 4, **overrides})
    serial = _run(config.replace({"run.workers": 1}), tmp_path / "serial")
    pooled = _run(config.replace({"run.workers": 2}), tmp_path / "pooled")
    _assert_identical(serial, pooled)
    if overrides is PRUNING:  # the case proves something only if clients did prune
        assert any("pruned" in row.extra for row in serial.metrics)


def test_a_causal_lm_run_through_the_pool_is_the_serial_one(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    config = tiny_causal_config(tiny_llama_dir, tmp_path, **{"aggregation.method": "flora"})
    serial = _run(config.replace({"run.workers": 1}), tmp_path / "serial")
    pooled = _run(config.replace({"run.workers": 2}), tmp_path / "pooled")
    _assert_identical(serial, pooled)


class RecordingPool(WorkerPool):
    """Remembers the clients of every exchange's tasks and replies."""

    exchanges: list[tuple[list[int], list[ClientReply]]]

    def train(self, tasks: Iterable[TrainTask]) -> Iterator[ClientReply]:
        taken: list[int] = []

        def recorded() -> Iterable[TrainTask]:
            for task in tasks:
                taken.append(task.client)
                yield task

        replies = list(super().train(recorded()))
        self.exchanges.append((taken, replies))
        yield from replies


def _pooled_run(config: ExperimentConfig, out: Path) -> tuple[RunResult, RecordingPool]:
    experiment = build_experiment(config)
    driver = RoundDriver(experiment, RunDir.create(out, config, overwrite=False))
    with RecordingPool(WorkerSpec.of(experiment, 1), 2, driver.base) as pool:
        pool.exchanges = []
        return driver.run(pool), pool


def test_every_sampled_client_is_trained_once_and_replies_come_in_task_order(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path, **{"run.clients_per_round": 5})
    result, pool = _pooled_run(config, tmp_path / "run")
    assert not pool.workers  # stopped when the run left the pool
    for row, (taken, replies) in zip(result.metrics[1:], pool.exchanges, strict=True):
        assert taken == row.clients
        assert [r.client for r in replies] == taken
        assert all(r.error is None and r.steps == 2 for r in replies)


def test_a_worker_that_dies_costs_only_its_clients_reply(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path, **{"run.clients_per_round": 4})
    victim = config.run.num_clients - 1
    monkeypatch.setenv(faults.VARIABLE, f"pool:client-{victim}:1")  # inherited by the workers
    result, pool = _pooled_run(config, tmp_path / "run")
    seen = 0
    for row, (taken, replies) in zip(result.metrics[1:], pool.exchanges, strict=True):
        assert [r.client for r in replies] == taken == row.clients
        for reply in replies:
            if reply.client == victim:
                seen += 1
                assert reply.error is not None and "worker process died" in reply.error
                assert any(f"client {victim}" in d for d in row.extra["dropped"])
            else:
                assert reply.error is None
        assert row.train_loss is not None  # the round went on with the others
    assert seen, "the victim was never sampled: pick another client"


def test_a_worker_that_hangs_is_killed_at_client_timeout_and_costs_only_its_clients_reply(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stops (SIGSTOP: alive, silent, its pipe open) is what only a timeout ends."""
    overrides = {"run.clients_per_round": 4, "run.workers": 2, "run.client_timeout": 10.0}
    config = tiny_config(tiny_bert_dir, tmp_path, **overrides)
    victim = config.run.num_clients - 1
    monkeypatch.setenv(faults.STOP_VARIABLE, f"pool:client-{victim}:1")  # each worker's first
    result = _run(config, tmp_path / "run")
    seen = 0
    for row in result.metrics[1:]:
        dropped = row.extra["dropped"]
        if victim in row.clients:
            seen += 1
            assert len(dropped) == 1, dropped
            assert dropped[0].startswith(f"client {victim}:")
            assert "no reply within 10 s (run.client_timeout)" in dropped[0]
        else:
            assert dropped == []
        assert row.train_loss is not None  # the round went on with the others
    assert seen, "the victim was never sampled: pick another client"
    stuck = [p for p in multiprocessing.active_children() if p.name == "fedlora-worker"]
    assert stuck == []  # killed, not left stopped


def test_a_hanging_client_holds_back_no_more_than_workers_replies(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies come in task order, so the ones behind a hanging client wait in memory: the other
    worker stops taking tasks once ``workers`` of them wait (what spilling to disk relies on)."""
    config = tiny_config(tiny_bert_dir, tmp_path)
    experiment = build_experiment(config)
    state = experiment.initial_state()
    ranks = dict.fromkeys(experiment.module_names, 2)
    clients = list(range(config.run.num_clients))
    pulled: list[int] = []

    def tasks() -> Iterator[TrainTask]:
        for client in clients:
            pulled.append(client)
            yield TrainTask(client, 1, state.factors_for(ranks, experiment.lora), state.dense)

    monkeypatch.setenv(faults.STOP_VARIABLE, f"pool:client-{clients[0]}:1")
    spec = WorkerSpec.of(experiment, 1)
    with WorkerPool(spec, 2, MergedBase(experiment.model), client_timeout=10.0) as pool:
        pool.connect(len(clients))
        replies = pool.train(tasks())
        first = next(replies)
        assert first.client == clients[0] and first.update is None
        assert first.error is not None and "no reply within 10 s" in first.error
        assert pulled == clients[:3]  # the hanging one, and two replies waiting behind it
        rest = list(replies)
    assert [reply.client for reply in rest] == clients[1:]
    assert all(reply.error is None and reply.update is not None for reply in rest)


def test_a_worker_that_raises_fails_that_client_only(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path)
    experiment = build_experiment(config)
    spec = WorkerSpec.of(experiment, 1)
    spec = WorkerSpec(**{**vars(spec), "partitions": {0: spec.partitions[0]}})  # no rows of 1
    state = experiment.initial_state()
    ranks = dict.fromkeys(experiment.module_names, 2)
    tasks = [
        TrainTask(client, 1, state.factors_for(ranks, experiment.lora), state.dense)
        for client in (1, 0)
    ]
    with WorkerPool(spec, 2, MergedBase(experiment.model)) as pool:
        pool.connect(2)
        failed, trained = pool.train(tasks)
    assert failed.client == 1 and failed.update is None
    assert failed.error is not None and "worker raised" in failed.error
    assert "client 1" in failed.error
    assert trained.client == 0 and trained.error is None and trained.update is not None


def test_a_worker_that_cannot_start_is_an_error_not_a_hang(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path)
    experiment = build_experiment(config)
    spec = WorkerSpec.of(experiment, 1)
    broken = WorkerSpec(**{**vars(spec), "config": config.replace({"model.name": str(tmp_path)})})
    with WorkerPool(broken, 1, MergedBase(experiment.model)) as pool:
        pool.connect(1)
        with pytest.raises(FedloraError, match="worker process could not start"):
            list(pool.train([TrainTask(0, 1, {}, {})]))


@pytest.mark.parametrize(
    ("workers", "budget", "per_round", "expected"),
    [
        ("auto", 2, 4, (2, 1)),
        ("auto", 1, 4, (1, 1)),  # OMP_NUM_THREADS=1: serial
        ("auto", 8, 3, (3, 2)),  # no more workers than clients per round
        (1, 2, 4, (1, 2)),
        (2, 2, 4, (2, 1)),
        (2, 1, 4, (2, 1)),  # at least one thread each
        (9, 2, 4, (6, 1)),  # no more workers than clients
    ],
)
def test_pool_size(
    tiny_bert_dir: Path,
    tmp_path: Path,
    workers: int | str,
    budget: int,
    per_round: int,
    expected: tuple[int, int],
) -> None:
    config = tiny_config(
        tiny_bert_dir,
        tmp_path,
        **{"run.workers": workers, "run.clients_per_round": per_round, "model.device": "cpu"},
    )
    assert pool_size(config, budget) == expected


@pytest.mark.parametrize(
    ("workers", "free_gb", "expected"), [("auto", 3.0, 2), ("auto", 1.5, 1), (2, 0.1, 2)]
)
def test_auto_starts_no_more_workers_than_free_memory_holds(
    tiny_bert_dir: Path, tmp_path: Path, workers: int | str, free_gb: float, expected: int
) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path, **{"run.workers": workers, "model.device": "cpu"})
    model = 250 << 20  # 1.5 GB per worker
    free = int(free_gb * (1 << 30))
    assert pool_size(config, 4, model_bytes=model, free_bytes=free)[0] == expected


@pytest.mark.parametrize("value", [0, -2, True, 1.5, "two", "", [2]])
def test_bad_workers_name_the_key(tiny_bert_dir: Path, tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"^config: run\.workers: ") as caught:
        tiny_config(tiny_bert_dir, tmp_path, **{"run.workers": value})
    assert "\n" not in str(caught.value)


class KilledRunError(Exception):
    """Raised from the round callback to stop a run as a kill would."""


def test_a_resumed_flora_run_catches_fresh_workers_up_from_the_stored_merges(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    """Fresh workers hold no merge, but the clients they train are known to hold some."""
    config = tiny_config(
        tiny_bert_dir,
        tmp_path,
        **{"aggregation.method": "flora", "run.clients_per_round": 4, "run.rounds": 4},
    )
    straight = _run(config.replace({"run.workers": 1}), tmp_path / "straight")
    pooled = config.replace({"run.workers": 2, "run.out_dir": str(tmp_path / "killed")})

    def kill(row: Any) -> None:
        if row.round == 2:
            raise KilledRunError

    run_dir = RunDir.create(tmp_path / "killed", pooled, overwrite=False)
    with pytest.raises(KilledRunError):
        run_experiment(build_experiment(pooled), run_dir, on_round=kill)
    resumed = run_experiment(build_experiment(pooled), RunDir(tmp_path / "killed"), resume=True)
    assert [r.round for r in resumed.metrics] == [0, 1, 2, 3, 4]
    _assert_identical(straight, resumed)
