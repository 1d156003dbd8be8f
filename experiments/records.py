"""Finished runs kept in the repository: each run's config and metrics, without its checkpoints.

A run directory (``runs/experiments/<suite>/<run>/``) is not committed, and the machine it ran on
may be gone by the next session: on 2026-11-27 a new machine came without the run directories
of every finished run.  So a finished run is also kept as a *record*,
``experiments/records/<suite>/<run>/``: its ``config.toml``, its ``metrics.jsonl`` gzipped, its
``environment.jsonl`` (where it ran; runs of older code have none), and the lines the diagnostics
keep for it (``diagnose.py`` writes them there).  That is all ``report.py`` reads, so every
table and figure can be rebuilt from the records alone, and ``run.py`` skips a job that has one.
Only a first diagnosis of a run (it evaluates the final model) and ``local_steps.py`` need the
checkpoints of a run directory.

A record is written whenever a finished run directory is found without an identical one, and is
checked against the job it answers: a record made with other settings than the suite now asks
for is an error naming it (delete it to run the job again), never a silent stale result.  A suite
given more rounds makes its finished runs unfinished: ``run.py`` continues each run directory to
the new length, and its record is replaced when the longer run finishes.
"""

from __future__ import annotations

import csv
import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedlora.config import ExperimentConfig, load_config
from fedlora.errors import FedloraError
from fedlora.runs import ENVIRONMENT, RoundMetrics, RunDir
from suites import Job

CONFIG = "config.toml"
METRICS = "metrics.jsonl.gz"


@dataclass(frozen=True)
class RunRecord:
    """The committed record of one finished run: the files ``report.py`` reads."""

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    def exists(self) -> bool:
        return (self.path / METRICS).exists() and self.config_file.exists()

    def metrics_lines(self) -> bytes:
        """The run's ``metrics.jsonl``, byte for byte."""
        return gzip.decompress((self.path / METRICS).read_bytes())

    def metrics(self) -> list[RoundMetrics]:
        lines = self.metrics_lines().decode("utf-8").splitlines()
        return [RoundMetrics.from_json(line) for line in lines if line.strip()]


def record_of(job: Job) -> RunRecord:
    return RunRecord(job.record)


def _settings(config: ExperimentConfig) -> dict[str, object]:
    """What a run's result depends on: everything but where its directory was and how many
    rounds it ran (a run continued to more rounds is the longer run, :func:`shorter`)."""
    settings = config.model_dump()
    settings["run"].pop("out_dir")
    settings["run"].pop("rounds")
    return settings


def shorter(config_file: Path, job: Job) -> bool:
    """The run (directory or record) has fewer rounds than the job asks for: it is to be
    continued (``fedlora run --resume DIR --rounds N``), not yet a result of the job."""
    return load_config(config_file).run.rounds < job.config().run.rounds


def archive(job: Job) -> RunRecord:
    """Write (or refresh) the record of the job's finished run directory; the same run gives
    byte-identical files (the gzip header carries no time)."""
    run = RunDir(job.out)
    if not run.is_finished():
        raise FedloraError(f"{run.path}: not a finished run, nothing to record")
    record = record_of(job)
    record.path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.config_file, record.config_file)
    metrics = run.metrics_file.read_bytes()
    (record.path / METRICS).write_bytes(gzip.compress(metrics, compresslevel=9, mtime=0))
    if (run.path / ENVIRONMENT).exists():
        shutil.copyfile(run.path / ENVIRONMENT, record.path / ENVIRONMENT)
    else:  # a run of older code: no earlier run's environment may stand for it
        (record.path / ENVIRONMENT).unlink(missing_ok=True)
    return record


def _differs(run: RunDir, record: RunRecord) -> bool:
    """The record lacks the run's metrics or where it ran, byte for byte."""
    if run.metrics_file.read_bytes() != record.metrics_lines():
        return True
    ran, kept = run.path / ENVIRONMENT, record.path / ENVIRONMENT
    return ran.exists() and (not kept.exists() or ran.read_bytes() != kept.read_bytes())


def _complete(config_file: Path, job: Job) -> bool:
    """Whether the run (directory or record) has every round the job asks for (else it is
    :func:`shorter`); a run made with other settings than the job's, or with more rounds, is
    refused.  Each config is read once."""
    ran, asked = load_config(config_file), job.config()
    if _settings(ran) != _settings(asked) or ran.run.rounds > asked.run.rounds:
        raise FedloraError(
            f"{config_file.parent}: made with other settings than the suite now gives "
            f"{job.suite}/{job.cell} (seed {job.seed}); delete it to run the job again"
        )
    return ran.run.rounds == asked.run.rounds


def recorded(job: Job) -> RunRecord | None:
    """The job's record if it finished (recording its run directory first when that holds a
    finished run the record lacks), checked to answer the job's settings; else None.  A run
    directory made with other settings is refused before it can replace a record."""
    run = RunDir(job.out)
    record = record_of(job)
    if run.is_finished():
        if not _complete(run.config_file, job):
            return None
        if not record.exists() or _differs(run, record):
            record = archive(job)
    if not record.exists():
        return None
    return record if _complete(record.config_file, job) else None


def check_nothing_dropped(result_file: Path, held: set[tuple[str, int]]) -> None:
    """Refuse to rewrite a committed result file (columns ``cell``, ``seed``) without runs it
    reports that no record holds here: the rebuild would silently drop them."""
    if not result_file.exists():
        return
    with result_file.open(encoding="utf-8", newline="") as handle:
        reported = {(line["cell"], int(line["seed"])) for line in csv.DictReader(handle)}
    missing = sorted(reported - held)
    if missing:
        named = ", ".join(f"{cell} seed {seed}" for cell, seed in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise FedloraError(
            f"{result_file} reports {len(missing)} runs that have no record here ({named}{more}); "
            f"run them again (python experiments/run.py SUITE) or pass --drop-missing to rewrite "
            f"it without them"
        )
