"""Does today's code still compute a finished run's numbers?  Re-run it and compare, round by round.

The suites ran on a frozen worktree, so the commits made while they ran could not change them;
this checks that later code computes the same numbers.  One finished run's own config (its
record's ``config.toml``, :mod:`records`: the run directory need not be here) is run again with
the code this script imports, in a scratch directory, for its first ``--rounds`` rounds (client
sampling, data and initialisation depend on the seed and the round, not on the number of
rounds), and every metric both runs recorded is compared.  The result is added to
``docs/results/<suite>/recheck.csv`` (replacing an earlier recheck of the same run by the same
code and overrides): per round and metric, both values, whether they are equal bit for bit,
their relative difference, and the commit (and any ``--set`` override) that re-ran it.  Run it
with the suites' thread count (``OMP_NUM_THREADS=1``): threads change the order of float sums.
``--set`` pins an option whose default changed since (for example
``"aggregation.options={svd='factored'}"``) to find what moved a number.  The re-run is also
named by its CPU kernels: the instruction set ATen dispatches to and any kernel-choosing variable
set (``ATEN_CPU_CAPABILITY=default``, ``MKL_CBWR=COMPATIBLE``, ...), since another kernel path
rounds differently: ``ATEN_CPU_CAPABILITY=default python recheck.py ...`` asks what a machine
with other kernels would compute.

    python experiments/recheck.py SUITE/RUN [--rounds 4] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from fedlora.commands.quiet import quiet_libraries
from fedlora.config import load_config
from fedlora.engine import build_experiment, run_experiment
from fedlora.errors import FedloraError
from fedlora.runs import RunDir
from fedlora.runs.environment import kernel_settings
from records import RunRecord, recorded
from suites import RESULTS, all_suites

METRICS = ("train_loss", "test_loss", "test_accuracy", "test_macro_f1", "test_score")
COLUMNS = ("run", "round", "metric", "original", "rerun", "equal", "relative_diff", "rerun_by")


def commit() -> str:
    """The commit of this checkout, ``+dirty`` when the library (``src/``) has uncommitted
    changes: the code that computed the numbers is then not the commit's."""
    here = Path(__file__).parent
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "../src"],
        cwd=here,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{sha}+dirty" if dirty else sha or "unknown"


def rerun_by(overrides: Sequence[str]) -> str:
    """What re-ran: the commit, the overrides, and the CPU kernels (the instruction set ATen
    dispatches to, and every kernel-choosing variable set)."""
    kernels = [f"cpu={torch.backends.cpu.get_cpu_capability()}"]
    kernels += [f"{name}={value}" for name, value in kernel_settings().items()]
    return " ".join([commit(), *overrides, *kernels])


def recheck(
    run: RunDir | RunRecord, rounds: int, scratch: Path, overrides: Sequence[str] = ()
) -> list[tuple[int, str, float, float, bool, float]]:
    """The comparison lines: round, metric, the run's value, the re-run's, equal bit for bit,
    and the relative difference."""
    original = {row.round: row for row in run.metrics()}
    config = load_config(run.config_file, overrides).replace(
        {"run.rounds": rounds, "run.out_dir": str(scratch)}
    )
    rerun = run_experiment(
        build_experiment(config), RunDir.create(scratch, config, overwrite=True)
    ).metrics
    lines = []
    for row in rerun:
        for metric in METRICS:
            before, after = getattr(original[row.round], metric), getattr(row, metric)
            if before is None or after is None or not math.isfinite(before):
                continue  # not recorded by both (e.g. a round the longer run did not evaluate)
            relative = abs(after - before) / max(abs(before), 1e-30)
            lines.append((row.round, metric, before, after, before == after, relative))
    return lines


def finished(run: str) -> RunRecord | None:
    """The record of ``SUITE/RUN`` (recorded first from its run directory), None for no such
    finished run."""
    suite, _, name = run.partition("/")
    if not suite or not name:
        return None
    jobs = [job for loaded in all_suites([suite]) for job in loaded.jobs if job.name == name]
    return recorded(jobs[0]) if jobs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="SUITE/RUN, a finished run of experiments/records")
    parser.add_argument("--rounds", type=int, default=4, help="rounds to re-run (default 4)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override"
    )
    args = parser.parse_args(argv)
    quiet_libraries()  # transformers would print its model load report before the comparison
    suite, _, name = args.run.partition("/")
    try:
        record = finished(args.run)
    except FedloraError as error:
        parser.error(str(error))
    if record is None:
        parser.error(f"{args.run}: no finished run SUITE/RUN of experiments/records")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    with tempfile.TemporaryDirectory(prefix="fedlora-recheck-") as tmp:
        lines = recheck(record, args.rounds, Path(tmp) / "run", args.set)
    by = rerun_by(args.set)
    path = RESULTS / suite / "recheck.csv"
    kept = []  # earlier rechecks of other runs, or by other code or overrides
    if path.exists():
        with path.open(encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
        kept = [row for row in rows if (row[0], row[-1]) != (name, by)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows([*kept, *([name, *line, by] for line in lines)])
    unequal = sum(not line[4] for line in lines)
    largest = max((line[5] for line in lines), default=0.0)
    print(
        f"{args.run}: {len(lines)} values compared, {unequal} differ (largest relative "
        f"difference {largest:.1e}) -> {path}"
    )
    return 1 if unequal or not lines else 0


if __name__ == "__main__":
    raise SystemExit(main())
