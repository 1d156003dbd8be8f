"""``fedlora run``: one experiment, in process, into its run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from fedlora.commands.progress import RoundProgress
from fedlora.commands.quiet import quiet_libraries
from fedlora.config import ExperimentConfig, load_config
from fedlora.errors import FedloraError
from fedlora.runs import RunDir


def run_command(
    config_path: Path | None,
    overrides: Sequence[str],
    *,
    out: Path | None,
    overwrite: bool,
    resume: Path | None,
    progress: bool,
    rounds: int | None = None,
) -> int:
    console = Console(stderr=True)
    if rounds is not None and resume is None:
        raise FedloraError(
            "--rounds continues an existing run: give it with --resume RUN_DIR (a new run's "
            "length is run.rounds)"
        )
    if resume is not None:
        if config_path is not None or overrides or out is not None:
            raise FedloraError(
                "--resume continues a run with its saved config; drop CONFIG, --set and --out"
            )
        run_dir, config = RunDir.open_for_resume(resume, rounds)
    else:
        config = load_config(config_path, overrides)
        if out is not None:
            config = config.replace({"run.out_dir": str(out)})
        RunDir.check_free(Path(config.run.out_dir), overwrite=overwrite)
        run_dir = None
    console.print(_header(config))
    from fedlora.engine import build_experiment, run_experiment

    quiet_libraries()

    experiment = build_experiment(config)
    if run_dir is None:
        run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=overwrite)
    with RoundProgress(config.run.name, config.run.rounds, enabled=progress) as bar:
        result = run_experiment(experiment, run_dir, resume=resume is not None, on_round=bar.update)
    console.print(run_dir.summary_file.read_text(encoding="utf-8"))
    console.print(f"run directory: {run_dir.path}  ({result.wall_seconds:.1f} s)")
    return 0


def _header(config: ExperimentConfig) -> str:
    return (
        f"fedlora run [bold]{config.run.name}[/bold]: {config.model.name} on "
        f"{config.data.dataset}, "
        f"{config.aggregation.method} aggregation, {config.ranks.policy} ranks, "
        f"{config.run.num_clients} clients ({config.run.sampled_per_round()} per round), "
        f"{config.run.rounds} rounds"
    )
