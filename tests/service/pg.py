"""A throwaway PostgreSQL server for the feedback store's tests.

``start_postgres(base)`` runs ``initdb`` and ``pg_ctl`` from the Debian ``postgresql`` package
(``/usr/lib/postgresql/<newest>/bin``) on a fresh data folder, listening on 127.0.0.1 only, on a
free port, with its unix socket in a private folder, trust authentication for loopback only and a
database ``skinedge_test``. It returns a ``PostgresServer`` whose ``url`` SQLAlchemy takes
(``postgresql+psycopg://skinedge@127.0.0.1:PORT/skinedge_test``) and whose ``stop()`` shuts the
server down (``pg_ctl stop -m immediate``) and deletes its folder.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user (the
Debian package creates it) or else as a ``skinedge-pg`` system user made with ``useradd``. That
user must reach the data folder; pytest's temporary folders are private to root (0700), so the
server then lives in a fresh folder of the system's temporary directory instead of under ``base``.
Either way nothing is written inside the repository.

A test run that was killed cannot stop its server; each server is recorded in a per-user registry
in the temporary directory, and the next ``start_postgres`` stops and deletes the servers whose
test process is gone.

``postgres_unavailable_reason()`` says why no server can start here (None when one can); a
fixture skips with it::

    reason = postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        server = start_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield server.url
    server.stop()
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: Where the Debian package puts one ``bin`` folder per major version.
PG_ROOT = Path("/usr/lib/postgresql")
DATABASE = "skinedge_test"
#: The superuser that ``initdb`` creates (the role in the URL).
DB_USER = "skinedge"
#: As root: the system user that runs the server, in order of preference.
SYSTEM_USERS = ("postgres", "skinedge-pg")
START_TIMEOUT_S = 30
INSTALL_HINT = "install it with `apt-get install postgresql` (.ci/run does)"

_PORT_ATTEMPTS = 3


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can start here; the message says why and what to do."""


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", folder.name)) or (-1,)


def find_postgres_bin(pg_root: Path = PG_ROOT) -> Path | None:
    """The newest ``<pg_root>/<version>/bin`` that holds ``initdb`` and ``pg_ctl``, else None.

    Versions compare as numbers (16 is newer than 9.6).
    """
    if not pg_root.is_dir():
        return None
    candidates = [
        folder / "bin" for folder in pg_root.iterdir()
        if (folder / "bin" / "initdb").is_file() and (folder / "bin" / "pg_ctl").is_file()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda bin_dir: _version_key(bin_dir.parent))


def _system_user() -> str | None:
    """As root: the first of SYSTEM_USERS that exists; None when none does."""
    for name in SYSTEM_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


