"""Benchmark: what a Flower node pays before it can train, per message.

Flower 1.41's deployment runtime starts a fresh ``flwr-clientapp`` process for every message, so
whatever a node builds before training is paid every round.  Each case below runs in a fresh
Python process (as a ClientApp does) and reports its wall time and peak RSS:

- ``imports``: ``import torch, transformers, peft`` and fedlora's engine: the floor, paid by
  any ClientApp;
- ``whole experiment`` (before): ``build_experiment(config).client_trainer()``, what the
  ClientApp built until now: every client's rows tokenised, the test set tokenised, the
  evaluator, the model;
- ``own rows, cold`` (after, first message): ``build_node_trainer`` plans the run's rows from
  the labels, tokenises only its client's and saves them in the node's cache;
- ``own rows, cached`` (after, every later message): the same, reading the cache.

For the default experiment (MiniLM on AG News, 20 clients) and the causal-LM one (SmolLM2 on the
generated tasks, 80 clients, ``configs/instruct_smollm2.toml``).  Median of ``--repeats``
processes, run one after another.  Writes ``benchmarks/results/node_startup.json``.

    python benchmarks/node_startup.py [--repeats 3] [--skip-llm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_env import REPO, RESULTS  # first: the offline environment and $FEDLORA_DATA

CONFIGS = {
    "MiniLM, AG News, 20 clients (default)": (None, []),
    "SmolLM2, generated tasks, 80 clients": (str(REPO / "configs/instruct_smollm2.toml"), []),
}

CASE_CODE = {
    "imports": "import torch, transformers, peft\nimport fedlora.engine, fedlora.engine.node",
    "whole experiment": (
        "from fedlora.engine import build_experiment\n"
        "build_experiment(config).client_trainer()"
    ),
    "own rows, cold": (
        "from fedlora.engine.node import build_node_trainer\n"
        "build_node_trainer(config, 1, cache=cache)"
    ),
    "own rows, cached": (
        "from fedlora.engine.node import build_node_trainer\n"
        "build_node_trainer(config, 1, cache=cache)"
    ),
}

PROBE = """
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, {benchmarks!r})
import bench_env
from pathlib import Path
from fedlora.config import load_config
config = load_config({path!r}, {overrides!r})
cache = Path({cache!r})
{code}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, **bench_env.proc_status_mb()}}))
"""


def measure(path: str | None, overrides: list[str], case: str, cache: Path) -> dict[str, float]:
    """One fresh process running ``case``; its wall time and peak RSS."""
    script = PROBE.format(
        benchmarks=str(REPO / "benchmarks"),
        path=path,
        overrides=overrides,
        cache=str(cache),
        code=CASE_CODE[case],
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{case}: {result.stderr[-2000:]}")
    values: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


def run(configs: dict[str, tuple[str | None, list[str]]], repeats: int) -> dict[str, Any]:
    report: dict[str, Any] = {"repeats": repeats, "configs": {}}
    for name, (path, overrides) in configs.items():
        rows: dict[str, dict[str, float]] = {}
        with tempfile.TemporaryDirectory(prefix="fedlora-node-") as work:
            cache = Path(work) / "rows"
            for case in CASE_CODE:
                if case == "own rows, cold":
                    samples = []
                    for _ in range(repeats):  # every cold sample starts from an empty cache
                        for entry in cache.glob("*"):
                            entry.unlink()
                        samples.append(measure(path, overrides, case, cache))
                else:
                    samples = [measure(path, overrides, case, cache) for _ in range(repeats)]
                rows[case] = {
                    "seconds": statistics.median(s["seconds"] for s in samples),
                    "peak_rss_mb": statistics.median(s["hwm_mb"] for s in samples),
                }
        report["configs"][name] = rows
    return report


def print_table(report: dict[str, Any]) -> None:
    for name, rows in report["configs"].items():
        print(f"\n{name} (median of {report['repeats']} fresh processes)")
        before = rows["whole experiment"]
        print(f"{'':28}{'s':>8}{'peak RSS MB':>14}{'s vs before':>13}")
        for case, values in rows.items():
            ratio = values["seconds"] / before["seconds"]
            print(
                f"{case:28}{values['seconds']:>8.2f}{values['peak_rss_mb']:>14.0f}"
                f"{ratio:>12.2f}x"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-llm", action="store_true", help="only the MiniLM config")
    parser.add_argument("--out", type=Path, default=RESULTS / "node_startup.json")
    args = parser.parse_args(argv)
    configs = dict(list(CONFIGS.items())[:1]) if args.skip_llm else CONFIGS
    report = run(configs, args.repeats)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
