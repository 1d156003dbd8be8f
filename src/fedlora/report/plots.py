"""PNG plots of runs (matplotlib's Agg backend: no display needed).

matplotlib is imported on first use: the engine imports this module, and a process that only
trains (a Flower ClientApp, started afresh for every message) should not pay for pyplot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

from fedlora.report.companion import with_companion
from fedlora.runs.metrics import Headline, RoundMetrics, headline


def plot_run(rows: Sequence[RoundMetrics], path: Path, title: str) -> Path:
    """The headline test metric (accuracy and macro-F1, or Rouge-L), and train/test loss."""
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    metrics = with_companion(headline(rows))
    evaluated = [r for r in rows if r.evaluated]
    for metric in metrics:
        values = [metric.value(r) for r in evaluated]
        (line,) = acc_ax.plot([r.round for r in evaluated], values, marker="o", label=metric.label)
        _baseline_lines(acc_ax, [rows], metric, line.get_color())
    if len(metrics) > 1 or acc_ax.get_legend_handles_labels()[0][1:]:
        acc_ax.legend(fontsize="small")
    ylabel = " / ".join(m.label for m in metrics)
    acc_ax.set(xlabel="round", ylabel=ylabel, title="global model")
    trained = [r for r in rows if r.train_loss is not None]
    loss_ax.plot(
        [r.round for r in trained], [r.train_loss for r in trained], label="train (clients)"
    )
    loss_ax.plot(
        [r.round for r in evaluated], [r.test_loss for r in evaluated], label="test (global)"
    )
    loss_ax.set(xlabel="round", ylabel="loss", title="loss")
    loss_ax.legend()
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(
    runs: Mapping[str, Sequence[Sequence[RoundMetrics]]], path: Path, title: str
) -> Path:
    """The headline metric (and macro-F1 beside accuracy) against round, one panel each.

    One line per method: the mean over seeds, with a min–max band.
    """
    return plot_panels({"": runs}, path, title)


def plot_panels(
    panels: Mapping[str, Mapping[str, Sequence[Sequence[RoundMetrics]]]], path: Path, title: str
) -> Path:
    """One column per panel (a group of methods), one row per headline metric (accuracy, then
    macro-F1 when there is one), on shared axes: each method the mean over seeds with a min–max
    band, the trivial baselines dashed.  A single panel puts its metrics side by side."""
    every = [
        r for runs in panels.values() for seeds in runs.values() for rows in seeds for r in rows
    ]
    metrics = with_companion(headline(every))
    plt = _pyplot()
    if len(panels) == 1:
        fig, grid = plt.subplots(1, len(metrics), figsize=(7 * len(metrics), 4.5), squeeze=False)
        axes = grid.T
    else:
        fig, axes = plt.subplots(
            len(metrics),
            len(panels),
            figsize=(6 * len(panels), 4.5 * len(metrics)),
            squeeze=False,
            sharey="row",
        )
    colors = _method_colors(panels)
    for column, (name, runs) in enumerate(panels.items()):
        for ax, metric in zip(axes[:, column], metrics, strict=True):
            _plot_seed_bands(ax, runs, metric, colors[name])
            _baseline_lines(ax, next(iter(runs.values()), []), metric, "0.4")
            ax.set(xlabel="round", ylabel=metric.label, title=name or metric.label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110 if len(panels) == 1 else 70)
    plt.close(fig)
    return path


def _method_colors(
    panels: Mapping[str, Mapping[str, Sequence[Sequence[RoundMetrics]]]],
) -> dict[str, dict[str, str]]:
    """Per panel, each method's colour.  A method drawn in several panels (a shared baseline,
    AG News beside DBpedia) keeps one colour in all of them; the others take the colours left,
    afresh in each panel, so that no two methods of a panel look alike (up to ten a panel)."""
    palette = [f"C{i}" for i in range(10)]  # matplotlib's default cycle (tab10)
    seen = [method for runs in panels.values() for method in runs]
    shared = [m for m in dict.fromkeys(seen) if seen.count(m) > 1]
    fixed = {method: palette[i % len(palette)] for i, method in enumerate(shared)}
    free = [c for c in palette if c not in fixed.values()] or palette
    colors: dict[str, dict[str, str]] = {}
    for name, runs in panels.items():
        own = [method for method in runs if method not in fixed]
        colors[name] = {m: fixed.get(m) or free[own.index(m) % len(free)] for m in runs}
    return colors


def _plot_seed_bands(
    ax: Axes,
    runs: Mapping[str, Sequence[Sequence[RoundMetrics]]],
    metric: Headline,
    colors: Mapping[str, str],
) -> None:
    for method, seeds in runs.items():
        rounds = sorted({r.round for rows in seeds for r in rows if r.evaluated})
        if not rounds:
            continue
        table = np.full((len(seeds), len(rounds)), np.nan)
        for i, rows in enumerate(seeds):
            by_round = {r.round: metric.value(r) for r in rows if r.evaluated}
            for j, rnd in enumerate(rounds):
                table[i, j] = by_round.get(rnd, np.nan)
        mean = np.nanmean(table, axis=0)
        color = colors[method]
        ax.plot(rounds, mean, marker="o", color=color, label=f"{method} (n={len(seeds)})")
        if len(seeds) > 1:
            low, high = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
            ax.fill_between(rounds, low, high, color=color, alpha=0.2)


def _baseline_lines(
    ax: Axes, seeds: Sequence[Sequence[RoundMetrics]], metric: Headline, color: str
) -> None:
    """Each trivial baseline of the runs' round 0 as a dashed line (mean over the seeds)."""
    values: dict[str, list[float]] = {}
    for rows in seeds:
        for start in (r for r in rows if r.round == 0):
            for name, fields in start.extra.get("baselines", {}).items():
                value = metric.value(replace(start, **fields))
                if value is not None:
                    values.setdefault(name, []).append(value)
    for name, points in values.items():
        ax.axhline(
            float(np.mean(points)),
            color=color,
            linestyle="--",
            linewidth=1,
            label=f"{name} ({metric.label})",
        )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
