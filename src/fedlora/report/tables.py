"""Comparison tables of several methods over several seeds (Markdown and CSV)."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedlora.runs.metrics import RoundMetrics, headline


@dataclass(frozen=True)
class ComparisonRow:
    method: str
    seeds: int
    metric: str
    final_mean: float
    final_std: float
    best_mean: float
    final_test_loss_mean: float
    mean_bytes_up_per_round: float
    mean_seconds_per_round: float


def _final(rows: Sequence[RoundMetrics]) -> RoundMetrics:
    return [r for r in rows if r.evaluated][-1]


def comparison_rows(runs: Mapping[str, Sequence[Sequence[RoundMetrics]]]) -> list[ComparisonRow]:
    """One row per method, aggregated over its seeds (runs without an evaluation are skipped).

    The score is the headline metric of the runs: accuracy, or Rouge-L for causal LMs.
    """
    metric = headline(r for seeds in runs.values() for rows in seeds for r in rows)
    table = []
    for method, seeds in runs.items():
        seeds = [rows for rows in seeds if any(r.evaluated for r in rows)]
        if not seeds:
            continue
        finals = [float(metric.value(_final(rows)) or 0.0) for rows in seeds]
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
    header = (
        f"| method | seeds | final {metric} | best {metric} | final test loss "
        "| MB up / round | s / round |\n|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r.method} | {r.seeds} | {r.final_mean:.4f} ± {r.final_std:.4f} "
        f"| {r.best_mean:.4f} | {r.final_test_loss_mean:.4f} "
        f"| {r.mean_bytes_up_per_round / 1e6:.2f} | {r.mean_seconds_per_round:.1f} |"
        for r in rows
    ]
    markdown = header + "\n".join(lines) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "comparison.md").write_text(markdown, encoding="utf-8")
    with (directory / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(ComparisonRow.__dataclass_fields__))
        for r in rows:
            writer.writerow(list(vars(r).values()))
    return markdown
