"""The phase timings the driver reports: every phase once per round, in order, as the row records.

The benchmarks build their overhead and memory tables on this contract (``on_phase``,
``RoundMetrics.extra["seconds"]``) instead of patching the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedlora.engine import PHASES, build_experiment, run_experiment
from fedlora.runs import RunDir, read_metrics
from tests.engine.helpers import tiny_config

pytestmark = pytest.mark.slow


def _phases(config: Any) -> tuple[list[tuple[int, str, float]], Path]:
    calls: list[tuple[int, str, float]] = []
    run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=False)
    run_experiment(build_experiment(config), run_dir, on_phase=lambda *c: calls.append(c))
    return calls, run_dir.path


def test_every_round_reports_its_phases_in_order_as_its_metrics_row_does(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_bert_dir, tmp_path / "run", **{"run.eval_every": 2})
    calls, path = _phases(config)
    rows = read_metrics(path / "metrics.jsonl")
    no_score = tuple(p for p in PHASES if p != "score")
    assert [(r, p) for r, p, _ in calls] == [
        (0, "evaluate"),
        *((r, p) for r in (1, 2, 3) for p in no_score),
    ]
    assert all(seconds >= 0.0 for *_, seconds in calls)
    for row in rows[1:]:
        reported = {p: s for r, p, s in calls if r == row.round and p != "record"}
        assert row.extra["seconds"] == reported
        assert row.seconds_train == reported["train"]
        assert row.seconds_eval == reported["evaluate"]
    assert rows[0].seconds_eval == next(s for r, p, s in calls if r == 0)


def test_a_probe_reports_round_zero_training_and_scoring(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        tiny_bert_dir,
        tmp_path / "run",
        **{
            "run.rounds": 1,
            "ranks.policy": "loss_based",
            "ranks.options": {"low": 2, "high": 8, "fraction": 0.5, "score_rows": 16},
        },
    )
    calls, _ = _phases(config)
    assert [p for r, p, _ in calls if r == 0] == [
        "serve",
        "train",
        "validate",
        "score",
        "evaluate",
    ]
