"""Benchmark: one experiment through the in-process runner (serial and with its worker pool)
and through Flower's Ray simulation.

Every run uses one config and writes a run directory of the same shape; the tables compare their
wall times, rounds per hour and the engine's own phase seconds (``extra["seconds"]`` of every
metrics row), printed and written to ``benchmarks/results/flower_vs_inprocess.json`` (MiniLM),
``flower_vs_inprocess_smollm2.json`` (``--model smollm2``), ``..._quick.json`` (``--quick``).

Runners, each in a fresh process with its own ``OMP_NUM_THREADS`` (the torch threads of the
server process; the pool gives each worker its share):

- *serial 1x1*, *serial 1x2*: ``fedlora run CONFIG --out DIR`` with ``run.workers = 1`` (one
  client after the other on the shared base model) and 1 or 2 torch threads.
- *pool 2x1*: the same with ``run.workers = 2``: two worker processes of one torch thread each
  (what ``auto`` picks on 2 cores); the server evaluates with 2 threads while they are idle.
- *Flower*: our own ``flower-superlink --simulation`` on a free loopback port (its start-up is
  reported on its own line and not counted in the total), then ``flwr run flower_app`` with
  ``num-supernodes = num_clients`` and ``client-resources-num-cpus=1`` (as many Ray actors as
  cores, each building the experiment once, one thread each as Ray sets it), ``OMP_NUM_THREADS``
  unset.  The ServerApp builds the experiment too, for the server-side evaluation.  Process
  handling is :mod:`fedlora.flower.launch`, shared with the tests (offline environment, process
  groups, nothing left behind).

Times are taken by watching each run's ``metrics.jsonl`` (a line per round, polled every 200 ms):
*total* = launch (in-process) or submission (Flower) until the process or the run ended; *to
round 1* = until round 1's line; *steady round* = median gap between consecutive lines of rounds
1..R (training, aggregation, evaluation and checkpoint of a round once everything is warm);
*rounds per hour* = 3600 / steady round.  The phase table is the median over rounds 2..R of each
phase's seconds as the round driver timed them; ``train`` is the transport's whole exchange.
Memory: the peak resident set of the in-process runner's server process and of each of its
workers, sampled with the times.  Every run must train the same clients at the same ranks; the
pool must reproduce serial 1x1's losses exactly (the table reports the largest relative loss
difference of each runner against serial 1x1).  Other jobs share the 2 cores of the machine this
was written on: compare within one run, not across runs.

Usage::

    .venv/bin/python benchmarks/flower_vs_inprocess.py            # MiniLM on AG News (minutes)
    .venv/bin/python benchmarks/flower_vs_inprocess.py --model smollm2
    .venv/bin/python benchmarks/flower_vs_inprocess.py --quick    # tiny random BERT, synthetic
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_env import (  # first: the offline environment, before any HF import
    REPO,
    flower_lock,
    quiet_transformers,
    wait_for_others,
)

# isort: split

import tomli_w

from bench_tools import Report, table
from bench_tools import parser as bench_parser
from fedlora.engine import PHASES
from fedlora.flower.env import offline_environment
from fedlora.flower.launch import LocalFederation
from fedlora.flower.superlink import APP_DIR, FlowerLaunchError, bin_path
from fedlora.model.gguf import cache_dir
from fedlora.model.tiny import save_tiny_bert
from fedlora.runs import RoundMetrics, read_metrics

# ---------------------------------------------------------------------------------- configs


def minilm_config(args: argparse.Namespace) -> dict[str, Any]:
    """MiniLM (packaged) on AG News: defaults of fedlora except the sizes below."""
    return {
        "run": {
            "rounds": args.rounds,
            "num_clients": args.clients,
            "clients_per_round": args.per_round,
            "seed": args.seed,
        },
        "model": {"name": "minilm"},
        "data": {"dataset": "ag_news", "max_test_samples": args.test_samples},
        "train": {"steps": args.steps},
    }


def smollm2_config(args: argparse.Namespace) -> dict[str, Any]:
    """configs/instruct_smollm2.toml (80 clients, one generated task each, heavy-tail-light
    ranks up to 192, FlexLoRA) with the sizes below, evaluated after round 0 and the last."""
    config = tomllib.loads((REPO / "configs" / "instruct_smollm2.toml").read_text("utf-8"))
    config["run"].update(
        rounds=args.rounds,
        clients_per_round=args.per_round,
        seed=args.seed,
        eval_every=args.rounds,
    )
    if args.steps:
        config["train"]["steps"] = args.steps
    return config


def quick_config(model_dir: Path, seed: int) -> dict[str, Any]:
    return {
        "run": {"rounds": 3, "num_clients": 4, "clients_per_round": 2, "seed": seed},
        "model": {"name": str(model_dir)},
        "data": {
            "dataset": "synthetic",
            "partition": "iid",
            "partition_options": {},
            "max_test_samples": 32,
        },
        "ranks": {"policy": "list", "options": {"ranks": [2, 4, 4, 8]}},
        "train": {"steps": 1, "batch_size": 8},
    }


@dataclass(frozen=True)
class Runner:
    """One way to run the config: in process with ``workers``, or through Flower (``None``)."""

    key: str
    label: str
    workers: int | None
    threads: int | None
    """``OMP_NUM_THREADS`` of the runner's processes; ``None``: unset."""


