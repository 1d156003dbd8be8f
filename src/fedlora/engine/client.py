"""One client's round: start from the served factors, train locally, return the update.

Shared by the in-process runner and the Flower ClientApp: only the transport differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from torch import Tensor

from fedlora.aggregation import Aggregator, self_pruning_penalty
from fedlora.aggregation.hetlora import HetLoRA
from fedlora.config import ExperimentConfig
from fedlora.data import TokenizedData
from fedlora.engine.evaluation import held_out_loss
from fedlora.engine.seeds import batch_generator, client_torch_rng
from fedlora.lora import ClientUpdate, LoraFactors
from fedlora.model import AdaptedModel, TrainConfig, train_local
from fedlora.model.instructions import TokenizedInstructions

TrainingRows = TokenizedData | TokenizedInstructions


@dataclass(frozen=True)
class ClientResult:
    update: ClientUpdate
    train_loss: float
    steps: int
    seconds: float
    validation_loss: float | None


def train_config(config: ExperimentConfig) -> TrainConfig:
    t = config.train
    return TrainConfig(
        epochs=None if t.steps else t.epochs,
        steps=t.steps or None,
        batch_size=t.batch_size,
        lr=t.lr,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        schedule=t.schedule,
        warmup_steps=t.warmup_steps,
        max_grad_norm=t.max_grad_norm or None,
    )


def run_client(
    model: AdaptedModel,
    config: ExperimentConfig,
    aggregator: Aggregator,
    *,
    client: int,
    round_index: int,
    rank_map: Mapping[str, int],
    factors: Mapping[str, LoraFactors],
    dense: Mapping[str, Tensor],
    data: TrainingRows,
    indices: npt.NDArray[np.int64],
    validation: npt.NDArray[np.int64] | None = None,
) -> ClientResult:
    """Load the served adapter, train it on the client's rows, and extract the update."""
    start = time.perf_counter()
    seed = config.run.seed
    model.activate(rank_map, config.model.lora_alpha, config.model.use_rslora)
    model.freeze_A(not aggregator.trains_A)
    model.load(factors, dense)
    settings = train_config(config)
    regularizer = _regularizer(model, config, aggregator)
    generator = batch_generator(seed, round_index, client)
    with client_torch_rng(seed, round_index, client):
        result = train_local(
            model,
            lambda: list(data.batches(indices, settings.batch_size, generator=generator)),
            settings,
            regularizer=regularizer,
        )
    update = model.extract(str(client), len(indices))
    validation_loss = None
    if validation is not None and len(validation):
        validation_loss = held_out_loss(model, data, validation, config.train.eval_batch_size)
    return ClientResult(
        update=update,
        train_loss=result.mean_loss,
        steps=result.steps,
        seconds=time.perf_counter() - start,
        validation_loss=validation_loss,
    )


def _regularizer(
    model: AdaptedModel, config: ExperimentConfig, aggregator: Aggregator
) -> Callable[[], Tensor] | None:
    if not isinstance(aggregator, HetLoRA) or config.train.hetlora_lambda == 0.0:
        return None
    gamma, lam = config.train.hetlora_gamma, config.train.hetlora_lambda
    return lambda: self_pruning_penalty(model.lora_parameters(), gamma=gamma, lam=lam)


def tensor_bytes(factors: Mapping[str, LoraFactors], dense: Mapping[str, Tensor]) -> int:
    """Bytes of the tensors that travel: the factors and the dense head."""
    total = sum(t.numel() * t.element_size() for t in dense.values())
    for f in factors.values():
        total += f.A.numel() * f.A.element_size() + f.B.numel() * f.B.element_size()
    return total
