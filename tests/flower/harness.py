"""Test harness for real Flower runs: tiny configs, a federation fixture, run comparisons.

The process handling (free ports, offline environment, ``/health`` readiness, ``flwr`` CLI
calls, teardown by process group) lives in :mod:`fedlora.flower.launch`, shared with the
benchmarks; this module adds what only the tests need.  Flower runs are serialised across
pytest-xdist workers (and the benchmarks, whose ``bench_env.FLOWER_LOCK`` is the same file) by
:func:`flower_lock`.  The test modules that run Flower are marked ``xdist_group("flower")``, and
``make test`` distributes with ``--dist loadgroup``: they all go to one worker, so the other
never sits idle waiting for the lock.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from fedlora.config import ExperimentConfig
from fedlora.engine import run_in_process
from fedlora.flower.launch import FlowerProcess, LocalFederation, TlsFiles
from fedlora.flower.superlink import APP_DIR, RunOutcome
from fedlora.runs import RoundMetrics, RunDir, load_checkpoint, read_metrics
from tests.engine.helpers import write_tiny_config
from tests.flower.tls import write_node_key, write_tls_files

__all__ = [
    "APP_DIR",
    "FederationFactory",
    "LocalFederation",
    "RunOutcome",
    "assert_completed",
    "assert_same_as_in_process",
    "assert_same_run",
    "federations",
    "freeze_clientapp",
    "freeze_executor",
    "wait_for_checkpoint",
    "write_node_key",
    "write_tiny_config",
    "write_tls_files",
]

FederationFactory = Callable[..., LocalFederation]


@contextlib.contextmanager
def flower_lock(timeout: float = 3600.0) -> Iterator[None]:
    """One Flower experiment at a time on this machine: each starts Ray or a dozen processes."""
    with FileLock(Path(tempfile.gettempdir()) / "fedlora-flower.lock", timeout=timeout):
        yield


def federations(tmp_path: Path) -> Iterator[FederationFactory]:
    """Body of the ``flower_federation`` fixture: a factory whose federations are always closed.

    Holding :func:`flower_lock` for the whole test keeps Flower experiments one at a time.  On
    teardown every federation is closed (SuperNodes, then the SuperLink, then SIGKILL of each
    process group) and the test fails if any of its processes survived.
    """
    created: list[LocalFederation] = []

    def make(name: str = "flower", tls: bool = False) -> LocalFederation:
        root = tmp_path / name
        files: TlsFiles | None = write_tls_files(root / "certs") if tls else None
        federation = LocalFederation(root / "run", tls=files)
        created.append(federation)
        return federation

    with flower_lock():
        try:
            yield make
        finally:
            leftovers = [item for federation in created for item in federation.close()]
    if leftovers:
        pytest.fail(f"Flower processes survived the teardown: {leftovers}")


def assert_completed(outcome: RunOutcome) -> None:
    assert outcome.completed, outcome.describe()


def assert_same_run(
    flower_dir: Path,
    reference_dir: Path,
    *,
    rel: float = 1e-6,
    atol: float = 1e-5,
) -> list[RoundMetrics]:
    """Same clients, ranks and losses per round, and the same final global adapter."""
    ours, theirs = (
        read_metrics(flower_dir / "metrics.jsonl"),
        read_metrics(reference_dir / "metrics.jsonl"),
    )
    assert [r.round for r in ours] == [r.round for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a.clients == b.clients, f"round {a.round}"
        assert a.ranks == b.ranks, f"round {a.round}"
        _close(a.train_loss, b.train_loss, rel, f"round {a.round} train loss")
        _close(a.test_loss, b.test_loss, rel, f"round {a.round} test loss")
        _close(a.test_accuracy, b.test_accuracy, rel, f"round {a.round} test accuracy")
        _close(a.test_rouge_l, b.test_rouge_l, rel, f"round {a.round} test Rouge-L")
        if a.round == 0:
            continue
        losses = zip(a.extra["client_train_loss"], b.extra["client_train_loss"], strict=True)
        for client, (x, y) in zip(a.clients, losses, strict=True):
            _close(x, y, rel, f"round {a.round} client {client} train loss")
    state = load_checkpoint(flower_dir / "checkpoint").state
    reference = load_checkpoint(reference_dir / "checkpoint").state
    assert state.round == reference.round
    assert state.rank_map() == reference.rank_map()
    for name in reference.modules:
        torch.testing.assert_close(state.delta(name), reference.delta(name), rtol=0, atol=atol)
    assert set(state.dense) == set(reference.dense)
    for name, tensor in reference.dense.items():
        torch.testing.assert_close(state.dense[name], tensor, rtol=0, atol=atol)
    return ours


def assert_same_as_in_process(flower_dir: Path, config: ExperimentConfig, tmp_path: Path) -> None:
    """The in-process runner with the same config computes the same run."""
    reference_dir = tmp_path / "in-process"
    reference = config.replace({"run.out_dir": str(reference_dir)})
    run_in_process(reference, RunDir.create(reference_dir, reference, overwrite=False))
    assert_same_run(flower_dir, reference_dir, rel=1e-6, atol=1e-5)


def wait_for_checkpoint(
    out_dir: Path, round_index: int, federation: LocalFederation, run_id: int
) -> None:
    """Until the run in ``out_dir`` has checkpointed ``round_index`` (its log on a timeout)."""
    checkpoint = out_dir / "checkpoint" / f"round-{round_index:05d}.safetensors"
    deadline = time.monotonic() + 240.0
    while not checkpoint.exists():
        assert time.monotonic() < deadline, federation.log(run_id)
        time.sleep(0.5)


def freeze_executor(
    federation: LocalFederation, supernode: FlowerProcess, timeout: float = 180.0
) -> list[int]:
    """Once a SuperNode has answered the identity query, SIGSTOP its superexec; the pids.

    The SuperNode itself keeps running: it heartbeats (the SuperLink keeps it online) and takes
    the messages sent to it, but no ClientApp is ever started for them, so the node never
    answers and nothing tells the server why.
    """
    supernode.wait_for_log("Sending: query message", timeout)
    deadline = time.monotonic() + timeout
    while not (executors := _pids(federation, supernode, "flower-superexec")):
        assert time.monotonic() < deadline, f"{supernode.name} has no superexec"
        time.sleep(0.2)
    for pid in executors:
        os.kill(pid, signal.SIGSTOP)
    while not all(_state(pid) in ("T", "") for pid in executors):
        assert time.monotonic() < deadline, f"superexec {executors} did not stop"
        time.sleep(0.05)
    return executors


def freeze_clientapp(
    federation: LocalFederation, supernode: FlowerProcess, timeout: float = 180.0
) -> int:
    """SIGSTOP the ClientApp that took a SuperNode's train message; its pid.

    A ``flwr-clientapp`` process pulls its message first and only then loads the app, so one
    that has torch mapped holds its message.  The SuperNode and its superexec keep running.
    """
    supernode.wait_for_log("Receiving: train message", timeout)
    deadline = time.monotonic() + timeout
    while True:
        apps = _pids(federation, supernode, "flwr-clientapp")
        newest = max(apps, key=_start_time) if apps else 0
        if newest and "libtorch" in _maps(newest):
            os.kill(newest, signal.SIGSTOP)
            return newest
        assert time.monotonic() < deadline, f"{supernode.name} runs no ClientApp with torch"
        time.sleep(0.1)


def _pids(federation: LocalFederation, supernode: FlowerProcess, name: str) -> list[int]:
    return [pid for pid, command in federation.processes(of=supernode) if name in command]


def _start_time(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _state(pid: int) -> str:
    """A process's state letter (``T`` = stopped), ``""`` when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def _close(a: float | None, b: float | None, rel: float, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is not None and b is not None:
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), f"{what}: {a} != {b}"


def client_ranks(rows: Sequence[RoundMetrics]) -> dict[int, set[int]]:
    """Every rank each client trained at, over all rounds."""
    seen: dict[int, set[int]] = {}
    for row in rows:
        for client, rank in zip(row.clients, row.ranks, strict=True):
            seen.setdefault(client, set()).add(rank)
    return seen
