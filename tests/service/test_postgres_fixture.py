"""The throwaway PostgreSQL server of tests/service/pg.py: starts, serves SQLAlchemy, listens on
127.0.0.1 only, keeps its files out of the repository, stops, and is reaped after a killed run.

Where no server can start (no Debian ``postgresql`` package, ...) the server tests skip, saying why.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.pg import (
    DATABASE,
    DB_USER,
    PostgresServer,
    PostgresUnavailable,
    find_postgres_bin,
    postgres_unavailable_reason,
    reap_stale_servers,
    running_postgres,
    start_postgres,
)

REPOSITORY = Path(__file__).resolve().parents[2]


def start_or_skip(base: Path) -> PostgresServer:
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        return start_postgres(base)
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_or_skip(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


def accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) of the sockets listening on port."""
    found = []
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def test_newest_binaries_are_chosen_by_version_number(tmp_path: Path) -> None:
    for version, tools in {"9.6": ("initdb", "pg_ctl"), "15": ("initdb", "pg_ctl"),
                           "16": ("initdb", "pg_ctl"), "17": ("initdb",)}.items():
        (tmp_path / version / "bin").mkdir(parents=True)
        for tool in tools:
            (tmp_path / version / "bin" / tool).write_text("")
    # 17 lacks pg_ctl; 9.6 sorts after 16 as text but not as a version.
    assert find_postgres_bin(tmp_path) == tmp_path / "16" / "bin"


def test_missing_binaries_name_the_package_to_install(tmp_path: Path) -> None:
    reason = postgres_unavailable_reason(tmp_path / "no-postgresql")
    assert reason is not None
    assert "apt-get install postgresql" in reason
    assert str(tmp_path / "no-postgresql") in reason


def test_sqlalchemy_connects_writes_and_reads_back(postgres: PostgresServer) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    assert postgres.url == f"postgresql+psycopg://{DB_USER}@127.0.0.1:{postgres.port}/{DATABASE}"
    engine = sqlalchemy.create_engine(postgres.url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("select 1")).scalar_one() == 1
            assert connection.execute(
                sqlalchemy.text("select current_database()")).scalar_one() == DATABASE
            connection.execute(sqlalchemy.text(
                "create table fixture_probe (id serial primary key, note text not null)"))
            connection.execute(sqlalchemy.text("insert into fixture_probe (note) values (:note)"),
                               [{"note": "verified"}, {"note": "corrected"}])
            connection.commit()
        with engine.connect() as connection:  # a new connection sees only what was committed
            notes = connection.execute(
                sqlalchemy.text("select note from fixture_probe order by id")).scalars().all()
        assert notes == ["verified", "corrected"]
    finally:
        engine.dispose()


def test_listens_on_loopback_only(postgres: PostgresServer) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    engine = sqlalchemy.create_engine(postgres.url)
    try:
        with engine.connect() as connection:
            listen = connection.execute(sqlalchemy.text("show listen_addresses")).scalar_one()
            server_address = connection.execute(
                sqlalchemy.text("select host(inet_server_addr())")).scalar_one()
            sockets = connection.execute(
                sqlalchemy.text("show unix_socket_directories")).scalar_one()
    finally:
        engine.dispose()
    assert listen == "127.0.0.1"
    assert server_address == "127.0.0.1"
    assert Path(sockets) == postgres.socket_dir
    assert (postgres.socket_dir / f".s.PGSQL.{postgres.port}").is_socket()
    if Path("/proc/net/tcp").exists():
        assert listening_addresses(postgres.port) == ["0100007F"]  # 127.0.0.1, no IPv6, no 0.0.0.0


def test_server_files_stay_out_of_the_repository(postgres: PostgresServer) -> None:
    assert (postgres.data_dir / "PG_VERSION").is_file()
    assert not postgres.root.resolve().is_relative_to(REPOSITORY)
    assert not postgres.log.resolve().is_relative_to(REPOSITORY)


def test_stop_ends_the_server_and_deletes_its_folder(tmp_path: Path) -> None:
    if (reason := postgres_unavailable_reason()) is not None:
        pytest.skip(reason)
    try:
        with running_postgres(tmp_path) as server:
            assert accepts_connections(server.port)
            root, port = server.root, server.port
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    assert not root.exists()
    assert not accepts_connections(port)
    server.stop()  # a second stop is harmless


def test_a_killed_runs_server_is_reaped_by_the_next_start(tmp_path: Path) -> None:
    server = start_or_skip(tmp_path)
    try:
        if server.registry_entry is None:
            pytest.skip("no private registry folder in the temporary directory")
        dead = subprocess.Popen(["true"])
        dead.wait()
        record = json.loads(server.registry_entry.read_text())
        server.registry_entry.write_text(json.dumps({**record, "owner_pid": dead.pid}))
        assert accepts_connections(server.port)
        assert server.root in reap_stale_servers()
        assert not server.root.exists()
        assert not accepts_connections(server.port)
        assert not server.registry_entry.exists()
    finally:
        server.stop()
