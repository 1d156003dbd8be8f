"""The installed wheel, not the source tree: the Flower app ships inside the package.

``fedlora flower-sim`` submits ``fedlora.flower.launch.APP_DIR``; a user who installed fedlora
from a wheel has no repository beside it, so the app must come from the installed package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.runs import RunDir
from tests.conftest import REPO_ROOT
from tests.engine.helpers import write_tiny_config
from tests.flower.harness import flower_lock

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower")]


def test_the_installed_wheel_runs_the_flower_app(tiny_bert_dir: Path, tmp_path: Path) -> None:
    dist, site = tmp_path / "dist", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO_ROOT)]
    subprocess.run(build, check=True, stdin=subprocess.DEVNULL)
    (wheel,) = dist.glob("fedlora-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel before the editable source tree
    probe = "import fedlora.flower.launch as l; print(l.__file__); print(l.APP_DIR)"
    where = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert where[0].startswith(str(site)) and where[1].startswith(str(site))
    assert (Path(where[1]) / "pyproject.toml").is_file()

    config = write_tiny_config(
        tmp_path / "tiny.toml", tiny_bert_dir, num_clients=2, options={"ranks": [2, 4]}
    )
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedlora.cli", "flower-sim", str(config), "--out", str(out)]
    with flower_lock():
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(out)
    assert run.is_finished()
    assert [row.round for row in run.metrics()] == [0, 1, 2]
