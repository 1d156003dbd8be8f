"""Start a SuperLink and SuperNodes on loopback, run the Flower app, tear everything down.

Used by the Flower tests and benchmarks.  Every process gets the environment of
:func:`fedlora.flower.env.offline_environment` (one ``HOME`` under the work folder, a separate
``FLWR_HOME`` for the SuperLink, for every SuperNode and for the ``flwr`` CLI), listens on
127.0.0.1 only and is started in its own session, so that :meth:`LocalFederation.close` can end
it with everything it spawned (superexec, ServerApp and ClientApp processes, Ray).  Anything
that still carries the work folder in its environment after that is killed by process id and
reported.

Typical use::

    with LocalFederation(tmp_path, tls=TlsFiles(ca, cert, key)) as federation:
        federation.start_superlink()
        for i, rank in enumerate([2, 4, 8]):
            federation.start_supernode({"partition-id": i, "num-partitions": 3, "lora-rank": rank})
        federation.wait_for_nodes(3)
        outcome = federation.run(APP_DIR, {"config": str(path), "out-dir": str(out)})
        assert outcome.status == "finished:completed", outcome.describe()
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

from fedlora.flower.env import offline_environment
from fedlora.flower.superlink import (
    ANSI,
    APP_DIR,
    CONNECTION,
    ConfigValue,
    FlowerLaunchError,
    RunOutcome,
    SuperLinkClient,
    bin_path,
    config_string,
)

LOOPBACK = "127.0.0.1"
NODE_ID = re.compile(r"SuperNode ID: (\d+)")

# ---------------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a TLS federation: the CA, and the SuperLink's certificate and key.

    The certificate must name 127.0.0.1 in its subject alternative names.
    """

    ca: Path
    cert: Path
    key: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


# ---------------------------------------------------------------------------------- processes


@dataclass
class FlowerProcess:
    """One process we started (in its own session), with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    port: int
    flwr_home: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            self.log_file.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return ANSI.sub("", text[-chars:])

    def wait_for_log(self, text: str, timeout: float = 120.0) -> None:
        """Wait until ``text`` appears in this process's log (it must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_tail(1_000_000):
                return
            if not self.alive():
                raise FlowerLaunchError(f"{self.name} exited before logging {text!r}")
            time.sleep(0.2)
        raise FlowerLaunchError(f"{self.name} did not log {text!r} within {timeout:.0f} s")

    def node_id(self, timeout: float = 120.0) -> int:
        """The node id a SuperNode was given when it joined (it logs ``SuperNode ID: ...``)."""
        self.wait_for_log("SuperNode ID: ", timeout)
        match = NODE_ID.search(self.log_tail(1_000_000))
        if match is None:
            raise FlowerLaunchError(f"{self.name} logged no node id:\n{self.log_tail()}")
        return int(match.group(1))

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


