"""The machine a benchmark runs on: an offline environment set on import, threads, load, memory.

Import it before transformers: it points every Hugging Face library at local files only (no hub,
no telemetry) and sets ``FEDLORA_DATA`` to ``../shared/data`` beside the repository when unset,
as the Makefile does.  The machine is shared, so every result records the load seen while it was
measured (:class:`LoadMonitor`) and other benchmarks can be waited for (:func:`wait_for_others`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

for _offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_offline, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if not os.environ.get("FEDLORA_DATA") and (REPO.parent / "shared" / "data").is_dir():
    os.environ["FEDLORA_DATA"] = str(REPO.parent / "shared" / "data")

FLOWER_LOCK = Path(tempfile.gettempdir()) / "fedlora-flower.lock"
"""Held by the Flower tests too (``tests/flower/harness.py``): one federation at a time."""


def proc_status_mb() -> dict[str, float]:
    """``VmRSS`` (current) and ``VmHWM`` (peak) of this process, in MiB."""
    values: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return {"rss_mb": values.get("VmRSS", float("nan")), "hwm_mb": values.get("VmHWM", 0.0)}


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (``/proc/self/clear_refs``); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def quiet_transformers() -> None:
    from transformers.utils import logging

    # transformers leaves these two helpers unannotated
    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def set_threads(threads: int) -> int:
    """Use ``threads`` torch threads, 0 for one per core (whatever ``OMP_NUM_THREADS`` says)."""
    import torch

    torch.set_num_threads(threads if threads > 0 else os.cpu_count() or 1)
    return torch.get_num_threads()


class LoadMonitor:
    """Samples the 1-minute load average every ``every`` seconds from a daemon thread."""

    def __init__(self, every: float = 10.0) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self._thread.start()

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        return {
            "load_1min_mean": sum(self.samples) / len(self.samples),
            "load_1min_max": max(self.samples),
            "samples": len(self.samples),
        }


def machine(load: LoadMonitor) -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was meanwhile."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "fedlora_data": os.environ.get("FEDLORA_DATA", ""),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        **load.summary(),
    }


def other_benchmarks() -> list[str]:
    """Command lines of other benchmark processes (they would disturb the timings)."""
    found = subprocess.run(
        ["pgrep", "-af", r"benchmarks/\w+\.py"], capture_output=True, text=True, check=False
    )
    mine = {str(os.getpid()), str(os.getppid())}
    return [line for line in found.stdout.splitlines() if line.split()[0] not in mine]


def wait_for_others(minutes: float, log: Callable[[str], None]) -> list[str]:
    """Wait up to ``minutes`` for other benchmarks to end; those still running are returned."""
    deadline = time.monotonic() + 60 * minutes
    while (others := other_benchmarks()) and time.monotonic() < deadline:
        log(f"waiting for {len(others)} other benchmark process(es) to finish")
        time.sleep(30)
    if others:
        log(f"warning: other benchmarks are running, timings will be disturbed: {others}")
    return others


@contextlib.contextmanager
def flower_lock(timeout: float = 3600.0) -> Iterator[None]:
    """Hold :data:`FLOWER_LOCK`: no Flower test or other Flower benchmark runs meanwhile."""
    from filelock import FileLock

    with FileLock(FLOWER_LOCK, timeout=timeout):
        yield
