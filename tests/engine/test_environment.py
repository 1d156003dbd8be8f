"""Each start and resume of a run says where it ran (``environment.jsonl``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedlora.runs import ENVIRONMENT, note_environment, read_environment
from fedlora.runs.environment import KERNEL_VARIABLES


def test_a_new_run_starts_the_file_over_and_a_resume_adds_to_it(tmp_path: Path) -> None:
    assert read_environment(tmp_path) == []
    note_environment(tmp_path, resumed_after=None, rounds=5)
    note_environment(tmp_path, resumed_after=3, rounds=8)  # continued to 8 rounds
    starts = [(e["start"], e["rounds"]) for e in read_environment(tmp_path)]
    assert starts == [("new", 5), ("resumed after round 3", 8)]
    note_environment(tmp_path, resumed_after=None, rounds=5)  # the same folder, started over
    (entry,) = read_environment(tmp_path)
    assert entry["start"] == "new"
    assert entry["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert entry["packages"]["torch"] == torch.__version__
    assert (tmp_path / ENVIRONMENT).read_text(encoding="utf-8").count("\n") == 1


def test_the_kernel_choosing_variables_set_are_recorded_and_no_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    entry = note_environment(tmp_path, resumed_after=None, rounds=1)
    assert entry["kernel_settings"] == {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}
    assert read_environment(tmp_path) == [entry]
