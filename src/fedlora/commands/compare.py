"""``fedlora compare``: several aggregators on the same partitions, ranks and seeds.

Every run of the comparison gets its own run directory under the comparison directory; a
finished run is reused and an interrupted one resumed, so a long comparison can be restarted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from fedlora.aggregation import aggregator_class
from fedlora.commands.progress import RoundProgress
from fedlora.commands.quiet import quiet_libraries
from fedlora.config import ExperimentConfig, load_config, parse_override
from fedlora.errors import FedloraError
from fedlora.report import comparison_rows, plot_comparison, write_comparison
from fedlora.runs import RoundMetrics, RunDir


def compare_command(
    config_path: Path | None,
    overrides: Sequence[str],
    *,
    aggregators: Sequence[str],
    seeds: Sequence[int],
    method_overrides: Sequence[tuple[str, str]] = (),
    out: Path | None,
    overwrite: bool,
    progress: bool,
) -> int:
    console = Console(stderr=True)
    base = load_config(config_path, overrides)
    for name in aggregators:
        aggregator_class(name)
    if len(set(aggregators)) != len(aggregators):
        raise FedloraError(f"--aggregators: a method is listed twice in {','.join(aggregators)}")
    per_method: dict[str, dict[str, Any]] = {}
    for method, item in method_overrides:
        if method not in aggregators:
            raise FedloraError(
                f"--set-for {method} {item}: {method!r} is not in --aggregators "
                f"({','.join(aggregators)})"
            )
        key, value = parse_override(item)
        per_method.setdefault(method, {})[key] = value
    root = out if out is not None else Path(base.run.out_dir)
    results: dict[str, list[list[RoundMetrics]]] = {}
    for method in aggregators:
        for seed in seeds:
            config = comparison_config(base, method, seed, root, per_method.get(method, {}))
            rows = _run_or_reuse(config, overwrite=overwrite, progress=progress, console=console)
            results.setdefault(method, []).append(rows)
    table = write_comparison(comparison_rows(results), root)
    plot = plot_comparison(results, root / "comparison.png", base.data.dataset)
    console.print(table)
    console.print(f"comparison: {root / 'comparison.md'}, {root / 'comparison.csv'}, {plot}")
    return 0


def comparison_config(
    base: ExperimentConfig,
    method: str,
    seed: int,
    root: Path,
    method_overrides: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """The config of one cell: the method (with its own overrides), the seed and the directory."""
    name = f"{method}-seed{seed}"
    return base.replace(
        {
            **(method_overrides or {}),
            "aggregation.method": method,
            "run.seed": seed,
            "run.name": name,
            "run.out_dir": str(root / name),
        }
    )


def _run_or_reuse(
    config: ExperimentConfig, *, overwrite: bool, progress: bool, console: Console
) -> list[RoundMetrics]:
    from fedlora.engine import build_experiment, run_experiment

    quiet_libraries()

    path = Path(config.run.out_dir)
    existing = RunDir(path)
    resume = False
    if not overwrite and existing.config_file.exists():
        if existing.is_finished():
            console.print(f"{config.run.name}: finished earlier, reusing {path}")
            return existing.metrics()
        resume = existing.has_checkpoint()
    experiment = build_experiment(config)
    run_dir = existing if resume else RunDir.create(path, config, overwrite=True)
    with RoundProgress(config.run.name, config.run.rounds, enabled=progress) as bar:
        result = run_experiment(experiment, run_dir, resume=resume, on_round=bar.update)
    return result.metrics
