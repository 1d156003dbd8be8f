"""``summary.md``: what was run and how it ended, in a few lines."""

from __future__ import annotations

from collections.abc import Sequence

from fedlora.config import ExperimentConfig
from fedlora.report.plots import plot_run
from fedlora.runs.metrics import RoundMetrics
from fedlora.runs.run_dir import RunDir


def run_summary(config: ExperimentConfig, rows: Sequence[RoundMetrics], wall_seconds: float) -> str:
    evaluated = [r for r in rows if r.test_accuracy is not None]
    final = evaluated[-1] if evaluated else None
    best = max(evaluated, key=lambda r: r.test_accuracy or 0.0) if evaluated else None
    lines = [
        f"# Run `{config.run.name}`",
        "",
        f"- model: `{config.model.name}`, dataset: `{config.data.dataset}` "
        f"({config.data.partition} partition {config.data.partition_options})",
        f"- aggregation: `{config.aggregation.method}` {config.aggregation.options or ''}".rstrip(),
        f"- ranks: `{config.ranks.policy}` {config.ranks.options}",
        f"- {config.run.num_clients} clients, {config.run.sampled_per_round()} per round, "
        f"{len(rows)} rounds, seed {config.run.seed}",
        f"- wall time: {wall_seconds:.1f} s",
    ]
    if final is not None and best is not None:
        lines += [
            f"- final test accuracy: {final.test_accuracy:.4f} (round {final.round}), "
            f"macro-F1 {final.test_macro_f1:.4f}, loss {final.test_loss:.4f}",
            f"- best test accuracy: {best.test_accuracy:.4f} (round {best.round})",
        ]
    up = sum(r.bytes_up for r in rows)
    down = sum(r.bytes_down for r in rows)
    lines.append(f"- communication: {up / 1e6:.2f} MB up, {down / 1e6:.2f} MB down")
    return "\n".join(lines) + "\n"


def write_run_report(
    run_dir: RunDir, config: ExperimentConfig, rows: Sequence[RoundMetrics], wall_seconds: float
) -> None:
    """The plot and ``summary.md`` that mark a run as finished."""
    plot_run(rows, run_dir.plots_dir / "metrics.png", config.run.name)
    run_dir.summary_file.write_text(run_summary(config, rows, wall_seconds), encoding="utf-8")
