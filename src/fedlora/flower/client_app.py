"""The Flower ClientApp: one node = one client, trained by the engine's :class:`ClientTrainer`.

A node learns everything from the server's message (the resolved experiment config, its factors,
the merges it lacks, the round) and from its own ``--node-config``: ``partition-id`` and
``num-partitions`` (filled in by Flower's simulation), optionally ``lora-rank`` (the rank it can
afford) and ``data-dir`` (where its copy of the datasets lives).  The node's world (data, base
model) is built once per process and reused across rounds; the merged rounds it applied (FLoRA)
are kept on its disk, so a node that starts a fresh process per message applies each merge once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedlora.config import ExperimentConfig, build_config
from fedlora.engine import ClientTrainer, MergedBase, TrainTask, build_experiment
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

_TRAINERS: dict[tuple[str, str], ClientTrainer] = {}


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
    config = _config(str(settings["fedlora-config"]), context.node_config)
    client = int(settings["client"])  # type: ignore[arg-type]
    if client != _int(context.node_config, "partition-id"):
        raise FedloraError(
            f"this node serves partition {context.node_config.get('partition-id')}, not {client}"
        )
    trainer = _trainer(config, str(settings["run-key"]))
    factors, dense = record_to_factors(
        msg.content.array_records[ARRAYS],
        config.model.lora_alpha,
        config.model.use_rslora,
        str(client),
    )
    merged = msg.content.array_records.get(MERGED)
    task = TrainTask(
        client=client,
        round=int(settings["server-round"]),  # type: ignore[arg-type]
        factors=factors,
        dense=dense,
        merged=[] if merged is None else record_to_merged(merged),
        merged_after=int(settings["merged-after"]),  # type: ignore[arg-type]
        score=bool(settings["score"]),
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
    config = build_config(tomllib.loads(toml_text), "server config")
    data_dir = node.get("data-dir")
    if isinstance(data_dir, str) and data_dir:
        config = config.replace({"data.data_dir": data_dir})
    return config


def _trainer(config: ExperimentConfig, run_key: str) -> ClientTrainer:
    """This process's trainer for the run (built on first use, kept for later messages)."""
    key = (config.to_toml(), run_key)
    if key not in _TRAINERS:
        _TRAINERS.clear()
        experiment = build_experiment(config)
        store = MergedStore(cache_dir() / "nodes" / run_key / "merged")
        _TRAINERS[key] = experiment.client_trainer(MergedBase(experiment.model, store))
    return _TRAINERS[key]


def _int(node: Mapping[str, Any], key: str) -> int:
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedloraError(f"node config {key!r} must be an integer, got {value!r}")
    return value
