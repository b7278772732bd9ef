"""Downloader tests against a throw-away HTTP server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from skinedge.data import download
from skinedge.data.download import (
    DATASETS,
    DatasetSource,
    DownloadError,
    RemoteFile,
    download_dataset,
    download_files,
)

CSV = b"image_id,lesion_id,dx\nISIC_0000001,HAM_0000001,nv\nISIC_0000002,HAM_0000002,mel\n"
FAST = {"retries": 2, "timeout": 5.0, "backoff": 0.0}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


IMAGES = {f"ISIC_000000{i}.jpg": bytes([i]) * 5000 for i in range(1, 4)}
ZIP = _zip({**IMAGES, "__MACOSX/._ISIC_0000001.jpg": b"junk"})


@dataclass
class ServerState:
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    ignore_range: bool = False
    fail_next: int = 0  # answer 503 this many times
    cut_next: bool = False  # send half the body, then hang up


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        state: ServerState = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if state.fail_next:
            state.fail_next -= 1
            self.send_error(503)
            return
        start = 0
        if range_header and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if state.cut_next:
            state.cut_next = False
            payload = payload[: len(payload) // 2]
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Serve /ham.zip and /meta.csv on a free loopback port; shut down after the test."""
    state = ServerState(files={"/ham.zip": ZIP, "/meta.csv": CSV})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    watchdog = threading.Timer(60, httpd.shutdown)  # never outlives a hung test
    watchdog.daemon = True
    watchdog.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    watchdog.cancel()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _files(server, **zip_kw) -> list[RemoteFile]:
    csv_md5 = hashlib.md5(CSV).hexdigest()
    return [
        RemoteFile(f"{server.base}/meta.csv", "HAM10000_metadata.csv", md5=csv_md5),
        RemoteFile(
            f"{server.base}/ham.zip", "part_1.zip", extract=True, extract_to="part_1", **zip_kw
        ),
    ]


def test_fresh_download_verifies_records_and_extracts(server, tmp_path):
    calls = []
    paths = download_files(_files(server), tmp_path, progress=lambda *a: calls.append(a), **FAST)

    assert paths == [tmp_path / "HAM10000_metadata.csv", tmp_path / "part_1.zip"]
    assert paths[0].read_bytes() == CSV and paths[1].read_bytes() == ZIP
    for name, data in IMAGES.items():
        assert (tmp_path / "part_1" / name).read_bytes() == data
    assert not (tmp_path / "part_1" / "__MACOSX").exists()
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.extracting"))
    sums = (tmp_path / "SHA256SUMS").read_text()
    assert f"{hashlib.sha256(ZIP).hexdigest()}  part_1.zip" in sums
    assert f"{hashlib.sha256(CSV).hexdigest()}  HAM10000_metadata.csv" in sums
    assert ("part_1.zip", len(ZIP), len(ZIP)) in calls


def test_resume_from_partial_file_uses_range(server, tmp_path):
    (tmp_path / "part_1.zip.part").write_bytes(ZIP[:1000])

    download_files(_files(server, sha256=hashlib.sha256(ZIP).hexdigest()), tmp_path, **FAST)

    assert ("/ham.zip", "bytes=1000-") in server.requests
    assert (tmp_path / "part_1.zip").read_bytes() == ZIP
    assert not (tmp_path / "part_1.zip.part").exists()


def test_dropped_connection_is_resumed(server, tmp_path):
    server.cut_next = True
    download_files(_files(server)[1:], tmp_path, **FAST)

    zip_requests = [r for path, r in server.requests if path == "/ham.zip"]
    assert zip_requests == [None, f"bytes={len(ZIP) // 2}-"]
    assert (tmp_path / "part_1.zip").read_bytes() == ZIP


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "part_1.zip.part").write_bytes(b"x" * 700)  # would corrupt the file if appended to

    download_files(_files(server)[1:], tmp_path, **FAST)

    assert (tmp_path / "part_1.zip").read_bytes() == ZIP


def test_already_complete_part_gets_416_and_is_kept(server, tmp_path):
    (tmp_path / "part_1.zip.part").write_bytes(ZIP)
    download_files(_files(server)[1:], tmp_path, **FAST)

    assert server.requests == [("/ham.zip", f"bytes={len(ZIP)}-")]
    assert (tmp_path / "part_1.zip").read_bytes() == ZIP


def test_checksum_mismatch_raises_and_leaves_no_file(server, tmp_path):
    wrong = "0" * 32
    bad = RemoteFile(f"{server.base}/meta.csv", "meta.csv", md5=wrong)

    with pytest.raises(DownloadError) as err:
        download_files([bad], tmp_path, **FAST)

    assert wrong in str(err.value) and hashlib.md5(CSV).hexdigest() in str(err.value)
    assert not (tmp_path / "meta.csv").exists() and not (tmp_path / "meta.csv.part").exists()


