"""The one place that sets the environment Flower and Ray need to stay on this machine.

Flower phones home (telemetry, update checks, runtime dependency installs from PyPI) and Ray
probes cloud metadata addresses unless ``HOME`` holds a ``ray_bootstrap_config.yaml`` with a
local provider, and binds to the first non-loopback interface unless told otherwise.  Every
test, script and CLI path that starts Flower or Ray goes through :func:`offline_environment`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

RAY_BOOTSTRAP = "ray_bootstrap_config.yaml"

FLOWER_OFFLINE = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "no_proxy": "127.0.0.1,localhost,::1",
}
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def prepare_home(home: Path) -> Path:
    """A HOME whose Ray bootstrap config says "local provider", so Ray probes no cloud."""
    home.mkdir(parents=True, exist_ok=True)
    (home / RAY_BOOTSTRAP).write_text("provider:\n  type: local\n", encoding="utf-8")
    return home


def offline_environment(
    home: Path, flwr_home: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A process environment for Flower/Ray commands that keeps all traffic on loopback."""
    env = dict(os.environ if base is None else base)
    for name in PROXY_VARIABLES:
        env.pop(name, None)
    env.update(FLOWER_OFFLINE)
    env["HOME"] = str(prepare_home(home))
    # Flower starts its helpers (flower-superexec, flwr-clientapp) by name: our venv comes first.
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    flwr_home.mkdir(parents=True, exist_ok=True)
    env["FLWR_HOME"] = str(flwr_home)
    return env
