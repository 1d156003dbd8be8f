"""The Flower ServerApp: the round driver with Flower as its transport.

Run config keys (``[tool.flwr.app.config]`` of the Flower app, or ``flwr run --run-config``):
``config`` (path of a fedlora TOML config on the SuperLink's machine; empty = the defaults),
``config-b64`` (the TOML config itself, base64-encoded, as ``fedlora flower-run`` sends it, so
that no file has to be copied to the server), ``overrides`` (``key=value`` pairs separated by
``;``), ``out-dir`` (run directory; empty = ``run.out_dir``), ``overwrite``
(replace a run directory that holds a run), ``resume`` (continue the run in ``out-dir`` from its
checkpoint, with its saved config), ``rounds`` (with ``resume``: continue the run, finished or
not, to this many rounds in all; 0 = its own length), ``round-timeout`` (seconds to wait for
replies), ``connect-timeout`` (seconds to wait for every node).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.config import ExperimentConfig, load_config, load_config_text
from fedlora.engine import RoundDriver, build_experiment
from fedlora.errors import FedloraError
from fedlora.flower.transport import FlowerTransport
from fedlora.runs import RoundMetrics, RunDir

app = ServerApp()

FLOWER_HINTS = ("set overwrite=true in --run-config", "resume=true in --run-config")


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_to_stderr()
    run_federation(grid, context.run_config)


def run_federation(grid: Grid, run_config: Mapping[str, Any]) -> list[RoundMetrics]:
    """Build the experiment, run the rounds through Flower, write the run directory."""
    resume, overwrite = _flag(run_config, "resume"), _flag(run_config, "overwrite")
    rounds = _rounds(run_config.get("rounds", 0))
    timeout = _seconds(run_config, "round-timeout", 600.0)
    connect_timeout = _seconds(run_config, "connect-timeout", 120.0)
    if rounds and not resume:
        raise FedloraError(
            f"rounds={rounds} continues an existing run: set resume=true and out-dir too (a new "
            f"run's length is run.rounds)"
        )
    if resume:
        out_dir = str(run_config.get("out-dir", "") or "")
        if not out_dir:
            raise FedloraError("resume=true needs out-dir, the run directory to continue")
        run_dir, config = RunDir.open_for_resume(Path(out_dir), rounds or None)
        experiment = build_experiment(config)
    else:
        config = server_config(run_config)
        RunDir.check_free(Path(config.run.out_dir), overwrite=overwrite, how=FLOWER_HINTS)
        experiment = build_experiment(config)
        run_dir = RunDir.create(Path(config.run.out_dir), config, overwrite=overwrite)
    transport = FlowerTransport(
        grid,
        config,
        run_key=run_dir.run_id,
        class_names=[] if config.is_causal_lm else experiment.group_names,
        timeout=timeout,
        connect_timeout=connect_timeout,
    )
    result = RoundDriver(experiment, run_dir).run(transport, resume=resume)
    return result.metrics


def _rounds(value: object) -> int:
    """The run config's ``rounds``: a whole number >= 0 (a TOML override may give a float)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not float(value).is_integer()
        or value < 0
    ):
        raise FedloraError(
            f"run config rounds={value!r}: give a whole number of rounds to continue the run to "
            f"(0: its own length)"
        )
    return int(value)


def _flag(run_config: Mapping[str, Any], key: str) -> bool:
    """A true/false key: a quoted "false" must not count as true, as ``bool()`` would have it."""
    value = run_config.get(key, False)
    if not isinstance(value, bool):
        raise FedloraError(f"run config {key}={value!r}: give true or false, unquoted")
    return value


def _seconds(run_config: Mapping[str, Any], key: str, default: float) -> float:
    """A timeout key: a number of seconds > 0 (a string or 0 would fail deep in the grid)."""
    value = run_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise FedloraError(f"run config {key}={value!r}: give a number of seconds above 0")
    return float(value)


def server_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    """The experiment config the run config names: sent inline, a file, or the defaults."""
    overrides = [item for item in str(run_config.get("overrides", "")).split(";") if item.strip()]
    inline = str(run_config.get("config-b64", "") or "")
    if inline:
        try:
            text = base64.b64decode(inline, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise FedloraError(
                f"run config config-b64 is not base64 of a TOML file ({error})"
            ) from None
        config = load_config_text(text, overrides, source="run config config-b64")
    else:
        config = load_config(str(run_config.get("config", "") or "") or None, overrides)
    out_dir = str(run_config.get("out-dir", "") or "")
    return config.replace({"run.out_dir": out_dir}) if out_dir else config


def encode_config(config: ExperimentConfig) -> str:
    """``config-b64``: the resolved config, for a server that cannot read the client's files."""
    return base64.b64encode(config.to_toml().encode("utf-8")).decode("ascii")


def _log_to_stderr() -> None:
    """fedlora's INFO lines (promotions, dropped replies) with level and time in the app's log."""
    logger = logging.getLogger("fedlora")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
