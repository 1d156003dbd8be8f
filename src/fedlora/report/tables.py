"""Comparison tables of several methods over several seeds (Markdown and CSV)."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedlora.report.companion import MACRO_F1, with_companion
from fedlora.runs.metrics import RoundMetrics, headline


@dataclass(frozen=True)
class ComparisonRow:
    method: str
    seeds: int
    metric: str
    final_mean: float
    final_std: float
    final_macro_f1_mean: float | None
    final_macro_f1_std: float | None
    best_mean: float
    final_test_loss_mean: float
    mean_bytes_up_per_round: float
    mean_seconds_per_round: float


def _final(rows: Sequence[RoundMetrics]) -> RoundMetrics:
    return [r for r in rows if r.evaluated][-1]


def comparison_rows(runs: Mapping[str, Sequence[Sequence[RoundMetrics]]]) -> list[ComparisonRow]:
    """One row per method, aggregated over its seeds (runs without an evaluation are skipped).

    The score is the headline metric of the runs: accuracy, or Rouge-L for causal LMs; beside
    accuracy, the final macro-F1 (``None`` for causal LMs).
    """
    metric = headline(r for seeds in runs.values() for rows in seeds for r in rows)
    with_f1 = MACRO_F1 in with_companion(metric)
    table = []
    for method, seeds in runs.items():
        seeds = [rows for rows in seeds if any(r.evaluated for r in rows)]
        if not seeds:
            continue
        finals = [float(metric.value(_final(rows)) or 0.0) for rows in seeds]
        f1 = [float(MACRO_F1.value(_final(rows)) or 0.0) for rows in seeds] if with_f1 else None
        bests = [max(float(metric.value(r) or 0.0) for r in rows if r.evaluated) for rows in seeds]
        losses = [float(_final(rows).test_loss or 0.0) for rows in seeds]
        every = [r for rows in seeds for r in rows if r.round > 0]  # round 0 trains nothing
        seconds = [r.seconds_train + r.seconds_aggregate + r.seconds_eval for r in every]
        table.append(
            ComparisonRow(
                method=method,
                seeds=len(seeds),
                metric=metric.label,
                final_mean=statistics.fmean(finals),
                final_std=statistics.pstdev(finals),
                final_macro_f1_mean=None if f1 is None else statistics.fmean(f1),
                final_macro_f1_std=None if f1 is None else statistics.pstdev(f1),
                best_mean=statistics.fmean(bests),
                final_test_loss_mean=statistics.fmean(losses),
                mean_bytes_up_per_round=statistics.fmean(r.bytes_up for r in every),
                mean_seconds_per_round=statistics.fmean(seconds),
            )
        )
    return table


def write_comparison(rows: Sequence[ComparisonRow], directory: Path) -> str:
    """Write ``comparison.md`` and ``comparison.csv``; return the Markdown table."""
    metric = rows[0].metric if rows else "score"
    with_f1 = any(r.final_macro_f1_mean is not None for r in rows)
    f1_header = [f"final {MACRO_F1.label}"] if with_f1 else []
    names = ["method", "seeds", f"final {metric}", *f1_header, f"best {metric}"]
    names += ["final test loss", "MB up / round", "s / round"]
    header = _markdown_row(names) + "\n|" + "---|" * len(names) + "\n"
    lines = [_markdown_row(_cells(r, with_f1)) for r in rows]
    markdown = header + "\n".join(lines) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "comparison.md").write_text(markdown, encoding="utf-8")
    with (directory / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(ComparisonRow.__dataclass_fields__))
        for r in rows:
            writer.writerow(list(vars(r).values()))
    return markdown


def _cells(row: ComparisonRow, with_f1: bool) -> list[str]:
    f1 = [f"{row.final_macro_f1_mean:.4f} ± {row.final_macro_f1_std:.4f}"] if with_f1 else []
    return [
        row.method,
        str(row.seeds),
        f"{row.final_mean:.4f} ± {row.final_std:.4f}",
        *f1,
        f"{row.best_mean:.4f}",
        f"{row.final_test_loss_mean:.4f}",
        f"{row.mean_bytes_up_per_round / 1e6:.2f}",
        f"{row.mean_seconds_per_round:.1f}",
    ]


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
