"""The experiment configuration: a typed, validated schema loaded from TOML.

Every key has a default and a description (``fedlora config --defaults`` prints them).  Unknown
keys, wrong types and impossible values become one-line :class:`ConfigError` messages that name
the key, e.g. ``train.lr: Input should be greater than 0``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedlora.errors import ConfigError

Scalar = int | float | str | bool


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RunSection(Section):
    name: str = Field("default", description="Run name, used in reports and plots.")
    out_dir: str = Field("runs/default", description="Run directory (metrics, checkpoints).")
    seed: int = Field(0, ge=0, description="Seed of every random choice in the run.")
    rounds: int = Field(6, ge=1, description="Number of federated rounds.")
    num_clients: int = Field(20, ge=1, description="Number of clients in the federation.")
    clients_per_round: int = Field(
        0, ge=0, description="Clients sampled per round; 0 means use `fraction`."
    )
    fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="Share of clients sampled per round (at least one)."
    )
    eval_every: int = Field(1, ge=1, description="Evaluate the global model every k rounds.")
    checkpoint_every: int = Field(1, ge=1, description="Checkpoint every k rounds.")
    min_replies: int = Field(
        1, ge=1, description="Fewest valid client updates a round needs to change the model."
    )

    @model_validator(mode="after")
    def _clients_fit(self) -> RunSection:
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) exceeds num_clients "
                f"({self.num_clients})"
            )
        return self

    def sampled_per_round(self) -> int:
        if self.clients_per_round:
            return self.clients_per_round
        return max(1, round(self.fraction * self.num_clients))


class ModelSection(Section):
    name: str = Field(
        "minilm",
        description="Model: 'minilm' (all-MiniLM-L6-v2) or 'smollm2' (SmolLM2-135M-Instruct), "
        "both packaged, a local folder or a hub id.",
    )
    target_modules: list[str] = Field(
        default_factory=list, description="LoRA target modules; empty = the architecture default."
    )
    lora_alpha: float = Field(16.0, gt=0.0, description="LoRA alpha of every client.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    use_rslora: bool = Field(False, description="Scale by alpha/sqrt(r) instead of alpha/r.")
    max_length: int = Field(64, ge=8, description="Maximum tokens per text (longer are cut).")


class DataSection(Section):
    dataset: str = Field(
        "ag_news",
        description="'ag_news', 'dbpedia_14', 'synthetic', or a path to a .csv/.jsonl file; "
        "causal-lm: 'generated' (built-in tasks), an Alpaca/Dolly/Natural-Instructions file or "
        "folder, or a hub name.",
    )
    data_dir: str = Field(
        "", description="Folder with local copies of the datasets; empty = $FEDLORA_DATA."
    )
    text_columns: list[str] = Field(
        default_factory=lambda: ["text"], description="Text column(s) of a CSV/JSONL dataset."
    )
    label_column: str = Field("label", description="Label column of a CSV/JSONL dataset.")
    test_file: str = Field("", description="Test split of a CSV/JSONL dataset (required there).")
    max_train_samples: int = Field(
        0, ge=0, description="Use at most this many training rows (0 = all)."
    )
    max_test_samples: int = Field(
        500, ge=0, description="Evaluate on at most this many test rows (0 = all)."
    )
    partition: str = Field(
        "dirichlet",
        description="Partitioner: iid, dirichlet, size_skew, quality; natural (causal-lm: "
        "whole tasks per client; other partitioners treat the task as the label).",
    )
    partition_options: dict[str, Scalar] = Field(
        default_factory=lambda: dict[str, Scalar](alpha=0.5),
        description="Options of the partitioner, e.g. {alpha = 0.5}.",
    )


class RanksSection(Section):
    policy: str = Field(
        "proportion",
        description="Rank policy: fixed, list, proportion, distribution, loss_based.",
    )
    options: dict[str, Any] = Field(
        default_factory=lambda: {"high": 20, "low": 5, "fraction": 0.2},
        description="Options of the rank policy, e.g. {high = 20, low = 5, fraction = 0.1}; "
        "loss_based also takes probe (score every client before round 1), score_on ('server': "
        "one common validation set, or 'local': the client's own rows) and score_rows.",
    )


class AggregationSection(Section):
    method: str = Field(
        "flexlora",
        description="Aggregator: fedit, zero_padding, hetlora, replication, flexlora, flora, ffa.",
    )
    weighting: Literal["num_examples", "uniform"] = Field(
        "num_examples", description="Client weights: local training-set size, or uniform."
    )
    options: dict[str, Scalar] = Field(
        default_factory=dict,
        description="Options of the aggregator, e.g. {sigma = 'sqrt'} (flexlora), "
        "{gamma = 0.99, lam = 0.001} (hetlora's self-pruning regulariser).",
    )


class TrainSection(Section):
    epochs: int = Field(1, ge=0, description="Local epochs per round (used when steps = 0).")
    steps: int = Field(10, ge=0, description="Local steps per round; 0 = use epochs.")
    batch_size: int = Field(16, ge=1, description="Local batch size.")
    lr: float = Field(2e-3, gt=0.0, description="Local learning rate.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Local optimizer.")
    weight_decay: float = Field(0.0, ge=0.0, description="Weight decay.")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule within a round."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps within a round.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm; 0 = off.")
    eval_batch_size: int = Field(64, ge=1, description="Batch size of evaluation.")

    @model_validator(mode="after")
    def _some_training(self) -> TrainSection:
        if self.steps == 0 and self.epochs == 0:
            raise ValueError("one of steps or epochs must be positive")
        return self


class InstructSection(Section):
    """Instruction tuning of causal LMs (``task = "causal-lm"``); ignored by classification."""

    template: Literal["alpaca", "plain", "chat"] = Field(
        "alpaca",
        description="Prompt format: 'alpaca', 'plain', or the tokenizer's 'chat' template.",
    )
    response_only: bool = Field(
        True, description="Train on the response tokens only (the prompt is masked out)."
    )
    max_new_tokens: int = Field(
        32, ge=1, description="Tokens generated (greedily) per test prompt."
    )
    num_tasks: int = Field(
        0,
        ge=0,
        description="Generated tasks; 0 = one per client plus the unseen ones.",
    )
    examples_per_task: list[int] = Field(
        default_factory=lambda: [20, 60],
        description="Generated examples per task: [low, high], drawn per task.",
    )
    unseen_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of tasks held out of every client, the test set (0: see test_fraction).",
    )
    test_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="With unseen_fraction = 0: share of each task's examples held out for testing.",
    )
    eval_per_task: int = Field(
        20, ge=0, description="Evaluate at most this many examples per test task (0 = all)."
    )

    @field_validator("examples_per_task")
    @classmethod
    def _examples_range(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or not 1 <= value[0] <= value[1]:
            raise ValueError(f"must be [low, high] with 1 <= low <= high, got {value}")
        return value


CAUSAL_LM_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": "smollm2", "max_length": 256},
    "data": {"dataset": "generated", "partition": "natural", "partition_options": {}},
    "train": {"batch_size": 8, "lr": 3e-4, "eval_batch_size": 16},
}
"""The defaults that differ for ``task = "causal-lm"`` (keys the config leaves unset)."""


class ExperimentConfig(Section):
    task: Literal["classification", "causal-lm"] = Field(
        "classification",
        description="'classification' (sequence classifier) or 'causal-lm' (instruction tuning).",
    )
    run: RunSection = Field(default_factory=RunSection)  # type: ignore[arg-type]
    model: ModelSection = Field(default_factory=ModelSection)  # type: ignore[arg-type]
    data: DataSection = Field(default_factory=DataSection)  # type: ignore[arg-type]
    ranks: RanksSection = Field(default_factory=RanksSection)  # type: ignore[arg-type]
    aggregation: AggregationSection = Field(default_factory=AggregationSection)  # type: ignore[arg-type]
    train: TrainSection = Field(default_factory=TrainSection)  # type: ignore[arg-type]
    instruct: InstructSection = Field(default_factory=InstructSection)  # type: ignore[arg-type]

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """``task = "causal-lm"`` changes the defaults of :data:`CAUSAL_LM_DEFAULTS`."""
        if not isinstance(data, Mapping) or data.get("task") != "causal-lm":
            return data
        filled = dict(data)
        for section, defaults in CAUSAL_LM_DEFAULTS.items():
            given = filled.get(section, {})
            if isinstance(given, Mapping):
                filled[section] = {**defaults, **given}
        return filled

    @property
    def is_causal_lm(self) -> bool:
        return self.task == "causal-lm"

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump())

    def replace(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """A copy with dotted-key overrides applied (validated again).

        Keys never set keep following their defaults, so ``{"task": "causal-lm"}`` also brings
        the causal-LM defaults.
        """
        data = self.model_dump(exclude_unset=True)
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return build_config(data)


def build_config(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        more = len(error.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{source}: {where}: {message}{suffix}") from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The defaults, updated from a TOML file, then from ``key=value`` overrides."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    return build_config(data, source)


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as a TOML value (bare words are strings)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def format_override(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` takes it: the inverse of :func:`parse_override`.

    Lets a script record the exact ``fedlora run --set ...`` command of a config it built.
    """
    return f"{key}={_toml_value(value)}"


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def describe_defaults() -> Iterator[tuple[str, str, str]]:
    """``(key, default, description)`` for every key, section by section."""
    defaults = ExperimentConfig.model_validate({})
    for section_name, field in ExperimentConfig.model_fields.items():
        section = getattr(defaults, section_name)
        if not isinstance(section, Section):
            yield section_name, _toml_value(section), field.description or ""
            continue
        causal = CAUSAL_LM_DEFAULTS.get(section_name, {})
        for key, key_field in type(section).model_fields.items():
            description = key_field.description or ""
            if key in causal:
                description += f" causal-lm default: `{_toml_value(causal[key])}`."
            yield f"{section_name}.{key}", _toml_value(getattr(section, key)), description


def _toml_value(value: Any) -> str:
    """``value`` as one line of inline TOML (``{alpha = 0.5}``, ``["text"]``), as ``--set`` takes.

    tomli_w writes tables and non-empty arrays over several lines, which breaks a table cell.
    """
    if isinstance(value, Mapping):
        items = (f"{_toml_key(key)} = {_toml_value(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)
