"""Score instruction-tuning runs' final models on every example of their unseen tasks.

The CPU-sized instruction suites score 4 examples of each of the 9 unseen tasks after the last
round (36 answers, ``instruct.eval_per_task = 4``): one answer moves the score by about 0.03, so
methods closer than that cannot be told apart.  Every example of an unseen task is held out of
every client (the tasks are drawn from the seed before training), so a finished run's final model
can be scored on all of them afterwards, without training anything again.  For each finished run
of the suite (its run directory, with the checkpoints, must be here):

1. the final state is scored as the run scored it and checked against the score the run reported,
   so the model rescored is the run's own;
2. it is scored again with at most ``--per-task`` examples of each unseen task (0: all).

The seen-task test set (``instruct.seen_test_fraction``) is left out of both unless ``--seen``: it
already holds a few hundred examples, and generation takes about a second per example on one CPU
thread.  The copy baseline and the untuned model (once per seed) are scored on the same examples.
Written to ``docs/results/<suite>/<name>.csv`` (one line per run, with its seed's baselines; kept
with each run's record, so a second call scores only new runs), ``<name>_contrasts.csv`` (per
contrast of the suite and seed, A's and B's scores) and ``<name>.md``: per cell the score (mean ±
std over seeds, each seed's) beside the run's own, the baselines, and A − B per contrast.

    python experiments/rescore.py SUITE [--cells PATTERN ...] [--per-task N] [--seen]
        [--name rescored] [--drop-missing]
"""

from __future__ import annotations

import argparse
import csv
from fnmatch import fnmatch
from pathlib import Path
from typing import NamedTuple

from diagnose import cached, checkpointed, final_model, write_csv
from fedlora.commands.quiet import quiet_libraries
from fedlora.config import load_config
from fedlora.engine import build_experiment
from fedlora.engine.instruction import GenerationEvaluator
from fedlora.errors import FedloraError
from fedlora.runs import RunDir
from records import RunRecord, check_nothing_dropped, recorded
from report import interval, seeds_ahead, spread, with_sign
from suites import RESULTS, Job, Suite, all_suites, check_patterns

COLUMNS = (
    "cell",
    "seed",
    "per_task",
    "examples",
    "score",
    "rouge_l",
    "exact_match",
    "loss",
    "run_examples",
    "run_score",
    "seen_examples",
    "seen_score",
    "copy_score",
    "untuned_score",
)


def _examples(evaluator: object, seen: bool = False) -> int | None:
    """How many test examples (of the seen tasks: ``seen``) a generation evaluator scores."""
    assert isinstance(evaluator, GenerationEvaluator)
    scored = evaluator.seen if seen else evaluator.test
    return None if scored is None else len(scored.examples)


def rescore(
    run: RunDir, cell: str, seed: int, per_task: int, seen: bool, untuned: bool = False
) -> list[object]:
    """One run's line: its final model scored on the unseen tasks' examples (at most
    ``per_task`` each, 0: all), after checking that it scores as the run reported; the copy
    baseline scored on them too, and with ``untuned`` the untuned model (the run's round-0 state,
    the same for every cell of a seed)."""
    if not load_config(run.config_file).is_causal_lm:
        raise SystemExit(f"{run.path}: rescore.py scores instruction-tuning runs only")
    unseen_only = [] if seen else ["instruct.seen_test_fraction=0"]
    checked = final_model(run, unseen_only)
    if checked is None:
        raise SystemExit(f"{run.path}: a merging method's final model is not its state alone")
    as_run, state, run_scores = checked
    experiment = build_experiment(
        load_config(run.config_file, [*unseen_only, f"instruct.eval_per_task={per_task}"])
    )
    scores = experiment.evaluate(state)
    seen_scores = scores.extra.get("seen_tasks", {})
    copied = experiment.evaluator.baselines()["copy_input"]
    start = experiment.evaluate(experiment.initial_state()) if untuned else None
    return [
        cell,
        seed,
        per_task,
        _examples(experiment.evaluator),
        scores.score,
        scores.rouge_l,
        scores.exact_match,
        scores.loss,
        _examples(as_run.evaluator),
        run_scores.score,
        _examples(experiment.evaluator, seen=True),
        seen_scores.get("score"),
        copied.score,
        None if start is None else start.score,
    ]


def cached_rescore(
    job: Job, record: RunRecord, args: argparse.Namespace, untuned: bool
) -> list[object]:
    """:func:`rescore`, read from the run's record when it was rescored alike before."""
    settings = {"per_task": args.per_task, "seen": args.seen, "untuned": untuned}
    lines = cached(
        record,
        args.name,
        {"cell": job.cell, "seed": job.seed, **settings},
        lambda: [rescore(checkpointed(job), job.cell, job.seed, **settings)],
    )
    return lines[0]


class Paired(NamedTuple):
    """One seed of a contrast: A's and B's scores, rescored and as the runs scored them."""

    contrast: str
    a: str
    b: str
    seed: int
    a_score: float
    b_score: float
    a_run_score: float
    b_run_score: float


def _by_cell(lines: list[dict[str, str]]) -> dict[str, dict[int, dict[str, str]]]:
    cells: dict[str, dict[int, dict[str, str]]] = {}
    for line in lines:
        cells.setdefault(line["cell"], {})[int(line["seed"])] = line
    return cells


