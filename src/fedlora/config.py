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
from typing import TYPE_CHECKING, Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from fedlora.errors import ConfigError

if TYPE_CHECKING:
    from fedlora.lora import LoraSettings

Scalar = int | float | str | bool


class Section(BaseModel):
    # Strict: TOML values are typed, so `rounds = true` or `rank = "8"` is a mistake to name,
    # not a value to coerce; inf and NaN are never a setting.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False
    )


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
    workers: int | Literal["auto"] = Field(
        "auto",
        description="Processes that train a round's clients side by side in fedlora run and "
        "compare (Flower runs ignore it): 1 = "
        "one after another in the server's process; 'auto' = one per torch thread the run may "
        "use (OMP_NUM_THREADS, else the cores), at most clients_per_round and what free memory "
        "holds, 1 on a GPU. Each "
        "worker gets an equal share of those threads (at least one).",
    )

    client_timeout: float = Field(
        0.0,
        ge=0.0,
        description="Seconds a pool worker (run.workers > 1) may train one client: past it the "
        "worker is killed and replaced and that client's reply is dropped, like a silent Flower "
        "node. 0 = no limit.",
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError(f"must be a whole number >= 1 or 'auto', got {value!r}")

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
    device: str = Field(
        "auto",
        description="Device of the base model and of training: 'auto' (the first CUDA GPU if "
        "torch sees one, else the CPU), 'cpu', 'cuda' or 'cuda:N'. Each Flower node resolves it "
        "on its own machine (a node's --node-config device=... overrides it).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Precision of the frozen base weights. LoRA factors (and a classifier's "
        "trained head) stay float32 and are exchanged in float32 whatever this is; float16 "
        "trains with loss scaling.",
    )

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
            raise ValueError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        return value

    def lora_settings(self) -> LoraSettings:
        """The LoRA settings every client's adapter, and the served factors, use.

        Imported here: ``fedlora.lora`` brings torch, which the CLI's start does without.
        """
        from fedlora.lora import LoraSettings

        return LoraSettings(
            alpha=self.lora_alpha, use_rslora=self.use_rslora, dropout=self.lora_dropout
        )


ColumnRef = str | int
"""A column of a data file: its name, or its 0-based number (CSV/TSV/Parquet)."""

FILE_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")


class DataSection(Section):
    dataset: str = Field(
        "ag_news",
        description="'ag_news', 'dbpedia_14' (presets for the shared data folders), 'synthetic', "
        "or a path to a .csv/.tsv/.json/.jsonl/.parquet file or to a folder holding train.* and "
        "test.* (or data.*); causal-lm: 'generated' (built-in tasks), an "
        "Alpaca/Dolly/Natural-Instructions file or folder, or a hub name.",
    )
    data_dir: str = Field(
        "", description="Folder with local copies of the datasets; empty = $FEDLORA_DATA."
    )
    format: Literal["", "csv", "tsv", "json", "jsonl", "parquet"] = Field(
        "", description="Format of a data file; empty = from its extension."
    )
    delimiter: str = Field(
        "", description="Field separator of a CSV file; empty = ',' (a .tsv file: tab)."
    )
    has_header: bool = Field(
        True,
        description="The first row of a CSV/TSV file names its columns; false: the first row is "
        "data, and columns are given by 0-based number or named by data.column_names.",
    )
    column_names: list[str] = Field(
        default_factory=list,
        description="Names of the columns of a headerless CSV/TSV file, in order "
        "(with has_header = false).",
    )
    text_columns: list[ColumnRef] = Field(
        default_factory=lambda: list[ColumnRef](["text"]),
        description="Text column(s) of a data file, by name or 0-based number; several are joined "
        "with a space.",
    )
    label_column: ColumnRef = Field(
        "label", description="Label column of a data file, by name or 0-based number."
    )
    label_format: Literal["auto", "from_0", "from_1", "names"] = Field(
        "auto",
        description="How labels name classes: 'from_0' / 'from_1' (integer ids counted from 0 / "
        "1), 'names' (every distinct value is a class, integers too), or 'auto' (text labels "
        "are names; integer ids count from 0, or from 1 when they are exactly 1..K, with a "
        "notice).",
    )
    classes: list[str] = Field(
        default_factory=list,
        description="The run's classes in id order (empty: the labels of the training data); "
        "test labels outside them are an error.",
    )
    classes_file: str = Field(
        "",
        description="A file with one class name per line, in id order (e.g. a benchmark's "
        "classes.txt), instead of data.classes.",
    )
    test_file: str = Field(
        "",
        description="Test split of a file dataset; empty: data.test_size rows are split off the "
        "training file.",
    )
    test_size: float | int = Field(
        0.2,
        description="Test rows split off a data file without a test file, stratified by class "
        "with the run's seed: a fraction in (0, 1) or a number of rows (the dbpedia_14 preset "
        "always splits 2,000).",
    )
    max_train_samples: int = Field(
        0, ge=0, description="Use at most this many training rows (0 = all)."
    )
    max_test_samples: int = Field(
        500, ge=0, description="Evaluate on at most this many test rows (0 = all)."
    )
    partition: str = Field(
        "dirichlet",
        description="Partitioner: iid, dirichlet, size_skew, quality; natural (causal-lm: "
        "whole tasks per client; other partitioners treat the task as the label); or a Flower "
        "Datasets partitioner by class name, e.g. 'flwr_datasets.ShardPartitioner'.",
    )
    partition_options: dict[str, Scalar] = Field(
        default_factory=lambda: dict[str, Scalar](alpha=0.5),
        description="Options of the partitioner, e.g. {alpha = 0.5}.",
    )

    @field_validator("label_column", mode="before")
    @classmethod
    def _one_column(cls, value: Any) -> Any:
        _check_column(value)
        return value

    @field_validator("text_columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        if isinstance(value, str | int) and not isinstance(value, bool):
            value = [value]  # one column needs no list
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty list of column names or 0-based numbers")
        for item in value:
            _check_column(item)
        return value

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        if value in ("\\t", "tab"):  # --set data.delimiter=\t arrives as backslash, t
            return "\t"
        if value and (len(value) != 1 or value in "\r\n\"'"):
            raise ValueError(f"must be one character other than a quote or newline, got {value!r}")
        return value

    @field_validator("test_size")
    @classmethod
    def _test_size(cls, value: float | int) -> float | int:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a number of rows must be >= 1, got {value}")
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"must be a fraction in (0, 1) or a number of rows, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataSection:
        """Every contradiction between the file keys, each under its own key."""
        problems: list[tuple[str, str]] = []
        columns = [self.label_column, *self.text_columns]
        if self.column_names and self.has_header:
            problems.append(
                (
                    "column_names",
                    "names the columns of a headerless file; set data.has_header = false (a "
                    "file with a header row names its own columns)",
                )
            )
        if len(set(self.column_names)) != len(self.column_names):
            problems.append(("column_names", "has duplicates"))
        headerless = not self.has_header
        for key, wanted in (
            ("label_column", [self.label_column]),
            ("text_columns", self.text_columns),
        ):
            for column in wanted:
                if not isinstance(column, str):
                    continue
                if headerless and not self.column_names:
                    problems.append(
                        (
                            key,
                            f"{column!r} is a name, but has_header = false and no "
                            f"data.column_names: give its 0-based number or name the columns",
                        )
                    )
                elif self.column_names and column not in self.column_names:
                    problems.append(
                        (key, f"{column!r} is not in data.column_names {self.column_names}")
                    )
        if self.label_column in self.text_columns:
            problems.append(("text_columns", f"holds the label column {self.label_column!r}"))
        if len(set(map(repr, self.text_columns))) != len(self.text_columns):
            problems.append(("text_columns", "has duplicates"))
        if self.format in ("json", "jsonl") and any(isinstance(c, int) for c in columns):
            problems.append(
                (
                    "text_columns" if isinstance(self.label_column, str) else "label_column",
                    "JSON records have no column order: name the keys",
                )
            )
        if self.classes and self.classes_file:
            problems.append(
                ("classes_file", "give the classes in data.classes or a file, not both")
            )
        if len(set(self.classes)) != len(self.classes):
            problems.append(("classes", "has duplicates"))
        if any(not name.strip() for name in self.classes):
            problems.append(("classes", "has an empty name"))
        if problems:
            raise _keyed_errors(self, problems)
        return self


def _check_column(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a column name or a 0-based column number, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"a column number counts from 0, got {value}")
    if isinstance(value, str) and not value:
        raise ValueError("a column name must not be empty")


def _keyed_errors(model: BaseModel, problems: Sequence[tuple[str, str]]) -> ValidationError:
    """One validation error per ``(key, message)``, located at that key of ``model``."""
    return ValidationError.from_exception_data(
        type(model).__name__,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{problem}", {"problem": message}),
                loc=(key,),
                input=getattr(model, key, None),
            )
            for key, message in problems
        ],
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
        description="Aggregator: fedit, zero_padding, hetlora, replication, norm_replication, "
        "flexlora, flora, ffa.",
    )
    weighting: Literal["num_examples", "uniform"] = Field(
        "num_examples", description="Client weights: local training-set size, or uniform."
    )
    norm_bound: float = Field(
        0.0,
        ge=0.0,
        description="Robust aggregation: bound each client's update norm at this many times the "
        "round's median (0 = off).",
    )
    bound_mode: Literal["clip", "reject"] = Field(
        "clip", description="What norm_bound does to a larger update: clip it, or drop it."
    )
    max_examples: int = Field(
        0, ge=0, description="Count a client's claimed data size as at most this (0 = off)."
    )
    spill: Literal["auto", "memory", "disk"] = Field(
        "auto",
        description="Where a round's client updates wait for aggregation: 'memory', 'disk' "
        "(one safetensors file per client in the run's scratch folder as it arrives, "
        "aggregated one module at a time, removed after the round), or 'auto': disk when the "
        "factors served to the round's clients exceed 2 GiB.",
    )
    options: dict[str, Scalar] = Field(
        default_factory=dict,
        description="Options of the aggregator, e.g. {sigma = 'sqrt'} (flexlora), "
        "{gamma = 0.99, lam = 0.001} (hetlora's self-pruning regulariser: share of the rank "
        "kept, weight), {prune_tol = 0.05} (hetlora: a client drops a module's trailing slots "
        "when they carry less than this share of its update norm; 0, the default, never prunes).",
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
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Batches per optimizer step, their gradients summed (a step of k batches of "
        "batch_size rows is the step of one batch of k * batch_size rows); steps counts "
        "optimizer steps.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each layer's input and recompute its activations in the backward "
        "pass: far less activation memory for about one more forward pass per step.",
    )
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
    seen_test_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "With unseen_fraction > 0: share of each seen task's examples also held out, and "
            "scored as the seen-task test set (0: unseen tasks only)."
        ),
    )
    eval_per_task: int = Field(
        20, ge=0, description="Evaluate at most this many examples per test task (0 = all)."
    )

    @model_validator(mode="after")
    def _seen_needs_unseen(self) -> InstructSection:
        if self.seen_test_fraction > 0 and self.unseen_fraction == 0:
            raise ValueError(
                "seen_test_fraction needs unseen_fraction > 0 (with unseen_fraction = 0 the test "
                "set is already a held-out share of every task: test_fraction)"
            )
        return self

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


