"""Ray simulation via our own `--simulation` SuperLink equals the in-process runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlora.config import load_config
from fedlora.engine import sample_clients
from fedlora.runs import read_metrics
from tests.engine.helpers import tiny_causal_config
from tests.flower.harness import (
    APP_DIR,
    FederationFactory,
    assert_completed,
    assert_same_as_in_process,
    write_tiny_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]

RANKS = [2, 4, 4, 8]


@pytest.mark.parametrize("case", ["flexlora", "flora", "causal-lm"])
def test_ray_simulation_matches_in_process(
    tmp_path: Path,
    tiny_bert_dir: Path,
    tiny_llama_dir: Path,
    flower_federation: FederationFactory,
    case: str,
) -> None:
    # FLoRA also checks that the server evaluates the base weights with the merged update;
    # causal-lm runs instruction tuning of a tiny Llama (per-module tiers, Rouge-L evaluation).
    config_path = tmp_path / "tiny.toml"
    if case == "causal-lm":
        tiers = [2, {"attention": 2, "mlp": 4}, 4, 8]
        causal = tiny_causal_config(
            tiny_llama_dir, tmp_path / "run", **{"ranks.options": {"ranks": tiers}}
        )
        config_path.write_text(causal.to_toml(), encoding="utf-8")
    else:
        write_tiny_config(config_path, tiny_bert_dir, options={"ranks": RANKS}, method=case)
    flower_dir = tmp_path / "flower-run"

    federation = flower_federation("simulation")
    federation.start_superlink(simulation=True)
    outcome = federation.run(
        APP_DIR,
        {"config": str(config_path), "out-dir": str(flower_dir)},
        {"num-supernodes": 4, "client-resources-num-cpus": 1},
        timeout=300.0,
    )
    assert_completed(outcome)
    assert federation.close() == []  # free the CPU before the reference run

    config = load_config(str(config_path))
    rows = read_metrics(flower_dir / "metrics.jsonl")
    assert [row.round for row in rows] == [0, 1, 2]
    assert rows[0].extra["transport"] == "flower"
    for row in rows[1:]:
        assert row.clients == sample_clients(config.run.seed, row.round, 4, 2)
        assert row.extra["dropped"] == []
    if case != "causal-lm":
        assert all(row.ranks == [RANKS[c] for c in row.clients] for row in rows[1:])
    assert (flower_dir / "summary.md").exists()

    assert_same_as_in_process(flower_dir, config, tmp_path)
