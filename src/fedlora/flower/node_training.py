"""A node's training: its trainer, built once per process, and its reply to a train message.

Imported by the ClientApp's train handler only (see :mod:`fedlora.flower.client_app`): this is
where torch, transformers and PEFT come in.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message

from fedlora.config import ExperimentConfig, build_config
from fedlora.engine import ClientTrainer, TrainTask
from fedlora.engine.node import build_node_trainer
from fedlora.errors import FedloraError
from fedlora.flower.fields import ARRAYS, CONFIG, MERGED, boolean, integer
from fedlora.flower.records import record_to_factors, record_to_merged, reply_content
from fedlora.model.gguf import cache_dir
from fedlora.runs.merged import MergedStore

_TRAINERS: dict[tuple[str, str, int, str | None], ClientTrainer] = {}
RUN_KEY = re.compile(r"[0-9a-f]{8,64}")
TRAIN_MESSAGE = "the server's train message: setting"


def train_reply(msg: Message, context: Context) -> Message:
    """The train handler's work: see :func:`fedlora.flower.client_app.train`."""
    settings = msg.content.config_records[CONFIG]
    client = integer(settings, "client", TRAIN_MESSAGE)
    round_index = integer(settings, "server-round", TRAIN_MESSAGE)
    merged_after = integer(settings, "merged-after", TRAIN_MESSAGE)
    score = boolean(settings, "score", TRAIN_MESSAGE)
    config = _config(str(settings["fedlora-config"]), context.node_config)
    if client != integer(context.node_config, "partition-id"):
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
