"""Macro-F1 beside accuracy wherever accuracy is shown: progress, inspect, compare, plots.

The runs are metrics files written here with an imbalanced-test-set profile (accuracy about 0.72,
macro-F1 about 0.16), so every number checked is known.  Causal-LM runs (Rouge-L) are unchanged.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import same_color
from matplotlib.figure import Figure

from fedlora.cli import main
from fedlora.commands.progress import round_status
from fedlora.config import load_config
from fedlora.report import comparison_rows, plot_comparison, plot_panels, write_comparison
from fedlora.runs import RoundMetrics, RunDir, seconds_per_round

# (accuracy, macro-F1) per round, per (method, seed): rounds 1..3.
SCORES = {
    ("flexlora", 0): [(0.7012, 0.1587), (0.7203, 0.1642), (0.7231, 0.1618)],
    ("flexlora", 1): [(0.6954, 0.1703), (0.7188, 0.1735), (0.7266, 0.1779)],
    ("replication", 0): [(0.7104, 0.2011), (0.7122, 0.2234), (0.7307, 0.2463)],
    ("replication", 1): [(0.7049, 0.1912), (0.7157, 0.2108), (0.7295, 0.2386)],
}


def _row(round_index: int, accuracy: float | None, f1: float | None) -> RoundMetrics:
    return RoundMetrics(
        round=round_index,
        clients=[0, 1, 2],
        ranks=[2, 4, 8],
        train_loss=1.0 / round_index,
        test_loss=0.9,
        test_accuracy=accuracy,
        test_macro_f1=f1,
        bytes_up=1000,
        bytes_down=1000,
        seconds_train=1.0,
        seconds_aggregate=0.1,
        seconds_eval=0.2,
        test_rouge_l=None if accuracy is not None else 0.25 + 0.01 * round_index,
    )


def _write_run(path: Path, scores: list[tuple[float, float]]) -> Path:
    """A finished run directory whose metrics.jsonl holds ``scores``."""
    run = RunDir.create(path, load_config(None), overwrite=False)
    for index, (accuracy, f1) in enumerate(scores, start=1):
        run.append_metrics(_row(index, accuracy, f1))
    run.summary_file.write_text("# finished\n", encoding="utf-8")
    return path


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Figure]]:
    """The figures the plotting code closes, kept open for inspection."""
    close = plt.close
    kept: list[Figure] = []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for figure in kept:
        close(figure)


def _line(figure: Figure, axes: int, label: str) -> list[float]:
    (line,) = [line for line in figure.axes[axes].get_lines() if line.get_label() == label]
    return [float(y) for y in np.asarray(line.get_ydata())]  # typed ArrayLike: not iterable


def test_progress_shows_macro_f1_beside_accuracy(tmp_path: Path) -> None:
    run = RunDir(_write_run(tmp_path / "run", SCORES["flexlora", 0]))
    for row, (accuracy, f1) in zip(run.metrics(), SCORES["flexlora", 0], strict=True):
        assert round_status(row).endswith(f"  acc {accuracy:.3f}  macro-F1 {f1:.3f}")


def test_inspect_shows_macro_f1_beside_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_run(tmp_path / "run", SCORES["flexlora", 0])
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("accuracy" in line for line in lines)  # the headers fit, not "accura…"
    assert any("macro-F1" in line for line in lines)
    for accuracy, f1 in SCORES["flexlora", 0]:
        (line,) = [line for line in lines if f"{accuracy:.4f}" in line]
        assert line.index(f"{accuracy:.4f}") < line.index(f"{f1:.4f}")


def test_compare_table_csv_and_plot_show_macro_f1(tmp_path: Path, figures: list[Figure]) -> None:
    for (method, seed), scores in SCORES.items():
        _write_run(tmp_path / f"{method}-seed{seed}", scores)
    args = ["--aggregators", "flexlora,replication", "--seeds", "0,1", "--out", str(tmp_path)]
    assert main(["compare", *args, "--no-progress"]) == 0

    table = (tmp_path / "comparison.md").read_text(encoding="utf-8").splitlines()
    assert table[0].startswith(
        "| method | seeds | final test accuracy (mean ± std) | per seed | final test macro-F1 |"
    )
    with (tmp_path / "comparison.csv").open(encoding="utf-8") as handle:
        csv_rows = {row["method"]: row for row in csv.DictReader(handle)}
    (figure,) = figures
    assert "macro-F1" in figure.axes[1].get_title()
    for method in ("flexlora", "replication"):
        finals = [SCORES[method, seed][-1] for seed in (0, 1)]
        accuracy = [a for a, _ in finals]
        f1 = [f for _, f in finals]
        mean, std = statistics.fmean(f1), statistics.stdev(f1)  # sample std over the seeds
        cells = (
            f"| {method} | 2 | {statistics.fmean(accuracy):.4f} ± "
            f"{statistics.stdev(accuracy):.4f} | {accuracy[0]:.4f}, {accuracy[1]:.4f} | "
            f"{mean:.4f} ± {std:.4f} |"
        )
        assert any(line.startswith(cells) for line in table), cells
        assert float(csv_rows[method]["final_macro_f1_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(csv_rows[method]["final_macro_f1_std"]) == pytest.approx(std, abs=1e-12)
        per_round = [statistics.fmean(SCORES[method, s][i][1] for s in (0, 1)) for i in range(3)]
        assert _line(figure, 1, f"{method} (n=2)") == pytest.approx(per_round, abs=1e-12)


def test_panels_give_each_group_a_column_and_each_metric_a_row(
    tmp_path: Path, figures: list[Figure]
) -> None:
    runs = {
        key: [_row(i + 1, accuracy, f1) for i, (accuracy, f1) in enumerate(scores)]
        for key, scores in SCORES.items()
    }
    seeds = {method: [runs[method, 0], runs[method, 1]] for method in ("flexlora", "replication")}
    plot_panels(
        {"only flexlora": {"flexlora": seeds["flexlora"]}, "both": seeds}, tmp_path / "p.png", "t"
    )
    (figure,) = figures
    assert [ax.get_title() for ax in figure.axes] == ["only flexlora", "both"] * 2
    assert [ax.get_ylabel() for ax in figure.axes] == ["test accuracy"] * 2 + ["test macro-F1"] * 2
    f1 = [statistics.fmean(SCORES["replication", s][i][1] for s in (0, 1)) for i in range(3)]
    assert _line(figure, 3, "replication (n=2)") == pytest.approx(f1, abs=1e-12)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert "flexlora (n=2)" in labels and "replication (n=2)" not in labels


def test_a_method_keeps_its_colour_in_every_panel(tmp_path: Path, figures: list[Figure]) -> None:
    """Replication is the second method of one panel and the first of the next (AG News beside
    DBpedia): it must be drawn, band and all, in one colour in both, and no other method of a
    panel in that colour."""
    runs = {
        key: [_row(i + 1, accuracy, f1) for i, (accuracy, f1) in enumerate(scores)]
        for key, scores in SCORES.items()
    }
    seeds = {method: [runs[method, 0], runs[method, 1]] for method in ("flexlora", "replication")}
    second = {"replication": seeds["replication"], "fedit": seeds["flexlora"]}
    plot_panels({"first": seeds, "second": second}, tmp_path / "p.png", "t")
    (figure,) = figures

    def colours(ax: Axes) -> dict[str, str]:
        return {str(line.get_label()): str(line.get_color()) for line in ax.get_lines()}

    first, then = colours(figure.axes[0]), colours(figure.axes[1])
    assert then["replication (n=2)"] == first["replication (n=2)"]
    assert first["flexlora (n=2)"] != first["replication (n=2)"] != then["fedit (n=2)"]
    band = figure.axes[1].collections[0]  # replication's, drawn first
    (face,) = np.asarray(band.get_facecolor())[:, :3]
    assert same_color(tuple(face), then["replication (n=2)"])


def test_the_run_plot_shows_macro_f1_beside_accuracy(tmp_path: Path, figures: list[Figure]) -> None:
    path = _write_run(tmp_path / "run", SCORES["replication", 1])
    assert main(["plot", str(path), "--out", str(tmp_path / "run.png")]) == 0
    (figure,) = figures
    accuracy = [a for a, _ in SCORES["replication", 1]]
    f1 = [f for _, f in SCORES["replication", 1]]
    assert _line(figure, 0, "test accuracy") == pytest.approx(accuracy, abs=1e-12)
    assert _line(figure, 0, "test macro-F1") == pytest.approx(f1, abs=1e-12)


def test_causal_lm_reports_stay_on_rouge_l(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], figures: list[Figure]
) -> None:
    rows = [_row(index, None, None) for index in (1, 2)]
    run = RunDir.create(tmp_path / "run", load_config(None), overwrite=False)
    for row in rows:
        run.append_metrics(row)
    assert main(["inspect", str(run.path)]) == 0
    printed = capsys.readouterr().out
    assert "Rouge-L" in printed and "macro-F1" not in printed
    assert "macro-F1" not in round_status(rows[-1])
    markdown = write_comparison(comparison_rows({"flexlora": [rows]}), tmp_path / "cmp")
    assert "Rouge-L" in markdown and "macro-F1" not in markdown
    plot_comparison({"flexlora": [rows]}, tmp_path / "cmp.png", "causal")
    assert [len(figure.axes) for figure in figures] == [1]


def test_comparisons_list_the_untuned_model_and_the_baselines_per_seed(
    tmp_path: Path, figures: list[Figure]
) -> None:
    # Round 0 holds the untuned model's metrics and the baselines on the same test set.
    runs = {}
    for seed, (untuned, majority) in enumerate([(0.25, 0.31), (0.27, 0.29)]):
        start = replace(
            _row(1, untuned, 0.1),
            round=0,
            clients=[],
            ranks=[],
            train_loss=None,
            extra={"baselines": {"majority_class": {"test_accuracy": majority, "test_loss": 1.4}}},
        )
        runs[seed] = [start, _row(1, 0.6 + seed / 10, 0.3)]
    rows = comparison_rows({"flexlora": list(runs.values())})
    by_name = {row.method: row for row in rows}
    assert list(by_name) == ["flexlora", "(untuned model)", "(baseline: majority_class)"]
    assert by_name["(untuned model)"].final_per_seed == (0.25, 0.27)
    assert by_name["(baseline: majority_class)"].final_per_seed == (0.31, 0.29)
    assert by_name["(baseline: majority_class)"].final_mean == pytest.approx(0.30)
    assert by_name["flexlora"].final_per_seed == (0.6, 0.7)
    plot_comparison({"flexlora": list(runs.values())}, tmp_path / "c.png", "t")
    (figure,) = figures
    # get_label() is typed object (matplotlib keeps labels as str), get_ydata() ArrayLike.
    baseline = [
        line
        for line in figure.axes[0].get_lines()
        if str(line.get_label()).startswith("majority_class")
    ]
    assert [np.asarray(line.get_ydata())[0] for line in baseline] == pytest.approx([0.30])


def test_seconds_per_round_are_the_median_runs_so_one_paused_run_does_not_move_them() -> None:
    # Each _row records 1.3 s (train 1, aggregate 0.1, evaluate 0.2); seed 2 sat paused 600 s
    # inside its second round.
    runs = [[_row(1, 0.5, 0.1), _row(2, 0.6, 0.1)] for _ in range(3)]
    runs[2][1] = replace(runs[2][1], seconds_train=601.0)
    runs[1] = [replace(row, seconds_eval=1.2) for row in runs[1]]  # 2.3 s a round
    (row, *_) = comparison_rows({"flexlora": runs})
    assert row.seconds_per_round == pytest.approx(2.3)


def test_a_runs_seconds_per_round_are_its_median_rounds_so_a_pause_does_not_move_them() -> None:
    rows = [_row(1, 0.5, 0.1), _row(2, 0.6, 0.1), _row(3, 0.7, 0.1)]  # 1.3 s a round each
    rows[1] = replace(rows[1], seconds_train=1801.0)  # sat paused 30 min inside round 2
    assert seconds_per_round(rows) == pytest.approx(1.3)
    (row, *_) = comparison_rows({"flexlora": [rows]})
    assert row.seconds_per_round == pytest.approx(1.3)


def test_a_single_seed_has_no_spread(tmp_path: Path) -> None:
    """One seed measures no standard deviation: the table says so instead of printing 0."""
    rows = [_row(i + 1, accuracy, f1) for i, (accuracy, f1) in enumerate(SCORES["flexlora", 0])]
    table = write_comparison(comparison_rows({"flexlora": [rows]}), tmp_path)
    final, f1 = SCORES["flexlora", 0][-1]
    assert f"| flexlora | 1 | {final:.4f} (one seed) | {final:.4f} | {f1:.4f} (one seed) |" in table
    with (tmp_path / "comparison.csv").open(encoding="utf-8") as handle:
        (line,) = csv.DictReader(handle)
    assert line["final_std"] == "" and line["final_macro_f1_std"] == ""
