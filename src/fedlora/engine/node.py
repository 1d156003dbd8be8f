"""One Flower node's side of a run: its own client's rows only, tokenised once, kept on its disk.

A node trains one client.  It plans the same rows as the server (:class:`RowPlan`: partitions
and held-out rows need only the labels) and tokenises just its client's, instead of building the
whole experiment (every client's rows, the test set, the evaluator).  The tokenised rows are
saved in the node's cache, keyed by everything that decides them, so a node that starts a fresh
process for every message (Flower's deployment runtime does) reads them back from disk instead
of loading and tokenising the data again.  A node may also hold its own file
(``--node-config data-file=...``): the real deployment case, where a node's data never leaves it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from fedlora.config import ExperimentConfig
from fedlora.data import TextClassificationData, TokenizedData, read_rows
from fedlora.data.holdout import split_own_rows
from fedlora.engine.client import ClientTrainer, TrainingRows
from fedlora.engine.experiment import (
    OWN_HELD_OUT_SHARE,
    RowPlan,
    classification_rows,
    file_layout,
    instruction_rows,
    load_model,
    node_vocabulary,
    policy_and_method,
)
from fedlora.engine.instruction import tokenize_instructions
from fedlora.engine.merging import MergedBase
from fedlora.errors import ConfigError
from fedlora.instruct import InstructionData, load_instruction_dataset
from fedlora.model.instructions import TokenizedInstructions
from fedlora.runs.merged import MergedStore
from fedlora.seeds import rng

CACHE_VERSION = 1


@dataclass(frozen=True)
class NodeRows:
    """The client's training rows, then its own held-out rows (for ``score_on = "local"``)."""

    rows: TrainingRows
    num_train: int
    num_classes: int


@dataclass(frozen=True)
class NodeSource:
    """The client's rows before tokenisation: training rows first, then its held-out rows."""

    raw: TextClassificationData | InstructionData
    num_train: int
    num_classes: int

    def tokenize(self, tokenizer: Any, config: ExperimentConfig) -> NodeRows:
        if isinstance(self.raw, InstructionData):
            rows: TrainingRows = tokenize_instructions(self.raw, tokenizer, config)
        else:
            rows = TokenizedData.from_dataset(self.raw, tokenizer, config.model.max_length)
        return NodeRows(rows, self.num_train, self.num_classes)


def build_node_trainer(
    config: ExperimentConfig,
    client: int,
    *,
    cache: Path | None = None,
    data_file: str | None = None,
    class_names: list[str] | None = None,
    merged: MergedStore | None = None,
) -> ClientTrainer:
    """The trainer of one client, on its own rows only.

    ``cache`` is the node's folder for tokenised rows (``None``: no caching); ``data_file`` a
    file of the node's own (classification: labels are mapped to ``class_names``, the run's
    classes); ``merged`` the node's store of merged rounds (FLoRA).
    """
    _, aggregator = policy_and_method(config)
    path = None
    if cache is not None:
        path = cache / f"{_cache_key(config, client, data_file, class_names)}.safetensors"
    data = _read(path)
    if data is None:
        source = node_source(config, client, data_file, class_names)
        model, tokenizer = load_model(config, source.num_classes)
        data = source.tokenize(tokenizer, config)
        if path is not None:
            _write(data, path)
    else:
        model, _ = load_model(config, data.num_classes)
    train = np.arange(data.num_train, dtype=np.int64)
    held = np.arange(data.num_train, len(data.rows), dtype=np.int64)
    return ClientTrainer(
        model,
        config,
        aggregator,
        data.rows,
        {client: train},
        held_out={client: held},
        base=MergedBase(model, merged),
    )


