"""What machine and software a run ran on, one line per start or resume (``environment.jsonl``).

The same code and seed give the same numbers bit for bit on one machine, but only to float
rounding on another: the CPU's kernels (its instruction set, MKL's and oneDNN's paths) decide the
last bits, and training amplifies them.  A run that moves when run again can only be explained if
each run says where it ran, and a run resumed on another machine ran on both.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from fedlora.runs.run_dir import ENVIRONMENT

PACKAGES = ("fedlora", "torch", "transformers", "peft", "numpy", "safetensors", "flwr")
# Environment variables that choose the CPU kernels' code paths or their threads, and so the
# float rounding: ATen's vectorised kernels, MKL's conditional numerical reproducibility, oneDNN.
KERNEL_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def _cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def kernel_settings() -> dict[str, str]:
    """The kernel-choosing variables this process was started with (the unset ones left out)."""
    return {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}


def describe_environment() -> dict[str, Any]:
    """The facts that decide a run's float rounding, and the versions of what computed it."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "kernel_settings": kernel_settings(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": {name: _version(name) for name in PACKAGES},
    }


def note_environment(run_path: Path, *, resumed_after: int | None, rounds: int) -> dict[str, Any]:
    """Append this process's environment to the run's ``environment.jsonl``: a new run
    (``resumed_after=None``) starts the file over, a resume adds to it; ``rounds`` is the length
    the run then had (a run continued to more rounds says when)."""
    entry = {
        "utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "start": "new" if resumed_after is None else f"resumed after round {resumed_after}",
        "rounds": rounds,
        **describe_environment(),
    }
    mode = "w" if resumed_after is None else "a"
    with (run_path / ENVIRONMENT).open(mode, encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry


def read_environment(run_path: Path) -> list[dict[str, Any]]:
    """The run's starts and resumes, oldest first (none for a run made before they were kept)."""
    path = run_path / ENVIRONMENT
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