def postgres_unavailable_reason(pg_root: Path = PG_ROOT) -> str | None:
    """Why no PostgreSQL test server can start here, or None when one can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return f"the PostgreSQL test server needs Linux (Debian's postgresql package); this is {os.name}"
    if find_postgres_bin(pg_root) is None:
        return (f"no PostgreSQL server binaries (initdb, pg_ctl) under {pg_root}/*/bin; "
                f"{INSTALL_HINT}")
    if os.geteuid() != 0:
        return None  # initdb and the server run as the current user
    if shutil.which("runuser") is None and shutil.which("su") is None:
        return ("running as root, and PostgreSQL refuses to: neither `runuser` nor `su` is here "
                "to run it as another user; run the tests as a normal user")
    if _system_user() is None and shutil.which("useradd") is None:
        return (f"running as root, and PostgreSQL refuses to: no {SYSTEM_USERS[0]!r} system user "
                f"({INSTALL_HINT} creates it) and no `useradd` to create {SYSTEM_USERS[1]!r}")
    return None


@dataclass
class PostgresServer:
    """A running test server. ``url`` for SQLAlchemy; ``stop()`` ends it and deletes ``root``."""

    root: Path
    port: int
    bin_dir: Path
    run_as: str | None
    registry_entry: Path | None = None
    stopped: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sockets"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl stop -m immediate``) and delete its folder. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        _stop_server(self.bin_dir, self.data_dir, self.run_as)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.registry_entry is not None:
            self.registry_entry.unlink(missing_ok=True)


def start_postgres(base: Path) -> PostgresServer:
    """Start a fresh PostgreSQL server (see the module docstring) and create ``skinedge_test``.

    Args:
        base: A folder for the server's files (data, socket, log); created if missing. As root,
            when the server's user cannot reach it, a fresh folder in the temporary directory.

    Raises:
        PostgresUnavailable: No server can start here, or it did not start (with its log's end).
    """
    reason = postgres_unavailable_reason()
    bin_dir = find_postgres_bin()
    if reason is not None or bin_dir is None:
        raise PostgresUnavailable(reason or f"no PostgreSQL server binaries; {INSTALL_HINT}")
    reap_stale_servers()
    run_as = _ensure_system_user() if os.geteuid() == 0 else None
    root = _fresh_root(Path(base), run_as)
    server = PostgresServer(root=root, port=0, bin_dir=bin_dir, run_as=run_as)
    try:
        server.socket_dir.mkdir()
        _give_to(server.socket_dir, run_as)
        _run(server, [bin_dir / "initdb", "-D", server.data_dir, "-U", DB_USER, "--auth=trust",
                      "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], "initdb")
        _configure(server)
        _start(server)
        server.registry_entry = _register(server)
        atexit.register(server.stop)
        _run(server, [bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(server.port),
                      "-U", DB_USER, DATABASE], "createdb")
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_postgres(base: Path) -> Iterator[PostgresServer]:
    """``start_postgres(base)`` for a ``with`` block; stops the server on leaving it."""
    server = start_postgres(base)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Users, folders, commands


def _ensure_system_user() -> str:
    name = _system_user()
    if name is not None:
        return name
    name = SYSTEM_USERS[1]
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"running as root, and PostgreSQL refuses to: could not create the system user "
            f"{name!r} with useradd ({result.stderr.strip()}); {INSTALL_HINT} to get 'postgres'")
    return name


def _as_user(command: list[str | Path], run_as: str | None) -> list[str]:
    argv = [str(part) for part in command]
    if run_as is None:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", run_as, "--", *argv]
    return ["su", "-s", "/bin/sh", "-c", shlex.join(argv), run_as]


def _give_to(path: Path, run_as: str | None) -> None:
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _fresh_root(base: Path, run_as: str | None) -> Path:
    """A new empty folder, owned by the server's user, that this user can reach."""
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="postgres-", dir=base))
    _give_to(root, run_as)
    if run_as is None or _reachable(root, run_as):
        return root
    root.rmdir()
    root = Path(tempfile.mkdtemp(prefix="skinedge-postgres-"))
    _give_to(root, run_as)
    if not _reachable(root, run_as):
        root.rmdir()
        raise PostgresUnavailable(
            f"the system user {run_as!r} cannot write to {base} nor to {root.parent}: PostgreSQL's "
            f"data folder must be reachable by the user that runs the server")
    return root


def _reachable(folder: Path, run_as: str) -> bool:
    probe = subprocess.run(_as_user(["test", "-w", folder, "-a", "-x", folder], run_as),
                           capture_output=True, check=False, cwd="/")
    return probe.returncode == 0


def _run(server: PostgresServer, command: list[str | Path], what: str,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(_as_user(command, server.run_as), capture_output=True, text=True,
                                check=False, cwd=server.root, timeout=START_TIMEOUT_S + 15)
    except subprocess.TimeoutExpired as exc:
        raise PostgresUnavailable(f"{what} did not finish in {exc.timeout:.0f} s "
                                  f"(log: {_log_tail(server)})") from exc
    if check and result.returncode != 0:
        raise PostgresUnavailable(
            f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()}"
            f"{' | server log: ' + _log_tail(server) if server.log.exists() else ''}")
    return result


def _log_tail(server: PostgresServer, lines: int = 8) -> str:
    try:
        text = server.log.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return " / ".join(text.strip().splitlines()[-lines:]) or "(empty server log)"


# ---------------------------------------------------------------------------------------------
# Configuration, start, stop


