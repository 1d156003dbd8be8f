"""Benchmark: the in-process simulation's overhead, its training step, and memory vs client count.

Three measurements in one run, printed as tables and written to ``benchmarks/results/
simulation.json`` (``--out``).  Times are wall-clock ``time.perf_counter``; the machine this was
written on has two cores shared with other jobs, so compare the ratios within one run, not the
absolute times across runs.

1. Overhead share of a round (default experiment: MiniLM on AG News, 20 clients, 5 per round,
   10 local steps, FlexLoRA, ranks 5/20, evaluation on 500 test rows; ``run.rounds=3``).  The
   whole run goes through ``Simulation.run`` (as ``fedlora run`` does, checkpoints and metrics
   files included) with timers patched around public functions, nothing in ``src/`` edited:

   - *physical floor* = the sum over every local step of every sampled client of the **step
     window**: from the entry of the model's forward (``AdaptedModel.__call__`` with autograd on)
     to the return of ``optimizer.step()`` (a global torch optimizer post-hook).  It holds the
     forward, the loss, ``zero_grad``, the backward, gradient clipping (``max_grad_norm=1.0`` is
     part of the default training) and the AdamW update, i.e. what any training loop must do.
   - *round wall* = from the start of ``Simulation.run_round`` to the end of the round's
     ``on_round`` callback, i.e. including the metrics files and the checkpoint written after
     the round (``checkpoint_every=1`` by default).
   - *evaluation* = ``evaluate_global`` (activate and load the global adapter, then a
     forward pass over the test split under ``inference_mode``); its forwards are timed too.
   - ``overhead incl. eval = (round wall - floor) / round wall``: everything that is not a local
     training step, evaluation included.
   - ``overhead excl. eval = (round wall - eval - floor) / (round wall - eval)``: the same share
     for a round without evaluation (``run.eval_every > 1``).  This is the one the target
     (<= 5 %) is judged on: evaluation is useful work whose amount is set by the config (test rows,
     ``eval_every``), not bookkeeping; for completeness ``eval forward as work`` also reports
     ``(round wall - floor - eval forwards) / round wall``.

   Round 1 also creates the PEFT adapters (one per rank layout) and warms up the allocator; the
   headline is the steady state, rounds 2..R summed (round 1 is reported on its own line).  The
   share depends on the torch thread count (the Python overhead does not shrink with threads,
   the floor does), so it is measured with 1 thread and with torch's default (one per core).

2. One local training step, fedlora vs a bare transformers + PEFT loop, on the same 16-row AG News
   batches (MiniLM tokenizer, at most 64 tokens, each batch trimmed to its longest row):

   - fedlora: ``train_local`` on an ``AdaptedModel`` (rank 8 on ``query``/``value``, alpha 16,
     dense classifier head) with ``TrainConfig(steps=N, lr=2e-3, max_grad_norm=1.0)``;
   - bare: ``AutoModelForSequenceClassification.from_pretrained`` (the same MiniLM folder) +
     ``get_peft_model(LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
     modules_to_save=["classifier"]))``, ``AdamW(lr=2e-3, weight_decay=0)`` and the textbook loop
     ``loss = model(**batch).loss; loss.backward(); clip_grad_norm_; step; zero_grad``.

   Both start every repeat from the same weights (fedlora's initial adapter and head are copied
   into the bare model) and the same torch seed (dropout), so they compute the same thing: their
   mean losses are compared as a check.  Per-step time = wall time of the whole call (a fresh
   optimizer included, as in a federated round) / N.  After one warm-up call each, repeats are
   interleaved in ABBA order (fedlora, bare, bare, fedlora, ...) to cancel drift; the table shows
   the median per-step times and their ratio.

3. Peak RSS with 100 and with 1,613 clients, 80 per round: each in a fresh subprocess of this
   script that builds the experiment from a config (a tiny random BERT, hidden size 32, saved to a
   temporary folder with the MiniLM tokenizer; AG News, 4,000 training rows, iid partition;
   ``train.steps=1``; FlexLoRA; ranks ``distribution`` heavy_tail_light with tiers
   ``[2, 4, {attention=4, mlp=8}, 8]``), runs it with ``Simulation.run`` (2 rounds) and reports
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end.  The 1,613 / 100 ratio of that peak
   is the target (<= 1.2); the baseline (RSS after importing torch, transformers, PEFT and
   fedlora) is reported too, so the ratio of the increments over it is visible as well.
   Caveat: Linux carries ``ru_maxrss`` over ``execve`` (the old address space's peak), so a child
   started by a big process reports at least the parent's RSS at the fork.  This part therefore
   runs first, while the parent holds only the imported libraries (about 0.4 GB, below any
   child's own peak), and each child also reports ``VmHWM`` (its own address space's peak since
   exec); a ``ru_maxrss`` above ``VmHWM`` is flagged as inherited.  The ``VmHWM`` after each phase
   (build, label-distribution report, each round, final report) shows where the peak is reached.

Usage::

    .venv/bin/python benchmarks/simulation.py            # full run, about 15 minutes
    .venv/bin/python benchmarks/simulation.py --quick    # smoke run, under 2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from bench_env import (  # first: the offline environment, before any HF import
    proc_status_mb,
    quiet_transformers,
)

# isort: split

import numpy as np
import torch

import fedlora.engine.client as engine_client
import fedlora.engine.simulation as engine_simulation
from fedlora.aggregation import GlobalState
from fedlora.config import ExperimentConfig, load_config
from fedlora.data import TokenizedData, load_named_dataset
from fedlora.engine import Simulation, build_experiment
from fedlora.model import (
    AdaptedModel,
    TrainConfig,
    load_classifier,
    resolve_model_path,
    train_local,
)
from fedlora.model.tiny import save_tiny_bert
from fedlora.runs import RoundMetrics, RunDir

TARGET_OVERHEAD = 0.05
TARGET_STEP_RATIO = 1.10
TARGET_RSS_RATIO = 1.20
RSS_CLIENTS = (100, 1613)
RSS_PER_ROUND = 80
RSS_TIERS: list[Any] = [2, 4, {"attention": 4, "mlp": 8}, 8]
STEP_RANK = 8
STEP_ALPHA = 16.0
STEP_TARGETS = ["query", "value"]
STEP_BATCH = 16
STEP_MAX_LENGTH = 64
STEP_CLIP = 1.0

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------- utilities


def other_benchmarks() -> list[str]:
    """Command lines of other benchmark processes (they would disturb the timings)."""
    found = subprocess.run(
        ["pgrep", "-af", "benchmarks/aggregation.py"], capture_output=True, text=True, check=False
    )
    return [line for line in found.stdout.splitlines() if str(os.getpid()) != line.split()[0]]


def threads_label(threads: int) -> int:
    return threads if threads > 0 else torch.get_num_threads()


# ---------------------------------------------------------------- part 1: round instrumentation


class Probe:
    """Wall-time totals of the instrumented calls of one round, by bucket."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.phase = "client"
        self.step_start: float | None = None
        self.step_pre: float | None = None

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()
        self.step_start = None

    def add(self, key: str, seconds: float) -> None:
        self.totals[key] += seconds
        self.counts[key] += 1

    def timed(self, key: str, function: Callable[..., Any], *, phased: bool = False) -> Any:
        """A wrapper of ``function`` that adds its wall time to ``key`` (prefixed by the phase)."""
        probe = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                name = f"{probe.phase}_{key}" if phased else key
                probe.add(name, time.perf_counter() - start)

        return wrapper