class LocalFederation:
    """A SuperLink (deployment or ``--simulation``), SuperNodes and a ``flwr`` CLI, on loopback.

    Parameters
    ----------
    root : work folder (logs, ``HOME``, every ``FLWR_HOME``); must be private to this object.
    tls : certificates for HTTPS (``None`` = ``--insecure`` everywhere).
    base_env : environment to start from (default ``os.environ``; proxies are always removed).
    """

    def __init__(
        self,
        root: Path,
        *,
        tls: TlsFiles | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "home"
        self.tls = tls
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.superlink: FlowerProcess | None = None
        self.supernodes: list[FlowerProcess] = []
        self.cli_home = self.root / "flwr-cli"
        self._cli: SuperLinkClient | None = None
        self.leftovers: list[str] = []
        self._closed = False
        # Ray's session folders (sockets, logs) go here, not into /tmp/ray; kept short because
        # Unix socket paths are limited to 107 bytes.
        self.ray_tmpdir = Path(tempfile.mkdtemp(prefix="fedlora-ray-"))

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        leftovers = self.close()
        if leftovers and exc is None:
            raise FlowerLaunchError(f"processes survived the teardown: {leftovers}")

    # ------------------------------------------------------------------ environment

    def environment(self, flwr_home: Path) -> dict[str, str]:
        """The offline environment with this federation's ``HOME`` and the given FLWR_HOME."""
        env = offline_environment(self.home, flwr_home, self.base_env)
        env["COLUMNS"] = "400"  # rich must not wrap the CLI's output
        env["PYTHONUNBUFFERED"] = "1"
        env["RAY_TMPDIR"] = str(self.ray_tmpdir)
        return env

    @property
    def address(self) -> str:
        if self.superlink is None:
            raise FlowerLaunchError("the SuperLink is not running")
        return f"{LOOPBACK}:{self.superlink.port}"

    def _security_flags(self, trust_ca: bool = True) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return ["--root-certificates", str(self.tls.ca)] if trust_ca else []

    def _spawn(self, name: str, args: list[str], port: int) -> FlowerProcess:
        flwr_home = self.root / f"flwr-{name}"
        log_path = self.root / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                args,
                env=self.environment(flwr_home),
                cwd=str(self.root),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            log_file.close()
            raise
        return FlowerProcess(name, popen, log_path, log_file, port, flwr_home)

    # ------------------------------------------------------------------ SuperLink

    def start_superlink(
        self,
        *,
        simulation: bool = False,
        supernode_auth: bool = False,
        timeout: float = 60.0,
        attempts: int = 3,
    ) -> FlowerProcess:
        """Start ``flower-superlink`` on a free port and wait until ``/health`` answers.

        ``supernode_auth`` (TLS only) admits only SuperNodes whose public key was registered
        with :meth:`register_supernode` (``--enable-supernode-auth``).
        """
        if self.superlink is not None:
            raise FlowerLaunchError("the SuperLink is already running")
        if supernode_auth and self.tls is None:
            raise FlowerLaunchError("SuperNode authentication needs TLS")
        for attempt in range(attempts):
            port = free_port()
            args = [bin_path("flower-superlink"), "--host", LOOPBACK, "--port", str(port)]
            args += ["--disable-runtime-dependency-installation"]
            if self.tls is None:
                args.append("--insecure")
            else:
                args += ["--ssl-ca-certfile", str(self.tls.ca)]
                args += ["--ssl-certfile", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key)]
            if simulation:
                args.append("--simulation")
            if supernode_auth:
                args.append("--enable-supernode-auth")
            process = self._spawn(f"superlink{attempt or ''}", args, port)
            self.superlink = process
            if self._wait_healthy(process, timeout):
                self._connect_cli()
                return process
            # It exited: a port race is worth another try, anything else is not.
            self.superlink = None
            self._end([process])
            if "address already in use" not in process.log_tail().lower():
                break
        raise FlowerLaunchError(f"the SuperLink did not start:\n{process.log_tail()}")

    def _wait_healthy(self, process: FlowerProcess, timeout: float) -> bool:
        scheme = "http" if self.tls is None else "https"
        url = f"{scheme}://{LOOPBACK}:{process.port}/health"
        verify: ssl.SSLContext | bool = False if self.tls is None else self.tls.ssl_context()
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, verify=verify, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not process.alive():
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return True
                time.sleep(0.2)
        raise FlowerLaunchError(
            f"{process.name}: no healthy answer from {url} within {timeout:.0f} s\n"
            f"{process.log_tail()}"
        )

    def _connect_cli(self) -> None:
        root = None if self.tls is None else self.tls.ca
        self._cli = SuperLinkClient(
            self.address,
            self.cli_home,
            self.environment(self.cli_home),
            root_certificates=root,
            cwd=self.root,
        )

    # ------------------------------------------------------------------ SuperNodes

    def start_supernode(
        self,
        node_config: Mapping[str, ConfigValue],
        *,
        private_key: Path | None = None,
        trust_ca: bool = True,
        max_retries: int = 20,
        max_wait_time: float = 60.0,
        extra_args: Iterable[str] = (),
    ) -> FlowerProcess:
        """Start ``flower-supernode`` with its own Runtime API port and ``--node-config``.

        ``private_key``: the node's OpenSSH EC key, for a SuperLink with SuperNode
        authentication.  ``trust_ca=False`` (TLS only) starts the node without the federation's
        CA (and without ``--insecure``): it must refuse the SuperLink's certificate.
        """
        port = free_port()
        name = f"supernode{len(self.supernodes)}"
        args = [bin_path("flower-supernode"), *self._security_flags(trust_ca)]
        args += ["--superlink", self.address, "--host", LOOPBACK, "--port", str(port)]
        args += ["--max-retries", str(max_retries), "--max-wait-time", str(max_wait_time)]
        if private_key is not None:
            args += ["--auth-supernode-private-key", str(private_key.resolve())]
        args += ["--node-config", config_string(node_config), *extra_args]
        process = self._spawn(name, args, port)
        self.supernodes.append(process)
        return process

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Wait until ``count`` SuperNodes are online; a SuperNode that exits fails at once."""
        deadline = time.monotonic() + timeout
        online: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for process in self.supernodes:
                if not process.alive():
                    raise FlowerLaunchError(
                        f"{process.name} exited with {process.popen.returncode}:\n"
                        f"{process.log_tail()}"
                    )
            online = [n for n in self.nodes() if n.get("status") == "online"]
            if len(online) >= count:
                return online
            time.sleep(1.0)
        raise FlowerLaunchError(f"only {len(online)} of {count} SuperNodes online in {timeout} s")

    def stop_supernode(self, process: FlowerProcess, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one SuperNode (and its superexec and ClientApps) mid-run."""
        process.signal_group(sig)

    def register_supernode(self, public_key: Path) -> int:
        """``flwr supernode register``: admit the node holding this key; its node id.

        The SuperLink lists it as ``registered`` until a SuperNode with the matching private
        key connects, which then comes online under this id.
        """
        data = self.cli.flwr_json("supernode", "register", str(public_key.resolve()), CONNECTION)
        try:
            return int(data["node-id"])
        except (KeyError, TypeError, ValueError):
            raise FlowerLaunchError(f"flwr supernode register gave no node id: {data}") from None

    # ------------------------------------------------------------------ the CLI

    @property
    def cli(self) -> SuperLinkClient:
        """The ``flwr`` CLI connected to this federation's SuperLink."""
        if self._cli is None:
            raise FlowerLaunchError("the SuperLink is not running")
        return self._cli

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list`` as JSON: ``node-id``, ``status`` (``online`` ...) per node."""
        nodes = self.cli.flwr_json("supernode", "list", CONNECTION).get("nodes", [])
        return list(nodes) if isinstance(nodes, list) else []

    def submit(
        self,
        app: Path = APP_DIR,
        run_config: Mapping[str, ConfigValue] | None = None,
        federation_config: Mapping[str, ConfigValue] | None = None,
    ) -> int:
        return self.cli.submit(app, run_config, federation_config)

    def wait_run(self, run_id: int, timeout: float, poll: float = 1.0) -> RunOutcome:
        return self.cli.wait_run(run_id, timeout, poll=poll, check=self._check_superlink)

    def run(
        self,
        app: Path = APP_DIR,
        run_config: Mapping[str, ConfigValue] | None = None,
        federation_config: Mapping[str, ConfigValue] | None = None,
        *,
        timeout: float = 600.0,
    ) -> RunOutcome:
        """Submit the app and wait for it (:meth:`submit` + :meth:`wait_run`)."""
        start = time.monotonic()
        run_id = self.submit(app, run_config, federation_config)
        outcome = self.wait_run(run_id, timeout)
        outcome.seconds = time.monotonic() - start
        return outcome

    def log(self, run_id: int) -> str:
        return self.cli.log(run_id)

    def _check_superlink(self) -> None:
        if self.superlink is not None and not self.superlink.alive():
            raise FlowerLaunchError(f"the SuperLink died:\n{self.superlink.log_tail()}")

    # ------------------------------------------------------------------ teardown

    def close(self, grace: float = 10.0) -> list[str]:
        """SIGTERM the SuperNodes, then the SuperLink; SIGKILL what is left; reap everything.

        Returns a description of every process that still carried this federation's
        environment afterwards (they are SIGKILLed by pid as well); empty when all is clean.
        """
        if self._closed:
            return self.leftovers
        self._closed = True
        processes = list(reversed(self.supernodes))
        if self.superlink is not None:
            processes.append(self.superlink)
        self._end(processes, grace)
        self.leftovers = self._kill_strays()
        if not self.leftovers:
            shutil.rmtree(self.ray_tmpdir, ignore_errors=True)
        return self.leftovers

    def _end(self, processes: list[FlowerProcess], grace: float = 10.0) -> None:
        for process in processes:  # in order: SuperNodes first, the SuperLink last
            if process.alive():
                process.signal_group(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.popen.wait(timeout=grace)
        for process in processes:  # whatever is left in each group (superexec, apps, Ray)
            process.signal_group(signal.SIGKILL)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=grace)
            with contextlib.suppress(OSError):
                process.log_file.close()

    def _kill_strays(self, rounds: int = 10) -> list[str]:
        """SIGKILL (by pid) anything outside the groups that still runs in our environment."""
        strays: list[tuple[int, str]] = []
        for _ in range(rounds):
            strays = list(self.processes())
            if not strays:
                return []
            for pid, _command in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        return [f"{pid} {command}" for pid, command in strays]

    def processes(self, of: FlowerProcess | None = None) -> Iterator[tuple[int, str]]:
        """Live (non-zombie) processes whose environment points into this work folder.

        ``of``: only those started by that process (its ``FLWR_HOME``: e.g. a SuperNode's
        superexec and ClientApps).
        """
        home, flwr_home = f"HOME={self.home}".encode(), f"FLWR_HOME={self.root}/".encode()
        own = None if of is None else f"FLWR_HOME={of.flwr_home}".encode()

        def ours(var: bytes) -> bool:
            return var == own if own is not None else var == home or var.startswith(flwr_home)

        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                stat = (entry / "stat").read_text()
                if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
                if not any(ours(var) for var in environ):
                    continue
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError):
                continue
            yield int(entry.name), command.strip()[:200]
