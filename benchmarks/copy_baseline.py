"""Audit: what answering every prompt with its own input scores on the generated task mix.

A score that copying the input earns measures the data, not learning.  For every generated task
(all of them, topic tasks included when ``$FEDLORA_DATA`` holds AG News / DBpedia-14) this scores
:func:`~fedlora.instruct.copy_input` against the references with each task's own metric (the
headline ``score``), and with Rouge-L and exact match on every task.  Rouge-L on every task was
the headline before tasks carried their metric, so its column is the "before" number and
``score`` the "after" one.

It also scores the copy on the unseen test tasks that ``split_instructions`` holds out, exactly as
:class:`~fedlora.engine.instruction.GenerationEvaluator` does (the same test examples, weighted by
task size), for the default causal-LM config (20 clients) and ``configs/instruct_smollm2.toml``
(80 clients), seed by seed.  Model-free and deterministic: a few seconds.

    python benchmarks/copy_baseline.py [--seeds 0,1,2]

Markdown tables printed and written with their numbers to ``benchmarks/results/copy_baseline.json``.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean
from typing import Any

from bench_env import REPO  # first: the offline environment and $FEDLORA_DATA
from bench_tools import Report, table
from bench_tools import parser as bench_parser
from fedlora.config import ExperimentConfig, load_config
from fedlora.engine.instruction import load_instructions, split_instructions
from fedlora.instruct import TaskScores, available_task_count, copy_input_scores

METRICS = ("rouge_l", "score", "exact_match")
CONFIGS = {
    "default (task = causal-lm)": (None, ["task=causal-lm"]),
    "configs/instruct_smollm2.toml": (str(REPO / "configs/instruct_smollm2.toml"), []),
}


def _summary(scores: TaskScores) -> dict[str, float]:
    return {name: getattr(scores, name) for name in METRICS}


def all_tasks(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Every generated task's copy scores, the tasks drawn as ``config`` draws its own."""
    count = available_task_count(data_dir=config.data.data_dir or None)
    data = load_instructions(config.replace({"instruct.num_tasks": count}))
    groups = data.by_task()
    scores = copy_input_scores(data.examples, {t: len(rows) for t, rows in groups.items()})
    return {
        task: {"metric": data.examples[groups[task][0]].metric, **scores.by_task[task]}
        for task in groups
    }


def unseen(config: ExperimentConfig) -> dict[str, Any]:
    """The copy on the held-out test tasks of ``config``, scored as the evaluator scores it."""
    split = split_instructions(config, load_instructions(config), None)
    scores = copy_input_scores(split.test.examples, split.task_sizes)
    metric = {ex.task: ex.metric for ex in split.test.examples}
    return {
        "num_clients": config.run.num_clients,
        "test_examples": len(split.test),
        **_summary(scores),
        "by_task": {t: {"metric": metric[t], **m} for t, m in scores.by_task.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, threads=None)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    args = parser.parse_args(argv)
    report = Report("copy_baseline", args)
    seeds = [int(s) for s in args.seeds.split(",")]
    default = load_config(None, ["task=causal-lm"])

    per_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    per_seed = {}
    for seed in seeds:
        tasks = all_tasks(default.replace({"run.seed": seed}))
        per_seed[seed] = {"tasks": len(tasks)} | {
            name: mean(m[name] for m in tasks.values()) for name in METRICS
        }
        for task, values in tasks.items():
            per_task[task].append(values)
    by_task = {
        task: {"metric": rows[0]["metric"]} | {n: mean(r[n] for r in rows) for n in METRICS}
        for task, rows in sorted(per_task.items())
    }
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task, values in by_task.items():
        families[task.split(".")[0]].append(values)
    by_family = {
        family: {"tasks": len(rows), "metrics": sorted({r["metric"] for r in rows})}
        | {n: mean(r[n] for r in rows) for n in METRICS}
        for family, rows in sorted(families.items())
    }
    splits = {
        name: {seed: unseen(load_config(path, [*overrides, f"run.seed={seed}"])) for seed in seeds}
        for name, (path, overrides) in CONFIGS.items()
    }
    results = {
        "what": "copy the input as the answer; means over tasks (all tasks) or weighted by task "
        "size over the unseen test tasks (as the evaluator); rouge_l = the headline before tasks "
        "carried their metric, score = the headline after",
        "seeds": seeds,
        "all_tasks": {"per_seed": per_seed, "by_family": by_family, "by_task": by_task},
        "unseen": splits,
    }
    report.write(results, _tables(results))
    return 0


HEADER = ("", "Rouge-L (before)", "score (after)", "exact match")


def _row(label: str, values: dict[str, Any]) -> tuple[str, ...]:
    return (label, *(f"{values[name]:.3f}" for name in ("rouge_l", "score", "exact_match")))


def _tables(results: dict[str, Any]) -> list[str]:
    everything = results["all_tasks"]
    rows = [
        _row(f"{family} ({values['tasks']}, {'/'.join(values['metrics'])})", values)
        for family, values in everything["by_family"].items()
    ]
    rows += [
        _row(f"all {values['tasks']} tasks, seed {seed}", values)
        for seed, values in everything["per_seed"].items()
    ]
    tables = [table("Copying the input, mean over the tasks of each family", HEADER, rows)]
    for name, seeds in results["unseen"].items():
        rows = [
            _row(f"seed {seed}: {len(v['by_task'])} tasks, {v['test_examples']} rows", v)
            for seed, v in seeds.items()
        ]
        tables.append(table(f"Unseen test tasks of {name}, weighted by task size", HEADER, rows))
    return tables


if __name__ == "__main__":
    raise SystemExit(main())
