"""A client's round: apply missing merges, load the served factors, train, return the update.

The same :class:`ClientTrainer` serves every simulated client of the in-process runner and the
one client of a Flower node: only the transport that hands it a :class:`TrainTask` differs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from fedlora.aggregation import Aggregator
from fedlora.config import ExperimentConfig
from fedlora.data import TokenizedData
from fedlora.engine.evaluation import held_out_loss
from fedlora.engine.heap import release_freed_memory
from fedlora.engine.merging import MergedBase
from fedlora.engine.seeds import batch_generator, client_torch_rng
from fedlora.engine.transport import ClientReply, TrainTask
from fedlora.errors import FedloraError
from fedlora.model import AdaptedModel, TrainConfig, train_local
from fedlora.model.instructions import TokenizedInstructions

TrainingRows = TokenizedData | TokenizedInstructions
Indices = npt.NDArray[np.int64]


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
        gradient_accumulation_steps=t.gradient_accumulation_steps,
    )


class ClientTrainer:
    """Trains the clients whose rows it holds, one task at a time, on one shared model.

    Parameters
    ----------
    model : the base model with its adapters (shared by every client this trainer serves).
    config : the experiment config (training and LoRA settings, seed).
    aggregator : the method; its hooks say whether ``A`` is frozen, what regulariser to add and
        which slots the client keeps after training.
    rows : the tokenised training rows.
    partitions : each client's row indices into ``rows``.
    held_out : each client's own held-out rows, for ``score_on = "local"`` (else empty).
    base : the merges the model's base weights hold (FLoRA).
    """

    def __init__(
        self,
        model: AdaptedModel,
        config: ExperimentConfig,
        aggregator: Aggregator,
        rows: TrainingRows,
        partitions: Mapping[int, Indices],
        *,
        held_out: Mapping[int, Indices] | None = None,
        base: MergedBase | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.aggregator = aggregator
        self.rows = rows
        self.partitions = partitions
        self.held_out = held_out or {}
        self.base = base or MergedBase(model)
        self.settings = train_config(config)
        self.lora = config.model.lora_settings()

    def train(self, task: TrainTask) -> ClientReply:
        """Train ``task.client`` from the served factors; the reply carries its update."""
        start = time.perf_counter()
        if task.client not in self.partitions:
            raise FedloraError(f"this trainer holds no rows of client {task.client}")
        self.base.apply(task.merged, task.merged_after)
        model, seed = self.model, self.config.run.seed
        indices = self.partitions[task.client]
        model.activate({n: f.r for n, f in task.factors.items()}, self.lora)
        model.freeze_A(not self.aggregator.trains_A)
        model.load(task.factors, task.dense)
        regularizer = self.aggregator.client_regularizer()
        penalty = None if regularizer is None else lambda: regularizer(model.lora_parameters())
        generator = batch_generator(seed, task.round, task.client)
        batch_size = self.settings.batch_size
        with client_torch_rng(seed, task.round, task.client, model.device):
            result = train_local(
                model,
                lambda: list(self.rows.batches(indices, batch_size, generator=generator)),
                self.settings,
                regularizer=penalty,
            )
        update = self.aggregator.prune(model.extract(task.client, len(indices)))
        score = None
        if task.score:
            held = self.held_out.get(task.client)
            if held is None or not len(held):
                raise FedloraError(f"client {task.client} holds no rows to score itself on")
            score = held_out_loss(model, self.rows, held, self.config.train.eval_batch_size)
        release_freed_memory()
        return ClientReply(
            client=task.client,
            update=update,
            train_loss=result.mean_loss,
            steps=result.steps,
            seconds=time.perf_counter() - start,
            local_score=score,
            merged_round=self.base.round,
        )
