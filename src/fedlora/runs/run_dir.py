"""The directory of one run: the layout every runner (in-process, Flower) writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedlora.config import ExperimentConfig, load_config
from fedlora.errors import FedloraError
from fedlora.runs.checkpoint import has_checkpoint
from fedlora.runs.merged import MergedStore
from fedlora.runs.metrics import RoundMetrics, read_metrics, write_metrics_csv

CONFIG = "config.toml"
RUN_ID = "run_id"
ENVIRONMENT = "environment.jsonl"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
SUMMARY = "summary.md"
CHECKPOINT = "checkpoint"
LABEL_FILES = ("label_distribution.csv", "label_distribution.png")
MERGED = "merged"
PLOTS = "plots"
SCRATCH = "scratch"
RUN_FOLDERS = {CHECKPOINT: "round-*.safetensors*", MERGED: "round-*.safetensors*", PLOTS: "*.png"}


@dataclass(frozen=True)
class RunDir:
    """Paths and file operations of a run directory.

    ``summary.md`` marks a finished run: such a directory is never overwritten unless asked.
    """

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def merged_dir(self) -> Path:
        return self.path / MERGED

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS

    @property
    def scratch_dir(self) -> Path:
        """Client updates of the current round spilled to disk (``aggregation.spill``)."""
        return self.path / SCRATCH

    def clear_scratch(self) -> None:
        """Remove what a round spilled: after every round, and what a killed one left."""
        shutil.rmtree(self.scratch_dir, ignore_errors=True)

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    def is_finished(self) -> bool:
        return self.summary_file.exists()

    def has_checkpoint(self) -> bool:
        return has_checkpoint(self.checkpoint_dir)

    @classmethod
    def check_free(
        cls,
        path: Path,
        *,
        overwrite: bool,
        how: tuple[str, str] = ("pass --overwrite", "--resume {path}"),
    ) -> None:
        """Refuse a directory that holds a run, unless ``overwrite`` (checked before any work).

        ``how`` says, in the caller's terms, how to overwrite and how to resume.
        """
        run = cls(path)
        _check_writable(path)
        if run.config_file.exists() is False and path.is_dir() and any(path.iterdir()):
            raise FedloraError(
                f"run directory {path} is a folder that holds files but no run; give an empty "
                f"or new folder"
            )
        if not overwrite and run.config_file.exists():
            what = "a finished run" if run.is_finished() else "an unfinished run"
            resume = how[1].format(path=path)
            hint = "" if run.is_finished() else f", or continue it with {resume}"
            raise FedloraError(
                f"run directory {path} already holds {what}; {how[0]} to replace it{hint}"
            )

    def _remove_run_files(self) -> None:
        """Only what a run writes (never other files a user keeps in the folder)."""
        for name in (CONFIG, RUN_ID, ENVIRONMENT, METRICS, METRICS_CSV, SUMMARY, *LABEL_FILES):
            (self.path / name).unlink(missing_ok=True)
        self.clear_scratch()
        for folder, pattern in RUN_FOLDERS.items():
            for entry in (self.path / folder).glob(pattern):
                entry.unlink()
            with contextlib.suppress(OSError):  # left alone when it holds other files
                (self.path / folder).rmdir()

    @classmethod
    def create(cls, path: Path, config: ExperimentConfig, *, overwrite: bool) -> RunDir:
        """A fresh run directory; refuses to replace an existing run unless ``overwrite``."""
        cls.check_free(path, overwrite=overwrite)
        run = cls(path)
        if overwrite and run.config_file.exists():
            run._remove_run_files()
        path.mkdir(parents=True, exist_ok=True)
        run.config_file.write_text(config.to_toml(), encoding="utf-8")
        (path / RUN_ID).write_text(uuid.uuid4().hex, encoding="utf-8")
        return run

    @classmethod
    def open_for_resume(
        cls, path: Path, rounds: int | None = None
    ) -> tuple[RunDir, ExperimentConfig]:
        """An unfinished run and its resolved config; with ``rounds``, any run made longer.

        Continuing a run to more rounds gives the run a longer one would have been: nothing a
        round does depends on how many rounds follow it (learning-rate schedules are per round).
        """
        run = cls(path)
        if not run.config_file.exists():
            raise FedloraError(f"--resume {path}: no {CONFIG} there, so it is not a run directory")
        config = load_config(run.config_file)
        if rounds is None:
            if run.is_finished():
                raise FedloraError(
                    f"--resume {path}: that run already finished; add --rounds N to continue it "
                    f"to N rounds"
                )
            return run, config
        if rounds <= config.run.rounds:
            raise FedloraError(
                f"--rounds {rounds}: the run in {path} has {config.run.rounds} rounds already; "
                f"give more to continue it"
            )
        if not run.has_checkpoint():
            raise FedloraError(f"--resume {path}: no checkpoint to continue from")
        longer = config.replace({"run.rounds": rounds})
        run.summary_file.unlink(missing_ok=True)  # unfinished first: a crash here resumes it
        tmp = run.config_file.with_name(run.config_file.name + ".tmp")
        tmp.write_text(longer.to_toml(), encoding="utf-8")
        os.replace(tmp, run.config_file)
        return run, longer

    def metrics(self) -> list[RoundMetrics]:
        return read_metrics(self.metrics_file)

    def append_metrics(self, row: RoundMetrics) -> None:
        """One more line, on disk (fsynced) before the round's checkpoint is written."""
        with self.metrics_file.open("a", encoding="utf-8") as handle:
            handle.write(row.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        write_metrics_csv(self.metrics(), self.path / METRICS_CSV)

    def keep_metrics_until(self, last_round: int) -> list[RoundMetrics]:
        """The metrics of rounds 0..``last_round`` (a checkpoint's), the later ones dropped
        (they are recomputed on resume); a line torn by a crash is repaired, a missing round
        is an error."""
        if not self.metrics_file.exists():
            raise FedloraError(f"{self.metrics_file} is missing; the run cannot be resumed")
        rows = [
            row
            for row in read_metrics(self.metrics_file, repair_torn_tail=True)
            if row.round <= last_round
        ]
        if [row.round for row in rows] != list(range(last_round + 1)):
            held = [row.round for row in rows]
            raise FedloraError(
                f"{self.metrics_file} holds rounds {held}, not 0..{last_round} of its "
                f"checkpoint; the run cannot be resumed exactly"
            )
        self.rewrite_metrics(rows)
        return rows

    def rewrite_metrics(self, rows: Sequence[RoundMetrics]) -> None:
        tmp = self.metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(row.to_json() + "\n" for row in rows), encoding="utf-8")
        tmp.replace(self.metrics_file)
        write_metrics_csv(rows, self.path / METRICS_CSV)

    @property
    def run_id(self) -> str:
        """A random id given to the run when its directory was created (kept on resume)."""
        path = self.path / RUN_ID
        if not path.exists():
            path.write_text(uuid.uuid4().hex, encoding="utf-8")
        return path.read_text(encoding="utf-8").strip()

    @property
    def merged(self) -> MergedStore:
        """FLoRA's merged rounds, one file each, re-applied in order on resume."""
        return MergedStore(self.merged_dir)


def _check_writable(path: Path) -> None:
    """A run directory must be a folder this process can write: checked before any work."""
    if path.exists() and not path.is_dir():
        raise FedloraError(f"run directory {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FedloraError(f"run directory {path} lies under a file, {existing}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FedloraError(f"run directory {path}: {existing} is not writable")
