"""Why the methods differ: per-class behaviour and the weight of the high slots of final models.

For every finished run of the given suites, the final global state (the run's last checkpoint)
is evaluated again on the run's test set, and two things are written to
``docs/results/<suite>/diagnostics.csv`` (one line per run and class):

- per class: its test rows, recall, and the share of all test rows the model predicts as that
  class (a model that learned the skewed clients' classes only predicts few classes);
- per run: how much of the global update the slots above ``--low`` carry, as
  ``||B_hi A_hi||_F / (||B_lo A_lo||_F + ||B_hi A_hi||_F)`` averaged over modules (slots 1..low
  are what every client trains; the high slots only the high-rank clients), with the mean
  Frobenius norms of both parts.

The re-evaluated accuracy is checked against the run's own final accuracy, so a diagnostic never
describes a model other than the one the run reported.  Methods that merge into the base
weights (FLoRA) are skipped: their final model is not the checkpoint's state alone.

Each run's lines are kept with its committed record (``experiments/records/<suite>/<run>/``,
``diagnostics.json``, ``served.json``), keyed by its config, its last round's metrics and
``--low``: a later call evaluates only the runs finished since (the first 15 populations runs
took 5.4 min from nothing; the next call, which found them kept and evaluated one new run, 32 s),
a run that was run again differently is evaluated again, and a run whose directory (with its
checkpoints) is gone is still diagnosed.  A committed ``diagnostics.csv`` or ``served.csv`` that
reports runs with no record here is not rewritten without them unless ``--drop-missing``.

With ``--served``, also ``served.csv|md``: per run and per tier its clients could train, the test
accuracy and loss of the model such a client is served from the final global state (its first
slots; for FlexLoRA the best approximation of the update at that rank), next to the global
model's.  This is what a low-rank client starts each round from, in accuracy rather than energy.

``diagnostics.md`` summarises the CSV per cell (the table ``docs/results.md`` quotes): the mean
weight of the high slots, each class's mean recall and the worst class's recall in each seed.
``--summary-only`` rebuilds it from the committed CSV without evaluating anything.

    python experiments/diagnose.py SUITE [SUITE ...] [--low RANK] [--summary-only] [--served]
        [--drop-missing]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedlora.aggregation import GlobalState
from fedlora.commands.quiet import quiet_libraries
from fedlora.config import load_config
from fedlora.engine import Evaluation, Experiment, build_experiment
from fedlora.errors import FedloraError
from fedlora.lora.factors import FoldedFactors
from fedlora.runs import RunDir, headline, load_checkpoint
from records import RunRecord, check_nothing_dropped, record_of, recorded
from suites import RESULTS, Job, Suite, all_suites

COLUMNS = (
    "cell",
    "seed",
    "accuracy",
    "global_rank",
    "high_slot_share",
    "low_slot_norm",
    "high_slot_norm",
    "class",
    "support",
    "recall",
    "predicted_share",
)


def slot_norms(state: GlobalState, low: int) -> tuple[float, float, float]:
    """The high share (mean over modules), the mean ``||B_lo A_lo||_F`` and ``||B_hi A_hi||_F``."""
    lows, highs, shares = [], [], []
    for factors in state.modules.values():
        lo = float(torch.linalg.matrix_norm(factors.B[:, :low] @ factors.A[:low]))
        hi = float(torch.linalg.matrix_norm(factors.B[:, low:] @ factors.A[low:]))
        lows.append(lo)
        highs.append(hi)
        shares.append(hi / (lo + hi) if lo + hi else math.nan)
    return statistics.fmean(shares), statistics.fmean(lows), statistics.fmean(highs)


def final_state(run: RunDir) -> GlobalState:
    """The run's last global state; from ``global.safetensors`` for runs made before checkpoints
    became one file per round (2026-11-26), which :func:`load_checkpoint` no longer reads."""
    legacy = run.checkpoint_dir / "global.safetensors"
    if not legacy.exists():
        return load_checkpoint(run.checkpoint_dir).state
    meta = json.loads((run.checkpoint_dir / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(legacy))
    modules = {
        key.removeprefix("lora/").removesuffix("/A"): FoldedFactors(
            A=tensor, B=tensors[key.removesuffix("/A") + "/B"]
        )
        for key, tensor in tensors.items()
        if key.startswith("lora/") and key.endswith("/A")
    }
    dense = {k.removeprefix("dense/"): t for k, t in tensors.items() if k.startswith("dense/")}
    return GlobalState(modules=modules, dense=dense, round=meta["round"], seed=meta["seed"])


def final_model(
    run: RunDir, overrides: Sequence[str] = ()
) -> tuple[Experiment, GlobalState, Evaluation] | None:
    """The run's experiment, last global state and that state's evaluation (None for a merging
    method), checked to be the model the run reported; ``overrides`` change the experiment's
    settings (how clients would train from that state), never the state."""
    experiment = build_experiment(load_config(run.config_file, overrides))
    if experiment.aggregator.merges_into_base:
        return None
    state = final_state(run)
    evaluation = experiment.evaluate(state)
    rows = run.metrics()
    metric = headline(rows)  # accuracy, or a causal LM's score
    scored: float | None = getattr(evaluation, metric.field.removeprefix("test_"))
    reported = metric.value(rows[-1])
    if scored is None or reported is None or not math.isclose(scored, reported, abs_tol=1e-6):
        raise SystemExit(
            f"{run.path}: the checkpoint's model has {metric.label} {scored}, the run reported "
            f"{reported}: not the run's final model"
        )
    return experiment, state, evaluation


def diagnose(run: RunDir, cell: str, seed: int, low: int) -> list[list[object]]:
    """The diagnostic lines of one finished run (none for a merging method)."""
    model = final_model(run)
    if model is None:
        return []
    _, state, evaluation = model
    share, low_norm, high_norm = slot_norms(state, low)
    rank = max(factors.A.shape[0] for factors in state.modules.values())
    total = sum(entry["support"] for entry in evaluation.extra["per_class"])
    lines: list[list[object]] = []
    for entry in evaluation.extra["per_class"]:
        lines.append(
            [
                cell,
                seed,
                _rounded(evaluation.accuracy),
                rank,
                *(_rounded(x) for x in (share, low_norm, high_norm)),
                entry["class"],
                entry["support"],
                _rounded(entry["recall"]),
                _rounded(entry["predicted"] / total),
            ]
        )
    return lines


def served(run: RunDir, cell: str, seed: int) -> list[list[object]]:
    """Per tier a client of the run could train: the test accuracy and loss of the model such a
    client is served from the final global state (its first slots: for FlexLoRA the update's
    best approximation at that rank), next to the global model's."""
    model = final_model(run)
    if model is None:
        return []
    experiment, state, evaluation = model
    shapes = experiment.model.module_shapes()
    trained = [name for row in run.metrics() for name in row.extra.get("tiers", [])]
    lines: list[list[object]] = []
    for tier in dict.fromkeys(experiment.policy.possible_tiers()):
        served_model = experiment.evaluate(state, tier.capped_rank_map(shapes))
        lines.append(
            [
                cell,
                seed,
                tier.name,
                trained.count(tier.name),
                _rounded(served_model.accuracy),
                _rounded(served_model.loss),
                _rounded(evaluation.accuracy),
            ]
        )
    return lines


