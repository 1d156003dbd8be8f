"""``summary.md``: what was run and how it ended, in a few lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from fedlora.config import ExperimentConfig
from fedlora.report.companion import with_companion
from fedlora.report.plots import plot_run
from fedlora.runs.metrics import Headline, RoundMetrics, headline
from fedlora.runs.run_dir import RunDir


def run_summary(
    config: ExperimentConfig,
    rows: Sequence[RoundMetrics],
    wall_seconds: float,
    data_notes: Mapping[str, Any] | None = None,
) -> str:
    metric = headline(rows)
    shown = [*with_companion(metric), LOSS]
    trained = [r for r in rows if r.evaluated and r.round > 0]
    start = next((r for r in rows if r.round == 0), None)
    lines = [
        f"# Run `{config.run.name}`",
        "",
        f"- task: {config.task}; model: `{config.model.name}`, dataset: `{config.data.dataset}` "
        f"({config.data.partition} partition {config.data.partition_options})",
        f"- aggregation: `{config.aggregation.method}` {config.aggregation.options or ''}".rstrip(),
        f"- ranks: `{config.ranks.policy}` {config.ranks.options}",
        f"- {config.run.num_clients} clients, {config.run.sampled_per_round()} per round, "
        f"{config.run.rounds} rounds, seed {config.run.seed}",
        f"- wall time: {wall_seconds:.1f} s",
        *(f"- {key}: {value}" for key, value in (data_notes or {}).items()),
    ]
    if start is not None and start.evaluated:
        lines.append(f"- untuned model (round 0): {_values(start, shown)}")
        for name, values in start.extra.get("baselines", {}).items():
            baseline = replace(start, **values)
            lines.append(f"- baseline `{name}` (same test set): {_values(baseline, shown)}")
    if trained:
        final = trained[-1]
        best = max(trained, key=lambda r: metric.value(r) or 0.0)
        lines += [
            f"- final (round {final.round}): {_values(final, shown)}",
            f"- best {metric.label}: {metric.value(best):.4f} (round {best.round})",
            *_per_class(final),
        ]
    lines += _promotions(rows)
    lines.append(_communication(rows))
    return "\n".join(lines) + "\n"


LOSS = Headline("test_loss", "test loss")


def _values(row: RoundMetrics, metrics: Sequence[Headline]) -> str:
    parts = []
    for metric in metrics:
        value = metric.value(row)
        if value is not None:
            parts.append(f"{metric.label} {value:.4f}")
    return ", ".join(parts)


def _per_class(row: RoundMetrics) -> list[str]:
    """F1 and test rows of every class, by name, in the given round (classification)."""
    per_class = row.extra.get("per_class")
    if not per_class:
        return []
    parts = []
    for values in per_class:
        f1 = values.get("f1")
        shown = "-" if f1 is None else f"{f1:.4f}"
        parts.append(f"{values.get('class')} {shown} ({values.get('support', 0)})")
    return [f"- F1 per class (test rows), round {row.round}: {', '.join(parts)}"]


def _promotions(rows: Sequence[RoundMetrics]) -> list[str]:
    """Who a loss-based policy promoted and when; the share that are high-quality clients."""
    high_quality = next(
        (
            r.extra["high_quality_clients"]
            for r in rows
            if r.round == 0 and "high_quality_clients" in r.extra
        ),
        None,
    )
    lines = []
    for row in rows:
        promoted = row.extra.get("promoted_clients")
        if promoted is None:
            continue
        line = f"- promoted after round {row.round}: clients {promoted}"
        if high_quality is not None and promoted:
            hits = len(set(promoted) & set(high_quality))
            line += f" ({hits} of {len(promoted)} are high-quality clients {high_quality})"
        lines.append(line)
    return lines


def _communication(rows: Sequence[RoundMetrics]) -> str:
    """Everything that travelled, by kind: LoRA factors, dense tensors, merged rounds (FLoRA)."""
    lora_up = sum(r.lora_params_up for r in rows)
    lora_down = sum(r.lora_params_down for r in rows)
    dense_up = sum(r.dense_params_up for r in rows)
    dense_down = sum(r.dense_params_down for r in rows)
    merged = sum(r.merged_params_down for r in rows)
    up = sum(r.bytes_up for r in rows)
    down = sum(r.bytes_down for r in rows)
    line = (
        f"- communication: {up / 1e6:.2f} MB up, {down / 1e6:.2f} MB down; parameters: LoRA "
        f"{lora_up / 1e6:.3f} M up, {lora_down / 1e6:.3f} M down; dense (head) "
        f"{dense_up / 1e6:.3f} M up, {dense_down / 1e6:.3f} M down"
    )
    return line + (f"; merged rounds (FLoRA) {merged / 1e6:.3f} M down" if merged else "")


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
