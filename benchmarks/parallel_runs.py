"""Benchmark: two single-thread runs side by side against two two-thread runs one after another.

``experiments/run.py`` runs a suite's runs ``--workers`` at a time with ``--threads`` torch threads
each.  On a 2-core machine the choice is 2 x 1 (two runs side by side, one thread each) or 1 x 2
(one run at a time on both cores); this measures which finishes a pair of runs sooner.

Both modes run the same two runs (a cell of an experiment suite, seeds 0 and 1, cut to
``--rounds`` rounds) as ``fedlora run`` subprocesses, as the experiment runner starts them, in
the order A B B A (A = side by side, B = one after another) so drift in the machine's other load
cancels; the result is the ratio of the modes' summed wall times (> 1: side by side is faster).
The load seen meanwhile is recorded: on a shared machine compare the ratio, not the seconds.

Usage::

    .venv/bin/python benchmarks/parallel_runs.py          # about 12 minutes
    .venv/bin/python benchmarks/parallel_runs.py --quick  # about 2 minutes
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_tools import Log, Report, parser, table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from suites import all_suites  # noqa: E402  (the experiments folder is no package)


def overrides(suite: str, cell: str, rounds: int, quick: bool) -> list[str]:
    """The suite cell's overrides at seed 0, cut to ``rounds`` rounds (and smaller if quick)."""
    (found,) = all_suites([suite])
    job = next(j for j in found.jobs if j.cell == cell and j.seed == 0)
    cut = [f"run.rounds={rounds}", f"run.eval_every={rounds}"]
    if quick:
        cut += ["run.clients_per_round=2", "data.max_test_samples=100"]
    return [*job.overrides, *cut]


def run_pair(base: list[str], side_by_side: bool, root: Path, log: Log) -> float:
    """Seconds for runs of seeds 0 and 1: side by side at 1 thread, or in turn at 2 threads."""
    threads = 1 if side_by_side else 2
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    commands = []
    for seed in (0, 1):
        out = root / f"{'side' if side_by_side else 'turn'}-{seed}-{time.monotonic_ns()}"
        sets = [item for o in [*base, f"run.seed={seed}"] for item in ("--set", o)]
        commands.append(
            [sys.executable, "-m", "fedlora.cli", "run", *sets, "--out", str(out), "--no-progress"]
        )
    start = time.perf_counter()
    if side_by_side:
        processes = [
            subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for c in commands
        ]
        codes = [p.wait() for p in processes]
    else:
        codes = [
            subprocess.run(
                c, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            ).returncode
            for c in commands
        ]
    seconds = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"a run failed (exit codes {codes}); run one of {commands[0]}")
    log(f"{'side by side 2 x 1' if side_by_side else 'in turn 1 x 2'}: {seconds:.1f} s")
    return seconds


def main() -> int:
    args_parser = parser(__doc__, threads=None)
    args_parser.add_argument("--suite", default="byun_lee_fig2_agnews")
    args_parser.add_argument("--cell", default="fedit r5")
    args_parser.add_argument("--rounds", type=int, default=4)
    args = args_parser.parse_args()
    report = Report("parallel_runs", args)
    rounds = 1 if args.quick else args.rounds
    base = overrides(args.suite, args.cell, rounds, args.quick)
    seconds: dict[str, list[float]] = {"side": [], "turn": []}
    with tempfile.TemporaryDirectory(prefix="fedlora-parallel-") as tmp:
        for side_by_side in (True, False, False, True):
            key = "side" if side_by_side else "turn"
            seconds[key].append(run_pair(base, side_by_side, Path(tmp), report.log))
    side, turn = sum(seconds["side"]), sum(seconds["turn"])
    ratio = turn / side
    rows = [
        ["2 x 1 thread, side by side", *[f"{s:.1f}" for s in seconds["side"]], f"{side:.1f}"],
        ["1 x 2 threads, in turn", *[f"{s:.1f}" for s in seconds["turn"]], f"{turn:.1f}"],
    ]
    title = (
        f"Two runs of `{args.suite}` / `{args.cell}` ({rounds} rounds): wall seconds per pair "
        f"(order A B B A); in turn / side by side = {ratio:.2f}"
    )
    report.write(
        {
            "suite": args.suite,
            "cell": args.cell,
            "rounds": rounds,
            "overrides": base,
            "seconds_side_by_side": seconds["side"],
            "seconds_in_turn": seconds["turn"],
            "in_turn_over_side_by_side": ratio,
        },
        [table(title, ["mode", "first pair", "second pair", "sum"], rows)],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
