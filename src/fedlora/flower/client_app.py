"""The Flower ClientApp: one node = one client, trained by the engine's :class:`ClientTrainer`.

A node learns everything from the server's message (the resolved experiment config, its factors,
the merges it lacks, the round) and from its own ``--node-config``: ``partition-id`` and
``num-partitions`` (filled in by Flower's simulation), optionally ``lora-rank`` (the rank it can
afford), ``data-dir`` (where its copy of the datasets lives), ``data-file`` (a file of its own
that never leaves it, instead of its share of the run's dataset) and ``device`` (where it trains,
instead of the config's ``model.device``; ``auto``, the default, is the node's own first GPU or
its CPU).  Whatever its device and ``model.dtype``, a node replies with float32 factors.

A node builds only its own client's rows (:mod:`fedlora.engine.node`), tokenised once into its
cache, and its model, once per process; the merged rounds it applied (FLoRA) are kept on its disk
too, so a node that starts a fresh process per message reads both back instead of rebuilding
them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedlora.config import ExperimentConfig, build_config
from fedlora.engine import ClientTrainer, TrainTask
from fedlora.engine.node import build_node_trainer
from fedlora.errors import FedloraError
from fedlora.flower.records import (
    ARRAYS,
    CONFIG,
    MERGED,
    record_to_factors,
    record_to_merged,
    reply_content,
)
from fedlora.model.gguf import cache_dir
from fedlora.runs.merged import MergedStore

app = ClientApp()

_TRAINERS: dict[tuple[str, str, int, str | None], ClientTrainer] = {}
RUN_KEY = re.compile(r"[0-9a-f]{8,64}")
TRAIN_MESSAGE = "the server's train message: setting"


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which client this node is and the rank it announces."""
    node = context.node_config
    identity = ConfigRecord(
        {
            "partition-id": _int(node, "partition-id"),
            "num-partitions": _int(node, "num-partitions"),
            "lora-rank": announced_rank(node),
        }
    )
    return Message(content=RecordDict({CONFIG: identity}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Apply the merges this node lacks, load the served factors, train, reply with the update."""
    settings = msg.content.config_records[CONFIG]
    client = _int(settings, "client", TRAIN_MESSAGE)
    round_index = _int(settings, "server-round", TRAIN_MESSAGE)
    merged_after = _int(settings, "merged-after", TRAIN_MESSAGE)
    score = _bool(settings, "score", TRAIN_MESSAGE)
    config = _config(str(settings["fedlora-config"]), context.node_config)
    if client != _int(context.node_config, "partition-id"):
        raise FedloraError(
            f"this node serves partition {context.node_config.get('partition-id')}, not {client}"
        )
    trainer = _trainer(config, client, str(settings["run-key"]), settings, context.node_config)
    factors, dense = record_to_factors(msg.content.array_records[ARRAYS], trainer.lora, client)
    merged = msg.content.array_records.get(MERGED)
    task = TrainTask(
        client=client,
        round=round_index,
        factors=factors,
        dense=dense,
        merged=[] if merged is None else record_to_merged(merged),
        merged_after=merged_after,
        score=score,
    )
    reply = trainer.train(task)
    update = reply.update
    if update is None:
        raise FedloraError(f"client {client}: training produced no update")
    metrics: dict[str, float | int] = {
        "train-loss": reply.train_loss,
        "steps": reply.steps,
        "seconds": reply.seconds,
        "merged-round": reply.merged_round,
    }
    if reply.local_score is not None:
        metrics["local-score"] = reply.local_score
    return Message(content=reply_content(update, metrics), reply_to=msg)


def announced_rank(node_config: Mapping[str, object]) -> str | int:
    """A node's announced rank from its ``--node-config`` (``lora-rank=8`` or ``"r8"``)."""
    value = node_config.get("lora-rank", 0)
    return value if isinstance(value, int | str) else 0


def _config(toml_text: str, node: Mapping[str, Any]) -> ExperimentConfig:
    """The server's config, with what the node's own ``--node-config`` says about this machine:
    ``data-dir`` (its copy of the datasets) and ``device`` (e.g. ``cuda:1``, else the config's
    ``model.device``, resolved here: ``auto`` is this node's first GPU, or its CPU)."""
    config = build_config(tomllib.loads(toml_text), "server config")
    overrides: dict[str, str] = {}
    data_dir = node.get("data-dir")
    if isinstance(data_dir, str) and data_dir:
        overrides["data.data_dir"] = data_dir
    device = node.get("device")
    if isinstance(device, str) and device:
        overrides["model.device"] = device
    return config.replace(overrides) if overrides else config


def _trainer(
    config: ExperimentConfig,
    client: int,
    run_key: str,
    settings: ConfigRecord,
    node: Mapping[str, Any],
) -> ClientTrainer:
    """This process's trainer of its client (built on first use, kept for later messages).

    Built from the client's own rows only, tokenised once into the node's cache.
    """
    if not RUN_KEY.fullmatch(run_key):
        raise FedloraError(f"run-key {run_key!r} is not a run id")
    data_file = node.get("data-file")
    data_file = str(data_file) if isinstance(data_file, str) and data_file else None
    key = (config.to_toml(), run_key, client, data_file)
    if key not in _TRAINERS:
        _TRAINERS.clear()
        names = settings.get("class-names")
        _TRAINERS[key] = build_node_trainer(
            config,
            client,
            cache=cache_dir() / "nodes" / "rows",
            data_file=data_file,
            class_names=[str(n) for n in names] if isinstance(names, list) else None,
            merged=MergedStore(cache_dir() / "nodes" / run_key / "merged"),
        )
    return _TRAINERS[key]


def _bool(record: Mapping[str, Any], key: str, where: str) -> bool:
    """``record[key]`` as a bool (the string "False" is not one), or an error naming the key."""
    value = record.get(key)
    if not isinstance(value, bool):
        raise FedloraError(f"{where} {key!r} must be true or false, got {value!r}")
    return value


def _int(record: Mapping[str, Any], key: str, where: str = "node config") -> int:
    """``record[key]`` as an int, or an error naming the key and where it came from."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedloraError(f"{where} {key!r} must be an integer, got {value!r}")
    return value