EXECUTION_KEYS: dict[str, set[str]] = {
    "run": {"workers", "client_timeout"},
    "aggregation": {"spill"},
}
"""Keys that change how a run executes, never its numbers (see ``identity_toml``)."""


class ExperimentConfig(Section):
    task: Literal["classification", "causal-lm"] = Field(
        "classification",
        description="'classification' (sequence classifier) or 'causal-lm' (instruction tuning).",
    )
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    ranks: RanksSection = Field(default_factory=RanksSection)
    aggregation: AggregationSection = Field(default_factory=AggregationSection)
    train: TrainSection = Field(default_factory=TrainSection)
    instruct: InstructSection = Field(default_factory=InstructSection)

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

    def identity_toml(self) -> str:
        """Only the values that differ from their defaults: what makes two runs the same run.

        A checkpoint is tied to this, so a later fedlora that adds a key (with a default) can
        still resume a run started before it.  How the run is executed is no part of it: the
        worker count and where updates are aggregated from give the same numbers, so a run may
        resume with others.
        """
        data = self.model_dump(exclude_defaults=True, exclude=EXECUTION_KEYS)
        return tomli_w.dumps({section: v for section, v in data.items() if v != {}})

    def identity_at_lengths(self) -> list[str]:
        """:meth:`identity_toml` of this run at every length up to its own: a checkpoint of a run
        continued to more rounds was written while the run was shorter."""
        lengths = (self.run.model_copy(update={"rounds": r}) for r in range(1, self.run.rounds + 1))
        return [self.model_copy(update={"run": run}).identity_toml() for run in lengths]

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
    """The validated config; every problem is listed in one line, each under its key."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        problems = []
        for detail in error.errors():
            where = ".".join(str(part) for part in detail["loc"]) or "(top level)"
            message = detail["msg"].removeprefix("Value error, ")
            if detail["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{where}: {message}")
        raise ConfigError(f"{source}: {'; '.join(dict.fromkeys(problems))}") from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The defaults, updated from a TOML file, then from ``key=value`` overrides."""
    if path is None:
        return load_config_text("", overrides, source="config")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give a .toml file") from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (line {line}, byte {error.start}: "
            f"{error.reason})"
        ) from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read ({error.strerror})") from None
    return load_config_text(text, overrides, source=str(path))


def load_config_text(
    text: str, overrides: Sequence[str] = (), *, source: str = "config"
) -> ExperimentConfig:
    """The defaults, updated from TOML text, then from ``key=value`` overrides."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
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