RUNNERS = (
    Runner("serial_1x1", "in-process, serial, 1 x 1 thread", 1, 1),
    Runner("serial_1x2", "in-process, serial, 1 x 2 threads", 1, 2),
    Runner("pool_2x1", "in-process, pool, 2 workers x 1 thread", 2, 2),
    Runner("flower", "Flower Ray simulation, 2 actors x 1 thread", None, None),
)
REFERENCE = "serial_1x1"
"""The runner whose losses every other one is compared with (the pool's must equal them)."""


def environment(runner: Runner, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The runner's threads, and the user's model cache (every runner gets a HOME of its own;
    none should pay SmolLM2's GGUF conversion)."""
    env = dict(os.environ if base is None else base)
    env["FEDLORA_CACHE"] = str(cache_dir())
    env.pop("OMP_NUM_THREADS", None)
    env.pop("MKL_NUM_THREADS", None)
    if runner.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(runner.threads)
    return env


class RunWatcher:
    """Polls a run's ``metrics.jsonl`` from a thread: when each round's line appeared, and
    (given a process id) the peak resident memory of that process and of its children."""

    def __init__(self, out: Path, start: float, poll: float = 0.2) -> None:
        self.path = out / "metrics.jsonl"
        self.start = start
        self.poll = poll
        self.seen: dict[int, float] = {}
        self.pid: int | None = None
        self.peak_mb: dict[int, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(self.poll):
            self._read()
            self._sample_memory()

    def _read(self) -> None:
        if not self.path.exists():
            return
        now = time.monotonic() - self.start
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                self.seen.setdefault(int(json.loads(line)["round"]), now)

    def _sample_memory(self) -> None:
        if self.pid is None:
            return
        children = [c for c in _children(self.pid) if not _is_resource_tracker(c)]
        for pid in (self.pid, *children):
            rss = _rss_mb(pid)
            if rss is not None:
                self.peak_mb[pid] = max(rss, self.peak_mb.get(pid, 0.0))

    def stop(self) -> dict[str, Any]:
        """Total seconds, seconds to round 1, the median steady round (after round 1), memory."""
        self._done.set()
        self._thread.join()
        self._read()
        rounds = sorted(r for r in self.seen if r >= 1)
        gaps = [self.seen[b] - self.seen[a] for a, b in itertools.pairwise(rounds)]
        steady = statistics.median(gaps) if gaps else None
        timing: dict[str, Any] = {
            "total_s": time.monotonic() - self.start,
            "to_round1_s": self.seen.get(1),
            "steady_round_s": steady,
            "rounds_per_hour": 3600 / steady if steady else None,
            "round_seen_s": {str(r): self.seen[r] for r in rounds},
        }
        if self.pid is not None:
            helpers = [mb for pid, mb in self.peak_mb.items() if pid != self.pid]
            timing["peak_rss_mb"] = {
                "server": self.peak_mb.get(self.pid),
                "children": sorted(helpers, reverse=True),
            }
        return timing


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="ascii")
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _is_resource_tracker(pid: int) -> bool:
    """multiprocessing's helper beside the workers (a few MB, not a worker)."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def run_in_process(
    runner: Runner, config_path: Path, out: Path, work: Path, log_path: Path
) -> dict[str, Any]:
    env = offline_environment(work / "home", work / "flwr-unused", environment(runner))
    command = [bin_path("fedlora"), "run", str(config_path), "--out", str(out), "--no-progress"]
    command += ["--set", f"run.workers={runner.workers}"]
    start = time.monotonic()
    watcher = RunWatcher(out, start)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        watcher.pid = process.pid
        try:
            code = process.wait(timeout=3600)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    exit_s = time.monotonic() - start
    timing = watcher.stop()
    if code != 0:
        raise RuntimeError(f"fedlora run exited with {code}:\n{log_path.read_text()[-3000:]}")
    return {**timing, "process_exit_s": exit_s}


def run_flower(
    runner: Runner, config_path: Path, out: Path, work: Path, num_clients: int, timeout: float
) -> dict[str, Any]:
    with LocalFederation(work / "flower", base_env=environment(runner)) as federation:
        tick = time.monotonic()
        federation.start_superlink(simulation=True)
        superlink_s = time.monotonic() - tick
        start = time.monotonic()
        watcher = RunWatcher(out, start)
        try:
            outcome = federation.run(
                APP_DIR,
                {"config": str(config_path), "out-dir": str(out)},
                {"num-supernodes": num_clients, "client-resources-num-cpus": 1},
                timeout=timeout,
            )
        finally:
            timing = watcher.stop()
        if not outcome.completed:
            raise FlowerLaunchError(outcome.describe())
        info = outcome.info
    if federation.leftovers:
        raise FlowerLaunchError(f"processes left behind: {federation.leftovers}")
    return {
        **timing,
        "superlink_start_s": superlink_s,
        "status_seen_s": outcome.seconds,
        "flwr_compute_time": info.get("compute-time", {}),
    }


def agreement(reference: list[RoundMetrics], theirs: list[RoundMetrics]) -> dict[str, Any]:
    same_clients = [a.clients for a in reference] == [b.clients for b in theirs]
    same_ranks = [a.ranks for a in reference] == [b.ranks for b in theirs]
    diffs = []
    for a, b in zip(reference, theirs, strict=True):
        for x, y in ((a.train_loss, b.train_loss), (a.test_loss, b.test_loss)):
            if x is not None and y is not None:
                diffs.append(abs(x - y) / max(abs(x), 1e-12))
    return {
        "same_clients": same_clients,
        "same_ranks": same_ranks,
        "max_rel_loss_diff": max(diffs, default=0.0),
        "final_test_score": theirs[-1].test_accuracy,
    }


def phase_seconds(rows: list[RoundMetrics]) -> dict[str, float]:
    """Median seconds of each phase over the steady rounds (2..R), as the round driver timed it."""
    steady = [row.extra["seconds"] for row in rows if row.round >= 2] or [
        row.extra["seconds"] for row in rows if row.round >= 1
    ]
    return {phase: statistics.median(s.get(phase, 0.0) for s in steady) for phase in PHASES}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def tables(runs: dict[str, dict[str, Any]], experiment: str) -> list[str]:
    labels = {r.key: r.label for r in RUNNERS}
    rate = {key: run["rounds_per_hour"] for key, run in runs.items()}
    train = {key: run["phases_s"]["train"] for key, run in runs.items()}
    walls = [
        (
            labels[key],
            _fmt(run["total_s"]),
            _fmt(run["to_round1_s"]),
            _fmt(run["steady_round_s"]),
            _fmt(rate[key], 0),
            _ratio(rate[key], rate.get("serial_1x2")),
            _ratio(rate[key], rate.get("flower")),
            _ratio(train.get("serial_1x2"), train[key]),
            _fmt(run.get("superlink_start_s")),
        )
        for key, run in runs.items()
    ]
    phases = [
        (labels[key], *(f"{run['phases_s'][p]:.2f}" for p in PHASES)) for key, run in runs.items()
    ]
    checks = [
        (
            labels[key],
            run["agreement"]["same_clients"],
            run["agreement"]["same_ranks"],
            f"{run['agreement']['max_rel_loss_diff']:.1e}",
            _memory(run.get("peak_rss_mb")),
        )
        for key, run in runs.items()
    ]
    return [
        table(
            f"{experiment}: wall seconds and rounds per hour",
            (
                "runner",
                "total",
                "to round 1",
                "steady round",
                "rounds / hour",
                "vs serial 1x2",
                "vs Flower",
                "train phase speed-up vs serial 1x2",
                "SuperLink start (not counted)",
            ),
            walls,
        ),
        table(
            "Seconds per phase as the round driver timed them (median of rounds 2..R)",
            ("runner", *PHASES),
            phases,
        ),
        table(
            f"Agreement with {labels[REFERENCE]}, and peak resident memory (MB)",
            ("runner", "same clients", "same ranks", "largest relative loss difference", "memory"),
            checks,
        ),
    ]


def _memory(peak: dict[str, Any] | None) -> str:
    if peak is None:
        return "-"
    text = f"server {_fmt(peak['server'], 0)}"
    if peak["children"]:
        text += ", workers " + " / ".join(_fmt(mb, 0) for mb in peak["children"])
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, threads=None)
    parser.add_argument("--model", choices=("minilm", "smollm2"), default="minilm")
    parser.add_argument("--rounds", type=int, default=None, help="default 4")
    parser.add_argument("--clients", type=int, default=20, help="MiniLM's federation size")
    parser.add_argument("--per-round", type=int, default=None, help="default 5 (SmolLM2: 4)")
    parser.add_argument(
        "--steps", type=int, default=None, help="local steps (default 5; SmolLM2: its config's)"
    )
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument(
        "--runners",
        default=",".join(r.key for r in RUNNERS),
        help=f"comma-separated subset of {', '.join(r.key for r in RUNNERS)}",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="Flower run deadline (s)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--wait-for-others",
        type=float,
        default=0.0,
        help="minutes to wait (polling every 30 s) for other benchmarks to finish",
    )
    args = parser.parse_args(argv)
    small = args.model == "smollm2"
    args.rounds = args.rounds or 4
    args.per_round = args.per_round or (4 if small else 5)
    args.steps = args.steps or (None if small else 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = "flower_vs_inprocess" + ("_smollm2" if args.model == "smollm2" else "")
    report = Report(name, args)
    quiet_transformers()
    work = Path(tempfile.mkdtemp(prefix="fedlora-flower-bench-"))
    report.log(f"work folder: {work}")
    if args.quick:
        config = quick_config(save_tiny_bert(work / "tiny-bert"), args.seed)
        experiment = "tiny random BERT (hidden 32, 2 layers), synthetic data"
    elif args.model == "smollm2":
        config = smollm2_config(args)
        experiment = "SmolLM2-135M-Instruct on generated instruction tasks (FlexLoRA)"
    else:
        config = minilm_config(args)
        experiment = "MiniLM (all-MiniLM-L6-v2) on AG News"
    run = config["run"]
    experiment += (
        f", {run['num_clients']} clients, {run['clients_per_round']} per round, "
        f"{run['rounds']} rounds, {config['train']['steps']} local steps"
    )
    config_path = work / "config.toml"
    config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
    chosen = [r for r in RUNNERS if r.key in args.runners.split(",")]
    others = wait_for_others(args.wait_for_others, report.log)
    runs: dict[str, dict[str, Any]] = {}
    for runner in chosen:
        out, log_path = work / "runs" / runner.key, work / f"{runner.key}.log"
        if runner.workers is None:
            with flower_lock():  # one federation on the machine at a time
                report.log(f"{runner.label} ...")
                runs[runner.key] = run_flower(
                    runner, config_path, out, work, run["num_clients"], args.timeout
                )
        else:
            report.log(f"{runner.label} ...")
            runs[runner.key] = run_in_process(runner, config_path, out, work, log_path)
    rows = {key: read_metrics(work / "runs" / key / "metrics.jsonl") for key in runs}
    reference = rows.get(REFERENCE, next(iter(rows.values())))
    for key, run_rows in rows.items():
        runs[key]["phases_s"] = phase_seconds(run_rows)
        runs[key]["agreement"] = agreement(reference, run_rows)
    results = {"experiment": experiment, "config": config, "other_benchmarks_at_start": others}
    report.write(results | {"runs": runs}, tables(runs, experiment))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    checks = [run["agreement"] for run in runs.values()]
    agreed = all(check["same_clients"] and check["same_ranks"] for check in checks)
    # Not bit for bit: a pool's server aggregates and evaluates with 2 threads, serial 1x1's
    # with one (tests/engine/test_pool.py compares them bit for bit at equal threads).
    close = all(check["max_rel_loss_diff"] < 1e-4 for check in checks)
    return 0 if agreed and close else 1


if __name__ == "__main__":
    raise SystemExit(main())
