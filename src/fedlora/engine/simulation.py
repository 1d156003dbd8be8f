"""The in-process runner: the round driver, with every client trained in turn in this process."""

from __future__ import annotations

from fedlora.config import ExperimentConfig
from fedlora.engine.driver import PhaseCallback, RoundCallback, RoundDriver, RunResult
from fedlora.engine.experiment import Experiment, build_experiment
from fedlora.engine.transport import InProcessTransport
from fedlora.runs import RunDir


def run_experiment(
    experiment: Experiment,
    run_dir: RunDir,
    *,
    resume: bool = False,
    on_round: RoundCallback | None = None,
    on_phase: PhaseCallback | None = None,
) -> RunResult:
    """Run a built experiment in this process (``resume`` continues from its checkpoint)."""
    driver = RoundDriver(experiment, run_dir, on_phase=on_phase)
    transport = InProcessTransport(experiment.client_trainer(driver.base))
    return driver.run(transport, resume=resume, on_round=on_round)


def run_in_process(
    config: ExperimentConfig,
    run_dir: RunDir,
    *,
    resume: bool = False,
    on_round: RoundCallback | None = None,
    on_phase: PhaseCallback | None = None,
) -> RunResult:
    """Build the experiment from ``config`` and run it in this process."""
    return run_experiment(
        build_experiment(config), run_dir, resume=resume, on_round=on_round, on_phase=on_phase
    )
