"""Experiment suites: one TOML file per figure or table, expanded into runs (cell x seed).

A suite names a base config (or the built-in defaults), overrides for every run, the seeds, and
its cells: each cell is a named set of further overrides (a method, a rank allocation).  Every
(cell, seed) is one ordinary run directory under ``runs/experiments/<suite>/``, so a suite is
resumable run by run and any run can be inspected with ``fedlora inspect``; a finished run is
also kept, without its checkpoints, under ``experiments/records/<suite>/`` (:mod:`records`).

Suite file::

    description = "..."
    config = "configs/x.toml"          # optional; relative to the repository
    seeds = [0, 1, 2]
    set = ["run.rounds=40"]            # every cell
    contrast_rounds = [20]             # optional: contrasts also up to these rounds
    convergence_thresholds = [0.6, 0.8]  # optional: the first round past each (0.6, 0.7)
    [cells.flexlora]
    set = ["aggregation.method=flexlora"]
    [panels]                           # optional: figure.png, one panel per entry
    "rank 20 at random" = ["fedit*", "*, random"]
    "from other suites" = [{label = "10 %", cell = "other_suite/replication, random"}]
    [contrasts]                        # optional: contrasts.md, A minus B paired by seed
    "replication - zero padding" = ["replication, random", "zero_padding, random"]

A panel lists cell patterns (shell-style; ``suite/cell`` takes a cell of another suite's runs),
each optionally with the label its line gets (default: the cell's name).  A contrast names two
cells exactly (``suite/cell`` again for another suite's): the claims of the papers are
comparisons, and a comparison over a few seeds is read seed by seed.  A contrast is taken up to
the last round both cells reached, and also up to each earlier round ``contrast_rounds`` names
(a suite continued from 20 to 40 rounds keeps its round-20 comparison: whether a lead at round 20
is a faster start or a better end is read from both).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from fedlora.config import ExperimentConfig, load_config
from fedlora.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SUITES = REPO / "experiments" / "suites"
RUNS = REPO / "runs" / "experiments"
RECORDS = REPO / "experiments" / "records"
RESULTS = REPO / "docs" / "results"
SUITE_KEYS = {
    "description",
    "config",
    "seeds",
    "set",
    "cells",
    "panels",
    "contrasts",
    "contrast_rounds",
    "convergence_thresholds",
}
# By default convergence.md gives the first round at which each run reaches these.
THRESHOLDS = (0.6, 0.7)


@dataclass(frozen=True)
class Job:
    """One run of a suite: a cell at a seed."""

    suite: str
    cell: str
    seed: int
    config_path: Path | None
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{_slug(self.cell)}-seed{self.seed}"

    @property
    def out(self) -> Path:
        return RUNS / self.suite / self.name

    @property
    def record(self) -> Path:
        """Where the finished run is kept in the repository (:mod:`records`)."""
        return RECORDS / self.suite / self.name

    def config(self) -> ExperimentConfig:
        """The resolved config of this run (validated: a bad suite fails before any run)."""
        return load_config(self.config_path, list(self.overrides))


@dataclass(frozen=True)
class CellRef:
    """Cells named by a panel's line or a contrast's side: a pattern, ``suite/`` first for
    another suite's cells."""

    pattern: str
    label: str | None = None

    @property
    def suite(self) -> str | None:
        return self.pattern.rpartition("/")[0] or None

    @property
    def cell(self) -> str:
        return self.pattern.rpartition("/")[2]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    seeds: tuple[int, ...]
    cells: dict[str, tuple[str, ...]]
    jobs: tuple[Job, ...]
    panels: dict[str, tuple[CellRef, ...]] = field(default_factory=dict)
    contrasts: dict[str, tuple[CellRef, CellRef]] = field(default_factory=dict)
    contrast_rounds: tuple[int, ...] = ()
    convergence_thresholds: tuple[float, ...] = THRESHOLDS


