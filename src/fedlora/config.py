"""The experiment configuration: a typed, validated schema loaded from TOML.

Every key has a default and a description (``fedlora config --defaults`` prints them).  Unknown
keys, wrong types and impossible values become one-line :class:`ConfigError` messages that name
the key, e.g. ``train.lr: Input should be greater than 0``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
        description="Model: 'minilm' (the packaged all-MiniLM-L6-v2), a local folder or a hub id.",
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
        description="'ag_news', 'dbpedia_14', 'synthetic', or a path to a .csv/.jsonl file.",
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
        "dirichlet", description="Partitioner: iid, dirichlet, size_skew, quality, natural."
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
        description="Options of the rank policy, e.g. {high = 20, low = 5, fraction = 0.1}.",
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
        default_factory=dict, description="Options of the aggregator, e.g. {sigma = 'sqrt'}."
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
    hetlora_gamma: float = Field(
        0.99, gt=0.0, le=1.0, description="HetLoRA self-pruning: share of the rank kept."
    )
    hetlora_lambda: float = Field(
        1e-3, ge=0.0, description="HetLoRA self-pruning regulariser weight."
    )

    @model_validator(mode="after")
    def _some_training(self) -> TrainSection:
        if self.steps == 0 and self.epochs == 0:
            raise ValueError("one of steps or epochs must be positive")
        return self


class ExperimentConfig(Section):
    run: RunSection = Field(default_factory=RunSection)  # type: ignore[arg-type]
    model: ModelSection = Field(default_factory=ModelSection)  # type: ignore[arg-type]
    data: DataSection = Field(default_factory=DataSection)  # type: ignore[arg-type]
    ranks: RanksSection = Field(default_factory=RanksSection)  # type: ignore[arg-type]
    aggregation: AggregationSection = Field(default_factory=AggregationSection)  # type: ignore[arg-type]
    train: TrainSection = Field(default_factory=TrainSection)  # type: ignore[arg-type]

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump())

    def replace(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """A copy with dotted-key overrides applied (validated again)."""
        data = self.model_dump()
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
    defaults = ExperimentConfig()
    for section_name in ExperimentConfig.model_fields:
        section = getattr(defaults, section_name)
        for key, field in type(section).model_fields.items():
            value = tomli_w.dumps({"v": getattr(section, key)}).strip().removeprefix("v = ")
            yield f"{section_name}.{key}", value, field.description or ""
