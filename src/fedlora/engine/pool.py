"""A pool of worker processes that train a round's clients side by side (``run.workers``).

Each worker is a spawned process (forking a process that runs OpenMP threads is unsafe) that
loads the base model once, like a Flower node, and trains whichever client it is handed on its
own copy, applying the FLoRA merges the task lists to its own base weights.  Everything random in
a client's training derives from ``(seed, round, client)``, so which worker trains a client does
not change its update: at equal torch threads per process the pool's run is bit-identical to the
serial one.  A worker takes the next task only when it is free, so at most ``workers`` clients'
factors are in flight; a worker that raises or dies costs only its client's reply, and so does
one that hangs (a deadlock, a stopped process) when ``run.client_timeout`` bounds a client's time:
the worker is killed and replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Self

import numpy as np
import numpy.typing as npt
import torch

from fedlora.config import ExperimentConfig
from fedlora.engine.client import ClientTrainer, TrainingRows
from fedlora.engine.experiment import Experiment, load_model, policy_and_method
from fedlora.engine.merging import MergedBase
from fedlora.engine.transport import ClientReply, Roster, TrainTask
from fedlora.errors import FedloraError
from fedlora.model.device import resolve_device
from fedlora.runs import faults

log = logging.getLogger(__name__)

Indices = npt.NDArray[np.int64]
STOP_SECONDS = 10.0
"""How long a closing pool waits for a worker to exit before it terminates it."""


def pool_size(
    config: ExperimentConfig, budget: int, *, model_bytes: int = 0, free_bytes: int | None = None
) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` for ``run.workers`` and a thread ``budget``.

    The budget is the torch threads this process would use (``OMP_NUM_THREADS``, else the
    cores): ``auto`` spends it on one-thread workers, so ``experiments/run.py --threads 1``
    keeps each run serial, and gives no more workers than clients per round, nor more than one
    on a GPU, nor more than ``free_bytes`` of memory hold (:func:`worker_bytes` each, for a
    base model of ``model_bytes``).  An explicit count shares the budget among the workers, at
    least one thread each.
    """
    run = config.run
    if run.workers == "auto":
        on_cpu = resolve_device(config.model.device).type == "cpu"
        workers = min(budget, run.sampled_per_round()) if on_cpu else 1
        if free_bytes is not None:
            workers = max(1, min(workers, free_bytes // worker_bytes(model_bytes)))
    else:
        workers = min(run.workers, run.num_clients)
    return workers, max(1, budget // workers)


def worker_bytes(model_bytes: int) -> int:
    """What one worker may need at its peak: the flower_vs_inprocess benchmark measured 0.9 GB
    for MiniLM (a 90 MB model) and 2.4-2.7 GB for SmolLM2-135M (540 MB) at rank 192."""
    return 4 * model_bytes + (512 << 20)


def free_memory() -> int | None:
    """Free physical memory (not counting reclaimable caches), where the system tells."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker builds its trainer from; it loads the model itself."""

    config: ExperimentConfig
    num_classes: int
    rows: TrainingRows
    partitions: dict[int, Indices]
    held_out: dict[int, Indices]
    threads: int

    @classmethod
    def of(cls, experiment: Experiment, threads: int) -> WorkerSpec:
        config = experiment.config
        return cls(
            config=config,
            num_classes=0 if config.is_causal_lm else len(experiment.group_names),
            rows=experiment.train,
            partitions=dict(enumerate(experiment.partitions)),
            held_out=dict(experiment.held_out),
            threads=threads,
        )


@dataclass(frozen=True)
class _Started:
    """A worker's first message: ready to train, or why it could not start."""

    error: str | None = None


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _serve(conn: Connection) -> None:
    """A worker's life, until the parent closes its end of the pipe.

    Ctrl-C is the parent's to handle (it closes the pool), so a worker ignores SIGINT.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _work(conn)
    except (EOFError, BrokenPipeError):  # the pool closed while this worker was busy
        return


def _work(conn: Connection) -> None:
    """Build the trainer, then train every task received."""
    try:
        spec: WorkerSpec = pickle.loads(conn.recv_bytes())
        torch.set_num_threads(spec.threads)
        from transformers.utils import logging as hf_logging  # the server reported the load

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        model, _ = load_model(spec.config, spec.num_classes)
        _, aggregator = policy_and_method(spec.config)
        trainer = ClientTrainer(
            model, spec.config, aggregator, spec.rows, spec.partitions, held_out=spec.held_out
        )
    except Exception as error:  # reported to the parent, which raises it
        conn.send_bytes(pickle.dumps(_Started(_describe(error))))
        return
    conn.send_bytes(pickle.dumps(_Started()))
    while True:
        task: TrainTask = pickle.loads(conn.recv_bytes())
        faults.point(f"pool:client-{task.client}")
        try:
            reply = trainer.train(task)
        except Exception as error:  # a failed reply naming the client
            failed = ClientReply.failed(task.client, f"worker raised {_describe(error)}")
            reply = replace(failed, merged_round=trainer.base.round)
        conn.send_bytes(pickle.dumps(reply))


class _Worker:
    """The parent's handle on one worker process: its pipe, and the task it is training."""

    def __init__(self, spec: bytes) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child,), name="fedlora-worker", daemon=True
        )
        self.process.start()
        child.close()
        self.conn.send_bytes(spec)
        self.started = False
        self.task: TrainTask | None = None
        self.timeout: float | None = None
        self.deadline: float | None = None
        """When its task's reply is overdue (``time.monotonic()``), if a timeout bounds it."""
        self.merged_round = 0
        """The last merged round its base weights hold, as far as the parent knows."""

    def wait_started(self) -> None:
        if self.started:
            return
        try:
            message = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            message = _Started(f"the process exited with code {self._exit_code()}")
        if message.error is not None:
            raise FedloraError(f"a worker process could not start: {message.error}")
        self.started = True

    def send(self, task: TrainTask, timeout: float | None) -> None:
        self.task = task
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.conn.send_bytes(pickle.dumps(task))

    def receive(self) -> ClientReply:
        """The reply to its task, or a failed one naming the client if the process died."""
        task = self.task
        if task is None:
            raise FedloraError("internal: a reply from an idle worker")
        self.task = self.deadline = None
        try:
            reply: ClientReply = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            why = f"its worker process died (exit code {self._exit_code()})"
            log.warning("client %d: %s", task.client, why)
            return ClientReply.failed(task.client, why)
        self.merged_round = reply.merged_round
        return reply

    def abandon(self) -> ClientReply:
        """Kill a worker whose reply is overdue (SIGKILL ends even a stopped process): a failed
        reply naming its client.  A new worker takes its place at the next task."""
        task = self.task
        if task is None:
            raise FedloraError("internal: abandoning an idle worker")
        self.task = self.deadline = None
        self.process.kill()
        self.process.join(STOP_SECONDS)
        why = f"no reply within {self.timeout:g} s (run.client_timeout): its worker was killed"
        log.warning("client %d: %s", task.client, why)
        return ClientReply.failed(task.client, why)

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def _exit_code(self) -> int | None:
        self.process.join(STOP_SECONDS)
        return self.process.exitcode

    def stop(self) -> None:
        """Close its pipe (an idle worker exits on EOF), then terminate it if it lingers."""
        self.conn.close()
        self.process.join(STOP_SECONDS if self.task is None else 0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _seconds_to_first(deadlines: Iterable[float | None]) -> float | None:
    """How long to wait for replies before the first deadline passes (``None``: no deadline)."""
    due = [d for d in deadlines if d is not None]
    return None if not due else max(0.0, min(due) - time.monotonic())


class WorkerPool:
    """A transport that trains each round's clients on ``workers`` processes.

    The workers start at :meth:`connect`, so they load the model while the server evaluates
    round 0.  Use it as a context manager: leaving it (the end of a run, an error, Ctrl-C)
    stops every worker.  ``base`` is the server's :class:`MergedBase`: a worker whose base
    weights lag behind a task's is sent the merges it lacks from the run's store of merges.
    ``client_timeout`` (seconds, ``None``: no limit) bounds each client's training.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        base: MergedBase,
        client_timeout: float | None = None,
    ) -> None:
        self.name = f"worker-pool ({workers} x {spec.threads} torch threads)"
        self._spec = pickle.dumps(spec)
        self.size = workers
        self.base = base
        self.client_timeout = client_timeout
        self.workers: list[_Worker] = []

    def connect(self, num_clients: int) -> Roster:
        if not self.workers:
            self.workers = [_Worker(self._spec) for _ in range(self.size)]
        return Roster(clients=frozenset(range(num_clients)))

    def train(self, tasks: Iterable[TrainTask]) -> Iterator[ClientReply]:
        """Train every task; the replies are yielded in task order, whoever trained them, each
        as soon as it and the ones before it are back (so the driver's log and records do not
        depend on which worker was faster).  Replies waiting for an earlier one are held in
        memory, so no new task is handed out while ``workers`` of them wait: a slow client
        cannot make the pool hold more than about twice ``workers`` clients' factors (what
        ``aggregation.spill`` relies on)."""
        pending: Iterator[TrainTask] = iter(tasks)
        order: list[int] = []
        replies: dict[int, ClientReply] = {}
        more = True
        while True:
            while order and order[0] in replies:
                yield replies.pop(order.pop(0))
            for index, worker in enumerate(self.workers):
                if not more or worker.task is not None or len(replies) >= self.size:
                    continue
                task = next(pending, None)
                if task is None:
                    more = False
                    break
                if not worker.alive:  # it died: a new worker takes its place
                    worker.stop()
                    worker = self.workers[index] = _Worker(self._spec)
                worker.wait_started()
                order.append(task.client)
                worker.send(self._caught_up(task, worker.merged_round), self.client_timeout)
            busy = [w for w in self.workers if w.task is not None]
            if not busy:
                break
            ready = wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy],
                timeout=_seconds_to_first(w.deadline for w in busy),
            )
            now = time.monotonic()
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    reply = worker.receive()
                elif worker.deadline is not None and now >= worker.deadline:
                    reply = worker.abandon()
                else:
                    continue
                replies[reply.client] = reply
        for client in order:
            yield replies.pop(client)

    def _caught_up(self, task: TrainTask, worker_round: int) -> TrainTask:
        """``task`` with the stored merges a worker at ``worker_round`` lacks before its list."""
        if worker_round >= task.merged_after:
            return task
        store = self.base.store
        if store is None:
            raise FedloraError("internal: the pool needs the run's store of merged rounds")
        earlier = [m for m in store.load(task.merged_after) if m.round > worker_round]
        log.debug("client %d: %d stored merges sent to a lagging worker", task.client, len(earlier))
        return replace(task, merged=[*earlier, *task.merged], merged_after=worker_round)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
