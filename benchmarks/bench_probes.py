"""Measurements beside the engine's own: step windows, memory after each phase, time per client.

The engine reports the seconds of every phase of a round (``on_phase``, ``PHASES``).  What a
benchmark needs beyond that it takes from public hooks only: torch's module forward hooks and
global optimizer-step hooks (:class:`StepWindows`), the transport contract (:class:`OneByOne`)
and ``/proc`` (memory); nothing in fedlora is patched.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from bench_env import proc_status_mb, reset_peak_rss
from fedlora.engine import ClientReply, Roster, TrainTask, Transport


class StepWindows:
    """Times the training steps of ``model``: the physical floor of local training.

    A step window runs from the entry of the model's forward with autograd on (a forward
    pre-hook) to the return of ``optimizer.step()`` (torch's global post-hook): the forward, the
    loss, ``zero_grad``, the backward, gradient clipping and the update, i.e. what any training
    loop must do.  Forwards without autograd (evaluation) are timed apart.  The hooks sit on a
    causal LM's decoder (``get_decoder()``), which its own forward and fedlora's chunked loss
    (decoder, then the output layer a chunk at a time) both run; else on ``model`` itself.
    """

    KEYS = ("steps", "window_s", "forward_s", "optimizer_s", "eval_forward_s")

    def __init__(self, model: torch.nn.Module) -> None:
        get_decoder = getattr(model, "get_decoder", None)
        decoder = get_decoder() if callable(get_decoder) else None
        self.model = decoder if isinstance(decoder, torch.nn.Module) else model
        self.totals: dict[str, float] = dict.fromkeys(self.KEYS, 0.0)
        self._handles: list[Any] = []
        self._step_start: float | None = None
        self._forward_start = 0.0
        self._optimizer_start = 0.0

    def __enter__(self) -> StepWindows:
        self._handles = [
            self.model.register_forward_pre_hook(self._pre_forward),
            self.model.register_forward_hook(self._post_forward),
            register_optimizer_step_pre_hook(self._pre_step),
            register_optimizer_step_post_hook(self._post_step),
        ]
        return self

    def __exit__(self, *_: object) -> None:
        for handle in self._handles:
            handle.remove()

    def take(self) -> dict[str, float]:
        """The totals since the last call."""
        totals, self.totals = self.totals, dict.fromkeys(self.KEYS, 0.0)
        return totals

    def _pre_forward(self, *_: Any) -> None:
        self._forward_start = time.perf_counter()
        if torch.is_grad_enabled() and self._step_start is None:
            self._step_start = self._forward_start

    def _post_forward(self, *_: Any) -> None:
        key = "forward_s" if torch.is_grad_enabled() else "eval_forward_s"
        self.totals[key] += time.perf_counter() - self._forward_start

    def _pre_step(self, *_: Any) -> None:
        self._optimizer_start = time.perf_counter()

    def _post_step(self, *_: Any) -> None:
        now = time.perf_counter()
        self.totals["optimizer_s"] += now - self._optimizer_start
        if self._step_start is not None:
            self.totals["window_s"] += now - self._step_start
            self.totals["steps"] += 1
        self._step_start = None


class Phases:
    """An ``on_phase`` callback: each round's phase seconds, wall time and memory after each phase.

    A round's wall time runs from the start of its first phase to the end of its last one
    (``record``, after the metrics files and the checkpoint are written).  With ``windows``,
    the step windows of each phase are taken at its end.
    """

    def __init__(self, windows: StepWindows | None = None) -> None:
        self.windows = windows
        self.seconds: dict[int, dict[str, float]] = defaultdict(dict)
        self.steps: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
        self.memory: dict[str, dict[str, float]] = {}
        self._start: dict[int, float] = {}
        self._end: dict[int, float] = {}

    def __call__(self, round_index: int, phase: str, seconds: float) -> None:
        now = time.perf_counter()
        self._start.setdefault(round_index, now - seconds)
        self._end[round_index] = now
        spent = self.seconds[round_index]
        spent[phase] = spent.get(phase, 0.0) + seconds
        self.memory[f"round {round_index} {phase}"] = proc_status_mb()
        if self.windows is not None:
            self.steps[round_index][phase] = self.windows.take()

    def mark(self, label: str) -> None:
        """Memory at a point outside the rounds (after building, after the report)."""
        self.memory[label] = proc_status_mb()

    def wall(self, round_index: int) -> float:
        return self._end[round_index] - self._start[round_index]


class OneByOne:
    """A transport that hands ``inner`` one task at a time and keeps what each client took.

    Per client: its seconds, its step windows and its memory: the RSS before and after it and
    the peak while it ran (``VmHWM`` reset before each client, where ``/proc`` allows it; where
    it does not, ``peak_mb`` is the process's peak so far and ``peak_reset`` says so).  The
    resets hide the process's earlier peak from ``VmHWM``: :meth:`process_peak_mb` restores it.
    """

    def __init__(self, inner: Transport, windows: StepWindows) -> None:
        self.inner = inner
        self.name = inner.name
        self.windows = windows
        self.clients: list[dict[str, Any]] = []
        self._peak_before_resets_mb = 0.0

    def process_peak_mb(self, hwm_mb: float) -> float:
        """The process's true peak, given a ``VmHWM`` read after this transport's last client."""
        return max(hwm_mb, self._peak_before_resets_mb)

    def connect(self, num_clients: int) -> Roster:
        return self.inner.connect(num_clients)

    def train(self, tasks: Iterable[TrainTask]) -> Iterator[ClientReply]:
        """Each reply is passed on as it comes (the contract: a transport holds no replies)."""
        for task in tasks:
            self.windows.take()
            before = proc_status_mb()
            self._peak_before_resets_mb = max(self._peak_before_resets_mb, before["hwm_mb"])
            reset = reset_peak_rss()
            (reply,) = self.inner.train([task])
            steps = self.windows.take()["window_s"]
            after = proc_status_mb()
            self.clients.append(
                {
                    "client": task.client,
                    "seconds": reply.seconds,
                    "steps_s": steps,
                    "rss_before_mb": before["rss_mb"],
                    "peak_mb": after["hwm_mb"],
                    "rss_after_mb": after["rss_mb"],
                    "peak_reset": reset,
                }
            )
            yield reply
