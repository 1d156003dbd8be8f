"""The Flower ClientApp: one node = one client, trained with the engine's client trainer.

A node learns everything from the server's message (the resolved experiment config, its factors,
the round) and from its own ``--node-config``: ``partition-id`` and ``num-partitions`` (filled in
by Flower's simulation), optionally ``lora-rank`` (the rank it can afford) and ``data-dir`` (where
its copy of the datasets lives).  The experiment (data, tokenisation, base model) is built once
per process and reused across rounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from fedlora.config import ExperimentConfig, build_config
from fedlora.engine import Experiment, build_experiment, run_client
from fedlora.errors import FedloraError
from fedlora.flower.records import ARRAYS, BASE, CONFIG, record_to_factors, reply_content
from fedlora.flower.strategy import announced_rank

app = ClientApp()

_CACHE: dict[str, tuple[Experiment, dict[str, Tensor]]] = {}


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
    """Load the served factors, train locally, reply with the update."""
    settings = msg.content.config_records[CONFIG]
    config = _config(str(settings["fedlora-config"]), context.node_config)
    client = int(settings["client"])  # type: ignore[arg-type]
    if client != _int(context.node_config, "partition-id"):
        raise FedloraError(
            f"this node serves partition {context.node_config.get('partition-id')}, not {client}"
        )
    experiment, applied = _experiment(config)
    if BASE in msg.content.array_records:
        _sync_base(experiment, applied, msg.content.array_records[BASE].to_torch_state_dict())
    factors, dense = record_to_factors(
        msg.content.array_records[ARRAYS],
        config.model.lora_alpha,
        config.model.use_rslora,
        str(client),
    )
    result = run_client(
        experiment.model,
        config,
        experiment.aggregator,
        client=client,
        round_index=int(settings["server-round"]),  # type: ignore[arg-type]
        rank_map={name: f.r for name, f in factors.items()},
        factors=factors,
        dense=dense,
        data=experiment.train,
        indices=experiment.partitions[client],
        validation=None if experiment.validation is None else experiment.validation[client],
    )
    metrics = {"train-loss": result.train_loss, "steps": result.steps, "seconds": result.seconds}
    if result.validation_loss is not None:
        metrics["validation-loss"] = result.validation_loss
    return Message(content=reply_content(result.update, metrics), reply_to=msg)


def _config(toml_text: str, node: Mapping[str, Any]) -> ExperimentConfig:
    import tomllib

    config = build_config(tomllib.loads(toml_text), "server config")
    data_dir = node.get("data-dir")
    if isinstance(data_dir, str) and data_dir:
        config = config.replace({"data.data_dir": data_dir})
    return config


def _experiment(config: ExperimentConfig) -> tuple[Experiment, dict[str, Tensor]]:
    key = config.to_toml()
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = (build_experiment(config), {})
    return _CACHE[key]


def _sync_base(
    experiment: Experiment, applied: dict[str, Tensor], target: Mapping[str, Tensor]
) -> None:
    """Bring this process's base weights to the server's merged total (FLoRA)."""
    differences = {}
    for name, total in target.items():
        differences[name] = total - applied.get(name, torch.zeros_like(total))
        applied[name] = total.clone()
    experiment.model.add_to_base(differences)


def _int(node: Mapping[str, Any], key: str) -> int:
    value = node.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedloraError(f"node config {key!r} must be an integer, got {value!r}")
    return value
