"""The in-process runner: the round driver, with the clients trained by this process or its pool.

``run.workers`` decides (:func:`~fedlora.engine.pool.pool_size`): one worker trains every client
in turn on the server's own model (:class:`InProcessTransport`), more train side by side in a
:class:`~fedlora.engine.pool.WorkerPool`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fedlora.config import ExperimentConfig
from fedlora.engine.driver import PhaseCallback, RoundCallback, RoundDriver, RunResult
from fedlora.engine.experiment import Experiment, build_experiment
from fedlora.engine.pool import WorkerPool, WorkerSpec, free_memory, pool_size
from fedlora.engine.transport import InProcessTransport, Transport
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
    with client_transport(experiment, driver) as transport:
        return driver.run(transport, resume=resume, on_round=on_round)


@contextmanager
def client_transport(experiment: Experiment, driver: RoundDriver) -> Iterator[Transport]:
    """The transport ``run.workers`` asks for; a pool is stopped when the run leaves it."""
    model_bytes = sum(p.numel() * p.element_size() for p in experiment.model.model.parameters())
    workers, threads = pool_size(
        experiment.config,
        torch.get_num_threads(),
        model_bytes=model_bytes,
        free_bytes=free_memory(),
    )
    if workers == 1:
        yield InProcessTransport(experiment.client_trainer(driver.base))
        return
    timeout = experiment.config.run.client_timeout or None
    spec = WorkerSpec.of(experiment, threads)
    with WorkerPool(spec, workers, driver.base, client_timeout=timeout) as pool:
        yield pool


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
