"""Rebuild every table and figure of the experiment suites from their runs' records.

Every finished run is read from its committed record (``experiments/records/``, :mod:`records`;
a finished run directory without one is recorded first), so the tables can be rebuilt on a
machine that never ran the runs.  A suite whose committed ``rounds.csv`` reports runs that no
record holds is refused (``--drop-missing`` rewrites it without them); a suite no record holds
a single run of keeps the tables its runs wrote, and only what the curves alone give (its
figures, contrasts and convergence) is written again from its committed ``rounds.csv``.

For each suite with finished runs it writes, under ``docs/results/<suite>/``:

- ``comparison.md`` / ``comparison.csv`` / ``comparison.png``: per cell the final headline metric
  (mean ± sample std over seeds, and every seed's value), macro-F1, communication; the untuned
  model and the trivial baselines below (``fedlora compare``'s tables, :mod:`fedlora.report`);
- ``figure.png`` for suites that declare ``[panels]``: one panel per group of cells (cells of
  other suites included, e.g. a shared baseline), accuracy and macro-F1 per round;
- ``convergence.csv`` / ``convergence.md``: per run the mean of the headline metric over every
  evaluated round after round 0 (the area under its curve: higher is faster learning), the first
  round that reaches each of the suite's ``convergence_thresholds``, and how much it still gained
  late in the run, from 3/4 of its rounds on (has the curve flattened?); the table gives mean ±
  std over seeds;
- ``contrasts.csv`` / ``contrasts.md`` for suites that declare ``[contrasts]``: per pair of
  cells (A, B) and per seed both finished, both curves' means over rounds and final values (up
  to the shorter run's last round, when one cell ran longer); the table gives the mean ± std of
  the paired difference A − B, its 95 % confidence interval (Student's t over the seeds: with
  three, the mean ± 2.48 std, so a lead in every seed can still be chance) and in how many seeds
  A is ahead;
- ``rounds.csv``: every evaluated round of every run (the curves behind the figure);
- ``baselines.csv``: per seed, every metric of the untuned model and of each trivial baseline
  (the same for every cell of a seed, read from round 0 of its first finished run);
- ``promotion.csv`` for suites whose runs promote clients (loss-based allocation): who was
  promoted, which clients were high-quality, and the precision of the promotion;
- ``holders.csv`` / ``holders.md`` for suites with runs at several ranks: per run, how many
  clients trained its highest rank per round, in how many rounds exactly one did (replication
  then hands that client the high slots whole) or none, and how many of those participations
  were high-quality clients' (on the quality split);
- ``seen_tasks.csv`` / ``seen_tasks.md`` for instruction suites that hold seen-task examples out
  (``instruct.seen_test_fraction``): per run the final score, Rouge-L, exact match and loss on
  the seen tasks, next to the unseen-task score, with the untuned model and the copy baseline;
- ``tiers.csv`` / ``tiers.md``: per cell and rank tier (each client's, as its round recorded
  it), the clients' mean local training loss in the first, middle and last third of the rounds;
- ``energy.csv`` / ``energy.png`` for suites whose FlexLoRA runs record ``energy_kept``: per
  round, module and client rank, the share of the aggregated update's energy the rank's
  truncation keeps, and its complement (the SVD truncation error, FlexLoRA's Figure 8) per
  module averaged over rounds and seeds; ``energy.md`` summarises that error per cell and rank
  (mean, per seed, worst, first and last round).

These files are small and committed: every number in the README and docs/results.md comes from
one of them.

``--curves-only`` writes only what the curves give (figures, contrasts, convergence) from the
committed ``rounds.csv`` of every suite, even one whose runs are being run again or continued:
a new column or colour reaches every suite without waiting for its runs.

    python experiments/report.py [SUITE ...] [--drop-missing] [--out DIR] [--curves-only]
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, NamedTuple

from scipy import stats

from fedlora.errors import ConfigError, FedloraError
from fedlora.report import comparison_rows, plot_comparison, plot_panels, write_comparison
from fedlora.runs import RoundMetrics, headline
from records import check_nothing_dropped, recorded
from suites import RESULTS, THRESHOLDS, CellRef, Suite, all_suites

ROUND_COLUMNS = (
    "test_loss",
    "test_accuracy",
    "test_macro_f1",
    "test_score",
    "test_rouge_l",
    "test_exact_match",
)


def finished_runs(suite: Suite) -> dict[str, list[tuple[int, list[RoundMetrics]]]]:
    """Per cell, the (seed, metrics) of every recorded run."""
    runs: dict[str, list[tuple[int, list[RoundMetrics]]]] = {}
    for job in suite.jobs:
        record = recorded(job)
        if record is not None:
            runs.setdefault(job.cell, []).append((job.seed, record.metrics()))
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


def _runs_in(text: str) -> dict[tuple[str, str], list[dict[str, str]]]:
    """The lines of a ``rounds.csv`` text, by column, per (cell, seed)."""
    runs: dict[tuple[str, str], list[dict[str, str]]] = {}
    for line in csv.DictReader(text.splitlines()):
        runs.setdefault((line["cell"], line["seed"]), []).append(line)
    return runs


def reproduction(before: str, after: str) -> str:
    """How many runs both ``rounds.csv`` texts hold have every round identical, and which changed,
    with their last scores: a rerun run (e.g. of a lost run directory) must find the committed
    numbers again, and where it does not, the size of the change is the news."""
    old, new = _runs_in(before), _runs_in(after)
    both = [run for run in new if run in old]
    changed = [
        f"{cell} seed {seed}{_last_scores(old[(cell, seed)][-1], new[(cell, seed)][-1])}"
        for cell, seed in both
        if old[(cell, seed)] != new[(cell, seed)]
    ]
    return (
        f"{len(both) - len(changed)} of the {len(both)} runs rounds.csv held before have every "
        f"round as before" + (f"; changed: {', '.join(changed)}" if changed else "")
    )


def _last_scores(old: dict[str, str], new: dict[str, str]) -> str:
    """`` (round 20: 0.8720 -> 0.8860)``: a changed run's last test score before and after (its
    last rounds instead, where they differ or a line has no score)."""
    before, after = old.get("test_score"), new.get("test_score")
    if old["round"] != new["round"] or not before or not after:
        return f" (last round {old['round']} -> {new['round']})"
    return f" (round {new['round']}: {float(before):.4f} -> {float(after):.4f})"


def write_baselines(runs: dict[str, list[tuple[int, list[RoundMetrics]]]], path: Path) -> None:
    starts: dict[int, RoundMetrics] = {}
    for seeds in runs.values():
        for seed, rows in seeds:
            starts.setdefault(seed, next(r for r in rows if r.round == 0))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["reference", "seed", *ROUND_COLUMNS])
        for seed, start in sorted(starts.items()):
            writer.writerow(["untuned model", seed, *(getattr(start, c) for c in ROUND_COLUMNS)])
            for name, values in start.extra.get("baselines", {}).items():
                writer.writerow([name, seed, *(values.get(c) for c in ROUND_COLUMNS)])


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


HOLDER_COLUMNS = (
    "mean_high_per_round",
    "rounds_with_one",
    "rounds_with_none",
    "high_participations",
    "by_high_quality",
)


def holder_line(rows: list[RoundMetrics]) -> list[Any] | None:
    """Who trained a run's highest rank in its rounds: how many per round, how often exactly one
    (a slot replication then hands to that client whole) or none, and how many of those
    participations were high-quality clients'.  A client's rank is its largest module's (the
    metrics' ``ranks``), so a per-module tier counts at its MLP rank.  None for a run at one
    rank."""
    trained = [r for r in rows if r.round > 0]
    if len({rank for r in trained for rank in r.ranks}) < 2:
        return None
    top = max(rank for r in trained for rank in r.ranks)
    high = next((r.extra.get("high_quality_clients") for r in rows if r.round == 0), None)
    high_quality = set(high or [])
    holders = [
        [c for c, rank in zip(r.clients, r.ranks, strict=True) if rank == top] for r in trained
    ]
    counts = [len(h) for h in holders]
    by_high = "" if high is None else sum(c in high_quality for h in holders for c in h)
    mean = statistics.fmean(counts)
    return [top, len(trained), mean, counts.count(1), counts.count(0), sum(counts), by_high]


def write_holders(runs: dict[str, list[tuple[int, list[RoundMetrics]]]], folder: Path) -> bool:
    """``holders.csv`` / ``holders.md`` for suites with runs at several ranks (holder_line)."""
    lines = [
        [cell, seed, *line]
        for cell, seeds in runs.items()
        for seed, rows in sorted(seeds, key=lambda pair: pair[0])
        if (line := holder_line(rows)) is not None
    ]
    if not lines:
        return False
    with (folder / "holders.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "seed", "high_rank", "rounds", *HOLDER_COLUMNS])
        writer.writerows(lines)
    table = [
        "| cell | seeds | rank | clients at it per round | rounds with exactly one, per seed "
        "| rounds with none, per seed | their participations: by high-quality clients, per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in dict.fromkeys(line[0] for line in lines):
        mine = [line for line in lines if line[0] == cell]
        seeds = ", ".join(str(line[1]) for line in mine)
        per_round = spread([line[4] for line in mine])
        ones = ", ".join(f"{line[5]} of {line[3]}" for line in mine)
        nones = ", ".join(str(line[6]) for line in mine)
        by_high = ", ".join(f"{line[8]} of {line[7]}" if line[8] != "" else "—" for line in mine)
        table.append(
            f"| {cell} | {seeds} | {mine[0][2]} | {per_round} | {ones} | {nones} | {by_high} |"
        )
    (folder / "holders.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    return True


THIRDS = ("first", "middle", "last")


def tier_lines(rows: list[RoundMetrics]) -> list[tuple[str, int, float]]:
    """(tier, third of the run's rounds, local training loss) of every client that trained, in
    the rounds that recorded the clients' tiers."""
    trained = [r for r in rows if r.round > 0 and r.extra.get("tiers")]
    last = max((r.round for r in rows), default=0)
    lines = []
    for row in trained:
        tiers, losses = row.extra["tiers"], row.extra["client_train_loss"]
        third = min(2, 3 * (row.round - 1) // last)
        lines += [
            (t, third, loss) for t, loss in zip(tiers, losses, strict=True) if loss is not None
        ]
    return lines


def write_tiers(runs: dict[str, list[tuple[int, list[RoundMetrics]]]], folder: Path) -> bool:
    """``tiers.md|csv``: per cell and tier, the clients' mean local training loss in the first,
    middle and last third of the rounds (how well a tier's clients fit their own rows from the
    state they are served); False if no run recorded any."""
    losses: dict[tuple[str, str], dict[int, list[list[float]]]] = {}
    for cell, seeds in runs.items():
        for seed, rows in sorted(seeds, key=lambda pair: pair[0]):
            for tier, third, loss in tier_lines(rows):
                per_seed = losses.setdefault((cell, tier), {})
                per_seed.setdefault(seed, [[], [], []])[third].append(loss)
    if not losses:
        return False
    with (folder / "tiers.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "tier", "seed", "third", "clients", "mean_train_loss"])
        for (cell, tier), per_seed in losses.items():
            for seed, thirds in per_seed.items():
                for name, values in zip(THIRDS, thirds, strict=True):
                    if values:
                        writer.writerow(
                            [cell, tier, seed, name, len(values), statistics.fmean(values)]
                        )
    table = [
        "| cell | tier | client trainings | mean local training loss: first / middle / last third "
        "of rounds | last third, per seed |",
        "|---|---|---|---|---|",
    ]
    for (cell, tier), per_seed in losses.items():
        pooled = [[v for thirds in per_seed.values() for v in thirds[i]] for i in range(3)]
        means = " / ".join(f"{statistics.fmean(v):.3f}" if v else "—" for v in pooled)
        lasts = ", ".join(
            f"{statistics.fmean(thirds[2]):.3f}" if thirds[2] else "—"
            for thirds in per_seed.values()
        )
        count = sum(len(v) for v in pooled)
        table.append(f"| {cell} | {tier} | {count} | {means} | {lasts} |")
    (folder / "tiers.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    return True


def _curve(rows: list[RoundMetrics]) -> list[tuple[int, float]]:
    """(round, headline metric) of every evaluated round after round 0 (the untuned model)."""
    metric = headline(rows)
    values = [(r.round, metric.value(r)) for r in rows if r.evaluated and r.round > 0]
    return [(n, v) for n, v in values if v is not None]


def mean_over_rounds(rows: list[RoundMetrics]) -> float:
    """The curve's mean: the area under it, higher for a run that learns faster."""
    return statistics.fmean(v for _, v in _curve(rows))


def final_value(rows: list[RoundMetrics]) -> float:
    """The headline metric after the last evaluated round."""
    return _curve(rows)[-1][1]


def late_gain(rows: list[RoundMetrics]) -> tuple[int, int, float] | None:
    """(from, to, gain): how much the curve still rose late in the run, from its first evaluated
    round at or past 3/4 of the last one (or the evaluation before the last, if none is) to the
    end; about 0 once the curve has flattened.  None with a single evaluated round."""
    curve = _curve(rows)
    last, final = curve[-1]
    earlier = curve[:-1]
    if not earlier:
        return None
    start, value = next(((n, v) for n, v in earlier if n >= 0.75 * last), earlier[-1])
    return start, last, final - value


def write_convergence(
    runs: dict[str, list[tuple[int, list[RoundMetrics]]]],
    folder: Path,
    thresholds: Sequence[float] = THRESHOLDS,
) -> None:
    """How fast each run learns: its curve's mean, the first round past each threshold, and
    whether it has flattened by its end (its gain from 3/4 of its rounds on)."""
    lines: list[list[Any]] = []  # CSV rows: cell, seed, metric, mean, first round per threshold
    for cell, seeds in runs.items():
        for seed, rows in seeds:
            metric = headline(rows)
            curve = _curve(rows)
            first_rounds = [next((n for n, v in curve if v >= t), None) for t in thresholds]
            gained = late_gain(rows) or (None, None, None)
            lines.append([cell, seed, metric.label, mean_over_rounds(rows), *first_rounds, *gained])
    with (folder / "convergence.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        reached = [f"first_round_at_{t:g}" for t in thresholds]
        gain = ["late_gain_from_round", "late_gain_to_round", "late_gain"]
        writer.writerow(["cell", "seed", "metric", "mean_over_rounds", *reached, *gain])
        writer.writerows(lines)
    header = " | ".join(f"first round at {t:g}, per seed" for t in thresholds)
    table = [
        f"| method | seeds | mean over rounds | per seed | {header} "
        "| gain from 3/4 of the rounds on | per seed |"
    ]
    table.append("|---|---|---|---|" + "---|" * len(thresholds) + "---|---|")
    for cell in runs:
        mine = [line for line in lines if line[0] == cell]
        means = [line[3] for line in mine]
        firsts = [
            ", ".join("—" if line[4 + i] is None else str(line[4 + i]) for line in mine)
            for i in range(len(thresholds))
        ]
        spans = sorted({f"{line[-3]}–{line[-2]}" for line in mine if line[-1] is not None})
        gains = [line[-1] for line in mine]
        late = f"{spread(gains, signed=True)} (rounds {', '.join(spans)})" if spans else "—"
        table.append(
            f"| {cell} | {len(mine)} | {spread(means)} | "
            f"{', '.join(f'{m:.3f}' for m in means)} | {' | '.join(firsts)} | {late} | "
            f"{', '.join('—' if g is None else with_sign(g) for g in gains)} |"
        )
    (folder / "convergence.md").write_text("\n".join(table) + "\n", encoding="utf-8")


SEEN = ("score", "rouge_l", "exact_match", "loss")


def write_seen_tasks(runs: dict[str, list[tuple[int, list[RoundMetrics]]]], folder: Path) -> bool:
    """Final seen-task scores per run, and per seed the untuned model's and the copy baseline's
    (from round 0, the same for every cell of a seed); False if no run scored seen tasks."""
    lines: dict[str, dict[int, list[Any]]] = defaultdict(dict)
    for cell, seeds in runs.items():
        for seed, rows in seeds:
            scored = [r for r in rows if "seen_tasks" in r.extra]
            if not scored:
                continue
            start, last = scored[0], scored[-1]
            copied = start.extra.get("seen_tasks_baselines", {}).get("copy_input", {})
            lines[cell][seed] = [*(last.extra["seen_tasks"].get(k) for k in SEEN), last.test_score]
            lines["(untuned model)"][seed] = [
                *(start.extra["seen_tasks"].get(k) for k in SEEN),
                start.test_score,
            ]
            lines["(baseline: copy_input)"][seed] = [*(copied.get(k) for k in SEEN), None]
    if not lines:
        return False
    order = sorted(lines, key=lambda method: method.startswith("("))  # baselines last
    with (folder / "seen_tasks.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seed", *(f"seen_{k}" for k in SEEN), "unseen_score"])
        for method in order:
            by_seed = sorted(lines[method].items())
            writer.writerows([method, seed, *values] for seed, values in by_seed)
    table = [
        "| method | seeds | seen-task score | per seed | seen-task Rouge-L | unseen-task score |",
        "|---|---|---|---|---|---|",
    ]
    for method in order:
        found = [values for _, values in sorted(lines[method].items())]
        per_seed = ", ".join("—" if x[0] is None else f"{x[0]:.3f}" for x in found)
        table.append(
            f"| {method} | {len(found)} | {spread([x[0] for x in found])} | {per_seed} | "
            f"{spread([x[1] for x in found])} | {spread([x[4] for x in found])} |"
        )
    (folder / "seen_tasks.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    return True


def spread(values: Sequence[float | None], signed: bool = False) -> str:
    """``mean ± sample std`` of the values measured (``—`` if none), ``+`` shown if ``signed``."""
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    mean = f"{statistics.fmean(known):{'+' if signed else ''}.3f}"
    return mean if len(known) == 1 else f"{mean} ± {statistics.stdev(known):.3f}"


def write_energy(runs: dict[str, list[tuple[int, list[RoundMetrics]]]], folder: Path) -> bool:
    """The energy each client rank's truncation keeps, per round and module; False if none."""
    lines = [
        [cell, seed, row.round, module, int(rank), share]
        for cell, seeds in runs.items()
        for seed, rows in seeds
        for row in rows
        for module, shares in row.extra.get("energy_kept", {}).items()
        for rank, share in shares.items()
    ]
    if not lines:
        return False
    with (folder / "energy.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", "seed", "round", "module", "rank", "energy_kept"])
        writer.writerows(lines)
    plot_truncation_error(lines, folder / "energy.png")
    (folder / "energy.md").write_text(energy_table(lines), encoding="utf-8")
    return True


def energy_table(lines: list[list[Any]]) -> str:
    """Per cell and client rank, the truncation error ``1 - energy kept`` in percent: its mean
    over every round, module and seed, each seed's mean, the worst value (with its round and
    module), and the mean over modules and seeds in the first and the last round."""
    errors: dict[tuple[str, int], list[tuple[int, int, str, float]]] = defaultdict(list)
    for cell, seed, round_index, module, rank, share in lines:
        errors[cell, rank].append((seed, round_index, module, 100.0 * (1.0 - share)))
    table = [
        "| cell | rank | truncation error, % (mean) | per seed | worst: %, round, module "
        "| first round | last round |",
        "|---|---|---|---|---|---|---|",
    ]
    for (cell, rank), values in sorted(errors.items()):
        seeds = sorted({seed for seed, *_ in values})
        per_seed = [statistics.fmean(e for s, _, _, e in values if s == seed) for seed in seeds]
        worst = max(values, key=lambda value: value[3])
        first, last = min(v[1] for v in values), max(v[1] for v in values)
        at_first = statistics.fmean(e for _, r, _, e in values if r == first)
        at_last = statistics.fmean(e for _, r, _, e in values if r == last)
        mean = statistics.fmean(e for *_, e in values)
        table.append(
            f"| {cell} | {rank} | {mean:.3g} | {', '.join(f'{e:.3g}' for e in per_seed)} "
            f"| {worst[3]:.3g}, round {worst[1]}, {worst[2]} "
            f"| {at_first:.3g} (round {first}) | {at_last:.3g} (round {last}) |"
        )
    return "\n".join(table) + "\n"


ERROR_FLOOR = 1e-6


def plot_truncation_error(lines: list[list[Any]], path: Path) -> None:
    """One panel per cell: per module, ``1 - energy kept`` for each client rank (mean over rounds
    and seeds), on a log scale: the errors span orders of magnitude (floored at 1e-6, where a
    rank holds the whole stacked update)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for cell, _seed, _round, module, rank, share in lines:
        errors[cell][rank][module].append(1.0 - share)
    figure, axes = plt.subplots(1, len(errors), figsize=(6 * len(errors), 4), squeeze=False)
    for axis, (cell, by_rank) in zip(axes[0], errors.items(), strict=True):
        modules = sorted({m for by_module in by_rank.values() for m in by_module})
        for rank, by_module in sorted(by_rank.items()):
            means = [
                max(statistics.fmean(by_module.get(m, [float("nan")])), ERROR_FLOOR)
                for m in modules
            ]
            axis.plot(range(len(modules)), means, marker=".", label=f"rank {rank}")
        axis.set_title(cell)
        axis.set_xlabel("module (by name)")
        axis.set_ylabel("SVD truncation error (1 - energy kept)")
        axis.set_yscale("log")
        axis.set_ylim(ERROR_FLOOR / 2, 1)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def committed_runs(folder: Path, cells: Sequence[str]) -> dict[tuple[str, int], list[RoundMetrics]]:
    """Per (cell, seed) of ``cells``, the evaluated rounds a suite's committed ``rounds.csv``
    reports, round 0 with the seed's trivial baselines (``baselines.csv``): all a panel or a
    contrast reads of a run."""
    if not (folder / "rounds.csv").exists():
        return {}
    baselines: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for line in _csv_lines(folder / "baselines.csv"):
        if line["reference"] != "untuned model":
            baselines[int(line["seed"])][line["reference"]] = _test_metrics(line)
    runs: dict[tuple[str, int], list[RoundMetrics]] = {}
    for line in _csv_lines(folder / "rounds.csv"):
        if line["cell"] in cells:
            seed, number = int(line["seed"]), int(line["round"])
            extra = {"baselines": baselines[seed]} if number == 0 else {}
            row = replace(_UNMEASURED, round=number, extra=extra, **_test_metrics(line))
            runs.setdefault((line["cell"], seed), []).append(row)
    return runs


def _csv_lines(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


_UNMEASURED = RoundMetrics(0, [], [], None, None, None, None, 0, 0, 0.0, 0.0, 0.0)


def _test_metrics(line: dict[str, str]) -> dict[str, Any]:
    """The test metrics of a line of ``rounds.csv`` or ``baselines.csv`` (``None`` if blank)."""
    return {c: float(line[c]) if line.get(c) else None for c in ROUND_COLUMNS}


class FinishedRuns:
    """The finished runs of a suite and of the other suites its panels and contrasts name.

    Another suite's run that no record holds (its run directory lost with the machine it ran on)
    is read from that suite's committed ``rounds.csv``, so a figure shows it as that suite's own
    results report it; ``from_committed`` names those runs (``suite/cell``: seeds).
    """

    def __init__(self, suite: Suite, runs: dict[str, list[tuple[int, list[RoundMetrics]]]]):
        self.suite = suite
        self.runs = {suite.name: runs}
        self.cells = {suite.name: list(suite.cells)}
        self.from_committed: dict[str, list[int]] = {}
        self._committed: dict[str, list[int]] = {}

    def _load(self, source: str) -> None:
        (other,) = all_suites([source])
        runs, cells = finished_runs(other), list(other.cells)
        committed = committed_runs(RESULTS / source, cells)
        for (cell, seed), rows in committed.items():
            if seed not in {s for s, _ in runs.get(cell, [])}:
                runs.setdefault(cell, []).append((seed, rows))
                self._committed.setdefault(f"{source}/{cell}", []).append(seed)
        self.runs[source] = {c: sorted(seeds, key=lambda s: s[0]) for c, seeds in runs.items()}
        self.cells[source] = cells

    def matching(
        self, ref: CellRef, where: str
    ) -> list[tuple[str, list[tuple[int, list[RoundMetrics]]]]]:
        """Each cell ``ref`` names and its finished (seed, metrics); a name of no cell fails."""
        source = ref.suite or self.suite.name
        if source not in self.runs:
            self._load(source)
        matched = [cell for cell in self.cells[source] if fnmatch(cell, ref.cell)]
        if not matched:
            raise ConfigError(f"suite {self.suite.name}: {where}: no cell {ref.pattern!r}")
        for cell in matched:
            if seeds := self._committed.get(f"{source}/{cell}"):
                self.from_committed[f"{source}/{cell}"] = sorted(seeds)
        return [(cell, self.runs[source].get(cell, [])) for cell in matched]


def panel_runs(finished: FinishedRuns) -> dict[str, dict[str, list[list[RoundMetrics]]]]:
    """Per panel of the suite, per line label, the metrics of every finished run it shows."""
    panels: dict[str, dict[str, list[list[RoundMetrics]]]] = {}
    for title, entries in finished.suite.panels.items():
        lines: dict[str, list[list[RoundMetrics]]] = {}
        for entry in entries:
            for cell, seeds in finished.matching(entry, f"panel {title!r}"):
                if seeds:
                    lines[entry.label or cell] = [rows for _, rows in seeds]
        panels[title] = lines
    return panels


class ContrastLine(NamedTuple):
    """One seed of a contrast: both cells' curve means and final values."""

    contrast: str
    a: str
    b: str
    seed: int
    metric: str
    last_round: int
    a_mean_over_rounds: float
    b_mean_over_rounds: float
    a_final: float
    b_final: float


def contrast_lines(finished: FinishedRuns) -> dict[str, list[ContrastLine]]:
    """Per contrast of the suite, a line per seed both cells finished (none yet: empty), up to
    their last common round and up to each earlier round of the suite's ``contrast_rounds``.

    A and B must be measured alike, the same metric at the same rounds, or their difference
    would mean nothing: a contrast across suites could otherwise pair unlike runs silently.  A
    longer run is compared over the shorter one's rounds when those begin its own: its first N
    rounds are the N-round run, bit for bit (continuing a run to more rounds is exact), so a cell
    run to 40 rounds pairs with one run to 20, at round 20.  Every seed is compared up to the
    same round (while a suite's runs are being continued, some seeds are longer than others).
    """
    contrasts: dict[str, list[ContrastLine]] = {}
    for title, (a, b) in finished.suite.contrasts.items():
        ((_, a_seeds),) = finished.matching(a, f"contrast {title!r}")
        ((_, b_seeds),) = finished.matching(b, f"contrast {title!r}")
        b_by_seed = dict(b_seeds)
        pairs = [
            (seed, a_rows, b_by_seed[seed])
            for seed, a_rows in sorted(a_seeds, key=lambda pair: pair[0])
            if seed in b_by_seed
        ]
        lasts = {seed: _last_common_round(a_rows, b_rows) for seed, a_rows, b_rows in pairs}
        last = min((n for n in lasts.values() if n is not None), default=0)
        horizons = [r for r in finished.suite.contrast_rounds if r < last] + [last]
        lines = []
        for horizon in horizons:
            for seed, a_rows, b_rows in pairs:
                metric = headline(a_rows).label
                alike = headline(b_rows).label == metric and lasts[seed] is not None
                a_rows = [row for row in a_rows if row.round <= horizon]
                b_rows = [row for row in b_rows if row.round <= horizon]
                if not alike or _last_common_round(a_rows, b_rows) != horizon:
                    raise ConfigError(
                        f"suite {finished.suite.name}: contrast {title!r}, seed {seed}: "
                        f"{a.pattern!r} and {b.pattern!r} are not measured alike up to round "
                        f"{horizon} (metric or evaluated rounds)"
                    )
                lines.append(
                    ContrastLine(
                        title,
                        a.pattern,
                        b.pattern,
                        seed,
                        metric,
                        horizon,
                        mean_over_rounds(a_rows),
                        mean_over_rounds(b_rows),
                        final_value(a_rows),
                        final_value(b_rows),
                    )
                )
        contrasts[title] = lines
    return contrasts


def _last_common_round(a_rows: list[RoundMetrics], b_rows: list[RoundMetrics]) -> int | None:
    """The shorter run's last evaluated round, if its evaluated rounds begin the other's."""
    a_rounds, b_rounds = ([n for n, _ in _curve(rows)] for rows in (a_rows, b_rows))
    shorter = min(a_rounds, b_rounds, key=len)
    if not shorter or a_rounds[: len(shorter)] != b_rounds[: len(shorter)]:
        return None
    return shorter[-1]


def write_contrasts(finished: FinishedRuns, folder: Path) -> bool:
    """Per contrast, A minus B in every seed both finished: over rounds and after the last
    round; False if the suite has no contrast with a paired seed yet."""
    contrasts = contrast_lines(finished)
    if not any(contrasts.values()):
        return False
    with (folder / "contrasts.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ContrastLine._fields)
        writer.writerows(line for lines in contrasts.values() for line in lines)
    table = [
        "| contrast (A − B) | seeds | up to round | over rounds: A, B | A − B | 95 % CI | per seed "
        "| A ahead | after that round: A, B | A − B | 95 % CI | per seed | A ahead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for title, all_lines in contrasts.items():
        if not all_lines:
            table.append(f"| {title} | no seed of both finished yet |" + " |" * 11)
        horizons = dict.fromkeys(line.last_round for line in all_lines)
        for horizon in horizons:
            lines = [line for line in all_lines if line.last_round == horizon]
            cells = [f"| {title}", ", ".join(str(line.seed) for line in lines), str(horizon)]
            for a_values, b_values in (
                ([x.a_mean_over_rounds for x in lines], [x.b_mean_over_rounds for x in lines]),
                ([x.a_final for x in lines], [x.b_final for x in lines]),
            ):
                differences = [x - y for x, y in zip(a_values, b_values, strict=True)]
                cells += [
                    f"{statistics.fmean(a_values):.3f}, {statistics.fmean(b_values):.3f}",
                    spread(differences, signed=True),
                    interval(differences),
                    ", ".join(with_sign(d) for d in differences),
                    seeds_ahead(differences),
                ]
            table.append(" | ".join(cells) + " |")
    (folder / "contrasts.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    return True


def interval(differences: list[float]) -> str:
    """The 95 % confidence interval of the mean paired difference, ``[low, high]`` (Student's t
    with one degree of freedom fewer than seeds; ``—`` for a single seed): it holds zero when
    the seeds' spread leaves the sign of the difference open."""
    if len(differences) < 2:
        return "—"
    n = len(differences)
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(differences) / math.sqrt(n)
    mean = statistics.fmean(differences)
    return f"[{with_sign(mean - half)}, {with_sign(mean + half)}]"


def seeds_ahead(differences: list[float]) -> str:
    """In how many seeds A is ahead: ``2 of 3``, with exact ties said apart (``1 of 3, 1 tied``)."""
    ahead = f"{sum(d > 0 for d in differences)} of {len(differences)}"
    tied = sum(d == 0 for d in differences)
    return f"{ahead}, {tied} tied" if tied else ahead


def with_sign(value: float) -> str:
    """``+0.012`` / ``-0.012``; an exact tie is ``0.000``, neither a gain nor a loss."""
    return "0.000" if value == 0 else f"{value:+.3f}"


def report(
    suite: Suite, drop_missing: bool = False, folder: Path | None = None, curves_only: bool = False
) -> Path | None:
    """Write the suite's results to ``folder`` (default ``docs/results/<suite>/``)."""
    folder = folder or RESULTS / suite.name
    if curves_only:
        curves = committed_runs(RESULTS / suite.name, list(suite.cells))
        return rebuild_from_curves(suite, curves, folder) if curves else None
    runs = finished_runs(suite)
    if not runs and (curves := committed_runs(RESULTS / suite.name, list(suite.cells))):
        return rebuild_from_curves(suite, curves, folder)
    if not drop_missing:
        held = {(cell, seed) for cell, seeds in runs.items() for seed, _ in seeds}
        check_nothing_dropped(folder / "rounds.csv", held)
    if not runs:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    by_cell = {cell: [rows for _, rows in seeds] for cell, seeds in runs.items()}
    table = write_comparison(comparison_rows(by_cell), folder)
    finished = write_curve_results(suite, runs, folder)
    if finished.from_committed:
        print(
            f"{suite.name}: read from their suites' committed rounds.csv, as no record holds them: "
            + "; ".join(
                f"{cell} seeds {', '.join(map(str, seeds))}"
                for cell, seeds in finished.from_committed.items()
            )
        )
    rounds = folder / "rounds.csv"
    before = rounds.read_text(encoding="utf-8") if rounds.exists() else ""
    write_rounds(runs, rounds)
    after = rounds.read_text(encoding="utf-8")
    print(f"{suite.name}: {reproduction(before, after)}")
    committed = RESULTS / suite.name / "rounds.csv"
    if folder != committed.parent and committed.exists():  # a rebuild elsewhere (--out)
        against = reproduction(committed.read_text(encoding="utf-8"), after)
        print(f"{suite.name}, against the committed results: {against}")
    write_baselines(runs, folder / "baselines.csv")
    write_promotions(runs, folder / "promotion.csv")
    write_holders(runs, folder)
    write_tiers(runs, folder)
    write_energy(runs, folder)
    write_seen_tasks(runs, folder)
    done = sum(len(seeds) for seeds in runs.values())
    print(f"{suite.name}: {done} of {len(suite.jobs)} runs finished\n{table}")
    return folder


def write_curve_results(
    suite: Suite, runs: dict[str, list[tuple[int, list[RoundMetrics]]]], folder: Path
) -> FinishedRuns:
    """What the curves alone give: ``comparison.png``, ``figure.png``, contrasts, convergence."""
    by_cell = {cell: [rows for _, rows in seeds] for cell, seeds in runs.items()}
    plot_comparison(by_cell, folder / "comparison.png", suite.description or suite.name)
    finished = FinishedRuns(suite, runs)
    if suite.panels:
        plot_panels(panel_runs(finished), folder / "figure.png", suite.description or suite.name)
    write_contrasts(finished, folder)
    write_convergence(runs, folder, suite.convergence_thresholds)
    return finished


def rebuild_from_curves(
    suite: Suite, committed: dict[tuple[str, int], list[RoundMetrics]], folder: Path
) -> Path:
    """A suite without a single record (its runs lost with the machine that ran them), or any
    suite under ``--curves-only``, keeps its committed results, but what the curves alone give
    (its figures, contrasts, convergence) is written again from its committed ``rounds.csv``, so
    that it has today's columns and colours."""
    runs: dict[str, list[tuple[int, list[RoundMetrics]]]] = {}
    for (cell, seed), rows in sorted(committed.items(), key=lambda item: item[0][1]):
        runs.setdefault(cell, []).append((seed, rows))
    runs = {cell: runs[cell] for cell in suite.cells if cell in runs}
    folder.mkdir(parents=True, exist_ok=True)
    write_curve_results(suite, runs, folder)
    done = sum(len(seeds) for seeds in runs.values())
    print(
        f"{suite.name}: its figures, contrasts and convergence rewritten from the {done} runs of "
        f"its committed rounds.csv, every other table left as its runs wrote it"
    )
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", help="suite names (default: all)")
    parser.add_argument(
        "--drop-missing",
        action="store_true",
        help="rewrite a suite's results without the runs they report that no record holds",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write one suite's results here instead (e.g. a rebuild while runs are missing)",
    )
    parser.add_argument(
        "--curves-only",
        action="store_true",
        help="rewrite only figures, contrasts and convergence, from the committed rounds.csv",
    )
    args = parser.parse_args(argv)
    suites = all_suites(args.suites)
    if args.out and len(suites) != 1:
        parser.error("--out takes exactly one suite")
    refused = []
    for suite in suites:
        try:
            folder = report(suite, args.drop_missing, args.out, args.curves_only)
        except FedloraError as error:
            print(f"error: {error}", file=sys.stderr)
            refused.append(suite.name)
            continue
        nothing = "no committed rounds.csv" if args.curves_only else "no finished run yet"
        print(f"written: {folder}" if folder else f"{suite.name}: {nothing}")
    if refused:
        print(f"not rewritten: {', '.join(refused)} (see the errors above)", file=sys.stderr)
    return 1 if refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
