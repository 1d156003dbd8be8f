"""Benchmark: the same experiment through the in-process runner and through Flower's Ray simulation.

Both runs use one config and write a run directory of the same shape; the tables compare their
wall times and the engine's own phase seconds (``extra["seconds"]`` of every metrics row), printed
and written to ``benchmarks/results/flower_vs_inprocess.json`` (``--quick``:
``flower_vs_inprocess_quick.json``).

- *in-process*: ``fedlora run CONFIG --out DIR`` in a fresh process (Python start-up, imports,
  data and model loading included), one client after the other on the shared base model, torch
  with its default thread count.
- *Flower*: our own ``flower-superlink --simulation`` on a free loopback port (its start-up is
  reported on its own line and not counted in the total), then ``flwr run flower_app`` with
  ``num-supernodes = num_clients`` and ``client-resources-num-cpus=1`` (as many Ray actors as
  cores, each building the experiment once).  The ServerApp builds the experiment too, for the
  server-side evaluation.  Process handling is :mod:`fedlora.flower.launch`, shared with the
  tests (offline environment, process groups, nothing left behind).

Times are taken by watching each run's ``metrics.jsonl`` (a line per round, polled every 200 ms):
*total* = launch (in-process) or submission (Flower) until the process or the run ended; *to
round 1* = until round 1's line; *steady round* = median gap between consecutive lines of rounds
1..R (training, aggregation, evaluation and checkpoint of a round once everything is warm).  The
phase table is the median over rounds 2..R of each phase's seconds as the round driver timed
them; ``train`` is the transport's whole exchange.  Per-round overhead of Flower = its steady
round minus the in-process one.  Both runs must agree on clients per round and on losses (the
table reports the largest relative difference).  Other jobs share the 2 cores of the machine
this was written on: compare within one run, not across runs.

Usage::

    .venv/bin/python benchmarks/flower_vs_inprocess.py            # MiniLM on AG News (minutes)
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
from pathlib import Path
from typing import Any

from bench_env import (  # first: the offline environment, before any HF import
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
from fedlora.model.tiny import save_tiny_bert
from fedlora.runs import RoundMetrics, read_metrics

# ---------------------------------------------------------------------------------- configs


def full_config(args: argparse.Namespace) -> dict[str, Any]:
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


class RunWatcher:
    """Polls a run's ``metrics.jsonl`` from a thread: when each round's line appeared."""

    def __init__(self, out: Path, start: float, poll: float = 0.2) -> None:
        self.path = out / "metrics.jsonl"
        self.start = start
        self.poll = poll
        self.seen: dict[int, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(self.poll):
            self._read()

    def _read(self) -> None:
        if not self.path.exists():
            return
        now = time.monotonic() - self.start
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                self.seen.setdefault(int(json.loads(line)["round"]), now)

    def stop(self) -> dict[str, Any]:
        """Total seconds, seconds to round 1, and the median steady round (after round 1)."""
        self._done.set()
        self._thread.join()
        self._read()
        rounds = sorted(r for r in self.seen if r >= 1)
        gaps = [self.seen[b] - self.seen[a] for a, b in itertools.pairwise(rounds)]
        return {
            "total_s": time.monotonic() - self.start,
            "to_round1_s": self.seen.get(1),
            "steady_round_s": statistics.median(gaps) if gaps else None,
            "round_seen_s": {str(r): self.seen[r] for r in rounds},
        }


def run_in_process(config_path: Path, out: Path, work: Path, log_path: Path) -> dict[str, Any]:
    env = offline_environment(work / "home", work / "flwr-unused")
    start = time.monotonic()
    watcher = RunWatcher(out, start)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [bin_path("fedlora"), "run", str(config_path), "--out", str(out), "--no-progress"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
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
    config_path: Path, out: Path, work: Path, num_clients: int, timeout: float
) -> dict[str, Any]:
    with LocalFederation(work / "flower") as federation:
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


def agreement(ours: list[RoundMetrics], theirs: list[RoundMetrics]) -> dict[str, Any]:
    same_clients = [a.clients for a in ours] == [b.clients for b in theirs]
    same_ranks = [a.ranks for a in ours] == [b.ranks for b in theirs]
    diffs = []
    for a, b in zip(ours, theirs, strict=True):
        for x, y in ((a.train_loss, b.train_loss), (a.test_loss, b.test_loss)):
            if x is not None and y is not None:
                diffs.append(abs(x - y) / max(abs(y), 1e-12))
    return {
        "same_clients": same_clients,
        "same_ranks": same_ranks,
        "max_rel_loss_diff": max(diffs, default=0.0),
        "final_test_accuracy": [ours[-1].test_accuracy, theirs[-1].test_accuracy],
    }


def phase_seconds(rows: list[RoundMetrics]) -> dict[str, float]:
    """Median seconds of each phase over the steady rounds (2..R), as the round driver timed it."""
    steady = [row.extra["seconds"] for row in rows if row.round >= 2] or [
        row.extra["seconds"] for row in rows if row.round >= 1
    ]
    return {phase: statistics.median(s.get(phase, 0.0) for s in steady) for phase in PHASES}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def tables(runs: dict[str, dict[str, Any]], check: dict[str, Any], experiment: str) -> list[str]:
    names = {"in_process": "in-process (`fedlora run`)", "flower": "Flower Ray simulation"}
    walls = [
        (
            names[key],
            _fmt(run["total_s"]),
            _fmt(run["to_round1_s"]),
            _fmt(run["steady_round_s"]),
            _fmt(run.get("superlink_start_s")),
        )
        for key, run in runs.items()
    ]
    phases = [
        (names[key], *(f"{run['phases_s'][p]:.2f}" for p in PHASES)) for key, run in runs.items()
    ]
    agreement = (
        f"Same clients: {check['same_clients']}, same ranks: {check['same_ranks']}, largest "
        f"relative loss difference {check['max_rel_loss_diff']:.1e}."
    )
    return [
        table(
            f"{experiment}: wall seconds",
            ("runner", "total", "to round 1", "steady round", "SuperLink start (not counted)"),
            walls,
        ),
        table(
            "Seconds per phase as the round driver timed them (median of rounds 2..R)",
            ("runner", *PHASES),
            phases,
        )
        + "\n\n"
        + agreement,
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, threads=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="local steps per client and round")
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=1800.0, help="Flower run deadline (s)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--wait-for-others",
        type=float,
        default=0.0,
        help="minutes to wait (polling every 30 s) for other benchmarks to finish",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report("flower_vs_inprocess", args)
    quiet_transformers()
    work = Path(tempfile.mkdtemp(prefix="fedlora-flower-bench-"))
    report.log(f"work folder: {work}")
    if args.quick:
        config = quick_config(save_tiny_bert(work / "tiny-bert"), args.seed)
        experiment = "tiny random BERT (hidden 32, 2 layers), synthetic data"
    else:
        config = full_config(args)
        experiment = "MiniLM (all-MiniLM-L6-v2) on AG News"
    run = config["run"]
    experiment += (
        f", {run['num_clients']} clients, {run['clients_per_round']} per round, "
        f"{run['rounds']} rounds, {config['train']['steps']} local steps"
    )
    config_path = work / "config.toml"
    config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
    others = wait_for_others(args.wait_for_others, report.log)
    with flower_lock():
        report.log("in-process run ...")
        inproc = run_in_process(config_path, work / "in-process", work, work / "in-process.log")
        report.log("Flower simulation ...")
        flower = run_flower(
            config_path, work / "flower-run", work, run["num_clients"], args.timeout
        )
    rows = {
        "in_process": read_metrics(work / "in-process" / "metrics.jsonl"),
        "flower": read_metrics(work / "flower-run" / "metrics.jsonl"),
    }
    runs = {"in_process": inproc, "flower": flower}
    for key, run_rows in rows.items():
        runs[key]["phases_s"] = phase_seconds(run_rows)
    check = agreement(rows["flower"], rows["in_process"])
    results = {"experiment": experiment, "config": config, "other_benchmarks_at_start": others}
    report.write(results | runs | {"agreement": check}, tables(runs, check, experiment))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if check["same_clients"] and check["same_ranks"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
