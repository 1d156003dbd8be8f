"""One seed scheme: every stream of a run has its own purpose; a change to one moves no other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedlora.engine import build_experiment
from fedlora.seeds import PURPOSES, derive_seed, rng
from tests.engine.helpers import tiny_config


def test_every_purpose_has_its_own_stream() -> None:
    assert len(set(PURPOSES.values())) == len(PURPOSES)
    for seed in (0, 1, 7):
        seeds = {derive_seed(seed, purpose) for purpose in PURPOSES}
        assert len(seeds) == len(PURPOSES)
    assert derive_seed(0, "sampling", 3) == derive_seed(0, "sampling", 3)
    assert derive_seed(0, "sampling", 3) != derive_seed(1, "sampling", 3)
    assert rng(0, "partition").random() == rng(0, "partition").random()
    with pytest.raises(KeyError):
        derive_seed(0, "no such purpose")


def test_changing_one_draw_moves_no_other(tiny_bert_dir: Path, tmp_path: Path) -> None:
    # Fewer test rows change the test subsample only: not the partition, the held-out rows of
    # the loss-based policy, the rank allocation or the model's initial head.
    settings = {
        "data.partition": "dirichlet",
        "data.partition_options": {"alpha": 0.5},
        "ranks.policy": "loss_based",
        "ranks.options": {"low": 2, "high": 8, "score_rows": 40},
    }
    a = build_experiment(tiny_config(tiny_bert_dir, tmp_path / "a", **settings))
    b = build_experiment(
        tiny_config(tiny_bert_dir, tmp_path / "b", **{**settings, "data.max_test_samples": 32})
    )
    assert all(np.array_equal(p, q) for p, q in zip(a.partitions, b.partitions, strict=True))
    assert np.array_equal(a.score_rows, b.score_rows)
    assert a.policy.state_dict() == b.policy.state_dict()
    for name, tensor in a.model.initial_dense().items():
        assert np.array_equal(tensor.numpy(), b.model.initial_dense()[name].numpy())
    assert len(a.evaluator.test) == 64 and len(b.evaluator.test) == 32  # type: ignore[attr-defined]
