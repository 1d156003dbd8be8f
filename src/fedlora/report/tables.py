"""Comparison tables of several methods over several seeds (Markdown and CSV).

Every method row gives the final headline metric as mean ± sample standard deviation over the
seeds and every seed's value; below the methods, the rows a reviewer asks for first: the untuned
model (round 0) and the trivial baselines scored on the same test set (majority class, copying
the input).  Communication is per client and round, LoRA factors and dense tensors apart.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from fedlora.report.companion import with_companion
from fedlora.runs.metrics import MACRO_F1, Headline, RoundMetrics, headline, seconds_per_round

Runs = Mapping[str, Sequence[Sequence[RoundMetrics]]]


@dataclass(frozen=True)
class ComparisonRow:
    """One method over its seeds, or a reference row (``method`` in parentheses)."""

    method: str
    seeds: int
    metric: str
    final_mean: float
    final_std: float | None
    final_per_seed: tuple[float, ...]
    final_macro_f1_mean: float | None = None
    final_macro_f1_std: float | None = None
    best_mean: float | None = None
    final_test_loss_mean: float | None = None
    lora_params_up_per_client: float | None = None
    dense_params_up_per_client: float | None = None
    mean_bytes_up_per_round: float | None = None
    seconds_per_round: float | None = None
    """The median over seeds of each run's median seconds per round: neither a round nor a run
    slowed or paused by other jobs moves it."""


def _final(rows: Sequence[RoundMetrics]) -> RoundMetrics:
    return [r for r in rows if r.evaluated and r.round > 0][-1]


def _spread(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single seed: no spread measured)."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def _final_fields(
    finals: Sequence[RoundMetrics], metric: Headline, with_f1: bool
) -> dict[str, Any]:
    """The fields of a row read from its final evaluations, one per seed."""
    values = [float(metric.value(e) or 0.0) for e in finals]
    f1 = [float(MACRO_F1.value(e) or 0.0) for e in finals] if with_f1 else None
    mean, std = _spread(values)
    return {
        "seeds": len(values),
        "metric": metric.label,
        "final_mean": mean,
        "final_std": std,
        "final_per_seed": tuple(values),
        "final_macro_f1_mean": None if f1 is None else _spread(f1)[0],
        "final_macro_f1_std": None if f1 is None else _spread(f1)[1],
    }


def comparison_rows(runs: Runs) -> list[ComparisonRow]:
    """One row per method, aggregated over its seeds, then the reference rows.

    Runs without a trained, evaluated round are skipped.  The score is the runs' headline
    metric: accuracy (with macro-F1 beside it), or the per-task score of causal LMs.
    """
    metric = headline(r for seeds in runs.values() for rows in seeds for r in rows)
    with_f1 = MACRO_F1 in with_companion(metric)
    table = []
    for method, seeds in runs.items():
        seeds = [rows for rows in seeds if any(r.evaluated and r.round > 0 for r in rows)]
        if not seeds:
            continue
        bests = [
            max(float(metric.value(r) or 0.0) for r in rows if r.evaluated and r.round > 0)
            for rows in seeds
        ]
        losses = [float(_final(rows).test_loss or 0.0) for rows in seeds]
        every = [r for rows in seeds for r in rows if r.round > 0]  # round 0 trains nothing
        clients = sum(len(r.clients) for r in every) or 1
        table.append(
            ComparisonRow(
                method=method,
                **_final_fields([_final(rows) for rows in seeds], metric, with_f1),
                best_mean=statistics.fmean(bests),
                final_test_loss_mean=statistics.fmean(losses),
                lora_params_up_per_client=sum(r.lora_params_up for r in every) / clients,
                dense_params_up_per_client=sum(r.dense_params_up for r in every) / clients,
                mean_bytes_up_per_round=statistics.fmean(r.bytes_up for r in every),
                seconds_per_round=statistics.median(seconds_per_round(rows) for rows in seeds),
            )
        )
    return table + reference_rows(runs, metric, with_f1)


def reference_rows(runs: Runs, metric: Headline, with_f1: bool) -> list[ComparisonRow]:
    """The untuned model and every trivial baseline, over the seeds of the first method.

    Round 0 and the baselines depend on the seed (data, test rows, model) but not on the
    method, so one method's runs hold them all.
    """
    seeds = next((list(s) for s in runs.values() if s), [])
    starts = [r for rows in seeds for r in rows if r.round == 0 and r.evaluated]
    if not starts:
        return []
    references: dict[str, list[RoundMetrics]] = {"(untuned model)": starts}
    for start in starts:
        for name, values in start.extra.get("baselines", {}).items():
            references.setdefault(f"(baseline: {name})", []).append(replace(start, **values))
    rows = []
    for name, evaluations in references.items():
        losses = [e.test_loss for e in evaluations if e.test_loss is not None]
        rows.append(
            ComparisonRow(
                method=name,
                **_final_fields(evaluations, metric, with_f1),
                final_test_loss_mean=statistics.fmean(losses) if losses else None,
            )
        )
    return rows


def write_comparison(rows: Sequence[ComparisonRow], directory: Path) -> str:
    """Write ``comparison.md`` and ``comparison.csv``; return the Markdown table."""
    metric = rows[0].metric if rows else "score"
    with_f1 = any(r.final_macro_f1_mean is not None for r in rows)
    f1_header = [f"final {MACRO_F1.label}"] if with_f1 else []
    names = ["method", "seeds", f"final {metric} (mean ± std)", "per seed", *f1_header]
    names += [f"best {metric}", "final test loss", "LoRA params up / client / round"]
    names += ["dense params up / client / round", "MB up / round", "s / round (median run)"]
    header = _markdown_row(names) + "\n|" + "---|" * len(names) + "\n"
    lines = [_markdown_row(_cells(r, with_f1)) for r in rows]
    markdown = header + "\n".join(lines) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "comparison.md").write_text(markdown, encoding="utf-8")
    with (directory / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in fields(ComparisonRow)])
        for r in rows:
            values = [getattr(r, f.name) for f in fields(ComparisonRow)]
            writer.writerow([" ".join(map(str, v)) if isinstance(v, tuple) else v for v in values])
    return markdown


def _cells(row: ComparisonRow, with_f1: bool) -> list[str]:
    f1 = [_pm(row.final_macro_f1_mean, row.final_macro_f1_std)] if with_f1 else []
    return [
        row.method,
        str(row.seeds),
        _pm(row.final_mean, row.final_std),
        ", ".join(f"{v:.4f}" for v in row.final_per_seed),
        *f1,
        _number(row.best_mean, "{:.4f}"),
        _number(row.final_test_loss_mean, "{:.4f}"),
        _number(row.lora_params_up_per_client, "{:,.0f}"),
        _number(row.dense_params_up_per_client, "{:,.0f}"),
        _number(
            None if row.mean_bytes_up_per_round is None else row.mean_bytes_up_per_round / 1e6,
            "{:.2f}",
        ),
        _number(row.seconds_per_round, "{:.1f}"),
    ]


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f} (one seed)" if std is None else f"{mean:.4f} ± {std:.4f}"


def _number(value: float | None, form: str) -> str:
    return "—" if value is None else form.format(value)


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