def _configure(server: PostgresServer) -> None:
    """Loopback-only trust in pg_hba.conf; the port and socket settings in an included file."""
    (server.data_dir / "pg_hba.conf").write_text(
        "# Written by tests/service/pg.py: a throwaway test server.\n"
        "# TYPE  DATABASE  USER  ADDRESS        METHOD\n"
        "local   all       all                  trust\n"
        "host    all       all   127.0.0.1/32   trust\n")
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\ninclude_if_exists = 'skinedge_test.conf'\n")


def _write_settings(server: PostgresServer) -> None:
    socket_dir = str(server.socket_dir).replace("'", "''")
    settings = server.data_dir / "skinedge_test.conf"
    settings.write_text(
        "listen_addresses = '127.0.0.1'\n"
        f"port = {server.port}\n"
        f"unix_socket_directories = '{socket_dir}'\n"
        "max_connections = 50\n"
        "shared_buffers = 16MB\n"
        # A test server: durability buys nothing and costs time.
        "fsync = off\n"
        "synchronous_commit = off\n"
        "full_page_writes = off\n")
    _give_to(settings, server.run_as)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(server: PostgresServer) -> None:
    """``pg_ctl start -w -t 30`` on a free port; another port if that one was taken meanwhile."""
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        server.port = free_port()
        _write_settings(server)
        result = _run(server, [server.bin_dir / "pg_ctl", "start", "-D", server.data_dir,
                               "-l", server.log, "-w", "-t", str(START_TIMEOUT_S), "-s"],
                      "pg_ctl start", check=False)
        if result.returncode == 0:
            return
        log = _log_tail(server)
        _stop_server(server.bin_dir, server.data_dir, server.run_as)
        if "could not bind" not in log or attempt == _PORT_ATTEMPTS:
            raise PostgresUnavailable(
                f"PostgreSQL ({server.bin_dir}) did not start within {START_TIMEOUT_S} s on "
                f"127.0.0.1:{server.port} (pg_ctl exit {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}); server log: {log}")


def _stop_server(bin_dir: Path, data_dir: Path, run_as: str | None) -> None:
    """Stop the server of ``data_dir`` if one runs: ``pg_ctl stop -m immediate``, else SIGKILL."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        subprocess.run(_as_user([bin_dir / "pg_ctl", "stop", "-D", data_dir, "-m", "immediate",
                                 "-w", "-t", str(START_TIMEOUT_S), "-s"], run_as),
                       capture_output=True, check=False, cwd="/", timeout=START_TIMEOUT_S + 15)
    except subprocess.TimeoutExpired:
        pass
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


# ---------------------------------------------------------------------------------------------
# Registry of running servers, for the ones a killed test run left behind


def _registry() -> Path | None:
    """A folder private to this user in the temporary directory; None if it is not ours."""
    folder = Path(tempfile.gettempdir()) / f"skinedge-postgres-servers-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or not folder.is_dir() or folder.is_symlink():
        return None
    return folder


def _register(server: PostgresServer) -> Path | None:
    folder = _registry()
    if folder is None:
        return None
    entry = folder / f"{server.root.name}-{server.port}.json"
    entry.write_text(json.dumps({
        "owner_pid": os.getpid(), "root": str(server.root), "bin_dir": str(server.bin_dir),
        "run_as": server.run_as, "port": server.port}))
    return entry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_servers() -> list[Path]:
    """Stop and delete the registered servers whose test process has died; their folders."""
    folder = _registry()
    if folder is None:
        return []
    reaped = []
    for entry in sorted(folder.glob("*.json")):
        try:
            record = json.loads(entry.read_text())
            owner, root = int(record["owner_pid"]), Path(record["root"])
            bin_dir, run_as = Path(record["bin_dir"]), record["run_as"]
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)
            continue
        if _alive(owner):
            continue
        if not root.name.startswith(("postgres-", "skinedge-postgres-")):
            entry.unlink(missing_ok=True)  # not a folder start_postgres made: leave it alone
            continue
        _stop_server(bin_dir, root / "data", run_as)
        shutil.rmtree(root, ignore_errors=True)
        entry.unlink(missing_ok=True)
        reaped.append(root)
    return reaped
