"""Generation metrics: Rouge-L (rouge-score), exact match, and FlexLoRA's data-size weighting.

Every instruction task names the metric that scores it (:data:`TASK_METRICS`): Rouge-L gives
partial credit for overlapping words, but it lower-cases and keeps only letters and digits, so
on a task that changes case, symbols or word order it scores copying the input as (nearly)
right; such tasks are scored by exact match.  :func:`score_tasks` reports each task by its own
metric (the headline ``score``) and every task by both metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fedlora.errors import ConfigError

if TYPE_CHECKING:
    from fedlora.instruct.examples import InstructionExample

ROUGE_L = "rouge_l"
EXACT_MATCH = "exact_match"
TASK_METRICS = (ROUGE_L, EXACT_MATCH)
"""The metrics a task can be scored by: :func:`rouge_l` and :func:`exact_match`."""


@lru_cache(maxsize=1)
def _scorer() -> Any:
    # Imported on first use: rouge-score pulls in nltk (about 2 s), which a process that only
    # trains (every Flower ClientApp, one per message) never needs.
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure of ``prediction`` against ``reference`` (rouge-score, no stemming).

    rouge-score lower-cases and keeps only ``[a-z0-9]`` tokens, so punctuation is ignored and a
    text with no such tokens scores 0.
    """
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def normalize_answer(text: str) -> str:
    """What :func:`exact_match` compares: runs of whitespace made one space, the ends stripped.

    Case, punctuation and symbols are kept: on case-conversion and format tasks they *are* the
    answer, and a folded comparison would score copying the input as a right answer.
    """
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal up to whitespace (:func:`normalize_answer`), else 0.0.

    The one exact-match rule of fedlora: generation evaluation and the run metrics both use it.
    """
    return 1.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def score_predictions(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ``rouge_l`` and ``exact_match`` over paired generations and references."""
    if len(predictions) != len(references):
        raise ConfigError(
            f"score_predictions: {len(predictions)} predictions but {len(references)} references"
        )
    if not predictions:
        raise ConfigError("score_predictions: no predictions")
    n = len(predictions)
    pairs = list(zip(predictions, references, strict=True))
    return {
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / n,
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
    }


def weighted_task_scores(per_task: Mapping[str, tuple[Sequence[float] | float, int]]) -> float:
    """FlexLoRA's report: each task's mean score weighted by its data size ``n``.

    ``per_task`` maps a task (client) to ``(scores, n)``: its per-example scores (or their mean)
    and its data size.  Returns ``sum(n_t * mean_t) / sum(n_t)``.
    """
    if not per_task:
        raise ConfigError("weighted_task_scores: no tasks")
    total = 0.0
    weight = 0
    for task, (scores, n) in per_task.items():
        if isinstance(scores, int | float):
            mean = float(scores)
        else:
            if len(scores) == 0:
                raise ConfigError(f"weighted_task_scores: task {task!r} has no scores")
            mean = sum(float(s) for s in scores) / len(scores)
        if not math.isfinite(mean):
            raise ConfigError(f"weighted_task_scores: task {task!r} has a non-finite score")
        if n < 0:
            raise ConfigError(f"weighted_task_scores: task {task!r} has negative size {n}")
        total += n * mean
        weight += n
    if weight == 0:
        raise ConfigError("weighted_task_scores: all task sizes are zero")
    return total / weight


@dataclass(frozen=True)
class TaskScores:
    """Generations scored per task, then over tasks weighted by task size.

    ``score`` scores every task by its own metric; ``rouge_l`` and ``exact_match`` score every
    task by that one metric.  ``by_task`` holds each task's mean under the same three names.
    """

    score: float
    rouge_l: float
    exact_match: float
    by_task: dict[str, dict[str, float]]


def score_tasks(
    examples: Sequence[InstructionExample],
    predictions: Sequence[str],
    task_sizes: Mapping[str, int],
) -> TaskScores:
    """Score ``predictions[i]`` against ``examples[i].output``; weigh tasks by ``task_sizes``."""
    if len(predictions) != len(examples):
        raise ConfigError(
            f"score_tasks: {len(predictions)} predictions but {len(examples)} examples"
        )
    per_example: dict[str, dict[str, list[float]]] = {}
    for example, prediction in zip(examples, predictions, strict=True):
        values = {
            ROUGE_L: rouge_l(prediction, example.output),
            EXACT_MATCH: exact_match(prediction, example.output),
        }
        task = per_example.setdefault(example.task, {"score": [], ROUGE_L: [], EXACT_MATCH: []})
        task["score"].append(values[example.metric])
        for name, value in values.items():
            task[name].append(value)
    missing = sorted(set(per_example) - set(task_sizes))
    if missing:
        raise ConfigError(f"score_tasks: no task size for {missing}")
    by_task = {
        task: {name: sum(v) / len(v) for name, v in lists.items()}
        for task, lists in per_example.items()
    }

    def weighted(name: str) -> float:
        return weighted_task_scores({t: (m[name], task_sizes[t]) for t, m in by_task.items()})

    return TaskScores(
        score=weighted("score"),
        rouge_l=weighted(ROUGE_L),
        exact_match=weighted(EXACT_MATCH),
        by_task=by_task,
    )
