"""Tiny end-to-end configs: a 2-layer BERT on synthetic data, a few steps per client."""

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
