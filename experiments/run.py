"""Run every experiment suite (or the named ones): resumable, finished runs skipped, in parallel.

Each run is a ``fedlora run`` subprocess with its own run directory under
``runs/experiments/<suite>/``: a finished run is recorded in ``experiments/records/`` (commit
it: a run directory does not outlive its machine) and skipped, an interrupted one continues from
its checkpoint (``fedlora run --resume``), a run killed before its first checkpoint starts over,
and a finished run of a suite since given more rounds is continued to them (``--rounds``).
``--workers`` runs go side by side with ``--threads`` torch threads each: keep
``workers x threads`` at the number of cores (oversubscribed torch runs several times slower).
``--cells`` picks and orders the runs when compute is short: a run is taken by the first
pattern (shell-style, matched against ``suite/cell``) it matches, in pattern order; runs that
match none are left out (end with ``"*"`` to keep them, last).  Seeds go round-robin within a
pattern, so the first finished runs of a cell cover several seeds.
Kill it at any time and start it again.

    python experiments/run.py [SUITE ...] [--workers 2] [--threads 1] [--list]
        [--cells PATTERN ...]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from fnmatch import fnmatch

from fedlora.errors import FedloraError
from fedlora.runs import RunDir, seconds_per_round
from records import RunRecord, archive, recorded, shorter
from suites import RESULTS, Job, all_suites, check_patterns


def command(job: Job) -> list[str]:
    """The ``fedlora run`` that starts, continues or restarts this job."""
    fedlora = [sys.executable, "-m", "fedlora.cli", "run"]
    run = RunDir(job.out)
    if run.has_checkpoint():
        longer = ["--rounds", str(job.config().run.rounds)] if shorter(run.config_file, job) else []
        return [*fedlora, "--resume", str(job.out), *longer, "--no-progress"]
    config = [] if job.config_path is None else [str(job.config_path)]
    overrides = [item for override in job.overrides for item in ("--set", override)]
    return [*fedlora, *config, *overrides, "--overwrite", "--no-progress"]


def last_round(run: RunDir) -> int:
    """The last round an unfinished run checkpointed (0: it starts from nothing)."""
    rows = run.metrics() if run.has_checkpoint() else []
    return rows[-1].round if rows else 0


def progress(job: Job, record: RunRecord | None) -> str:
    """``finished``, ``resumable after round N of M``, or empty (it starts from nothing)."""
    if record is not None:
        return "finished"
    run = RunDir(job.out)
    if not run.has_checkpoint():
        return ""
    return f"resumable after round {last_round(run)} of {job.config().run.rounds}"


def committed_seconds(suite: str) -> dict[str, float]:
    """Per cell, the seconds per round the suite's committed ``comparison.csv`` reports: the
    price of a suite run again from nothing (its run directories lost) before a run finishes."""
    path = RESULTS / suite / "comparison.csv"
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        row["method"]: float(row["seconds_per_round"]) for row in rows if row["seconds_per_round"]
    }


def workload(job: Job) -> tuple[str, str, int]:
    """What a round of the job costs most: its model, its data and how many clients train."""
    config = job.config()
    return config.model.name, config.data.dataset, config.run.sampled_per_round()


def compute_left(
    records: Mapping[Job, RunRecord | None],
    alike: Mapping[Job, RunRecord | None] | None = None,
) -> tuple[float, list[Job]]:
    """Seconds of runs left, and the jobs nothing tells about.

    A job's rounds left are priced at the median seconds per round of the finished runs of its
    cell, else of its suite: medians (of rounds, then of runs), as a run paused for a while
    (SIGSTOP) records that pause in the round it paused.  With none finished, the cell's seconds
    per round in the suite's committed results price it, else the finished runs in ``alike``
    (default ``records``: give every suite's, so that a suite listed alone is priced too) with
    its model, data and clients per round (a figure's cells run again on other shares).
    """
    by_cell: dict[tuple[str, str], list[float]] = {}
    by_suite: dict[str, list[float]] = {}
    by_workload: dict[tuple[str, str, int], list[float]] = {}
    left: list[tuple[Job, RunDir]] = []
    for job, record in records.items():
        if record is None:
            left.append((job, RunDir(job.out)))
            continue
        per_round = seconds_per_round(record.metrics())
        by_cell.setdefault((job.suite, job.cell), []).append(per_round)
        by_suite.setdefault(job.suite, []).append(per_round)
    for job, record in (records if alike is None else alike).items():
        if record is not None:
            by_workload.setdefault(workload(job), []).append(seconds_per_round(record.metrics()))
    seconds, unknown = 0.0, []
    committed = {suite: committed_seconds(suite) for suite in {job.suite for job, _ in left}}
    for job, run in left:
        known = by_cell.get((job.suite, job.cell)) or by_suite.get(job.suite)
        price = statistics.median(known) if known else committed[job.suite].get(job.cell)
        if price is None and (same := by_workload.get(workload(job))):
            price = statistics.median(same)
        if price is None:
            unknown.append(job)
            continue
        seconds += (job.config().run.rounds - last_round(run)) * price
    return seconds, unknown


def compute_left_line(
    records: Mapping[Job, RunRecord | None],
    workers: int,
    alike: Mapping[Job, RunRecord | None] | None = None,
) -> str:
    """``--list``'s last line: the hours left, or that nothing finished can price them (an
    "about 0.0 h" for runs nobody has timed yet would read as nothing left)."""
    seconds, unknown = compute_left(records, alike)
    left = len(pending(records))
    if left and len(unknown) == left:
        return f"{left} runs left, none priced: no run of their cells done, nor committed results"
    return (
        f"about {seconds / 3600:.1f} h of runs left ({seconds / 3600 / workers:.1f} h "
        f"{workers} at a time), priced at their cell's or suite's finished runs, else at their "
        "committed results' seconds per round, else at finished runs of their model, data and "
        "clients per round" + (f"; {len(unknown)} runs with none to price them" if unknown else "")
    )


def find_records(jobs: list[Job]) -> dict[Job, RunRecord | None]:
    """Each job's record, ``None`` for a job still to run: each found once, as finding one reads
    its metrics (and first records a finished run directory)."""
    return {job: recorded(job) for job in jobs}


def pending(records: Mapping[Job, RunRecord | None]) -> list[Job]:
    return [job for job, record in records.items() if record is None]


def prioritised(jobs: list[Job], patterns: list[str]) -> list[Job]:
    """The jobs matching ``patterns``, by the first pattern each matches (see the module doc).
    A pattern that matches no job at all is a typo (its runs would silently not run): refused."""
    check_patterns(patterns, list(dict.fromkeys(f"{j.suite}/{j.cell}" for j in jobs)), "suite/cell")
    ordered: list[Job] = []
    for pattern in patterns:
        matched = [j for j in jobs if j not in ordered and fnmatch(f"{j.suite}/{j.cell}", pattern)]
        ordered += sorted(matched, key=lambda j: (j.seed, matched.index(j)))
    return ordered


def run_all(jobs: list[Job], workers: int, threads: int) -> int:
    """Run the jobs, ``workers`` at a time; the number that failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    queue = list(jobs)
    running: list[tuple[Job, subprocess.Popen[bytes], float]] = []
    failed = 0
    while queue or running:
        while queue and len(running) < workers:
            job = queue.pop(0)
            log = job.out.parent / "logs" / f"{job.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as handle:
                process = subprocess.Popen(
                    command(job), env=env, stdout=handle, stderr=subprocess.STDOUT
                )
            running.append((job, process, time.monotonic()))
            print(f"started  {job.suite}/{job.name}", flush=True)
        time.sleep(2.0)
        for entry in list(running):
            job, process, start = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            minutes = (time.monotonic() - start) / 60
            if process.returncode == 0:
                archive(job)
                print(f"finished {job.suite}/{job.name} in {minutes:.1f} min", flush=True)
            else:
                failed += 1
                print(f"FAILED   {job.suite}/{job.name} (exit {process.returncode}); see logs/")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", help="suite names (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--list", action="store_true", help="list the runs and their state")
    parser.add_argument("--cells", nargs="+", help="only these suite/cell patterns, in order")
    args = parser.parse_args(argv)
    jobs = [job for suite in all_suites(args.suites) for job in suite.jobs]
    try:
        if args.cells:
            jobs = prioritised(jobs, args.cells)
        if args.list:  # every suite's finished runs price what the listed ones' do not
            every = find_records([job for suite in all_suites() for job in suite.jobs])
            records = {job: every[job] for job in jobs}
        else:
            records = find_records(jobs)
    except FedloraError as error:
        raise SystemExit(f"error: {error}") from None
    todo = pending(records)
    if args.list:
        for job, record in records.items():
            print(f"{job.suite}/{job.name:40} {progress(job, record)}")
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs finished")
        print(compute_left_line(records, args.workers, every))
        return 0
    print(f"{len(todo)} of {len(jobs)} runs to do, {args.workers} at a time", flush=True)
    return 1 if run_all(todo, args.workers, args.threads) else 0


if __name__ == "__main__":
    raise SystemExit(main())