@contextlib.contextmanager
def instrumented(probe: Probe) -> Iterator[None]:
    """Patch timers around the public functions a round calls; undo everything on exit."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    original_call = AdaptedModel.__call__
    original_evaluate = engine_simulation.evaluate_global

    def call(self: AdaptedModel, **batch: torch.Tensor) -> Any:
        start = time.perf_counter()
        output = original_call(self, **batch)
        seconds = time.perf_counter() - start
        if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
            probe.add(f"{probe.phase}_forward_nograd", seconds)
        else:
            probe.step_start = start
            probe.add("step_forward", seconds)
        return output

    def evaluate_global(experiment: Any, state: GlobalState) -> Any:
        probe.phase = "eval"
        start = time.perf_counter()
        try:
            return original_evaluate(experiment, state)
        finally:
            probe.add("evaluate", time.perf_counter() - start)
            probe.phase = "client"

    def pre_step(*_: Any) -> None:
        probe.step_pre = time.perf_counter()

    def post_step(*_: Any) -> None:
        now = time.perf_counter()
        if probe.step_pre is not None:
            probe.add("step_optimizer", now - probe.step_pre)
        if probe.step_start is not None:
            probe.add("step_window", now - probe.step_start)
        probe.step_start = probe.step_pre = None

    with contextlib.ExitStack() as stack:
        patches = [
            mock.patch.object(AdaptedModel, "__call__", call),
            mock.patch.object(engine_simulation, "evaluate_global", evaluate_global),
            mock.patch.object(
                torch.autograd, "backward", probe.timed("step_backward", torch.autograd.backward)
            ),
            mock.patch.object(
                torch.nn.utils,
                "clip_grad_norm_",
                probe.timed("step_clip", torch.nn.utils.clip_grad_norm_),
            ),
            mock.patch.object(
                engine_client, "train_local", probe.timed("train_local", engine_client.train_local)
            ),
            mock.patch.object(
                engine_simulation,
                "run_client",
                probe.timed("run_client", engine_simulation.run_client),
            ),
            mock.patch.object(
                GlobalState,
                "factors_for",
                probe.timed("factors_for", GlobalState.factors_for, phased=True),
            ),
        ]
        for method in ("activate", "load", "extract", "_create"):
            original = getattr(AdaptedModel, method)
            patches.append(
                mock.patch.object(
                    AdaptedModel, method, probe.timed(method.strip("_"), original, phased=True)
                )
            )
        for patch in patches:
            stack.enter_context(patch)
        stack.callback(register_optimizer_step_pre_hook(pre_step).remove)
        stack.callback(register_optimizer_step_post_hook(post_step).remove)
        yield


def round_breakdown(
    round_index: int, wall: float, run_round: float, totals: dict[str, float], row: RoundMetrics
) -> dict[str, Any]:
    """Seconds per bucket of one round (buckets partition the round wall) and the shares."""
    t = defaultdict(float, totals)
    floor = t["step_window"]
    evaluate = t["evaluate"]
    eval_forward = t["eval_forward_nograd"]
    buckets = {
        "train steps (floor)": floor,
        "train_local outside steps": t["train_local"] - floor,
        "client setup/teardown": t["run_client"] - t["train_local"],
        "server loop": run_round - t["run_client"] - row.seconds_aggregate - evaluate,
        "aggregation": row.seconds_aggregate,
        "evaluation": evaluate,
        "metrics + checkpoint": wall - run_round,
    }
    details = {
        "step_forward": t["step_forward"],
        "step_backward": t["step_backward"],
        "step_clip": t["step_clip"],
        "step_optimizer": t["step_optimizer"],
        "step_rest (loss, zero_grad)": floor
        - t["step_forward"]
        - t["step_backward"]
        - t["step_clip"]
        - t["step_optimizer"],
        "client_activate (incl. create)": t["client_activate"],
        "client_create_adapter": t["client_create"],
        "client_load": t["client_load"],
        "client_extract": t["client_extract"],
        "client_other (freeze, rng fork, generator)": t["run_client"]
        - t["train_local"]
        - t["client_activate"]
        - t["client_load"]
        - t["client_extract"],
        "server_factors_for": t["client_factors_for"],
        "eval_forward": eval_forward,
        "eval_activate (incl. create)": t["eval_activate"],
        "eval_load": t["eval_load"],
        "eval_factors_for": t["eval_factors_for"],
        "eval_other (batches, metrics)": evaluate
        - eval_forward
        - t["eval_activate"]
        - t["eval_load"]
        - t["eval_factors_for"],
    }
    return {
        "round": round_index,
        "wall_s": wall,
        "run_round_s": run_round,
        "floor_s": floor,
        "evaluation_s": evaluate,
        "eval_forward_s": eval_forward,
        "buckets_s": buckets,
        "details_s": details,
        "clients": row.clients,
        "ranks": row.ranks,
        "test_accuracy": row.test_accuracy,
        **shares(wall, floor, evaluate, eval_forward),
    }


def shares(wall: float, floor: float, evaluate: float, eval_forward: float) -> dict[str, float]:
    return {
        "overhead_incl_eval": (wall - floor) / wall,
        "overhead_excl_eval": (wall - evaluate - floor) / (wall - evaluate),
        "overhead_eval_forward_as_work": (wall - floor - eval_forward) / wall,
    }


def overhead_config(args: argparse.Namespace, out_dir: Path) -> ExperimentConfig:
    overrides: dict[str, Any] = {
        "run.rounds": 2 if args.quick else 3,
        "run.seed": args.seed,
        "run.out_dir": str(out_dir),
    }
    if args.quick:
        overrides |= {
            "train.steps": 2,
            "run.clients_per_round": 3,
            "data.max_test_samples": 64,
        }
    return load_config(None).replace(overrides)


def measure_overhead(args: argparse.Namespace, threads: int, log: Log) -> dict[str, Any]:
    """Run the default experiment with timers; one entry per round plus the steady state."""
    torch.set_num_threads(threads if threads > 0 else os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="fedlora-bench-") as tmp:
        config = overhead_config(args, Path(tmp) / "run")
        tick = time.perf_counter()
        experiment = build_experiment(config)
        build_s = time.perf_counter() - tick
        log(f"overhead ({torch.get_num_threads()} threads): experiment built in {build_s:.1f} s")
        run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=False)
        simulation = Simulation(experiment, run_dir)
        probe = Probe()
        rounds: list[dict[str, Any]] = []
        marks: dict[str, float] = {}
        original_run_round = simulation.run_round

        def run_round(state: GlobalState, round_index: int) -> Any:
            probe.reset()
            marks["start"] = time.perf_counter()
            result = original_run_round(state, round_index)
            marks["run_round"] = time.perf_counter() - marks["start"]
            return result

        def on_round(row: RoundMetrics) -> None:
            wall = time.perf_counter() - marks["start"]
            entry = round_breakdown(row.round, wall, marks["run_round"], dict(probe.totals), row)
            entry["steps"] = probe.counts["step_window"]
            rounds.append(entry)
            log(
                f"  round {row.round}: {wall:.2f} s, floor {entry['floor_s']:.2f} s, eval "
                f"{entry['evaluation_s']:.2f} s, overhead excl. eval "
                f"{entry['overhead_excl_eval']:.1%}"
            )

        simulation.run_round = run_round  # type: ignore[method-assign]
        with instrumented(probe):
            result = simulation.run(on_round=on_round)
    steady = [r for r in rounds if r["round"] >= 2] or rounds
    total = {
        key: sum(r[key] for r in steady)
        for key in ("wall_s", "floor_s", "evaluation_s", "eval_forward_s")
    }
    buckets = {k: sum(r["buckets_s"][k] for r in steady) for k in steady[0]["buckets_s"]}
    details = {k: sum(r["details_s"][k] for r in steady) for k in steady[0]["details_s"]}
    return {
        "threads": torch.get_num_threads(),
        "config": {
            "rounds": config.run.rounds,
            "num_clients": config.run.num_clients,
            "clients_per_round": config.run.sampled_per_round(),
            "train_steps": config.train.steps,
            "batch_size": config.train.batch_size,
            "max_test_samples": config.data.max_test_samples,
            "aggregation": config.aggregation.method,
            "ranks": {"policy": config.ranks.policy, "options": config.ranks.options},
            "model": config.model.name,
            "dataset": config.data.dataset,
        },
        "build_s": build_s,
        "run_wall_s": result.wall_seconds,
        "finish_s": result.wall_seconds - sum(r["wall_s"] for r in rounds),
        "rounds": rounds,
        "steady": {
            "rounds": [r["round"] for r in steady],
            **total,
            "buckets_s": buckets,
            "details_s": details,
            **shares(
                total["wall_s"], total["floor_s"], total["evaluation_s"], total["eval_forward_s"]
            ),
        },
    }


# ------------------------------------------------------------ part 2: fedlora vs a bare loop


def step_batches(steps: int, seed: int, tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    """``steps`` AG News batches of 16 rows (seeded sample), trimmed to their longest row."""
    train, _ = load_named_dataset("ag_news", seed=seed)
    rows = np.sort(
        np.random.default_rng(seed).choice(len(train), size=steps * STEP_BATCH, replace=False)
    )
    data = TokenizedData.from_dataset(train.subset(rows), tokenizer, STEP_MAX_LENGTH)
    order = torch.Generator().manual_seed(seed)
    return list(data.batches(np.arange(len(data)), STEP_BATCH, generator=order))


def bare_train(model: Any, batches: list[dict[str, torch.Tensor]], lr: float) -> float:
    """The textbook transformers + PEFT loop; returns the mean loss over the examples."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    loss_sum, examples = 0.0, 0
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, STEP_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        count = int(batch["labels"].shape[0])
        loss_sum += float(loss.detach()) * count
        examples += count
    model.eval()
    return loss_sum / examples


