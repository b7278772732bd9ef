"""The service under load, and after a SIGKILL mid-load: a real ``skinedge serve`` process on
127.0.0.1 (the tiny ONNX model), 32 concurrent clients posting real ISIC images and reviews
(:mod:`skinedge.service.loadtest`). The 60 s run with a real-size model, against the bare
runtime, is ``scripts/service_bench.py`` (docs/RESULTS.md)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.service.conftest import start_live_server, stop

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

CLIENTS = 32


@pytest.fixture
def real_images(shared_data) -> list[bytes]:
    folder = shared_data / "ham10000-sample" / "images"
    files = sorted(folder.glob("*.jpg"))[:64]
    if not files:
        pytest.skip(f"no ISIC images in {folder}")
    return [f.read_bytes() for f in files]


@pytest.fixture
def server(served_onnx, tmp_path, monkeypatch):
    """A live server of its own (it is killed), with a rate limit 32 clients stay under."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    monkeypatch.setenv("SKINEDGE_RATE_LIMIT_PER_MINUTE", "1000000")
    live = start_live_server(tmp_path, served_onnx, None)
    yield live
    stop(live)


def integrity(served_onnx, data_dir) -> tuple[str, list[str]]:
    from skinedge.service.app import open_store
    from skinedge.service.settings import ServeSettings

    store = open_store(ServeSettings(model=served_onnx, data_dir=data_dir))
    try:
        return store.integrity_check(), store.check_files()
    finally:
        store.close()


def test_32_clients_then_sigkill_mid_load_loses_nothing_acknowledged(server, real_images,
                                                                    served_onnx):
    from skinedge.service.loadtest import LoadPlan, check_acknowledged, run_load

    tokens = [server.token, server.other_token]
    plan = LoadPlan(url=server.url, tokens=tokens, images=real_images, clients=CLIENTS,
                    seconds=8, timeout_s=30)
    steady = run_load(plan)
    assert steady.error_count == 0, (steady.errors, steady.error_examples)
    assert len(steady.cases) > CLIENTS, "every client should have had more than one case"
    assert steady.reviews_acknowledged > 0
    assert {c.review_action for c in steady.cases} == {"verify", "correct"}
    assert len(steady.latencies_ms["upload"]) == len(steady.cases)
    assert steady.percentile("upload", 0.95) >= steady.percentile("upload", 0.5) > 0

    # SIGKILL the whole server (its process group) while the clients run, then start it again
    # on the same data folder; the clients carry on against the new process.
    killed_at: dict[str, float] = {}

    def kill_and_restart() -> None:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        killed_at["returncode"] = server.process.returncode
        server.restart()

    killer = threading.Timer(3.0, kill_and_restart)
    killer.start()
    try:
        crashed = run_load(LoadPlan(url=server.url, tokens=tokens, images=real_images,
                                    clients=CLIENTS, seconds=12, timeout_s=30))
    finally:
        killer.join()
    assert killed_at["returncode"] == -signal.SIGKILL
    assert server.process.poll() is None  # the restarted server
    # While it was down the clients saw transport errors only: no answer was a 5xx.
    assert crashed.http_errors == {}, crashed.error_examples
    assert crashed.error_count > 0, "the kill should have cut some requests"
    before = [c for c in crashed.cases if c.acknowledged_at < 3.0]
    after = [c for c in crashed.cases if c.acknowledged_at > 3.5]
    assert before and after, "cases acknowledged before the kill and after the restart"

    everything = steady.cases + crashed.cases
    report = check_acknowledged(server.url, tokens, everything)
    assert report.problems == []
    assert report.cases == report.cases_found == report.images_decoded == len(everything)
    assert report.reviews == report.reviews_found == (steady.reviews_acknowledged
                                                      + crashed.reviews_acknowledged)
    stop(server)
    assert integrity(served_onnx, server.data_dir) == ("ok", [])
