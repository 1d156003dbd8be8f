"""``fedlora flower-sim``: a Flower Ray simulation from one command, same run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlora.cli import main
from fedlora.runs import RunDir
from tests.engine.helpers import write_tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]


def test_flower_sim_writes_the_run_directory(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = write_tiny_config(
        tmp_path / "tiny.toml", tiny_bert_dir, num_clients=3, options={"ranks": [2, 4, 8]}
    )
    out = tmp_path / "run"
    assert main(["flower-sim", str(config), "--set", "train.lr=0.01", "--out", str(out)]) == 0
    run = RunDir(out)
    assert run.is_finished()
    rows = run.metrics()
    assert [r.round for r in rows] == [0, 1, 2]
    assert rows[0].extra["transport"] == "flower"
    assert all(r.ranks == [[2, 4, 8][c] for c in r.clients] for r in rows)
    assert (out / "label_distribution.csv").exists()
    assert "lr = 0.01" in run.config_file.read_text()


def test_a_gpu_share_per_client_reaches_the_federation_config() -> None:
    from fedlora.commands.flower import simulation_resources
    from fedlora.errors import FedloraError

    assert simulation_resources(4, 1) == {"num-supernodes": 4, "client-resources-num-cpus": 1}
    assert simulation_resources(4, 2, 0.5) == {
        "num-supernodes": 4,
        "client-resources-num-cpus": 2,
        "client-resources-num-gpus": 0.5,
    }
    with pytest.raises(FedloraError, match="--gpus-per-client must be >= 0"):
        simulation_resources(4, 1, -1.0)
    with pytest.raises(FedloraError, match="--cpus-per-client must be at least 1"):
        simulation_resources(4, 0)