def cached(
    record: RunRecord, what: str, key: dict[str, object], compute: Callable[[], list[list[object]]]
) -> list[list[object]]:
    """``compute()``, kept with the run's record (``<what>.json``) and read back while the run's
    config, its last round's metrics and ``key`` are unchanged."""
    rows = record.metrics()
    last = rows[-1]
    key = {
        "config_sha256": hashlib.sha256(record.config_file.read_bytes()).hexdigest(),
        "last_round": [last.round, headline(rows).value(last)],  # accuracy for classifiers
        **key,
    }
    path = record.path / f"{what}.json"
    if path.exists():
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept["key"] == key:
            return [list(line) for line in kept["lines"]]
    lines = compute()
    path.write_text(json.dumps({"key": key, "lines": lines}), encoding="utf-8")
    return lines


def checkpointed(job: Job) -> RunDir:
    """The job's run directory, which holds the final state an evaluation needs."""
    run = RunDir(job.out)
    if not run.is_finished():
        raise FedloraError(
            f"{job.suite}/{job.name}: its final model must be evaluated, and its run directory "
            f"{run.path} (with the checkpoints) is not here, only its record; to run it again, "
            f"delete {record_of(job).path} and run python experiments/run.py {job.suite}"
        )
    return run


def cached_diagnosis(job: Job, record: RunRecord, low: int) -> list[list[object]]:
    """:func:`diagnose`, read from the record when the same run was diagnosed before."""
    return cached(
        record,
        "diagnostics",
        {"low": low, "cell": job.cell, "seed": job.seed},
        lambda: diagnose(checkpointed(job), job.cell, job.seed, low),
    )


