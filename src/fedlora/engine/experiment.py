"""Everything a run needs, built once from its config: data, partitions, model, policy, method.

The in-process runner and the Flower apps build the same :class:`Experiment` from the same config,
so they train the same clients on the same data with the same ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedlora.aggregation import (
    Aggregator,
    FlexLoRA,
    GlobalState,
    aggregator_class,
    get_aggregator,
)
from fedlora.config import ExperimentConfig
from fedlora.data import (
    TextClassificationData,
    TokenizedData,
    get_partitioner,
    load_csv,
    load_jsonl,
    load_named_dataset,
    stratified_split,
    synthetic_classification,
)
from fedlora.errors import ConfigError
from fedlora.model import AdaptedModel, load_classifier
from fedlora.ranks import LossBasedRanks, RankPolicy, RankTier, get_rank_policy

Indices = npt.NDArray[np.int64]
VALIDATION_SHARE = 0.1


@dataclass
class Experiment:
    """The static world of a run; the global state and the round loop live in the runners."""

    config: ExperimentConfig
    train: TokenizedData
    test: TokenizedData
    label_names: list[str]
    train_labels: npt.NDArray[np.int64]
    partitions: list[Indices]
    validation: list[Indices] | None
    model: AdaptedModel
    aggregator: Aggregator
    policy: RankPolicy

    @property
    def module_names(self) -> list[str]:
        return list(self.model.module_shapes())

    def initial_state(self) -> GlobalState:
        return GlobalState.initial(
            self.model.module_shapes(),
            dense=self.model.initial_dense(),
            seed=self.config.run.seed,
        )

    def tier(self, client: int) -> RankTier:
        return self.policy.tier_of(client)

    def rank_map(self, client: int) -> dict[str, int]:
        return self.tier(client).rank_map(self.module_names)


def build_experiment(config: ExperimentConfig) -> Experiment:
    """Load and tokenise the data, partition it, load the model, build the policy and method."""
    seed = config.run.seed
    # Names and options first: a typo should fail before any data or model is loaded.
    policy = get_rank_policy(config.ranks.policy, **_policy_options(config))
    policy.assign(config.run.num_clients)
    aggregator = get_aggregator(
        config.aggregation.method,
        weighting=config.aggregation.weighting,
        **_aggregator_options(config, policy),
    )
    partitioner = get_partitioner(config.data.partition, seed=seed, **config.data.partition_options)
    train_data, test_data = load_data(config)
    model, tokenizer = load_classifier(config.model.name, train_data.num_classes, seed=seed)
    adapted = AdaptedModel(
        model,
        config.model.target_modules or None,
        lora_dropout=config.model.lora_dropout,
        init_seed=seed,
    )
    _check_ranks_fit(policy, adapted)
    labels = np.asarray(train_data.labels, dtype=np.int64)
    partitions = [
        np.asarray(p, dtype=np.int64) for p in partitioner.partition(labels, config.run.num_clients)
    ]
    validation = None
    if isinstance(policy, LossBasedRanks):
        partitions, validation = _split_validation(partitions, seed)
    max_length = config.model.max_length
    return Experiment(
        config=config,
        train=TokenizedData.from_dataset(train_data, tokenizer, max_length),
        test=TokenizedData.from_dataset(test_data, tokenizer, max_length),
        label_names=list(train_data.label_names),
        train_labels=labels,
        partitions=partitions,
        validation=validation,
        model=adapted,
        aggregator=aggregator,
        policy=policy,
    )


def load_data(config: ExperimentConfig) -> tuple[TextClassificationData, TextClassificationData]:
    """The train and test splits named by ``data.dataset``, subsampled as configured."""
    data = config.data
    seed = config.run.seed
    name = data.dataset
    if name == "synthetic":
        full = synthetic_classification(num_samples=2000, seed=seed)
        train_rows, test_rows = stratified_split(full.labels, test_size=400, seed=seed)
        train, test = full.subset(train_rows), full.subset(test_rows)
    elif name.endswith((".csv", ".jsonl")):
        if not data.test_file:
            raise ConfigError(f"data.test_file: a test file is required with dataset {name!r}")
        train, test = _load_file(name, config), _load_file(data.test_file, config)
    else:
        train, test = load_named_dataset(name, data_dir=data.data_dir or None, seed=seed)
    train = _subsample(train, data.max_train_samples, seed, "data.max_train_samples")
    test = _subsample(test, data.max_test_samples, seed + 1, "data.max_test_samples")
    if len(train) < config.run.num_clients:
        raise ConfigError(
            f"run.num_clients: {config.run.num_clients} clients but only {len(train)} training rows"
        )
    return train, test


def _load_file(path: str, config: ExperimentConfig) -> TextClassificationData:
    columns = config.data.text_columns
    if path.endswith(".csv"):
        return load_csv(path, label_column=config.data.label_column, text_columns=columns)
    return load_jsonl(path, label_key=config.data.label_column, text_keys=columns)


def _subsample(
    data: TextClassificationData, limit: int, seed: int, key: str
) -> TextClassificationData:
    if limit == 0 or len(data) <= limit:
        return data
    rng = np.random.default_rng(seed)
    return data.subset(np.sort(rng.choice(len(data), size=limit, replace=False)))


def _aggregator_options(config: ExperimentConfig, policy: RankPolicy) -> dict[str, Any]:
    """FlexLoRA keeps as many singular triplets as the federation's largest rank needs.

    A round without the high-rank clients must not truncate what they receive next time.
    """
    options: dict[str, Any] = dict(config.aggregation.options)
    if aggregator_class(config.aggregation.method) is FlexLoRA:
        options.setdefault("max_rank", federation_max_rank(policy))
    return options


def federation_max_rank(policy: RankPolicy) -> int:
    """The largest rank any client can hold under ``policy`` (including future promotions)."""
    tiers = list(policy.allocation or [])
    if isinstance(policy, LossBasedRanks):
        tiers.append(policy.high)
    return max(t.max_rank for t in tiers)


def _policy_options(config: ExperimentConfig) -> dict[str, Any]:
    options = dict(config.ranks.options)
    if config.ranks.policy in ("proportion", "distribution", "loss_based"):
        options.setdefault("seed", config.run.seed)
    return options


def _split_validation(partitions: list[Indices], seed: int) -> tuple[list[Indices], list[Indices]]:
    """Hold out a share of each client's rows for the loss-based rank allocation."""
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for part in partitions:
        shuffled = rng.permutation(part)
        held = max(1, round(VALIDATION_SHARE * len(part))) if len(part) > 1 else 0
        validation.append(np.sort(shuffled[:held]) if held else np.sort(shuffled))
        train.append(np.sort(shuffled[held:]) if held else np.sort(shuffled))
    return train, validation


def _check_ranks_fit(policy: RankPolicy, model: AdaptedModel) -> None:
    shapes = model.module_shapes()
    for tier in set(policy.allocation or []):
        for name, rank in tier.rank_map(shapes).items():
            limit = min(shapes[name])
            if rank > limit:
                raise ConfigError(
                    f"ranks: tier {tier} asks rank {rank} on {name!r}, above its limit {limit} "
                    f"(min of the {shapes[name][0]} x {shapes[name][1]} layer)"
                )
