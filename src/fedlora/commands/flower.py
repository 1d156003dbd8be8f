"""``fedlora flower-sim``: the experiment through Flower's Ray simulation on this machine.

Starts a private ``--simulation`` SuperLink on a free loopback port (with the offline
environment of :mod:`fedlora.flower.env`), submits the Flower app with ``flwr run``, waits for
it and tears everything down.  The run directory is the same as ``fedlora run`` writes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from fedlora.config import load_config
from fedlora.errors import FedloraError
from fedlora.runs import RunDir


def flower_sim_command(
    config_path: Path | None,
    overrides: Sequence[str],
    *,
    out: Path | None,
    overwrite: bool,
    cpus_per_client: int,
    timeout: float,
) -> int:
    console = Console(stderr=True)
    config = load_config(config_path, overrides)
    run_dir = (out or Path(config.run.out_dir)).resolve()
    RunDir.check_free(run_dir, overwrite=overwrite)
    from fedlora.flower.launch import FlowerLaunchError, LocalFederation

    run_config: dict[str, str | int | float | bool] = {
        "config": str(config_path.resolve()) if config_path is not None else "",
        "overrides": ";".join(overrides),
        "out-dir": str(run_dir),
        "overwrite": overwrite,
        "round-timeout": timeout,
    }
    federation_config = {
        "num-supernodes": config.run.num_clients,
        "client-resources-num-cpus": cpus_per_client,
    }
    console.print(
        f"fedlora flower-sim: {config.run.num_clients} simulated SuperNodes, "
        f"{config.run.rounds} rounds, run directory {run_dir}"
    )
    with tempfile.TemporaryDirectory(prefix="fedlora-flower-") as work:
        try:
            with LocalFederation(Path(work)) as federation:
                federation.start_superlink(simulation=True)
                outcome = federation.run(
                    run_config=run_config,
                    federation_config=federation_config,
                    timeout=timeout * (config.run.rounds + 1),
                )
        except FlowerLaunchError as error:
            raise FedloraError(f"flower-sim: {str(error).splitlines()[0]}") from None
    if not outcome.completed:
        console.print(outcome.describe())
        raise FedloraError(f"flower-sim: the Flower run ended as {outcome.status}")
    console.print((run_dir / "summary.md").read_text(encoding="utf-8"))
    return 0
