"""Evaluation of the global adapter on the test set (shared by every runner).

What "the test set" means depends on the task, so an experiment carries an :class:`Evaluator`:
classification scores the test split (loss, accuracy, macro-F1); causal LMs generate on the
held-out tasks (:class:`~fedlora.engine.instruction.GenerationEvaluator`).  Both return one
:class:`Evaluation`, which the runners turn into the ``test_*`` columns of a round's metrics.

A number means something only next to what a trivial answer scores on the same test rows, so
every evaluator also scores its model-free baselines (:meth:`Evaluator.baselines`): the majority
class for classification, copying the input for generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol, TypedDict

import numpy as np
import numpy.typing as npt
import torch

from fedlora.data import TokenizedData
from fedlora.errors import ConfigError
from fedlora.model import AdaptedModel, evaluate, evaluate_lm, macro_f1
from fedlora.model.instructions import TokenizedInstructions


@dataclass(frozen=True)
class Evaluation:
    """Test metrics of one model or baseline; ``None`` where it does not define a metric.

    ``score`` is the headline a run is judged by: accuracy for classification; for generation,
    every test task scored by its own metric, weighted by task size.  ``loss`` is ``None`` for a
    baseline that predicts no probabilities (copying the input).
    """

    loss: float | None
    accuracy: float | None = None
    macro_f1: float | None = None
    rouge_l: float | None = None
    exact_match: float | None = None
    score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metric_fields(self) -> MetricColumns:
        """The ``test_*`` fields of :class:`~fedlora.runs.RoundMetrics`."""
        return MetricColumns(
            test_loss=self.loss,
            test_accuracy=self.accuracy,
            test_macro_f1=self.macro_f1,
            test_rouge_l=self.rouge_l,
            test_exact_match=self.exact_match,
            test_score=self.score,
        )


class MetricColumns(TypedDict):
    """The metric columns an :class:`Evaluation` fills."""

    test_loss: float | None
    test_accuracy: float | None
    test_macro_f1: float | None
    test_rouge_l: float | None
    test_exact_match: float | None
    test_score: float | None


def test_metrics(evaluation: Evaluation | None) -> MetricColumns:
    """The ``test_*`` fields of a round's metrics (all ``None`` when it was not evaluated)."""
    if evaluation is None:
        return MetricColumns(
            test_loss=None,
            test_accuracy=None,
            test_macro_f1=None,
            test_rouge_l=None,
            test_exact_match=None,
            test_score=None,
        )
    return evaluation.metric_fields()


class Evaluator(Protocol):
    """Scores the model's active adapter on the experiment's test set."""

    def __call__(self, model: AdaptedModel) -> Evaluation: ...

    def baselines(self) -> dict[str, Evaluation]:
        """Model-free trivial baselines, by name, scored on exactly the model's test rows."""
        ...


@dataclass(frozen=True, eq=False)
class ClassificationEvaluator:
    """Cross-entropy, accuracy and macro-F1 on the whole test split, and per-class metrics.

    ``train_label_counts[c]`` is the number of training rows of class ``c`` (every class of the
    dataset, zeros included): what the majority-class baseline knows.  ``class_names`` name the
    classes in ``extra["per_class"]``, one entry per class in id order (default: their ids).
    """

    test: TokenizedData
    batch_size: int
    train_label_counts: npt.NDArray[np.int64]
    class_names: Sequence[str] = ()

    def __post_init__(self) -> None:
        counts = self.train_label_counts
        if counts.ndim != 1 or len(counts) < 2 or (counts < 0).any() or counts.sum() == 0:
            raise ConfigError(
                f"train_label_counts must be non-negative counts of at least 2 classes, not all "
                f"zero; got {counts.tolist()}"
            )
        if len(self.test) and int(self.test.labels.max()) >= len(counts):
            raise ConfigError(
                f"the test split has label {int(self.test.labels.max())} but the training counts "
                f"cover {len(counts)} classes"
            )
        if self.class_names and len(self.class_names) != len(counts):
            raise ConfigError(
                f"{len(self.class_names)} class names for {len(counts)} classes of training counts"
            )

    def __call__(self, model: AdaptedModel) -> Evaluation:
        indices = np.arange(len(self.test), dtype=np.int64)
        recorder = _Predictions(model)
        result = evaluate(recorder, self.test.batches(indices, self.batch_size))
        names = list(self.class_names) or [str(c) for c in range(len(self.train_label_counts))]
        per_class = per_class_metrics(torch.cat(recorder.predicted), self.test.labels, names)
        return Evaluation(
            loss=result.loss,
            accuracy=result.accuracy,
            macro_f1=result.macro_f1,
            score=result.accuracy,
            extra={"per_class": per_class},
        )

    def baselines(self) -> dict[str, Evaluation]:
        """``majority_class``: always the most frequent training label (the lowest on a tie).

        Its loss is the cross-entropy of predicting the training label frequencies, add-one
        smoothed so that a class absent from training costs a finite loss.
        """
        counts = self.train_label_counts
        truth = self.test.labels
        predicted = torch.full_like(truth, int(np.argmax(counts)))
        frequencies = (counts + 1) / (counts.sum() + len(counts))
        accuracy = float((predicted == truth).float().mean())
        return {
            "majority_class": Evaluation(
                loss=float(-np.log(frequencies[truth.numpy()]).mean()),
                accuracy=accuracy,
                macro_f1=macro_f1(predicted, truth),
                score=accuracy,
            )
        }


class _Predictions:
    """A classifier for :func:`evaluate` that keeps the class it predicts for every row.

    It runs the model on the model's own device and hands the logits back on the CPU, where
    :func:`evaluate` (which sees a plain callable) keeps the labels.
    """

    def __init__(self, model: AdaptedModel) -> None:
        self.model = model
        self.predicted: list[torch.Tensor] = []

    def __call__(self, **batch: torch.Tensor) -> Any:
        device = self.model.device
        logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        self.predicted.append(logits.argmax(dim=-1))
        return SimpleNamespace(logits=logits)

    def eval(self) -> Any:
        return self.model.eval()


def per_class_metrics(
    predicted: torch.Tensor, truth: torch.Tensor, names: Sequence[str]
) -> list[dict[str, str | float | int | None]]:
    """Per class in id order: its name, test rows (support), rows predicted as it, precision,
    recall and F1.

    A list, not a mapping by name, so the class order survives ``metrics.jsonl`` (written with
    sorted keys).  A metric whose denominator is zero (precision of a class never predicted,
    recall of a class absent from the test rows) is ``None``, not 0: nothing was measured.
    """
    metrics: list[dict[str, str | float | int | None]] = []
    for c, name in enumerate(names):
        is_predicted, is_true = predicted == c, truth == c
        tp = int((is_predicted & is_true).sum())
        fp = int((is_predicted & ~is_true).sum())
        fn = int((~is_predicted & is_true).sum())
        metrics.append(
            {
                "class": name,
                "support": tp + fn,
                "predicted": tp + fp,
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            }
        )
    return metrics


def held_out_loss(
    model: AdaptedModel,
    data: TokenizedData | TokenizedInstructions,
    indices: npt.NDArray[np.int64],
    batch_size: int,
) -> float:
    """The mean loss of ``model`` on some training rows (the loss-based rank policy's score)."""
    batches = data.batches(indices, batch_size)
    if isinstance(data, TokenizedInstructions):
        return evaluate_lm(model, batches).loss
    return evaluate(model, batches).loss
