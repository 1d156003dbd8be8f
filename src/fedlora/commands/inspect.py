"""``fedlora inspect``, ``fedlora plot`` and ``fedlora config``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedlora.config import describe_defaults, load_config
from fedlora.errors import FedloraError
from fedlora.report import plot_comparison, plot_run, with_companion
from fedlora.runs import Headline, RoundMetrics, RunDir, headline


def inspect_command(path: Path) -> int:
    run = RunDir(path)
    if not run.config_file.exists():
        raise FedloraError(f"{path}: no config.toml, so it is not a run directory")
    config = load_config(run.config_file)
    rows = run.metrics()
    console = Console()
    state = "finished" if run.is_finished() else "unfinished"
    console.print(
        f"[bold]{config.run.name}[/bold] ({state}, "
        f"{max((r.round for r in rows), default=0)}/{config.run.rounds} rounds)"
    )
    console.print(
        f"model {config.model.name}, data {config.data.dataset} ({config.data.partition}), "
        f"aggregation {config.aggregation.method}, ranks {config.ranks.policy} "
        f"{config.ranks.options}, {config.run.num_clients} clients, seed {config.run.seed}"
    )
    metrics = with_companion(headline(rows))
    labels = (m.label for m in metrics)
    columns = ("round", "clients", "mean rank", "train loss", "test loss", *labels, "MB up")
    table = Table(*columns, pad_edge=False)  # fits 80 columns with macro-F1
    for row in rows:
        table.add_row(
            str(row.round),
            str(len(row.clients)),
            f"{sum(row.ranks) / max(1, len(row.ranks)):.1f}",
            _cell(row.train_loss),
            _cell(row.test_loss),
            *(_cell(m.value(row)) for m in metrics),
            f"{row.bytes_up / 1e6:.2f}",
        )
    console.print(table)
    for start in (r for r in rows if r.round == 0):
        for name, values in start.extra.get("baselines", {}).items():
            _print_baseline(console, name, replace(start, **values), metrics)
    return 0


def _print_baseline(
    console: Console, name: str, baseline: RoundMetrics, metrics: list[Headline]
) -> None:
    scores = ", ".join(f"{m.label} {_cell(m.value(baseline))}" for m in metrics)
    console.print(f"baseline {name} on the same test set: {scores}", markup=False)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def plot_command(paths: Sequence[Path], out: Path | None) -> int:
    runs = {}
    for path, name in zip(paths, run_labels(paths), strict=True):
        run = RunDir(path)
        rows = run.metrics()
        if not rows:
            raise FedloraError(f"{path}: no metrics.jsonl with any round")
        runs[name] = rows
    if len(runs) == 1:
        name, rows = next(iter(runs.items()))
        target = out or RunDir(paths[0]).plots_dir / "metrics.png"
        plot_run(rows, target, name)
    else:
        target = out or RunDir(paths[0]).plots_dir / "comparison.png"
        plot_comparison({name: [rows] for name, rows in runs.items()}, target, "runs")
    print(target)
    return 0


def run_labels(paths: Sequence[Path]) -> list[str]:
    """A distinct label per run: the shortest tail of its path that no other run shares.

    ``a/flexlora-seed0`` and ``b/flexlora-seed0`` keep their parent folder; a run given twice
    (under any spelling of its path) is an error rather than one curve hiding the other.
    """
    resolved = [path.resolve() for path in paths]
    seen: dict[Path, Path] = {}
    for path, full in zip(paths, resolved, strict=True):
        if full in seen:
            raise FedloraError(f"{path}: the same run as {seen[full]}, given twice")
        seen[full] = path
    labels = []
    for full in resolved:
        others = [other for other in resolved if other != full]
        depth = 1
        while depth < len(full.parts) and any(
            other.parts[-depth:] == full.parts[-depth:] for other in others
        ):
            depth += 1
        labels.append("/".join(full.parts[-depth:]))
    return labels


def config_command(
    path: Path | None, overrides: Sequence[str], *, defaults: bool, markdown: bool = False
) -> int:
    if markdown:
        print(defaults_markdown(), end="")
        return 0
    if defaults:
        table = Table("key", "default", "meaning", show_lines=False)
        for row in describe_defaults():
            table.add_row(*map(escape, row))  # rich markup would eat "[low, high]"
        # Wide enough that no bracketed example in a meaning wraps (a test reads them back).
        Console(width=170).print(table)
        return 0
    print(load_config(path, overrides).to_toml(), end="")
    return 0


def defaults_markdown() -> str:
    """The README's table of every config key, its default and its meaning."""
    rows = [f"| `{key}` | `{value}` | {text} |" for key, value, text in describe_defaults()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows]) + "\n"
