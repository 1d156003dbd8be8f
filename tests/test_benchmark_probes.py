"""The benchmarks' per-client probe keeps the transport contract it measures.

``bench_probes.OneByOne`` once collected every reply of a round before passing any on, so the
server of the SmolLM2 round benchmark held all 80 updates at once and its peak (5.9 GB) was the
probe's, not fedlora's (3.0 GB).  These tests pin the contract and the per-client memory.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from bench_env import reset_peak_rss
from bench_probes import OneByOne

SPIKE_MB = 96


class _Windows:
    def take(self) -> dict[str, float]:
        return {"window_s": 0.0}


class _Inner:
    """Trains a client by touching ``SPIKE_MB`` of fresh memory when it is ``spiky``.

    The memory is an anonymous ``mmap`` of its own: a ``bytearray`` goes through malloc, which
    reuses a large free chunk (already resident, so no rise in RSS) when earlier tests in the
    same process left one behind.
    """

    name = "fake"

    def __init__(self, spiky: int) -> None:
        self.spiky = spiky

    def train(self, tasks: Iterable[Any]) -> Iterator[Any]:
        for task in tasks:
            if task.client == self.spiky:
                with mmap.mmap(-1, SPIKE_MB * 2**20) as block:
                    for page in range(0, len(block), mmap.PAGESIZE):
                        block[page] = 1  # touch every page
            yield SimpleNamespace(client=task.client, seconds=0.0)


def _tasks(pulled: list[int], count: int) -> Iterator[Any]:
    for client in range(count):
        pulled.append(client)
        yield SimpleNamespace(client=client)


def test_each_reply_is_passed_on_before_the_next_task_is_taken() -> None:
    pulled: list[int] = []
    probe = OneByOne(_Inner(spiky=-1), _Windows())  # type: ignore[arg-type]
    received: list[int] = []
    for reply in probe.train(_tasks(pulled, 4)):
        assert pulled == list(range(len(received) + 1)), "the probe read ahead of its replies"
        received.append(reply.client)
    assert received == [0, 1, 2, 3]
    assert [c["client"] for c in probe.clients] == [0, 1, 2, 3]


def test_a_clients_memory_peak_is_charged_to_that_client_and_kept_in_the_process_peak() -> None:
    if not reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here: VmHWM cannot be reset")
    probe = OneByOne(_Inner(spiky=1), _Windows())  # type: ignore[arg-type]
    list(probe.train(_tasks([], 3)))
    rises = [c["peak_mb"] - c["rss_before_mb"] for c in probe.clients]
    assert rises[1] >= 0.8 * SPIKE_MB, rises
    assert rises[0] < 0.5 * SPIKE_MB and rises[2] < 0.5 * SPIKE_MB, rises
    # The reset before client 2 hid client 1's spike from VmHWM; the probe still knows it.
    assert probe.clients[2]["peak_mb"] < probe.clients[1]["peak_mb"] - 0.5 * SPIKE_MB
    assert probe.process_peak_mb(probe.clients[2]["peak_mb"]) >= probe.clients[1]["peak_mb"]
