"""Evaluation of the global adapter on the test split (shared by every runner)."""

from __future__ import annotations

import numpy as np

from fedlora.aggregation import GlobalState
from fedlora.engine.client import evaluate_rows
from fedlora.engine.experiment import Experiment
from fedlora.model import EvalResult


def evaluate_global(experiment: Experiment, state: GlobalState) -> EvalResult:
    """The global adapter, at its own rank per module (at least 1), on the whole test split."""
    config = experiment.config
    rank_map = {name: max(1, rank) for name, rank in state.rank_map().items()}
    alpha, rslora = config.model.lora_alpha, config.model.use_rslora
    factors = state.factors_for(rank_map, alpha, rslora)
    experiment.model.activate(rank_map, alpha, rslora)
    experiment.model.load(factors, state.dense)
    indices = np.arange(len(experiment.test), dtype=np.int64)
    return evaluate_rows(experiment.model, experiment.test, indices, config.train.eval_batch_size)