def cached_served(job: Job, record: RunRecord) -> list[list[object]]:
    """:func:`served`, read from the record when the same run was evaluated before."""
    return cached(
        record,
        "served",
        {"cell": job.cell, "seed": job.seed},
        lambda: served(checkpointed(job), job.cell, job.seed),
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def summary(lines: list[dict[str, str]], low: int) -> str:
    """Per cell, in the CSV's order: seeds, the mean weight of the slots above ``low`` ("—"
    when the global rank is at most ``low``: there are none), each class's mean recall (over the
    seeds whose test rows hold it) and, per seed, the worst class's recall."""
    cells: dict[str, dict[int, list[dict[str, str]]]] = {}
    for line in lines:
        cells.setdefault(line["cell"], {}).setdefault(int(line["seed"]), []).append(line)
    classes = list(dict.fromkeys(line["class"] for line in lines))
    header = (
        f"| cell | seeds | weight of slots above {low} | recall {' / '.join(classes)} "
        "| worst class's recall, per seed |"
    )
    table = [header, "|---|---|---|---|---|"]
    for cell, seeds in cells.items():
        runs = [by_class[0] for by_class in seeds.values()]
        has_high = any(int(run["global_rank"]) > low for run in runs)
        weight = f"{statistics.fmean(float(r['high_slot_share']) for r in runs):.3f}"
        recalls = [
            [
                float(x["recall"])
                for s in seeds.values()
                for x in s
                if x["class"] == name and x["recall"]
            ]
            for name in classes
        ]
        worst = [min(float(x["recall"]) for x in s if x["recall"]) for s in seeds.values()]
        table.append(
            f"| {cell} | {', '.join(map(str, seeds))} | {weight if has_high else '—'} "
            f"| {' / '.join(f'{statistics.fmean(r):.2f}' if r else '—' for r in recalls)} "
            f"| {', '.join(f'{w:.2f}' for w in worst)} |"
        )
    return "\n".join(table) + "\n"


SERVED_COLUMNS = (
    "cell",
    "seed",
    "tier",
    "client_rounds",
    "served_accuracy",
    "served_loss",
    "global_accuracy",
)


def served_summary(lines: list[dict[str, str]]) -> str:
    """Per cell and tier, in the CSV's order: the served model's mean accuracy over the seeds,
    per seed, its mean test loss, and the global model's mean accuracy beside it."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for line in lines:
        groups.setdefault((line["cell"], line["tier"]), []).append(line)
    table = [
        "| cell | tier | client-rounds per run | served model's accuracy | per seed "
        "| served model's test loss | global model's accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for (cell, tier), runs in groups.items():

        def mean(column: str, runs: list[dict[str, str]] = runs) -> float:
            return statistics.fmean(float(run[column]) for run in runs)

        per_seed = ", ".join(f"{float(run['served_accuracy']):.3f}" for run in runs)
        table.append(
            f"| {cell} | {tier} | {mean('client_rounds'):.0f} | {mean('served_accuracy'):.3f} "
            f"| {per_seed} "
            f"| {mean('served_loss'):.3f} | {mean('global_accuracy'):.3f} |"
        )
    return "\n".join(table) + "\n"


def write_csv(path: Path, columns: tuple[str, ...], lines: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(lines)


def smallest_rank(suite: str, records: list[RunRecord]) -> int:
    """The smallest rank any client of the finished runs trained: the slots up to it are what
    every client trains (5 in Byun & Lee's setting, 8 in FlexLoRA's populations)."""
    ranks = [min(row.ranks) for record in records for row in record.metrics() if row.ranks]
    if not ranks:
        raise SystemExit(f"{suite}: no finished run to read the smallest rank from; give --low")
    return min(ranks)


def write_diagnostics(suite: Suite, args: argparse.Namespace) -> None:
    """The suite's diagnostics.csv|md and, with ``--served``, served.csv|md."""
    folder = RESULTS / suite.name
    path: Path = folder / "diagnostics.csv"
    done = [(job, record) for job in suite.jobs if (record := recorded(job)) is not None]
    held = {(job.cell, job.seed) for job, _ in done}
    low = args.low if args.low is not None else smallest_rank(suite.name, [r for _, r in done])
    if not args.summary_only:
        if not args.drop_missing:
            check_nothing_dropped(path, held)
        lines = [line for job, record in done for line in cached_diagnosis(job, record, low)]
        write_csv(path, COLUMNS, lines)
        print(f"{suite.name}: {len(done)} finished runs diagnosed -> {path}")
    with path.open(encoding="utf-8") as handle:
        table = summary(list(csv.DictReader(handle)), low)
    (folder / "diagnostics.md").write_text(table, encoding="utf-8")
    print(f"{suite.name}: per-cell summary -> {folder / 'diagnostics.md'}")
    if args.served:
        if not args.drop_missing:
            check_nothing_dropped(folder / "served.csv", held)
        lines = [line for job, record in done for line in cached_served(job, record)]
        write_csv(folder / "served.csv", SERVED_COLUMNS, lines)
        named = [dict(zip(SERVED_COLUMNS, map(str, line), strict=True)) for line in lines]
        (folder / "served.md").write_text(served_summary(named), encoding="utf-8")
        print(f"{suite.name}: served models per tier -> {folder / 'served.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="+", help="suite names")
    parser.add_argument(
        "--low",
        type=int,
        help="the rank every client trains (default: the smallest rank a client trained)",
    )
    parser.add_argument(
        "--summary-only", action="store_true", help="rebuild diagnostics.md from the CSV only"
    )
    parser.add_argument(
        "--served",
        action="store_true",
        help="also evaluate, per tier, the model a client is served (served.csv|md; one more "
        "evaluation per tier and run)",
    )
    parser.add_argument(
        "--drop-missing",
        action="store_true",
        help="rewrite the CSVs without the runs they report that no record holds",
    )
    args = parser.parse_args(argv)
    quiet_libraries()  # a load report per re-evaluated model would bury the results
    for suite in all_suites(args.suites):
        try:
            write_diagnostics(suite, args)
        except FedloraError as error:
            raise SystemExit(f"error: {error}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