def contrast_lines(lines: list[dict[str, str]], suite: Suite) -> list[Paired]:
    """Per contrast of the suite whose cells were both rescored, per seed both have: A's and
    B's scores, rescored and as the runs scored them."""
    cells = _by_cell(lines)
    paired: list[Paired] = []
    for title, (a, b) in suite.contrasts.items():
        if a.suite or b.suite or a.cell not in cells or b.cell not in cells:
            continue
        for seed in sorted(set(cells[a.cell]) & set(cells[b.cell])):
            x, y = cells[a.cell][seed], cells[b.cell][seed]
            scores = (x["score"], y["score"], x["run_score"], y["run_score"])
            paired.append(Paired(title, a.cell, b.cell, seed, *map(float, scores)))
    return paired


def summary(lines: list[dict[str, str]], contrasts: list[Paired]) -> str:
    """Per cell the rescored score beside the run's own, the untuned model's and the copy
    baseline's on the same examples; per contrast, A − B in every seed both have."""
    table = [
        "| cell | seeds | examples scored, per seed | score | per seed "
        "| as the run scored it (examples) | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell, seeds in _by_cell(lines).items():
        scores = [float(line["score"]) for line in seeds.values()]
        own = [float(line["run_score"]) for line in seeds.values()]
        examples = ", ".join(line["examples"] for line in seeds.values())
        run_examples = "/".join(sorted({line["run_examples"] for line in seeds.values()}))
        table.append(
            f"| {cell} | {', '.join(map(str, seeds))} | {examples} | {spread(scores)} "
            f"| {', '.join(f'{s:.3f}' for s in scores)} | {spread(own)} ({run_examples}) "
            f"| {', '.join(f'{s:.3f}' for s in own)} |"
        )
    for reference, column in (("untuned model", "untuned_score"), ("copy the input", "copy_score")):
        by_seed: dict[int, tuple[str, float]] = {}
        for line in lines:
            if line[column]:
                by_seed.setdefault(int(line["seed"]), (line["examples"], float(line[column])))
        if by_seed:
            seeds_in = sorted(by_seed)
            scores = [by_seed[seed][1] for seed in seeds_in]
            table.append(
                f"| {reference} | {', '.join(map(str, seeds_in))} "
                f"| {', '.join(by_seed[seed][0] for seed in seeds_in)} | {spread(scores)} "
                f"| {', '.join(f'{s:.3f}' for s in scores)} | — | — |"
            )
    if contrasts:
        table += [
            "",
            "| contrast (A − B) | seeds | A − B, rescored | 95 % CI | per seed | A ahead "
            "| as the runs scored it | per seed |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for title in dict.fromkeys(line.contrast for line in contrasts):
        mine = [line for line in contrasts if line.contrast == title]
        now = [x.a_score - x.b_score for x in mine]
        before = [x.a_run_score - x.b_run_score for x in mine]
        table.append(
            f"| {title} | {', '.join(str(x.seed) for x in mine)} | {spread(now, signed=True)} "
            f"| {interval(now)} | {', '.join(with_sign(d) for d in now)} | {seeds_ahead(now)} "
            f"| {spread(before, signed=True)} | {', '.join(with_sign(d) for d in before)} |"
        )
    return "\n".join(table) + "\n"


def finished(suite: Suite, cells: list[str]) -> list[tuple[Job, RunRecord]]:
    """The suite's finished runs of the cells ``cells`` (patterns) names, with their records."""
    check_patterns(cells, list(suite.cells), f"cell of {suite.name}")
    jobs = [job for job in suite.jobs if any(fnmatch(job.cell, pattern) for pattern in cells)]
    done = [(job, record) for job in jobs if (record := recorded(job)) is not None]
    if not done:
        raise SystemExit(f"{suite.name}: no finished run of the cells {cells}")
    return done


def write_rescored(
    suite: Suite, done: list[tuple[Job, RunRecord]], args: argparse.Namespace
) -> Path:
    """The suite's ``<name>.csv|md`` from the finished runs ``done``."""
    folder = RESULTS / suite.name
    path = folder / f"{args.name}.csv"
    if not args.drop_missing:
        check_nothing_dropped(path, {(job.cell, job.seed) for job, _ in done})
    firsts: dict[int, Job] = {}  # the untuned model is scored once per seed
    for job, _ in done:
        firsts.setdefault(job.seed, job)
    lines = [cached_rescore(job, record, args, firsts[job.seed] is job) for job, record in done]
    untuned = {line[1]: line[-1] for line in lines if line[-1] is not None}
    lines = [[*line[:-1], untuned.get(line[1])] for line in lines]  # each with its seed's
    write_csv(path, COLUMNS, lines)
    with path.open(encoding="utf-8", newline="") as handle:
        named = list(csv.DictReader(handle))
    contrasts = contrast_lines(named, suite)
    write_csv(folder / f"{args.name}_contrasts.csv", Paired._fields, [list(x) for x in contrasts])
    table = summary(named, contrasts)
    (folder / f"{args.name}.md").write_text(table, encoding="utf-8")
    print(f"{suite.name}: {len(done)} runs rescored -> {path}\n{table}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="an instruction-tuning suite")
    parser.add_argument("--cells", nargs="+", default=["*"], help="cell patterns (default: all)")
    parser.add_argument(
        "--per-task",
        type=int,
        default=0,
        help="score at most this many examples of each unseen task (default 0: all of them)",
    )
    parser.add_argument(
        "--seen", action="store_true", help="also score the seen-task test set (slower)"
    )
    parser.add_argument("--name", default="rescored", help="the output files' name")
    parser.add_argument(
        "--drop-missing",
        action="store_true",
        help="rewrite the CSV without the runs it reports that no record holds",
    )
    args = parser.parse_args(argv)
    if args.per_task < 0:
        parser.error("--per-task must be 0 (all) or more")
    quiet_libraries()
    try:
        (suite,) = all_suites([args.suite])
        write_rescored(suite, finished(suite, args.cells), args)
    except FedloraError as error:
        raise SystemExit(f"error: {error}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
