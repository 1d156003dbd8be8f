"""Everything a run needs, built once from its config: data, partitions, model, policy, method.

The in-process runner and the Flower apps build the same :class:`Experiment` from the same config,
so they train the same clients on the same data with the same ranks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedlora.aggregation import Aggregator, GlobalState, get_aggregator
from fedlora.config import ExperimentConfig
from fedlora.data import (
    PRESETS,
    FileLayout,
    Partitioner,
    QualityPartitioner,
    TextClassificationData,
    TokenizedData,
    Vocabulary,
    dataset_files,
    get_partitioner,
    load_files,
    load_named_dataset,
    missing_classes_note,
    read_class_names,
    stratified_split,
    synthetic_classification,
)
from fedlora.data.holdout import hold_out_balanced, split_own_rows
from fedlora.engine.client import ClientTrainer, TrainingRows
from fedlora.engine.evaluation import ClassificationEvaluator, Evaluation, Evaluator
from fedlora.engine.instruction import (
    GenerationEvaluator,
    InstructionSplit,
    load_instructions,
    split_instructions,
    tokenize_instructions,
)
from fedlora.engine.merging import MergedBase
from fedlora.errors import ConfigError, UnknownNameError
from fedlora.instruct import InstructionData
from fedlora.lora import LoraSettings
from fedlora.model import AdaptedModel, load_causal_lm, load_classifier
from fedlora.model.device import enable_checkpointing, resolve_device, resolve_dtype
from fedlora.ranks import RankPolicy, get_rank_policy
from fedlora.seeds import derive_seed, rng

Indices = npt.NDArray[np.int64]
OWN_HELD_OUT_SHARE = 0.1


@dataclass
class Experiment:
    """The static world of a run; the global state and the round loop live in the driver.

    ``groups`` gives every training row its label (classification) or task (causal LM), named by
    ``group_names``: what the data summary counts per client.  ``score_rows`` are the server's
    validation rows of a loss-based policy scoring on the server (held out of every partition);
    ``held_out`` each client's own held-out rows when it scores itself.  ``data_notes`` are facts
    about the data worth a line in the report (rows, tasks, truncation).
    """

    config: ExperimentConfig
    train: TrainingRows
    groups: npt.NDArray[np.int64]
    group_names: list[str]
    partitions: list[Indices]
    model: AdaptedModel
    aggregator: Aggregator
    policy: RankPolicy
    evaluator: Evaluator
    score_rows: Indices = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    held_out: dict[int, Indices] = field(default_factory=dict)
    high_quality_clients: list[int] | None = None
    data_notes: dict[str, Any] = field(default_factory=dict)

    @property
    def module_names(self) -> list[str]:
        return list(self.model.module_shapes())

    @property
    def module_shapes(self) -> dict[str, tuple[int, int]]:
        return self.model.module_shapes()

    @property
    def lora(self) -> LoraSettings:
        """The LoRA settings of every adapter of the run (clients' and the evaluated global one)."""
        return self.config.model.lora_settings()

    def initial_state(self) -> GlobalState:
        return GlobalState.initial(
            self.model.module_shapes(),
            dense=self.model.initial_dense(),
            seed=self.config.run.seed,
        )

    def evaluate(self, state: GlobalState, ranks: Mapping[str, int] | None = None) -> Evaluation:
        """The global adapter on the test set: at its own rank per module (at least 1), or at
        ``ranks``, which is the model a client of those ranks is served (FlexLoRA's truncation)."""
        rank_map = (
            {name: max(1, rank) for name, rank in state.rank_map().items()}
            if ranks is None
            else ranks
        )
        factors = state.factors_for(rank_map, self.lora)
        self.model.activate(rank_map, self.lora)
        self.model.load(factors, state.dense)
        return self.evaluator(self.model)

    def client_trainer(self, base: MergedBase | None = None) -> ClientTrainer:
        """A trainer of every client on this experiment's model (the in-process clients)."""
        return ClientTrainer(
            self.model,
            self.config,
            self.aggregator,
            self.train,
            dict(enumerate(self.partitions)),
            held_out=self.held_out,
            base=base,
        )


@dataclass(frozen=True)
class RowPlan:
    """Which training rows exist and who holds them, decided without tokenising anything.

    The server and every Flower node compute the same plan from the same config, so a node can
    tokenise its own client's rows only and still train on exactly the rows the in-process
    runner gives that client.
    """

    groups: npt.NDArray[np.int64]
    group_names: list[str]
    partitions: list[Indices]
    score_rows: Indices
    held_out: dict[int, Indices]
    high_quality_clients: list[int] | None = None


@dataclass(frozen=True)
class ClassificationRows:
    train: TextClassificationData
    test: TextClassificationData
    plan: RowPlan


@dataclass(frozen=True)
class InstructionRows:
    split: InstructionSplit
    plan: RowPlan


def policy_and_method(config: ExperimentConfig) -> tuple[RankPolicy, Aggregator]:
    """The rank policy (assigned) and the aggregator: names and options fail before any data,
    each error naming its config key."""
    with _key("ranks.options"):
        policy = get_rank_policy(config.ranks.policy, **_policy_options(config))
        if policy.wants_high_quality_clients:
            partitioner = _partitioner(config)
            if isinstance(partitioner, QualityPartitioner):
                policy.prefer(partitioner.high_quality_clients(config.run.num_clients))
        policy.assign(config.run.num_clients)
    with _key("aggregation.options"):
        aggregator = get_aggregator(
            config.aggregation.method,
            weighting=config.aggregation.weighting,
            **config.aggregation.options,
        )
        aggregator.check_tiers(policy.possible_tiers())
    return policy, aggregator


@contextmanager
def _key(key: str) -> Iterator[None]:
    """Name the config key of an option error raised by a policy, method or partitioner."""
    try:
        yield
    except UnknownNameError:
        raise
    except ConfigError as error:
        message = str(error)
        if message.startswith(("ranks.", "aggregation.", "data.", "run.")):
            raise
        raise ConfigError(f"{key}: {message}") from None


def classification_rows(config: ExperimentConfig, policy: RankPolicy) -> ClassificationRows:
    """The classification data, loaded and subsampled, and its row plan."""
    partitioner = _partitioner(config)
    train, test = load_data(config)
    labels = np.asarray(train.labels, dtype=np.int64)
    partitions = [
        np.asarray(p, dtype=np.int64) for p in partitioner.partition(labels, config.run.num_clients)
    ]
    high_quality = None
    if isinstance(partitioner, QualityPartitioner):
        high_quality = partitioner.high_quality_clients(config.run.num_clients)
    plan = _plan(config, policy, labels, list(train.label_names), partitions, high_quality)
    return ClassificationRows(train=train, test=test, plan=plan)


def instruction_rows(config: ExperimentConfig, policy: RankPolicy) -> InstructionRows:
    """The instruction examples, split into seen tasks (dealt to clients) and test tasks."""
    partitioner = None
    if config.data.partition != "natural":
        partitioner = _partitioner(config)
    elif config.data.partition_options:
        raise ConfigError("data.partition_options: the natural partition takes no options")
    split = split_instructions(config, load_instructions(config), partitioner)
    plan = _plan(config, policy, split.task_ids, split.task_names, split.partitions, None)
    return InstructionRows(split=split, plan=plan)


def _partitioner(config: ExperimentConfig) -> Partitioner:
    with _key("data.partition_options"):
        return get_partitioner(
            config.data.partition,
            seed=derive_seed(config.run.seed, "partition"),
            **config.data.partition_options,
        )


def _plan(
    config: ExperimentConfig,
    policy: RankPolicy,
    groups: npt.NDArray[np.int64],
    group_names: list[str],
    partitions: list[Indices],
    high_quality: list[int] | None,
) -> RowPlan:
    """Hold out the rows a loss-based policy scores clients on (server set, or own rows)."""
    seed = config.run.seed
    score_rows: Indices = np.empty(0, dtype=np.int64)
    held_out: dict[int, Indices] = {}
    scoring = policy.scoring
    if scoring is not None and scoring.on == "server":
        score_rows, partitions = hold_out_balanced(
            groups, partitions, scoring.rows, rng(seed, "score_rows")
        )
    elif scoring is not None:
        partitions, own = split_own_rows(partitions, OWN_HELD_OUT_SHARE, rng(seed, "held_out"))
        held_out = dict(enumerate(own))
    return RowPlan(
        groups=groups,
        group_names=group_names,
        partitions=partitions,
        score_rows=score_rows,
        held_out=held_out,
        high_quality_clients=high_quality,
    )


def build_experiment(config: ExperimentConfig) -> Experiment:
    """Load and tokenise the data, partition it, load the model, build the policy and method."""
    device_and_dtype(config)  # a device this machine lacks fails before any data is read
    policy, aggregator = policy_and_method(config)
    if aggregator.merges_into_base and config.model.dtype != "float32":
        warnings.warn(
            f"model.dtype = {config.model.dtype!r}: {config.aggregation.method} merges every "
            f"round into the base weights at that precision, where a merged update smaller "
            f"than a weight's rounding step is lost; use 'float32' for this method",
            UserWarning,
            stacklevel=2,
        )
    if config.is_causal_lm:
        rows = instruction_rows(config, policy)
        plan = rows.plan
        model, tokenizer = load_model(config)
        instructions = tokenize_instructions(rows.split.train, tokenizer, config)
        generation = GenerationEvaluator(rows.split, tokenizer, config)
        train: TrainingRows = instructions
        evaluator: Evaluator = generation
        notes: dict[str, Any] = {
            "train rows": f"{len(instructions)} in {len(rows.split.task_names)} tasks",
            "test rows": f"{len(rows.split.test)} of {rows.split.held_out}"
            + _seen_rows(rows.split.seen_test, config),
            "rows cut to model.max_length": f"{instructions.num_truncated} train "
            f"({instructions.num_response_truncated} with the response cut), "
            f"{generation.test.tokens.num_truncated} test; "
            f"{generation.num_truncated_prompts} test prompts cut for generation",
        }
    else:
        data = classification_rows(config, policy)
        plan = data.plan
        model, tokenizer = load_model(config, data.train.num_classes)
        max_length = config.model.max_length
        train = TokenizedData.from_dataset(data.train, tokenizer, max_length)
        test = TokenizedData.from_dataset(data.test, tokenizer, max_length)
        evaluator = ClassificationEvaluator(
            test,
            config.train.eval_batch_size,
            np.bincount(plan.groups, minlength=data.train.num_classes),
            class_names=list(data.train.label_names),
        )
        notes = {
            "train rows": len(train),
            "test rows": len(test),
            "texts cut to model.max_length": f"{train.num_truncated} train, "
            f"{test.num_truncated} test",
            **_class_notes(data.train, data.test),
        }
    _check_ranks_fit(policy, model)
    return Experiment(
        config=config,
        train=train,
        groups=plan.groups,
        group_names=plan.group_names,
        partitions=plan.partitions,
        model=model,
        aggregator=aggregator,
        policy=policy,
        evaluator=evaluator,
        score_rows=plan.score_rows,
        held_out=plan.held_out,
        high_quality_clients=plan.high_quality_clients,
        data_notes=notes,
    )


def load_model(config: ExperimentConfig, num_classes: int = 0) -> tuple[AdaptedModel, Any]:
    """The base model wrapped for LoRA and its tokenizer (a classifier of ``num_classes``).

    Loaded at ``model.dtype`` in CPU memory, then moved to ``model.device`` as resolved on this
    machine; the LoRA adapters PEFT adds later follow the base layers' device, in float32.
    """
    device, dtype = device_and_dtype(config)
    seed = derive_seed(config.run.seed, "model_init", 0)
    head: list[str] | None = None  # a classifier's head is trained densely
    if config.is_causal_lm:
        model, tokenizer = load_causal_lm(config.model.name, seed=seed, dtype=dtype)
        head = []  # the LM head stays frozen: only LoRA factors travel
    else:
        model, tokenizer = load_classifier(config.model.name, num_classes, seed=seed, dtype=dtype)
    model.to(device)
    if config.train.gradient_checkpointing:
        enable_checkpointing(model)
    adapted = AdaptedModel(
        model,
        config.model.target_modules or None,
        head,
        init_seed=derive_seed(config.run.seed, "model_init", 1),
    )
    return adapted, tokenizer


def device_and_dtype(config: ExperimentConfig) -> tuple[torch.device, torch.dtype]:
    """``model.device`` resolved on this machine and ``model.dtype``; one-line errors."""
    device = resolve_device(config.model.device)
    return device, resolve_dtype(config.model.dtype, device)


def load_data(config: ExperimentConfig) -> tuple[TextClassificationData, TextClassificationData]:
    """The train and test splits named by ``data.dataset``, subsampled as configured.

    One label vocabulary for both (see :func:`~fedlora.data.load_files`); notes on how the
    labels were read (ids counted from 1, classes without training rows) are warned about and
    kept in ``train.notes`` for the run's summary.
    """
    data = config.data
    seed = config.run.seed
    name = data.dataset
    if name == "synthetic":
        full = synthetic_classification(num_samples=2000, seed=derive_seed(seed, "synthetic"))
        train_rows, test_rows = stratified_split(
            full.labels, test_size=400, seed=derive_seed(seed, "test_split")
        )
        train, test = full.subset(train_rows), full.subset(test_rows)
    elif name in PRESETS:
        train, test = load_named_dataset(
            name, data_dir=data.data_dir or None, seed=derive_seed(seed, "test_split")
        )
    else:
        train, test = _load_file_dataset(config)
    train = _subsample(train, data.max_train_samples, rng(seed, "train_subsample"))
    test = _subsample(test, data.max_test_samples, rng(seed, "test_subsample"))
    missing = missing_classes_note(train)
    if missing is not None:
        train = replace(train, notes=(*train.notes, missing))
    for note in train.notes:
        warnings.warn(f"data: {note}", UserWarning, stacklevel=2)
    present = [n for n, c in zip(train.label_names, train.class_counts(), strict=True) if c]
    if len(present) < 2:
        raise ConfigError(
            f"data.label_column: the training rows hold {len(present)} class "
            f"({', '.join(present)}); a classifier needs at least 2"
        )
    if len(train) < config.run.num_clients:
        raise ConfigError(
            f"run.num_clients: {config.run.num_clients} clients but only {len(train)} training rows"
        )
    return train, test


def file_layout(config: ExperimentConfig) -> FileLayout:
    """How the config's ``data.*`` keys say to read a data file (the run's and a node's)."""
    data = config.data
    return FileLayout(
        label_column=data.label_column,
        text_columns=tuple(data.text_columns),
        format=data.format,
        delimiter=data.delimiter,
        has_header=data.has_header,
        column_names=tuple(data.column_names),
    )


def _configured_classes(config: ExperimentConfig) -> list[str] | None:
    data = config.data
    if data.classes:
        return list(data.classes)
    if data.classes_file:
        if not Path(data.classes_file).is_file():
            raise ConfigError(f"data.classes_file: {data.classes_file}: file not found")
        return read_class_names(data.classes_file)
    return None


def _load_file_dataset(
    config: ExperimentConfig,
) -> tuple[TextClassificationData, TextClassificationData]:
    data = config.data
    files = dataset_files(data.dataset, data.test_file, data.format)
    classes = _configured_classes(config)
    if classes is None and files.classes_file is not None:
        classes = read_class_names(files.classes_file)
    train, test = load_files(
        files.train,
        files.test,
        file_layout(config),
        classes=classes,
        label_format=data.label_format,
        test_size=data.test_size,
        seed=derive_seed(config.run.seed, "test_split"),
        name=Path(data.dataset).stem or None,
    )
    if files.test is None:
        split = f"{len(test)} test rows split off {files.train} (data.test_size = {data.test_size})"
        train = replace(train, notes=(*train.notes, split))
    return train, test


def node_vocabulary(config: ExperimentConfig, class_names: Sequence[str]) -> Vocabulary:
    """How a Flower node reads the labels of a file of its own into the run's classes.

    The server sends only the class names.  Text labels are looked up by name.  Integer labels
    are ids where the config says how they count (a preset, the synthetic set, or
    ``data.label_format`` 'from_0' / 'from_1'); otherwise they are looked up by name too, which
    is exact for vocabularies inferred from integer labels (their names are the ids).
    """
    data = config.data
    first_id: int | None = None
    if data.dataset in PRESETS or data.dataset == "synthetic" or data.label_format == "from_0":
        first_id = 0
    elif data.label_format == "from_1":
        first_id = 1
    return Vocabulary(list(class_names), first_id)


def _class_notes(train: TextClassificationData, test: TextClassificationData) -> dict[str, str]:
    """The summary's lines on the classes: names with train / test rows, and label notes."""
    counts = zip(train.label_names, train.class_counts(), test.class_counts(), strict=True)
    notes = {
        "classes (train / test rows)": ", ".join(f"{n} ({a} / {b})" for n, a, b in counts),
    }
    if train.notes:
        notes["labels"] = "; ".join(train.notes)
    return notes


def _subsample(
    data: TextClassificationData, limit: int, generator: np.random.Generator
) -> TextClassificationData:
    if limit == 0 or len(data) <= limit:
        return data
    return data.subset(np.sort(generator.choice(len(data), size=limit, replace=False)))


def _policy_options(config: ExperimentConfig) -> dict[str, Any]:
    options = dict(config.ranks.options)
    if config.ranks.policy in ("proportion", "distribution", "loss_based"):
        options.setdefault("seed", derive_seed(config.run.seed, "ranks"))
    return options


def _check_ranks_fit(policy: RankPolicy, model: AdaptedModel) -> None:
    shapes = model.module_shapes()
    for tier in set(policy.possible_tiers()):
        unused = tier.unused_patterns(shapes)
        if unused:
            warnings.warn(
                f"ranks: tier {tier} has pattern(s) {unused} that match no adapted module "
                f"(LoRA targets: {', '.join(model.target_modules[:3])}, ...), so those ranks are "
                f"never used; add the modules to model.target_modules or drop the pattern",
                UserWarning,
                stacklevel=2,
            )
        for name, rank in tier.rank_map(shapes).items():
            limit = min(shapes[name])
            if rank > limit:
                raise ConfigError(
                    f"ranks: tier {tier} asks rank {rank} on {name!r}, above its limit {limit} "
                    f"(min of the {shapes[name][0]} x {shapes[name][1]} layer)"
                )


def _seen_rows(seen_test: InstructionData | None, config: ExperimentConfig) -> str:
    if seen_test is None:
        return ""
    share = config.instruct.seen_test_fraction
    return f", and {len(seen_test)} of {share:g} of every seen task"