def measure_train_step(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads if args.threads > 0 else os.cpu_count() or 1)
    steps, warmup, repeats = (4, 1, 2) if args.quick else (30, 5, 6)
    lr = load_config(None).train.lr
    num_labels = 4
    fed_model, tokenizer = load_classifier("minilm", num_labels, seed=args.seed)
    adapted = AdaptedModel(fed_model, STEP_TARGETS, lora_dropout=0.0, init_seed=args.seed)
    adapted.activate(STEP_RANK, STEP_ALPHA)
    initial = adapted.extract("initial", 1)
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("minilm"), num_labels=num_labels
    )
    with warnings.catch_warnings():  # transformers' is_gradient_checkpointing deprecation
        warnings.simplefilter("ignore", FutureWarning)
        bare = get_peft_model(
            base,
            LoraConfig(
                r=STEP_RANK,
                lora_alpha=int(STEP_ALPHA),
                target_modules=STEP_TARGETS,
                modules_to_save=["classifier"],
            ),
        )
    bare_params = dict(bare.named_parameters())

    def reset_bare() -> None:
        with torch.no_grad():
            for name, factors in initial.modules.items():
                bare_params[f"base_model.model.{name}.lora_A.default.weight"].copy_(factors.A)
                bare_params[f"base_model.model.{name}.lora_B.default.weight"].copy_(factors.B)
            for name, tensor in initial.dense.items():
                head, _, leaf = name.rpartition(".")
                bare_params[f"base_model.model.{head}.modules_to_save.default.{leaf}"].copy_(tensor)

    fed_trainable = sum(p.numel() for p in adapted.trainable_parameters())
    bare_trainable = sum(p.numel() for p in bare.parameters() if p.requires_grad)
    if fed_trainable != bare_trainable:
        raise RuntimeError(f"trainable parameters differ: {fed_trainable} vs {bare_trainable}")
    batches = step_batches(steps + warmup, args.seed, tokenizer)
    warm, timed = batches[:warmup], batches[warmup:]

    def run(which: str, chunk: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        """Reset to the common start, seed dropout, then time one local training call."""
        if which == "fedlora":
            adapted.load(initial.modules, initial.dense)
        else:
            reset_bare()
        gc.collect()
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        if which == "fedlora":
            loss = train_local(
                adapted, chunk, TrainConfig(steps=len(chunk), lr=lr, max_grad_norm=STEP_CLIP)
            ).mean_loss
        else:
            loss = bare_train(bare, chunk, lr)
        return time.perf_counter() - start, loss

    warmup_s = {which: run(which, warm)[0] for which in ("fedlora", "bare")}
    per_step: dict[str, list[float]] = {"fedlora": [], "bare": []}
    losses: dict[str, list[float]] = {"fedlora": [], "bare": []}
    for i in range(repeats):
        for which in ("fedlora", "bare") if i % 2 == 0 else ("bare", "fedlora"):
            seconds, loss = run(which, timed)
            per_step[which].append(seconds / len(timed))
            losses[which].append(loss)
        log(
            f"train step repeat {i + 1}/{repeats}: fedlora {per_step['fedlora'][-1] * 1e3:.1f} ms,"
            f" bare {per_step['bare'][-1] * 1e3:.1f} ms"
        )
    medians = {k: statistics.median(v) for k, v in per_step.items()}
    paired = [f / b for f, b in zip(per_step["fedlora"], per_step["bare"], strict=True)]
    return {
        "threads": torch.get_num_threads(),
        "steps_per_call": len(timed),
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "repeats": repeats,
        "batch_size": STEP_BATCH,
        "max_length": STEP_MAX_LENGTH,
        "batch_widths": [int(b["input_ids"].shape[1]) for b in timed],
        "rank": STEP_RANK,
        "alpha": STEP_ALPHA,
        "target_modules": STEP_TARGETS,
        "lr": lr,
        "max_grad_norm": STEP_CLIP,
        "trainable_parameters": fed_trainable,
        "per_step_s": per_step,
        "median_per_step_s": medians,
        "min_per_step_s": {k: min(v) for k, v in per_step.items()},
        "ratio_of_medians": medians["fedlora"] / medians["bare"],
        "median_paired_ratio": statistics.median(paired),
        "mean_loss": losses,
        "max_loss_difference": max(
            abs(f - b) for f, b in zip(losses["fedlora"], losses["bare"], strict=True)
        ),
    }


# ------------------------------------------------------------ part 3: peak RSS vs clients


def rss_config(num_clients: int, rounds: int, seed: int, model: str, out: Path) -> Any:
    return load_config(None).replace(
        {
            "model.name": model,
            "data.dataset": "ag_news",
            "data.partition": "iid",
            "data.partition_options": {},
            "run.num_clients": num_clients,
            "run.clients_per_round": RSS_PER_ROUND,
            "run.rounds": rounds,
            "run.seed": seed,
            "run.out_dir": str(out),
            "train.steps": 1,
            "ranks.policy": "distribution",
            "ranks.options": {"population": "heavy_tail_light", "tiers": RSS_TIERS},
        }
    )


def rss_child(args: argparse.Namespace) -> int:
    """Subprocess entry: one experiment with ``--rss-child`` clients; writes JSON to a file."""
    import peft  # noqa: F401 (the baseline includes every library a run imports)
    import transformers  # noqa: F401

    quiet_transformers()
    torch.set_num_threads(args.threads if args.threads > 0 else os.cpu_count() or 1)
    baseline = proc_status_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedlora-rss-") as tmp:
        config = rss_config(
            args.rss_child, args.rss_rounds, args.seed, args.rss_model, Path(tmp) / "run"
        )
        experiment = build_experiment(config)
        built = proc_status_mb() | {"seconds": time.perf_counter() - start}
        run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=False)
        simulation = Simulation(experiment, run_dir)
        rounds: list[dict[str, Any]] = []
        # VmHWM after each phase (never reset: that would also reset ru_maxrss) shows in which
        # phase the peak was reached.
        phases: dict[str, dict[str, float]] = {"build_experiment": built}
        tick = [time.perf_counter()]
        original_start, original_finish = simulation._start, simulation._finish

        def start_run() -> Any:
            result = original_start()
            phases["start (label distribution)"] = proc_status_mb()
            tick[0] = time.perf_counter()
            return result

        def finish_run(rows: list[RoundMetrics], wall: float) -> None:
            original_finish(rows, wall)
            phases["finish (run report, plots)"] = proc_status_mb()

        def on_round(row: RoundMetrics) -> None:
            now = time.perf_counter()
            status = proc_status_mb()
            rounds.append(status | {"round": row.round, "seconds": now - tick[0]})
            phases[f"round {row.round}"] = status
            tick[0] = now

        simulation._start = start_run  # type: ignore[method-assign]
        simulation._finish = finish_run  # type: ignore[method-assign]
        simulation.run(on_round=on_round)
        tiers = sorted({str(t) for t in experiment.policy.allocation or []})
        layouts = experiment.model.num_adapters
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    result = {
        "num_clients": args.rss_child,
        "clients_per_round": RSS_PER_ROUND,
        "rounds": args.rss_rounds,
        "baseline": baseline,
        "after_build": built,
        "after_rounds": rounds,
        "phases": phases,
        "end": proc_status_mb(),
        "peak_rss_mb": peak_mb,
        "vm_hwm_mb": proc_status_mb()["hwm_mb"],
        "seconds": time.perf_counter() - start,
        "tiers": tiers,
        "adapters_in_memory": layouts,
    }
    Path(args.rss_result).write_text(json.dumps(result) + "\n", encoding="utf-8")
    return 0


