"""What every benchmark's report shares: its arguments, a log, Markdown tables, the result file.

A benchmark prints Markdown tables (the README's form) and writes them, with the numbers they were
built from, the command and the machine's load, to ``benchmarks/results/<name>.json``;
``--quick`` smoke runs write ``<name>_quick.json`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench_env import RESULTS, LoadMonitor, machine


def parser(doc: str | None, *, threads: int | None) -> argparse.ArgumentParser:
    """The arguments every benchmark takes; ``threads`` its default torch thread count, if any."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument(
        "--out", type=Path, default=None, help="result file (default: benchmarks/results/...)"
    )
    parser.add_argument("--seed", type=int, default=0)
    if threads is not None:
        parser.add_argument(
            "--threads",
            type=int,
            default=threads,
            help=f"torch threads (0: one per core; default {threads})",
        )
    return parser


class Log:
    """Progress lines on stderr, each with the seconds since the benchmark started."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"{self.elapsed():7.1f}s {message}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table under a bold title line."""
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """One benchmark run: its load monitor, log and result file."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.args = args
        self.log = Log()
        self.load = LoadMonitor()
        suffix = "_quick" if args.quick else ""
        self.path: Path = args.out or RESULTS / f"{name}{suffix}.json"

    def write(self, results: dict[str, Any], tables: Sequence[str]) -> None:
        """Print the tables; write them with ``results``, the command and the machine's load."""
        report = {
            "benchmark": self.name,
            "command": shlex.join(["python", f"benchmarks/{self.name}.py", *sys.argv[1:]]),
            "seconds": round(self.log.elapsed(), 1),
            "machine": machine(self.load),
            "results": results,
            "tables": list(tables),
        }
        print("\n\n".join(tables))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
        self.log(f"wrote {self.path}")


def run_child(
    script: str, arguments: Sequence[str], log: Log, *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``script --child FILE ARGUMENTS`` in a fresh interpreter; the JSON it left in FILE.

    ``env`` adds to (or overrides) this process's environment for the child.
    """
    with tempfile.TemporaryDirectory(prefix="fedlora-bench-") as tmp:
        result = Path(tmp) / "child.json"
        command = [sys.executable, script, "--child", str(result), *arguments]
        extra = "".join(f"{key}={value} " for key, value in (env or {}).items())
        log(f"child: {extra}{shlex.join(command[2:])}")
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            env=None if env is None else {**os.environ, **env},
        )
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"child {command} failed:\n{done.stderr[-4000:]}")
        child: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    return child


def write_child(path: str, result: dict[str, Any]) -> int:
    """The child's side of :func:`run_child`."""
    Path(path).write_text(json.dumps(result, default=str) + "\n", encoding="utf-8")
    return 0
