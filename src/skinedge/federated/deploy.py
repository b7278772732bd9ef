"""``deploy_federation``: a real SuperLink and one SuperNode process per site, on loopback.

What Flower's deployment engine runs in production, on one machine: ``flower-superlink
--insecure`` (one HTTP port for the fleet and control APIs), ``flower-supernode --insecure
--node-config 'site="NAME"'`` per site, and ``flwr run APP local`` submitting the run. The app
folder (``RUN/app/pyproject.toml``) is written by hand (``flwr new`` fetches templates from the
network): its components are :mod:`skinedge.federated.server_app` and
:mod:`skinedge.federated.client_app`; the run config names ``RUN/federation.json``. Every
process gets :data:`~skinedge.federated.env.FLOWER_ENV` (no dependency installs, no
telemetry) and its own ``FLWR_HOME`` under the run folder. Logs: ``RUN/logs/*.log``.

Insecure mode is for loopback only: across machines, give the SuperLink TLS certificates and
SuperNode authentication (Flower's "Enable TLS connections" and "Authenticate SuperNodes").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinedge.errors import ConfigError
from skinedge.federated.config import FederatedConfig
from skinedge.federated.env import FLOWER_ENV
from skinedge.federated.outputs import SUMMARY
from skinedge.federated.simulate import (
    FederatedRunError,
    RoundWatcher,
    finish_run,
    prepare_run,
)

APP_TOML = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "skinedge-federated"
version = "1.0.0"
description = "skinedge federated training (ServerApp/ClientApp live in the skinedge package)"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "skinedge"

[tool.flwr.app.components]
serverapp = "skinedge.federated.server_app:app"
clientapp = "skinedge.federated.client_app:app"

[tool.flwr.app.config]
federation = "{federation}"
"""

FLOWER_CONFIG = """\
[superlink]
default = "local"

[superlink.local]
address = "127.0.0.1:{port}"
insecure = true
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    """The processes of one deployment and where they listen."""

    out_dir: Path
    superlink_port: int
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.out_dir / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.out_dir, start_new_session=True)
        self.processes[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.poll() is not None]

    def stop(self) -> None:
        """Terminate every process (SIGTERM, then SIGKILL after 10 s)."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tool(name: str) -> str:
    """A Flower console script of this environment (beside this Python)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise ConfigError(f"{name} is not installed; pip install 'skinedge[federated]'")
    return found


def write_app(out_dir: Path, federation: Path) -> Path:
    """``RUN/app/pyproject.toml``: the Flower app ``flwr run`` builds and submits."""
    app = out_dir / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(APP_TOML.format(federation=federation.resolve()))
    return app


def start_deployment(cfg: FederatedConfig, out_dir: Path, federation: Path, *,
                     superlink_port: int | None = None,
                     site_addresses: dict[str, str] | None = None) -> Deployment:
    """Start the SuperLink and one SuperNode per site (not yet the run).

    Args:
        site_addresses: site name -> ``host:port`` the site's SuperNode dials instead of the
            SuperLink's own port (a proxy in between, as the wire test uses).
    """
    port = superlink_port or free_port()
    home = out_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(FLOWER_CONFIG.format(port=port))
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("SKINEDGE_FEDERATION", None)  # the run config names it
    deployment = Deployment(out_dir, port, env)
    deployment.start("superlink", [_tool("flower-superlink"), "--insecure", "--host",
                                   "127.0.0.1", "--port", str(port),
                                   "--disable-runtime-dependency-installation",
                                   "--database", str(out_dir / "logs" / "superlink.db")])
    _wait_for_port(port, deployment, "superlink")
    for spec in cfg.sites:
        address = (site_addresses or {}).get(spec.name, f"127.0.0.1:{port}")
        deployment.start(f"supernode-{spec.name}", [
            _tool("flower-supernode"), "--insecure", "--superlink", address,
            "--port", str(free_port()), "--node-config", f'site="{spec.name}"'])
    return deployment


def _wait_for_port(port: int, deployment: Deployment, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if deployment.dead():
            break
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    deployment.stop()
    raise FederatedRunError(f"the {name} did not start listening on 127.0.0.1:{port}; see "
                            f"{deployment.out_dir / 'logs' / (name + '.log')}")


def submit_run(deployment: Deployment, app: Path, federation: Path) -> None:
    """``flwr run APP local --run-config federation=...`` against the SuperLink."""
    result = subprocess.run(
        [_tool("flwr"), "run", str(app), "local", "--run-config",
         f'federation="{federation.resolve()}"'],
        env=deployment.env, cwd=deployment.out_dir, capture_output=True, text=True, timeout=120)
    (deployment.out_dir / "logs" / "flwr-run.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise FederatedRunError(f"flwr run failed ({result.returncode}): "
                                f"{(result.stderr or result.stdout).strip()[-800:]}")


def deploy_federation(cfg: FederatedConfig, out_dir: Path | str, *, resume: bool = False,
                      registry: Path | None = None, timeout: float = 3600,
                      progress: Callable[[dict[str, Any]], None] | None = None,
                      site_addresses: dict[str, str] | None = None,
                      superlink_port: int | None = None) -> dict[str, Any]:
    """Run the federation as separate processes on loopback; the run's summary.

    Raises:
        ConfigError: see :func:`skinedge.federated.simulate.prepare_run`.
        FederatedRunError: a process died, ``flwr run`` failed, or no summary after ``timeout``
            seconds (the processes are stopped either way; logs in ``RUN/logs``).
    """
    out_dir = Path(out_dir).resolve()
    federation = prepare_run(cfg, out_dir, resume=resume)
    app = write_app(out_dir, federation)
    deployment = start_deployment(cfg, out_dir, federation, superlink_port=superlink_port,
                                  site_addresses=site_addresses)
    watcher = RoundWatcher(out_dir, progress)
    try:
        submit_run(deployment, app, federation)
        watcher.start()
        deadline = time.monotonic() + timeout
        while not (out_dir / SUMMARY).is_file():
            if deployment.dead():
                raise FederatedRunError(f"{', '.join(deployment.dead())} stopped before the run "
                                        f"finished; see {out_dir / 'logs'}")
            if time.monotonic() > deadline:
                raise FederatedRunError(f"no {SUMMARY} after {timeout:.0f} s; see "
                                        f"{out_dir / 'logs'}")
            time.sleep(1)
    finally:
        watcher.stop.set()
        deployment.stop()
        watcher.poll()
    return finish_run(out_dir, registry)