def measure_rss(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    rounds, repeats = (1, 1) if args.quick else (2, 2)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in RSS_CLIENTS}
    with tempfile.TemporaryDirectory(prefix="fedlora-tiny-") as tmp:
        model_dir = Path(tmp) / "tiny-bert"
        save_tiny_bert(model_dir)
        for repeat in range(repeats):
            for num_clients in RSS_CLIENTS:
                result_file = Path(tmp) / f"rss-{num_clients}-{repeat}.json"
                command = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--rss-child",
                    str(num_clients),
                    "--rss-model",
                    str(model_dir),
                    "--rss-rounds",
                    str(rounds),
                    "--rss-result",
                    str(result_file),
                    "--seed",
                    str(args.seed),
                    "--threads",
                    str(args.threads),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(
                        f"RSS child with {num_clients} clients failed:\n{done.stderr[-3000:]}"
                    )
                child = json.loads(result_file.read_text(encoding="utf-8"))
                runs[num_clients].append(child)
                log(
                    f"rss {num_clients} clients: peak {child['peak_rss_mb']:.0f} MB "
                    f"(baseline {child['baseline']['rss_mb']:.0f} MB), {child['seconds']:.1f} s"
                )
    summary: dict[str, Any] = {}
    for n, children in runs.items():
        peak = statistics.median(c["peak_rss_mb"] for c in children)
        baseline = statistics.median(c["baseline"]["rss_mb"] for c in children)
        hwm = statistics.median(c["vm_hwm_mb"] for c in children)
        summary[str(n)] = {
            "peak_rss_mb": peak,
            "vm_hwm_mb": hwm,
            "peak_inherited_from_parent": peak > hwm + 1.0,
            "baseline_rss_mb": baseline,
            "increment_mb": peak - baseline,
            "after_build_rss_mb": statistics.median(c["after_build"]["rss_mb"] for c in children),
            "seconds_per_round": statistics.median(
                r["seconds"] for c in children for r in c["after_rounds"]
            ),
        }
    small, large = summary[str(RSS_CLIENTS[0])], summary[str(RSS_CLIENTS[1])]
    return {
        "clients": list(RSS_CLIENTS),
        "clients_per_round": RSS_PER_ROUND,
        "rounds": rounds,
        "repeats": repeats,
        "tiers": RSS_TIERS,
        "model": "tiny random BERT (hidden 32, 2 layers, intermediate 64), MiniLM tokenizer",
        "dataset": "ag_news (4,000 training rows, iid)",
        "threads": threads_label(args.threads),
        "runs": {str(n): c for n, c in runs.items()},
        "summary": summary,
        "peak_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
        "increment_ratio": large["increment_mb"] / small["increment_mb"],
    }


