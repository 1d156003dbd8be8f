"""Rebuild every table and figure of the experiment suites from their run directories.

For each suite with finished runs it writes, under ``docs/results/<suite>/``:

- ``comparison.md`` / ``comparison.csv`` / ``comparison.png``: per cell the final headline metric
  (mean ± sample std over seeds, and every seed's value), macro-F1, communication; the untuned
  model and the trivial baselines below (``fedlora compare``'s tables, :mod:`fedlora.report`);
- ``rounds.csv``: every evaluated round of every run (the curves behind the figure);
- ``promotion.csv`` for suites whose runs promote clients (loss-based allocation): who was
  promoted, which clients were high-quality, and the precision of the promotion.

These files are small and committed: every number in the README and docs/results.md comes from
one of them.

    python experiments/report.py [SUITE ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from fedlora.report import comparison_rows, plot_comparison, write_comparison
from fedlora.runs import RoundMetrics, RunDir
from suites import RESULTS, Suite, all_suites

ROUND_COLUMNS = (
    "test_loss",
    "test_accuracy",
    "test_macro_f1",
    "test_score",
    "test_rouge_l",
    "test_exact_match",
)


def finished_runs(suite: Suite) -> dict[str, list[tuple[int, list[RoundMetrics]]]]:
    """Per cell, the (seed, metrics) of every finished run."""
    runs: dict[str, list[tuple[int, list[RoundMetrics]]]] = {}
    for job in suite.jobs:
        run = RunDir(job.out)
        if run.is_finished():
            runs.setdefault(job.cell, []).append((job.seed, run.metrics()))
    return runs


def write_rounds(runs: dict[str, list[tuple[int, list[RoundMetrics]]]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "seed", "round", *ROUND_COLUMNS])
        for cell, seeds in runs.items():
            for seed, rows in seeds:
                for row in rows:
                    if row.evaluated:
                        values = [getattr(row, column) for column in ROUND_COLUMNS]
                        writer.writerow([cell, seed, row.round, *values])


def write_promotions(runs: dict[str, list[tuple[int, list[RoundMetrics]]]], path: Path) -> bool:
    """Who was promoted and how many of them are high-quality clients; False if nobody was."""
    lines = []
    for cell, seeds in runs.items():
        for seed, rows in seeds:
            high = next((r.extra.get("high_quality_clients") for r in rows if r.round == 0), None)
            for row in rows:
                promoted = row.extra.get("promoted_clients")
                if promoted is None:
                    continue
                hits = len(set(promoted) & set(high or []))
                precision = hits / len(promoted) if promoted and high is not None else ""
                lines.append([cell, seed, row.round, promoted, high, hits, precision])
    if not lines:
        return False
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["cell", "seed", "after_round", "promoted", "high_quality", "hits", "precision"]
        )
        writer.writerows(lines)
    return True


def report(suite: Suite) -> Path | None:
    runs = finished_runs(suite)
    if not runs:
        return None
    folder = RESULTS / suite.name
    folder.mkdir(parents=True, exist_ok=True)
    by_cell = {cell: [rows for _, rows in seeds] for cell, seeds in runs.items()}
    table = write_comparison(comparison_rows(by_cell), folder)
    plot_comparison(by_cell, folder / "comparison.png", suite.description or suite.name)
    write_rounds(runs, folder / "rounds.csv")
    write_promotions(runs, folder / "promotion.csv")
    done = sum(len(seeds) for seeds in runs.values())
    print(f"{suite.name}: {done} of {len(suite.jobs)} runs finished\n{table}")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", help="suite names (default: all)")
    args = parser.parse_args(argv)
    for suite in all_suites(args.suites):
        folder = report(suite)
        print(f"written: {folder}" if folder else f"{suite.name}: no finished run yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
