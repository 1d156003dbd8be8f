"""The ``flwr`` CLI against one SuperLink: submit the app, follow the run, tell how it ended.

``flwr run --stream`` exits 0 even when the run failed (it streams a traceback and "Exit Code:
201", then returns 0), so :class:`SuperLinkClient` submits without streaming, polls ``flwr ls``
for the run's status and reads ``flwr log``: a caller learns whether the run completed.  Every
call runs with the offline environment of :mod:`fedlora.flower.env` and a CLI home of its own,
whose ``config.toml`` names the connection (``insecure = true`` or the root certificates).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The Flower app (``app/pyproject.toml``), shipped inside the package so that an installed
#: fedlora (a wheel, no source tree) can submit it.
APP_DIR = Path(__file__).resolve().parent / "app"
#: The name of the SuperLink connection written into the CLI's ``config.toml``.
CONNECTION = "fedlora"
ConfigValue = str | int | float | bool
ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""Terminal colour codes, stripped from logs."""


class FlowerLaunchError(RuntimeError):
    """A Flower process did not start, a CLI call failed, or a run did not finish in time."""


def bin_path(name: str) -> str:
    """A console script of the running interpreter's environment (``flwr``, ``flower-...``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FlowerLaunchError(f"{path} does not exist (is flwr installed in this environment?)")
    return str(path)


def config_string(values: Mapping[str, ConfigValue]) -> str:
    """``key=value`` pairs as ``flwr run --run-config`` and ``--node-config`` parse them."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif '"' in value and "'" in value:
            raise FlowerLaunchError(f"{key}: value {value!r} holds both kinds of quote")
        else:
            text = f'"{value}"' if "'" in value else f"'{value}'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


@dataclass
class RunOutcome:
    """How a run ended: its status (``finished:completed`` ...) and the ServerApp log."""

    run_id: int
    status: str
    details: str
    seconds: float
    log: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"

    def describe(self) -> str:
        return (
            f"run {self.run_id}: {self.status} after {self.seconds:.1f} s"
            f"{' (' + self.details + ')' if self.details else ''}\n--- flwr log ---\n{self.log}"
        )


class SuperLinkClient:
    """``flwr`` commands against the SuperLink at ``address``.

    Parameters
    ----------
    address : ``host:port`` of the SuperLink's control API.
    home : the CLI's ``FLWR_HOME`` (its ``config.toml`` is written here).
    env : the process environment of every call (``FLWR_HOME`` is set to ``home``).
    root_certificates : the CA that signed the SuperLink's certificate; ``None`` = insecure.
    cwd : working folder of the calls.
    """

    def __init__(
        self,
        address: str,
        home: Path,
        env: Mapping[str, str],
        *,
        root_certificates: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.address = address
        self.home = home
        self.env = {**env, "FLWR_HOME": str(home), "COLUMNS": "400"}  # rich must not wrap
        self.cwd = cwd or home
        home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(f'address = "{address}"')
        if root_certificates is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {json.dumps(str(root_certificates.resolve()))}")
        (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """Run ``flwr ARGS``; its stdout (stderr is added on failure)."""
        try:
            result = subprocess.run(
                [bin_path("flwr"), *args],
                env=self.env,
                cwd=str(self.cwd),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as error:
            raise FlowerLaunchError(f"flwr {' '.join(args)} timed out after {timeout} s") from error
        if check and result.returncode != 0:
            raise FlowerLaunchError(
                f"flwr {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result.stdout

    def flwr_json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """``flwr ARGS --format json``, parsed; ``"success": false`` raises."""
        output = self.flwr(*args, "--format", "json", timeout=timeout, check=False)
        start = output.find("{")
        try:
            data = json.loads(output[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise FlowerLaunchError(f"flwr {' '.join(args)}: no JSON in its output:\n{output}")
        if data.get("success") is False:
            raise FlowerLaunchError(f"flwr {' '.join(args)} failed: {data}")
        return data

    def submit(
        self,
        app: Path = APP_DIR,
        run_config: Mapping[str, ConfigValue] | None = None,
        federation_config: Mapping[str, ConfigValue] | None = None,
    ) -> int:
        """``flwr run APP`` (not streamed); the run id."""
        args = ["run", str(app), CONNECTION]
        if run_config:
            args += ["--run-config", config_string(run_config)]
        if federation_config:
            args += ["--federation-config", config_string(federation_config)]
        data = self.flwr_json(*args)
        try:
            return int(data["run-id"])
        except (KeyError, TypeError, ValueError):
            raise FlowerLaunchError(f"flwr run gave no run id: {data}") from None

    def run_info(self, run_id: int) -> dict[str, Any]:
        """The run's row of ``flwr ls --run-id``: ``status``, ``status-details``, timings."""
        runs = self.flwr_json("ls", CONNECTION, "--run-id", str(run_id)).get("runs") or [{}]
        info = runs[0]
        return dict(info) if isinstance(info, dict) else {}

    def wait_run(
        self,
        run_id: int,
        timeout: float,
        *,
        poll: float = 1.0,
        check: Callable[[], None] | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> RunOutcome:
        """Poll until the run finishes; past ``timeout`` stop it and raise with its log.

        ``check`` is called every poll (e.g. to raise when a local SuperLink died); ``on_log``
        receives every new piece of the ServerApp's log as it appears.
        """
        start = time.monotonic()
        shown = 0
        while time.monotonic() - start < timeout:
            if on_log is not None:
                text = self.log(run_id)
                if len(text) > shown and not text.startswith("(no log"):
                    on_log(text[shown:])
                    shown = len(text)
            info = self.run_info(run_id)
            status = str(info.get("status", ""))
            if status.startswith("finished"):
                outcome = RunOutcome(
                    run_id=run_id,
                    status=status,
                    details=str(info.get("status-details", "") or ""),
                    seconds=time.monotonic() - start,
                    info=info,
                )
                if not outcome.completed or on_log is not None:
                    outcome.log = self.log(run_id)
                    if on_log is not None and len(outcome.log) > shown:
                        on_log(outcome.log[shown:])
                return outcome
            if check is not None:
                check()
            time.sleep(poll)
        with contextlib.suppress(FlowerLaunchError):
            self.flwr("stop", str(run_id), CONNECTION, check=False)
        raise FlowerLaunchError(
            f"run {run_id} did not finish within {timeout:.0f} s; stopped it\n--- flwr log ---\n"
            f"{self.log(run_id)}"
        )

    def log(self, run_id: int) -> str:
        """The ServerApp's log (``flwr log --show``); never raises."""
        try:
            return ANSI.sub("", self.flwr("log", str(run_id), CONNECTION, "--show", check=False))
        except FlowerLaunchError as error:
            return f"(no log: {error})"