# ---------------------------------------------------------------------------------- report


def targets(report: dict[str, Any]) -> dict[str, Any]:
    verdicts: dict[str, Any] = {}
    for entry in report["overhead"]:
        share = entry["steady"]["overhead_excl_eval"]
        verdicts[f"overhead_excl_eval_{entry['threads']}_threads"] = {
            "target": f"<= {TARGET_OVERHEAD:.0%}",
            "value": share,
            "met": share <= TARGET_OVERHEAD,
        }
    ratio = report["train_step"]["ratio_of_medians"]
    verdicts["train_step_ratio"] = {
        "target": f"<= {TARGET_STEP_RATIO:.2f}x",
        "value": ratio,
        "met": ratio <= TARGET_STEP_RATIO,
    }
    rss = report["rss"]["peak_ratio"]
    verdicts["peak_rss_ratio"] = {
        "target": f"<= {TARGET_RSS_RATIO:.2f}",
        "value": rss,
        "met": rss <= TARGET_RSS_RATIO,
    }
    return verdicts


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    for entry in report["overhead"]:
        steady = entry["steady"]
        cfg = entry["config"]
        table = Table(
            title=(
                f"1. Round time, default experiment ({cfg['clients_per_round']} of "
                f"{cfg['num_clients']} clients x {cfg['train_steps']} steps, "
                f"{cfg['max_test_samples']} test rows), {entry['threads']} torch thread(s)"
            )
        )
        table.add_column("bucket")
        for r in entry["rounds"]:
            table.add_column(f"round {r['round']} s", justify="right")
        table.add_column(f"steady {'+'.join(map(str, steady['rounds']))} s", justify="right")
        table.add_column("share", justify="right")
        for bucket, seconds in steady["buckets_s"].items():
            table.add_row(
                bucket,
                *(f"{r['buckets_s'][bucket]:.3f}" for r in entry["rounds"]),
                f"{seconds:.3f}",
                f"{seconds / steady['wall_s']:.1%}",
            )
        table.add_row(
            "round wall",
            *(f"{r['wall_s']:.3f}" for r in entry["rounds"]),
            f"{steady['wall_s']:.3f}",
            "100%",
            end_section=True,
        )
        for key, label in (
            ("overhead_incl_eval", "overhead incl. eval"),
            ("overhead_excl_eval", "overhead excl. eval (target)"),
            ("overhead_eval_forward_as_work", "overhead, eval forward as work"),
        ):
            table.add_row(
                label, *(f"{r[key]:.1%}" for r in entry["rounds"]), f"{steady[key]:.1%}", ""
            )
        console.print(table)
        details = ", ".join(f"{k} {v:.3f}" for k, v in steady["details_s"].items())
        console.print(f"steady-state details (s): {details}")

    step = report["train_step"]
    table = Table(
        title=(
            f"2. Local training step, MiniLM rank {step['rank']} on query/value, batch "
            f"{step['batch_size']}, {step['steps_per_call']} steps x {step['repeats']} repeats, "
            f"{step['threads']} thread(s)"
        )
    )
    for name in ("loop", "median ms/step", "min ms/step", "mean loss (repeat 1)"):
        table.add_column(name, justify="left" if name == "loop" else "right")
    for which, label in (("fedlora", "fedlora train_local"), ("bare", "bare transformers+peft")):
        table.add_row(
            label,
            f"{step['median_per_step_s'][which] * 1e3:.1f}",
            f"{step['min_per_step_s'][which] * 1e3:.1f}",
            f"{step['mean_loss'][which][0]:.5f}",
        )
    table.add_row(
        "ratio fedlora / bare",
        f"{step['ratio_of_medians']:.3f}x",
        f"(paired median {step['median_paired_ratio']:.3f}x)",
        f"max |diff| {step['max_loss_difference']:.1e}",
    )
    console.print(table)

    rss = report["rss"]
    table = Table(
        title=(
            f"3. Peak RSS, tiny BERT, {rss['clients_per_round']} clients per round, "
            f"{rss['rounds']} round(s), median of {rss['repeats']} process(es)"
        )
    )
    for name in (
        "clients",
        "peak RSS MB",
        "VmHWM MB",
        "baseline MB",
        "peak - baseline MB",
        "s/round",
    ):
        table.add_column(name, justify="right")
    for n, s in rss["summary"].items():
        table.add_row(
            n,
            f"{s['peak_rss_mb']:.1f}"
            + (" (inherited!)" if s["peak_inherited_from_parent"] else ""),
            f"{s['vm_hwm_mb']:.1f}",
            f"{s['baseline_rss_mb']:.1f}",
            f"{s['increment_mb']:.1f}",
            f"{s['seconds_per_round']:.2f}",
        )
    table.add_row(
        f"ratio {RSS_CLIENTS[1]}/{RSS_CLIENTS[0]}",
        f"{rss['peak_ratio']:.3f}",
        "",
        "",
        f"{rss['increment_ratio']:.3f}",
        "",
    )
    console.print(table)
    for n, children in rss["runs"].items():
        phases = ", ".join(
            f"{phase} {status['hwm_mb']:.0f}" for phase, status in children[0]["phases"].items()
        )
        console.print(f"{n} clients, VmHWM MB after each phase: {phases}")
    for name, v in report["targets"].items():
        value = f"{v['value']:.1%}" if name.startswith("overhead") else f"{v['value']:.3f}"
        console.print(f"target {name}: {v['target']}: {'MET' if v['met'] else 'MISSED'} ({value})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller smoke run (< 2 minutes)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "simulation.json",
        help="JSON output path (default: benchmarks/results/simulation.json)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for parts 2 and 3 (0: one per core); 1 is stable on a busy machine",
    )
    parser.add_argument(
        "--overhead-threads",
        default=None,
        help="comma-separated torch thread counts for part 1 (0: one per core); "
        "default '1,0' ('1' with --quick)",
    )
    parser.add_argument(
        "--wait-for-others",
        type=float,
        default=0.0,
        help="minutes to wait (polling every 30 s) for benchmarks/aggregation.py to finish",
    )
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rss-rounds", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--rss-result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.overhead_threads is None:
        args.overhead_threads = "1" if args.quick else "1,0"
    try:
        args.overhead_threads = [int(t) for t in str(args.overhead_threads).split(",")]
    except ValueError:
        parser.error("--overhead-threads must be comma-separated integers")
    if args.threads < 0 or any(t < 0 for t in args.overhead_threads):
        parser.error("thread counts must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_child is not None:
        return rss_child(args)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    deadline = time.monotonic() + 60 * args.wait_for_others
    while (others := other_benchmarks()) and time.monotonic() < deadline:
        log(f"waiting for {len(others)} other benchmark process(es) to finish")
        time.sleep(30)
    if others:
        log(f"warning: other benchmarks are running, timings will be disturbed: {others}")
    quiet_transformers()
    load_at_start = list(os.getloadavg())
    # Memory first, while this process is small: Linux keeps a process's ru_maxrss across
    # execve, so a child started from a big parent would report the parent's peak.
    rss = measure_rss(args, log)
    overhead = [measure_overhead(args, threads, log) for threads in args.overhead_threads]
    train_step = measure_train_step(args, log)
    report: dict[str, Any] = {
        "benchmark": "fedlora_in_process_simulation",
        "config": {
            "quick": args.quick,
            "seed": args.seed,
            "threads": args.threads,
            "overhead_threads": args.overhead_threads,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "fedlora_data": os.environ.get("FEDLORA_DATA", ""),
            "other_benchmarks_at_start": others,
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "definitions": {
            "floor": "sum of step windows: forward entry -> optimizer.step() return, every step",
            "round_wall": "run_round start -> end of on_round (metrics files + checkpoint)",
            "overhead_incl_eval": "(round wall - floor) / round wall",
            "overhead_excl_eval": "(round wall - evaluation - floor) / (round wall - evaluation)",
            "overhead_eval_forward_as_work": "(round wall - floor - eval forwards) / round wall",
            "train_step": "wall time of one local-training call / its steps (fresh optimizer)",
            "peak_rss": "ru_maxrss of a fresh process at the end of Simulation.run",
        },
        "overhead": overhead,
        "train_step": train_step,
        "rss": rss,
        "targets": {},
        "wall_time_s": 0.0,
    }
    report["targets"] = targets(report)
    report["wall_time_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_tables(report)
    log(f"wrote {args.out} ({report['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
