"""``summary.md``: what was run and how it ended, in a few lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedlora.config import ExperimentConfig
from fedlora.report.plots import plot_run
from fedlora.runs.metrics import RoundMetrics, headline
from fedlora.runs.run_dir import RunDir


def run_summary(
    config: ExperimentConfig,
    rows: Sequence[RoundMetrics],
    wall_seconds: float,
    data_notes: Mapping[str, Any] | None = None,
) -> str:
    metric = headline(rows)
    evaluated = [r for r in rows if r.evaluated]
    final = evaluated[-1] if evaluated else None
    best = max(evaluated, key=lambda r: metric.value(r) or 0.0) if evaluated else None
    lines = [
        f"# Run `{config.run.name}`",
        "",
        f"- task: {config.task}; model: `{config.model.name}`, dataset: `{config.data.dataset}` "
        f"({config.data.partition} partition {config.data.partition_options})",
        f"- aggregation: `{config.aggregation.method}` {config.aggregation.options or ''}".rstrip(),
        f"- ranks: `{config.ranks.policy}` {config.ranks.options}",
        f"- {config.run.num_clients} clients, {config.run.sampled_per_round()} per round, "
        f"{len(rows)} rounds, seed {config.run.seed}",
        f"- wall time: {wall_seconds:.1f} s",
        *(f"- {key}: {value}" for key, value in (data_notes or {}).items()),
    ]
    if final is not None and best is not None:
        lines += [
            f"- final {metric.label}: {metric.value(final):.4f} (round {final.round}), "
            f"{_secondary(final)}loss {final.test_loss:.4f}",
            f"- best {metric.label}: {metric.value(best):.4f} (round {best.round})",
        ]
    up = sum(r.bytes_up for r in rows)
    down = sum(r.bytes_down for r in rows)
    lines.append(f"- communication: {up / 1e6:.2f} MB up, {down / 1e6:.2f} MB down")
    return "\n".join(lines) + "\n"


def _secondary(row: RoundMetrics) -> str:
    if row.test_exact_match is not None:
        return f"exact match {row.test_exact_match:.4f}, "
    if row.test_macro_f1 is not None:
        return f"macro-F1 {row.test_macro_f1:.4f}, "
    return ""


def write_run_report(
    run_dir: RunDir,
    config: ExperimentConfig,
    rows: Sequence[RoundMetrics],
    wall_seconds: float,
    data_notes: Mapping[str, Any] | None = None,
) -> None:
    """The plot and ``summary.md`` that mark a run as finished."""
    plot_run(rows, run_dir.plots_dir / "metrics.png", config.run.name)
    summary = run_summary(config, rows, wall_seconds, data_notes)
    run_dir.summary_file.write_text(summary, encoding="utf-8")
