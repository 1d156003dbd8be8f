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

Compared by CPU seconds (user + system of the process): on a machine shared with other jobs the
wall time of one process swings with the load, its CPU time much less; both are reported.

For the default experiment (MiniLM on AG News, 20 clients) and the causal-LM one (SmolLM2 on the
generated tasks, 80 clients, ``configs/instruct_smollm2.toml``).  Median of ``--repeats``
processes, run one after another.

``--deployment`` also times whole rounds of a real loopback deployment (a SuperLink and three
SuperNodes, MiniLM on AG News, every client in every round, 5 local steps), once with the code
of ``--before`` (a git revision, checked out into a temporary worktree and put first on every
process's ``PYTHONPATH``) and once with this checkout: the per-round time a user of the
deployment runtime sees, before and after, in one run.

Writes ``benchmarks/results/node_startup.json`` (and ``node_deployment.json``).

    python benchmarks/node_startup.py [--repeats 3] [--skip-llm] [--deployment --before e477199]
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

CONFIGS: dict[str, tuple[str | None, list[str]]] = {
    "MiniLM, AG News, 20 clients (default)": (None, []),
    "SmolLM2, generated tasks, 80 clients": (str(REPO / "configs/instruct_smollm2.toml"), []),
}

CASE_CODE = {
    "imports": "import torch, transformers, peft\nimport fedlora.engine, fedlora.engine.node",
    "whole experiment": (
        "from fedlora.engine import build_experiment\nbuild_experiment(config).client_trainer()"
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
import json, resource, sys, time
start = time.perf_counter()
sys.path.insert(0, {benchmarks!r})
import bench_env
from pathlib import Path
from fedlora.config import load_config
config = load_config({path!r}, {overrides!r})
cache = Path({cache!r})
{code}
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu, **bench_env.proc_status_mb()}}))
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
                    "cpu_seconds": statistics.median(s["cpu_seconds"] for s in samples),
                    "peak_rss_mb": statistics.median(s["hwm_mb"] for s in samples),
                }
        report["configs"][name] = rows
    return report


DEPLOYED_CONFIG = """\
[run]
name = "deployment"
num_clients = 3
clients_per_round = 3
rounds = {rounds}

[data]
max_test_samples = 200

[train]
steps = 5
"""


def deployment_rounds(source: Path, rounds: int, work: Path) -> dict[str, Any]:
    """A loopback deployment running the fedlora of ``source``; the seconds of every round."""
    from fedlora.flower.launch import LocalFederation

    src = source / "src"
    app = src / "fedlora/flower/app"
    if not app.is_dir():  # revisions before the app moved into the package
        app = source / "flower_app"
    config = work / "deploy.toml"
    config.write_text(DEPLOYED_CONFIG.format(rounds=rounds), encoding="utf-8")
    out = work / "run"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    with LocalFederation(work / "flower", base_env=env) as federation:
        federation.start_superlink()
        for partition in range(3):
            federation.start_supernode({"partition-id": partition, "num-partitions": 3})
        federation.wait_for_nodes(3)
        outcome = federation.run(
            app,
            {"config": str(config), "out-dir": str(out), "round-timeout": 600.0},
            timeout=600.0 * (rounds + 1),
        )
    if not outcome.completed:
        raise RuntimeError(outcome.describe())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if row["round"] > 0]
    return {
        "round_seconds": [row["seconds_train"] for row in trained],
        "run_seconds": outcome.seconds,
    }


def deployment(before: str, rounds: int) -> dict[str, Any]:
    """Per-round time of a deployment with the code of revision ``before``, then this code."""
    results: dict[str, Any] = {"before_revision": before}
    with tempfile.TemporaryDirectory(prefix="fedlora-deploy-") as work:
        old = Path(work) / "before"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), before],
            check=True,
            capture_output=True,
        )
        try:
            for name, source in (("before", old), ("after", REPO)):
                folder = Path(work) / "runs" / name
                folder.mkdir(parents=True)
                results[name] = deployment_rounds(source, rounds, folder)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False
            )
    return results


def print_table(report: dict[str, Any]) -> None:
    if "deployment" in report:
        deployed = report["deployment"]
        print("\nLoopback deployment, 3 SuperNodes, seconds per round (train phase, all rounds)")
        for name in ("before", "after"):
            seconds = deployed[name]["round_seconds"]
            label = f"{name} ({deployed['before_revision']})" if name == "before" else name
            print(f"{label:28}" + "".join(f"{s:>8.1f}" for s in seconds))
    for name, rows in report["configs"].items():
        print(f"\n{name} (median of {report['repeats']} fresh processes)")
        before = rows["whole experiment"]
        header = f"{'':28}{'CPU s':>8}{'wall s':>8}{'peak RSS MB':>13}{'CPU vs before':>15}"
        print(header)
        for case, values in rows.items():
            ratio = values["cpu_seconds"] / before["cpu_seconds"]
            print(
                f"{case:28}{values['cpu_seconds']:>8.2f}{values['seconds']:>8.2f}"
                f"{values['peak_rss_mb']:>13.0f}{ratio:>14.2f}x"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-llm", action="store_true", help="only the MiniLM config")
    parser.add_argument("--deployment", action="store_true", help="also time deployed rounds")
    parser.add_argument("--before", default="e477199", help="revision of the 'before' code")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the deployment")
    parser.add_argument("--out", type=Path, default=RESULTS / "node_startup.json")
    parser.add_argument("--deployment-out", type=Path, default=RESULTS / "node_deployment.json")
    args = parser.parse_args(argv)
    configs = dict(list(CONFIGS.items())[:1]) if args.skip_llm else CONFIGS
    report = run(configs, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.deployment:
        report["deployment"] = deployment(args.before, args.rounds)
        text = json.dumps(report["deployment"], indent=2) + "\n"
        args.deployment_out.write_text(text, encoding="utf-8")
    print_table(report)
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
