"""What every benchmark shares: an offline environment set on import, and small probes.

Import it before transformers: it points every Hugging Face library at local files only (no hub,
no telemetry) and sets ``FEDLORA_DATA`` to ``../shared/data`` beside the repository when unset,
as the Makefile does.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

for _offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_offline, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if not os.environ.get("FEDLORA_DATA") and (REPO.parent / "shared" / "data").is_dir():
    os.environ["FEDLORA_DATA"] = str(REPO.parent / "shared" / "data")


def proc_status_mb() -> dict[str, float]:
    """``VmRSS`` (current) and ``VmHWM`` (peak) of this process, in MiB."""
    values: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return {"rss_mb": values.get("VmRSS", float("nan")), "hwm_mb": values.get("VmHWM", 0.0)}


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
