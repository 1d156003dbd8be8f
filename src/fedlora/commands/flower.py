"""``fedlora flower-sim`` and ``fedlora flower-run``: the experiment through Flower.

``flower-sim`` starts a private ``--simulation`` SuperLink on a free loopback port (with the
offline environment of :mod:`fedlora.flower.env`), submits the Flower app and tears everything
down.  ``flower-run`` submits the app to a SuperLink that is already running (a deployment),
streams the ServerApp's log and exits non-zero when the run did not complete, which
``flwr run --stream`` does not do.  Both send the resolved config inline (``config-b64``), so the
server needs no copy of the user's files, and write the same run directory as ``fedlora run``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from fedlora.config import ExperimentConfig, load_config
from fedlora.errors import FedloraError
from fedlora.runs import RunDir

EXIT_RUN_FAILED = 1
RunConfig = dict[str, str | int | float | bool]


def flower_run_config(
    config: ExperimentConfig | None,
    out: Path,
    *,
    overwrite: bool,
    round_timeout: float,
    rounds: int | None = None,
) -> RunConfig:
    """The Flower run config of an experiment; ``config=None`` resumes the run in ``out``
    (continued to ``rounds`` in all, if given)."""
    from fedlora.flower.server_app import encode_config

    run_config: RunConfig = {"out-dir": str(out), "round-timeout": round_timeout}
    if config is None:
        run_config["resume"] = True
        if rounds is not None:
            run_config["rounds"] = rounds
    else:
        run_config.update({"config-b64": encode_config(config), "overwrite": overwrite})
    return run_config


def simulation_resources(
    num_clients: int, cpus_per_client: int, gpus_per_client: float = 0.0
) -> dict[str, int | float]:
    """The federation config of a Ray simulation: SuperNodes, and what each ClientApp holds.

    With ``gpus_per_client`` > 0 Ray gives every ClientApp that share of a GPU and makes only
    its GPU visible to it, so ``model.device = "auto"`` is that GPU (Ray runs as many ClientApps
    at once as the shares fit).
    """
    if cpus_per_client < 1:
        raise FedloraError(f"--cpus-per-client must be at least 1, got {cpus_per_client}")
    if not gpus_per_client >= 0.0:  # NaN too
        raise FedloraError(f"--gpus-per-client must be >= 0, got {gpus_per_client}")
    resources: dict[str, int | float] = {
        "num-supernodes": num_clients,
        "client-resources-num-cpus": cpus_per_client,
    }
    if gpus_per_client > 0:
        resources["client-resources-num-gpus"] = float(gpus_per_client)
    return resources


def flower_sim_command(
    config_path: Path | None,
    overrides: Sequence[str],
    *,
    out: Path | None,
    overwrite: bool,
    cpus_per_client: int,
    timeout: float,
    gpus_per_client: float = 0.0,
) -> int:
    console = Console(stderr=True)
    config = load_config(config_path, overrides)
    run_dir = (out or Path(config.run.out_dir)).resolve()
    RunDir.check_free(run_dir, overwrite=overwrite)
    from fedlora.flower.launch import LocalFederation
    from fedlora.flower.superlink import FlowerLaunchError

    run_config = flower_run_config(config, run_dir, overwrite=overwrite, round_timeout=timeout)
    federation_config = simulation_resources(
        config.run.num_clients, cpus_per_client, gpus_per_client
    )
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


def flower_run_command(
    config_path: Path | None,
    overrides: Sequence[str],
    *,
    superlink: str,
    root_certificates: Path | None,
    insecure: bool,
    out: Path | None,
    overwrite: bool,
    resume: bool,
    round_timeout: float,
    timeout: float,
    rounds: int | None = None,
) -> int:
    """Submit the app to a running SuperLink, stream its log, and say how the run ended."""
    console = Console(stderr=True)
    if insecure == (root_certificates is not None):
        raise FedloraError(
            "flower-run: give --root-certificates CA.pem for a TLS SuperLink, or --insecure"
        )
    if root_certificates is not None and not root_certificates.is_file():
        raise FedloraError(f"--root-certificates {root_certificates}: no such file")
    if rounds is not None and not resume:
        raise FedloraError(
            "flower-run --rounds continues an existing run: give it with --resume and --out (a "
            "new run's length is run.rounds)"
        )
    if resume:
        if config_path is not None or overrides or out is None:
            raise FedloraError(
                "flower-run --resume continues the run in --out with its saved config; give "
                "--out and drop CONFIG and --set"
            )
        config = None
        run_dir = out
    else:
        config = load_config(config_path, overrides)
        run_dir = out or Path(config.run.out_dir)
    from fedlora.flower.env import offline_environment
    from fedlora.flower.superlink import APP_DIR, FlowerLaunchError, SuperLinkClient

    run_config = flower_run_config(
        config, run_dir, overwrite=overwrite, round_timeout=round_timeout, rounds=rounds
    )
    with tempfile.TemporaryDirectory(prefix="fedlora-flower-run-") as work:
        home, cli_home = Path(work) / "home", Path(work) / "flwr"
        client = SuperLinkClient(
            superlink,
            cli_home,
            offline_environment(home, cli_home),
            root_certificates=root_certificates,
        )
        try:
            run_id = client.submit(APP_DIR, run_config)
            console.print(f"fedlora flower-run: run {run_id} submitted to {superlink}")
            outcome = client.wait_run(run_id, timeout, poll=2.0, on_log=_echo)
        except FlowerLaunchError as error:
            raise FedloraError(f"flower-run: {str(error).splitlines()[0]}") from None
    if not outcome.completed:
        details = f" ({outcome.details})" if outcome.details else ""
        console.print(f"fedlora flower-run: run {run_id} ended as {outcome.status}{details}")
        return EXIT_RUN_FAILED
    console.print(
        f"fedlora flower-run: run {run_id} completed; its run directory is {run_dir} on the "
        f"SuperLink's machine"
    )
    return 0


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
