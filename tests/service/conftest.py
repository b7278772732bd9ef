"""Service fixtures: the tiny checkpoint exported to ONNX, an app under TestClient with three
accounts, a real uvicorn process on loopback, and a real PostgreSQL server (skips without one)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")


@pytest.fixture(scope="session")
def served_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint exported to ONNX FP32 (with its report): what the service serves."""
    pytest.importorskip("onnxruntime")
    from skinedge.export import export_checkpoint

    out = tmp_path_factory.mktemp("served")
    return export_checkpoint(tiny_checkpoint, "onnx", out_dir=out, verify_images=4).path


@dataclass
class Accounts:
    token: str  # clinician dr-a
    other_token: str  # clinician dr-b
    admin_token: str  # admin

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


def add_accounts(settings) -> Accounts:
    from skinedge.service.app import open_store

    store = open_store(settings)
    try:
        return Accounts(store.add_user("dr-a"), store.add_user("dr-b"),
                        store.add_user("admin-1", "admin"))
    finally:
        store.close()


@pytest.fixture
def make_settings(served_onnx, tiny_checkpoint, tmp_path):
    """``make_settings(**overrides)`` -> ServeSettings on a fresh data folder."""
    from skinedge.service.settings import ServeSettings

    def make(**overrides):
        values = {"model": served_onnx, "explain": tiny_checkpoint,
                  "data_dir": tmp_path / "service", "rate_limit_per_minute": 10_000}
        return ServeSettings(**{**values, **overrides})

    return make


@dataclass
class Api:
    client: object  # fastapi.testclient.TestClient, inside its lifespan
    accounts: Accounts
    settings: object

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def api(make_settings):
    """A TestClient over ``create_app`` (lifespan run), accounts dr-a, dr-b and admin-1."""
    from fastapi.testclient import TestClient

    from skinedge.service import create_app

    settings = make_settings()
    accounts = add_accounts(settings)
    with TestClient(create_app(settings)) as client:
        yield Api(client, accounts, settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    token: str
    other_token: str
    admin_token: str
    data_dir: Path
    log: Path
    process: subprocess.Popen
    command: list[str]
    env: dict[str, str]

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def restart(self) -> None:
        """Start the same server again (after a kill), on the same port and data folder."""
        self.process = _spawn(self.command, self.log, self.url, self.env)


def _spawn(command: list[str], log: Path, url: str, env: dict[str, str]) -> subprocess.Popen:
    import httpx

    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n"
                               f"{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the server did not get ready in 120 s:\n{log.read_text()[-3000:]}")


def start_live_server(root: Path, model: Path, explain: Path | None, *,
                      extra: list[str] = (), env: dict | None = None) -> LiveServer:
    from skinedge.service.settings import ServeSettings

    data_dir = root / "service"
    port = free_port()
    accounts = add_accounts(ServeSettings(model=model, data_dir=data_dir))
    command = [sys.executable, "-m", "skinedge.cli.main", "serve", "--model", str(model),
               "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port),
               *(["--explain", str(explain)] if explain else []), *extra]
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    env = {**os.environ, **(env or {})}
    process = _spawn(command, log, url, env)
    return LiveServer(url, accounts.token, accounts.other_token, accounts.admin_token,
                      data_dir, log, process, command, env)


def stop(server: LiveServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture(scope="module")
def live_server(served_onnx, tiny_checkpoint, tmp_path_factory):
    """A real ``skinedge serve`` process on 127.0.0.1 (tiny ONNX model, Grad-CAM from the tiny
    checkpoint), with accounts dr-a (token), dr-b (other_token) and admin-1 (admin_token)."""
    pytest.importorskip("uvicorn")
    server = start_live_server(tmp_path_factory.mktemp("live"), served_onnx, tiny_checkpoint)
    yield server
    stop(server)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server on loopback for this test session; skips with the reason when
    one cannot start here (``.ci/run`` installs Debian's ``postgresql``)."""
    from tests.service.pg import PostgresUnavailable, postgres_unavailable_reason, start_postgres

    reason = postgres_unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL: {reason}")
    try:
        server = start_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL: {exc}")
    yield server.url
    server.stop()
