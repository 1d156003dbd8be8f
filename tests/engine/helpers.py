"""Tiny end-to-end configs: a 2-layer BERT on synthetic data, a few steps per client.

Shared by the engine, CLI and Flower tests, so that every path trains the same small experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedlora.config import ExperimentConfig, load_config


def tiny_config(model_dir: Path, out_dir: Path, **overrides: Any) -> ExperimentConfig:
    settings: dict[str, Any] = {
        "model.name": str(model_dir),
        "data.dataset": "synthetic",
        "data.partition": "iid",
        "data.partition_options": {},
        "data.max_test_samples": 64,
        "run.out_dir": str(out_dir),
        "run.num_clients": 6,
        "run.clients_per_round": 3,
        "run.rounds": 3,
        "train.steps": 2,
        "train.batch_size": 8,
        "train.lr": 5e-3,
        "ranks.policy": "list",
        "ranks.options": {"ranks": [2, 4, 8, 2, 4, 8]},
    }
    settings.update(overrides)
    return load_config(None).replace(settings)


def tiny_causal_config(model_dir: Path, out_dir: Path, **overrides: Any) -> ExperimentConfig:
    """Instruction tuning of a tiny causal LM on 5 generated tasks (4 clients, 1 task unseen)."""
    settings: dict[str, Any] = {
        "task": "causal-lm",
        "model.name": str(model_dir),
        "model.max_length": 128,
        "data.data_dir": str(out_dir / "no-topic-data"),
        "run.out_dir": str(out_dir),
        "run.num_clients": 4,
        "run.clients_per_round": 2,
        "run.rounds": 2,
        "train.steps": 2,
        "train.batch_size": 4,
        "train.lr": 5e-3,
        "instruct.template": "plain",
        "instruct.examples_per_task": [6, 10],
        "instruct.max_new_tokens": 6,
        "instruct.eval_per_task": 4,
        "ranks.policy": "list",
        "ranks.options": {"ranks": [2, 4, {"attention": 2, "mlp": 8}, 8]},
    }
    settings.update(overrides)
    return load_config(None).replace(settings)


def write_tiny_config(
    path: Path,
    model_dir: Path,
    *,
    rounds: int = 2,
    num_clients: int = 4,
    clients_per_round: int = 2,
    policy: str = "list",
    options: dict[str, Any] | None = None,
    steps: int = 1,
    method: str = "flexlora",
    **overrides: Any,
) -> Path:
    """:func:`tiny_config` as a TOML file, for the CLI and for Flower's run config."""
    config = tiny_config(
        model_dir,
        path.parent / "run",
        **{
            "run.rounds": rounds,
            "run.num_clients": num_clients,
            "run.clients_per_round": clients_per_round,
            "data.max_test_samples": 32,
            "ranks.policy": policy,
            "ranks.options": options or {"ranks": [2, 4, 4, 8][:num_clients]},
            "train.steps": steps,
            "train.lr": 1e-3,
            "aggregation.method": method,
            **overrides,
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_toml(), encoding="utf-8")
    return path