def node_source(
    config: ExperimentConfig,
    client: int,
    data_file: str | None = None,
    class_names: list[str] | None = None,
) -> NodeSource:
    """The client's rows: its share of the run's dataset (planned as the server plans it), or
    its own file."""
    if not 0 <= client < config.run.num_clients:
        raise ConfigError(f"client {client} is not in 0..{config.run.num_clients - 1}")
    if data_file:
        return _own_file(config, client, data_file, class_names)
    policy, _ = policy_and_method(config)
    if config.is_causal_lm:
        split = instruction_rows(config, policy)
        mine = _own_rows(split.plan, client)
        return NodeSource(split.split.train.subset(mine), len(split.plan.partitions[client]), 0)
    data = classification_rows(config, policy)
    mine = _own_rows(data.plan, client)
    return NodeSource(
        data.train.subset(mine), len(data.plan.partitions[client]), data.train.num_classes
    )


def _own_rows(plan: RowPlan, client: int) -> npt.NDArray[np.int64]:
    held = plan.held_out.get(client, np.empty(0, dtype=np.int64))
    return np.concatenate([plan.partitions[client], held]).astype(np.int64)


def _own_file(
    config: ExperimentConfig, client: int, data_file: str, class_names: list[str] | None
) -> NodeSource:
    """All rows of the node's own file; a tenth held out when it scores itself."""
    policy, _ = policy_and_method(config)
    raw: TextClassificationData | InstructionData
    if config.is_causal_lm:
        raw, num_classes = load_instruction_dataset(data_file), 0
    else:
        raw = _labelled_file(config, data_file, class_names)
        num_classes = raw.num_classes
    count = len(raw)
    if policy.scoring is None or policy.scoring.on != "local" or count < 2:
        return NodeSource(raw, count, num_classes)
    train, (held,) = split_own_rows(
        [np.arange(count, dtype=np.int64)],
        OWN_HELD_OUT_SHARE,
        rng(config.run.seed, "held_out", client),
    )
    order = np.concatenate([train[0], held])
    return NodeSource(raw.subset(order), len(train[0]), num_classes)


def _labelled_file(
    config: ExperimentConfig, path: str, class_names: list[str] | None
) -> TextClassificationData:
    """A node's own classification file, read with the run's file keys into the run's classes."""
    if not class_names:
        raise ConfigError(f"data-file {path}: the server sent no class names to map labels to")
    rows = read_rows(path, file_layout(config))
    vocabulary = node_vocabulary(config, class_names)
    hint = (
        "; a node reads integer labels as class ids only with data.label_format = 'from_0' or "
        "'from_1' (else by name)"
        if vocabulary.first_id is None
        else ""
    )
    labels = vocabulary.encode(rows, hint)
    return TextClassificationData(rows.texts, labels, list(class_names), Path(path).stem)


# ---------------------------------------------------------------------------------- the cache


def _cache_key(
    config: ExperimentConfig, client: int, data_file: str | None, class_names: list[str] | None
) -> str:
    """Everything that decides the rows: the config, the client, the node's file as it is now."""
    parts: dict[str, object] = {
        "version": CACHE_VERSION,
        "config": config.to_toml(),
        "client": client,
        "classes": class_names or [],
    }
    if data_file:
        stat = os.stat(data_file)
        parts["file"] = [os.path.abspath(data_file), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _write(data: NodeRows, path: Path) -> None:
    tensors: dict[str, Tensor] = {}
    meta: dict[str, object] = {
        "kind": type(data.rows).__name__,
        "num_train": data.num_train,
        "num_classes": data.num_classes,
    }
    for field in fields(data.rows):
        value = getattr(data.rows, field.name)
        if isinstance(value, Tensor):
            tensors[field.name] = value.contiguous()
        else:
            meta[field.name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def _read(path: Path | None) -> NodeRows | None:
    """The cached rows, or ``None`` (no cache, no file yet, or a torn file, which is removed)."""
    if path is None or not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["meta"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        kind = ROW_KINDS[str(meta.pop("kind"))]
        num_train, num_classes = int(meta.pop("num_train")), int(meta.pop("num_classes"))
        return NodeRows(kind(**tensors, **meta), num_train, num_classes)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None


ROW_KINDS: dict[str, type[TokenizedData] | type[TokenizedInstructions]] = {
    "TokenizedData": TokenizedData,
    "TokenizedInstructions": TokenizedInstructions,
}