def test_later_corruption_is_caught_by_sha256sums(server, tmp_path):
    unpublished = RemoteFile(f"{server.base}/meta.csv", "meta.csv")  # no published checksum
    download_files([unpublished], tmp_path, **FAST)
    (tmp_path / "meta.csv").write_bytes(CSV.replace(b"mel", b"nev"))

    with pytest.raises(DownloadError, match="SHA256SUMS"):
        download_files([unpublished], tmp_path, **FAST)


def test_transient_error_is_retried_but_404_is_not(server, tmp_path):
    server.fail_next = 1
    download_files(_files(server)[:1], tmp_path, **FAST)
    assert len(server.requests) == 2

    missing = RemoteFile(f"{server.base}/gone.zip", "gone.zip")
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_files([missing], tmp_path, **FAST)
    assert len(server.requests) == 3


def test_unreachable_host_names_url_and_offline_route(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/HAM10000_images_part_1.zip"

    with pytest.raises(DownloadError) as err:
        download_files([RemoteFile(url, "x.zip")], tmp_path, retries=1, timeout=2, backoff=0)

    assert url in str(err.value)
    assert "SKINEDGE_DATA" in str(err.value) and "--data" in str(err.value)


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_zip_slip_member_is_rejected(server, tmp_path, evil):
    server.files["/evil.zip"] = _zip({"fine.jpg": b"ok", evil: b"pwned"})
    dest = tmp_path / "dest"
    remote = RemoteFile(f"{server.base}/evil.zip", "evil.zip", extract=True)

    with pytest.raises(DownloadError, match="unsafe member"):
        download_files([remote], dest, **FAST)

    assert not (tmp_path / "evil.txt").exists() and not (dest / "fine.jpg").exists()
    assert not (dest / ".evil.zip.extracted").exists()


def test_second_call_fetches_and_extracts_nothing(server, tmp_path):
    download_files(_files(server), tmp_path, **FAST)
    (tmp_path / "part_1" / "ISIC_0000001.jpg").unlink()  # re-extraction would bring it back
    server.requests.clear()

    download_files(_files(server), tmp_path, **FAST)

    assert server.requests == []
    assert not (tmp_path / "part_1" / "ISIC_0000001.jpg").exists()


def test_extraction_killed_midway_is_redone(server, tmp_path):
    download_files(_files(server), tmp_path, **FAST)
    (tmp_path / ".part_1.zip.extracted").unlink()  # as if killed before the marker was written
    (tmp_path / ".part_1.zip.extracting").mkdir()
    (tmp_path / "part_1" / "ISIC_0000002.jpg").write_bytes(b"half-written")
    server.requests.clear()

    download_files(_files(server), tmp_path, **FAST)

    assert server.requests == []
    assert (tmp_path / "part_1" / "ISIC_0000002.jpg").read_bytes() == IMAGES["ISIC_0000002.jpg"]
    assert (tmp_path / ".part_1.zip.extracted").exists()
    assert not (tmp_path / ".part_1.zip.extracting").exists()


def test_download_dataset_uses_the_registry(server, tmp_path, monkeypatch):
    tiny = DatasetSource("tiny", "test", tuple(_files(server)), "CC0", "none", "https://x.org")
    monkeypatch.setitem(download.DATASETS, "tiny", tiny)

    assert download_dataset("tiny", tmp_path / "tiny", **FAST) == tmp_path / "tiny"
    assert (tmp_path / "tiny" / "part_1" / "ISIC_0000003.jpg").exists()
    with pytest.raises(ValueError, match="ham10000"):
        download_dataset("no-such-set", tmp_path)


def test_registry_entries_are_complete_and_https():
    assert set(DATASETS) == {"ham10000", "isic2018-test", "isic2020"}
    for key, source in DATASETS.items():
        assert source.name == key and source.files
        assert source.licence.strip() and source.citation.strip()
        assert source.homepage.startswith("https://")
        names = [f.filename for f in source.files]
        assert len(names) == len(set(names))
        for remote in source.files:
            assert remote.url.startswith("https://"), remote.url
            assert remote.md5 is None or re.fullmatch(r"[0-9a-f]{32}", remote.md5)
            assert remote.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", remote.sha256)
            assert not remote.extract or remote.filename.endswith(".zip")
    ham = {f.filename for f in DATASETS["ham10000"].files}
    assert "HAM10000_metadata.csv" in ham


def test_remote_file_rejects_paths_outside_dest():
    for bad_name in ("../a.zip", "sub/a.zip", "..", "", "C:a.zip"):
        with pytest.raises(ValueError):
            RemoteFile("https://x.org/a", bad_name)
    with pytest.raises(ValueError):
        RemoteFile("https://x.org/a", "a.zip", extract=True, extract_to="../elsewhere")