def load_suite(path: Path) -> Suite:
    """A suite file, every cell's config validated."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    for table in ("cells", "panels", "contrasts"):
        if misplaced := sorted(set(data.get(table, {})) & SUITE_KEYS):
            raise ConfigError(
                f"{path}: {misplaced} under [{table}]: top-level keys go before the first [table]"
            )
    config_path = REPO / data["config"] if data.get("config") else None
    shared = tuple(data.get("set", []))
    seeds = tuple(int(s) for s in data.get("seeds", [0]))
    cells = {name: tuple(cell.get("set", [])) for name, cell in data.get("cells", {}).items()}
    if not cells:
        raise ConfigError(f"{path}: a suite needs at least one [cells.NAME]")
    jobs, longest = [], 0
    for cell, overrides in cells.items():
        for seed in seeds:
            job = Job(
                suite=path.stem,
                cell=cell,
                seed=seed,
                config_path=config_path,
                overrides=(
                    *shared,
                    *overrides,
                    f"run.seed={seed}",
                    f"run.name='{_slug(cell)}-seed{seed}'",
                    f"run.out_dir='{RUNS / path.stem / f'{_slug(cell)}-seed{seed}'}'",
                ),
            )
            longest = max(longest, job.config().run.rounds)
            jobs.append(job)
    panels = {
        str(title): tuple(_panel_entry(path, str(title), entry) for entry in entries)
        for title, entries in data.get("panels", {}).items()
    }
    contrasts = {
        str(title): _contrast(path, str(title), pair)
        for title, pair in data.get("contrasts", {}).items()
    }
    description = str(data.get("description", ""))
    rounds = _contrast_rounds(path, data.get("contrast_rounds", []), longest)
    thresholds = _thresholds(path, data.get("convergence_thresholds", list(THRESHOLDS)))
    return Suite(
        path.stem, description, seeds, cells, tuple(jobs), panels, contrasts, rounds, thresholds
    )


def _contrast_rounds(path: Path, rounds: object, longest: int) -> tuple[int, ...]:
    """Earlier rounds to compare up to: each above 0 and below the suite's longest run."""
    if not (isinstance(rounds, list) and all(type(r) is int and r > 0 for r in rounds)):
        raise ConfigError(f"{path}: contrast_rounds: {rounds!r} is not a list of rounds above 0")
    if late := [r for r in rounds if r >= longest]:
        raise ConfigError(
            f"{path}: contrast_rounds: {late} not before the last round of the suite's runs "
            f"({longest}): a contrast is always taken up to the last round"
        )
    return tuple(sorted(set(rounds)))


def _thresholds(path: Path, values: object) -> tuple[float, ...]:
    if isinstance(values, list) and values and all(_number(v) and v > 0 for v in values):
        return tuple(sorted({float(v) for v in values}))
    raise ConfigError(
        f"{path}: convergence_thresholds: {values!r} is not a list of metric values above 0"
    )


def _number(value: object) -> bool:
    """An int or a finite float (TOML's ``true`` is no number, nor is ``inf``)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _panel_entry(path: Path, title: str, entry: object) -> CellRef:
    if isinstance(entry, str):
        return CellRef(entry)
    if isinstance(entry, dict) and set(entry) == {"label", "cell"}:
        return CellRef(str(entry["cell"]), str(entry["label"]))
    raise ConfigError(
        f"{path}: panels.{title!r}: {entry!r} is neither a cell pattern nor {{label, cell}}"
    )


def _contrast(path: Path, title: str, pair: object) -> tuple[CellRef, CellRef]:
    if (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(cell, str) and not set(cell) & set("*?[") for cell in pair)
    ):
        return CellRef(pair[0]), CellRef(pair[1])
    raise ConfigError(f"{path}: contrasts.{title!r}: {pair!r} is not two cell names [A, B]")


def check_patterns(patterns: Sequence[str], names: Sequence[str], of: str) -> None:
    """A ``--cells`` pattern that matches none of ``names`` is a typo: the runs it meant would
    silently be left out, so it is refused, with the names it could match."""
    for pattern in patterns:
        if not any(fnmatch(name, pattern) for name in names):
            raise ConfigError(f"--cells {pattern!r} matches no {of}; they are: {list(names)}")


def all_suites(names: list[str] | None = None) -> list[Suite]:
    paths = sorted(SUITES.glob("*.toml"))
    if names:
        known = {p.stem: p for p in paths}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(f"no suite {missing}; suites: {', '.join(known)}")
        paths = [known[n] for n in names]
    return [load_suite(p) for p in paths]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
