"""A round that spills its updates to disk ends exactly as one that keeps them in memory.

Whole runs through the round driver, in process and over Flower's Message API, with
``aggregation.spill = "disk"`` against ``"memory"``: the same metrics and the bit-identical
global adapter, with server-side loss scoring (which loads a spilled update into the model),
robust clipping and FLoRA's merges; each round's files exist while it aggregates and are gone
when it ends.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from fedlora.config import ExperimentConfig
from fedlora.engine import build_experiment, run_experiment
from fedlora.runs import RoundMetrics, RunDir
from tests.engine.helpers import tiny_config

pytestmark = pytest.mark.slow

CASES: dict[str, dict[str, Any]] = {
    "flexlora, server scoring, clipping": {
        "ranks.policy": "loss_based",
        "ranks.options": {"low": 2, "high": 8, "fraction": 0.5, "score_rows": 32},
        "aggregation.norm_bound": 1.0,
        "aggregation.options": {"energy": True},
    },
    "flora": {"aggregation.method": "flora"},
    "ffa": {"aggregation.method": "ffa"},
}


def _config(model_dir: Path, out: Path, spill: str, case: dict[str, Any]) -> ExperimentConfig:
    return tiny_config(model_dir, out, **{"run.rounds": 2, "aggregation.spill": spill, **case})


def _comparable(row: RoundMetrics) -> dict[str, Any]:
    """A metrics row without its timings."""
    fields = asdict(row)
    for key in ("seconds_train", "seconds_aggregate", "seconds_eval"):
        fields.pop(key)
    fields["extra"] = {k: v for k, v in fields["extra"].items() if k != "seconds"}
    return fields


class ScratchWatch:
    """Lists the round's spilled files as it aggregates, and the scratch folder after it."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self.aggregated: dict[int, list[str]] = {}
        self.after: dict[int, bool] = {}

    def on_phase(self, round_index: int, phase: str, seconds: float) -> None:
        if phase == "aggregate":
            folder = self.run_dir.scratch_dir / f"round-{round_index:05d}"
            self.aggregated[round_index] = sorted(p.name for p in folder.glob("*"))

    def on_round(self, row: RoundMetrics) -> None:
        self.after[row.round] = self.run_dir.scratch_dir.exists()


def _run(config: Any) -> tuple[Any, ScratchWatch]:
    run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=False)
    watch = ScratchWatch(run_dir)
    experiment = build_experiment(config)
    result = run_experiment(experiment, run_dir, on_round=watch.on_round, on_phase=watch.on_phase)
    return result, watch


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_run_that_spills_ends_as_one_in_memory(
    tiny_bert_dir: Path, tmp_path: Path, case: str
) -> None:
    memory, kept = _run(_config(tiny_bert_dir, tmp_path / "memory", "memory", CASES[case]))
    disk, spilled = _run(_config(tiny_bert_dir, tmp_path / "disk", "disk", CASES[case]))
    assert [_comparable(r) for r in disk.metrics] == [_comparable(r) for r in memory.metrics]
    for name, factors in memory.state.modules.items():
        assert torch.equal(disk.state.modules[name].A, factors.A), name
        assert torch.equal(disk.state.modules[name].B, factors.B), name
    for name, tensor in memory.state.dense.items():
        assert torch.equal(disk.state.dense[name], tensor), name
    assert kept.aggregated == {1: [], 2: []}
    for row in disk.metrics[1:]:  # one file per client that was not dropped
        dropped = {int(d.split()[1].rstrip(":")) for d in row.extra["dropped"]}
        expected = [f"client-{c:05d}.safetensors" for c in sorted(set(row.clients) - dropped)]
        assert spilled.aggregated[row.round] == expected
    assert spilled.after == {1: False, 2: False}
    if "norm_bound" in CASES[case]:  # the cases do what they say
        assert "client_scores" in disk.metrics[0].extra
        assert any("clipped_norms" in row.extra for row in disk.metrics)
