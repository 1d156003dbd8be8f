"""Evaluation of the global adapter on the test set (shared by every runner).

What "the test set" means depends on the task, so an experiment carries an :class:`Evaluator`:
classification scores the test split (loss, accuracy, macro-F1); causal LMs generate on the
held-out tasks (:class:`~fedlora.engine.instruction.GenerationEvaluator`).  Both return one
:class:`Evaluation`, which the runners turn into the ``test_*`` columns of a round's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import numpy as np
import numpy.typing as npt

from fedlora.aggregation import GlobalState
from fedlora.data import TokenizedData
from fedlora.model import AdaptedModel, evaluate, evaluate_lm
from fedlora.model.instructions import TokenizedInstructions

if TYPE_CHECKING:
    from fedlora.engine.experiment import Experiment


@dataclass(frozen=True)
class Evaluation:
    """Test metrics of one model; ``None`` where the task does not define a metric."""

    loss: float | None
    accuracy: float | None = None
    macro_f1: float | None = None
    rouge_l: float | None = None
    exact_match: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metric_fields(self) -> MetricColumns:
        """The ``test_*`` fields of :class:`~fedlora.runs.RoundMetrics`."""
        return MetricColumns(
            test_loss=self.loss,
            test_accuracy=self.accuracy,
            test_macro_f1=self.macro_f1,
            test_rouge_l=self.rouge_l,
            test_exact_match=self.exact_match,
        )


class MetricColumns(TypedDict):
    """The metric columns an :class:`Evaluation` fills."""

    test_loss: float | None
    test_accuracy: float | None
    test_macro_f1: float | None
    test_rouge_l: float | None
    test_exact_match: float | None


def test_metrics(evaluation: Evaluation | None) -> MetricColumns:
    """The ``test_*`` fields of a round's metrics (all ``None`` when it was not evaluated)."""
    if evaluation is None:
        return MetricColumns(
            test_loss=None,
            test_accuracy=None,
            test_macro_f1=None,
            test_rouge_l=None,
            test_exact_match=None,
        )
    return evaluation.metric_fields()


class Evaluator(Protocol):
    """Scores the model's active adapter on the experiment's test set."""

    def __call__(self, model: AdaptedModel) -> Evaluation: ...

    def baselines(self) -> dict[str, Evaluation]:
        """Model-free trivial baselines on the same test rows (e.g. the majority class)."""
        ...


@dataclass(frozen=True)
class ClassificationEvaluator:
    """Cross-entropy, accuracy and macro-F1 on the whole test split."""

    test: TokenizedData
    batch_size: int

    def __call__(self, model: AdaptedModel) -> Evaluation:
        indices = np.arange(len(self.test), dtype=np.int64)
        result = evaluate(model, self.test.batches(indices, self.batch_size))
        return Evaluation(loss=result.loss, accuracy=result.accuracy, macro_f1=result.macro_f1)

    def baselines(self) -> dict[str, Evaluation]:
        return {}


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


def evaluate_global(experiment: Experiment, state: GlobalState) -> Evaluation:
    """The global adapter, at its own rank per module (at least 1), on the test set."""
    config = experiment.config
    rank_map = {name: max(1, rank) for name, rank in state.rank_map().items()}
    alpha, rslora = config.model.lora_alpha, config.model.use_rslora
    factors = state.factors_for(rank_map, alpha, rslora)
    experiment.model.activate(rank_map, alpha, rslora)
    experiment.model.load(factors, state.dense)
    return experiment.evaluator(experiment.model)
