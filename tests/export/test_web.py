"""The ``web`` target: an offline page that classifies a photo in the browser.

The tiny checkpoint is exported to ``NAME.web`` and the page is opened in headless Chromium
(Debian's ``/usr/bin/chromium`` driven by Playwright), served on 127.0.0.1 only. On the same
pre-resized images, the browser's probabilities must match ONNX Runtime in Python within the
target's bound; the page must ask no other host for anything; a phone-sized screenshot is saved.
Without Chromium, Playwright or ONNX Runtime Web's files (``python -m skinedge.export.web``
fetches them), these tests skip and say which is missing.
"""

from __future__ import annotations

import json
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinedge.data.images import load_rgb
from skinedge.data.transforms import preprocess_image, resize_for_eval
from skinedge.export import TARGETS, export_checkpoint
from skinedge.export.web import browser_problem, run_in_browser
from skinedge.export.web.ortweb import (
    FETCH_COMMAND,
    ORT_WEB_FILES,
    OrtWebMissing,
    fetch_ort_web,
    ort_web_files,
)
from skinedge.runtimes import load_runtime


def _skip_without(precision: str = "fp32", browser: bool = True) -> None:
    if reason := TARGETS["web"].missing_backend(precision):
        pytest.skip(reason)
    if browser and (reason := browser_problem()):
        pytest.skip(reason)


@pytest.fixture(scope="module")
def web_exports(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("web-exports")
    made = {}

    def get(precision: str):
        if precision not in made:
            made[precision] = export_checkpoint(tiny_checkpoint, "web", precision=precision,
                                                out_dir=out, calibration_images=40,
                                                verify_images=14)
        return made[precision]

    return get


def sample_images(tiny_dataset) -> list[Path]:
    return sorted((tiny_dataset / "images").glob("*.jpg"))[::3]  # 24 images, all classes


def pre_resized(paths: list[Path], card) -> list[Image.Image]:
    """What the Python runtime resizes to: the page then has nothing to resample."""
    return [resize_for_eval(load_rgb(p), card.preprocess) for p in paths]


def python_probs(folder: Path, images: list[Image.Image]) -> np.ndarray:
    runtime = load_runtime(folder, threads=1)
    return runtime.predict_array(np.stack([preprocess_image(i, runtime.card.preprocess)
                                           for i in images]))


@pytest.mark.slow
def test_the_folder_is_a_self_contained_page(web_exports) -> None:
    _skip_without(browser=False)
    result = web_exports("fp32")
    folder = result.path
    assert folder.name.endswith(".web") and result.verification.status == "passed"
    names = {p.name for p in folder.iterdir()}
    assert {"index.html", "app.js", "style.css", "sw.js", "model.onnx", "model.card.json",
            *ORT_WEB_FILES} <= names
    ort_web_files(folder)  # the pinned files, byte for byte
    html = (folder / "index.html").read_text()
    assert 'capture="environment"' in html and "Not a diagnosis" in html
    assert "http://" not in html and "https://" not in html  # no CDN
    card = json.loads((folder / "model.card.json").read_text())
    assert card["artifact"]["target"] == "web" and card["classes"]
    worker = (folder / "sw.js").read_text()
    assert "__FILES__" not in worker and '"model.onnx"' in worker
    runtime = load_runtime(folder)
    assert runtime.card.artifact.target == "web"
    execution = runtime.execution()  # the bench's "execution each runtime chose" line
    assert "error" not in execution and execution["compute_ops"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_browser_matches_python_onnxruntime(precision, web_exports, tiny_dataset,
                                            tmp_path) -> None:
    _skip_without(precision)
    folder = web_exports(precision).path
    card = load_runtime(folder).card
    images = pre_resized(sample_images(tiny_dataset), card)
    expected = python_probs(folder, images)
    shot = tmp_path / f"phone-{precision}.png"
    run = run_in_browser(folder, images, screenshot=shot)
    assert run.probs.shape == expected.shape
    np.testing.assert_allclose(run.probs.sum(1), 1, atol=1e-6)
    # The same ONNX graph in ONNX Runtime Web (wasm) and in Python: kernel rounding only.
    bound = TARGETS["web"].tolerance("fp32").max_prob_diff
    assert np.abs(run.probs - expected).max() <= bound
    assert (run.probs.argmax(1) == expected.argmax(1)).all()
    assert run.latency_ms.shape == (len(images),) and (run.latency_ms > 0).all()
    assert (run.total_ms >= run.latency_ms).all()
    # Offline by construction: every request went to the loopback server that served the page.
    assert run.foreign == [] and run.console_errors == []
    assert run.requests and all(u.startswith("http://127.0.0.1:") for u in run.requests
                                if not u.startswith(("data:", "blob:")))
    assert shot.is_file() and Image.open(shot).size[0] == 360


def assert_photos_match(folder: Path, paths: list[Path]) -> None:
    """Photos as files: the page decodes and resizes them itself (Pillow's algorithm in
    app.js), and must still give the Python runtime's probabilities within the bound."""
    expected = load_runtime(folder, threads=1).predict(paths)
    run = run_in_browser(folder, paths)
    assert np.abs(run.probs - expected).max() <= TARGETS["web"].tolerance("fp32").max_prob_diff
    assert (run.probs.argmax(1) == expected.argmax(1)).all()


@pytest.mark.slow
def test_photos_resized_in_the_browser_match(web_exports, tiny_dataset) -> None:
    _skip_without()
    assert_photos_match(web_exports("fp32").path, sample_images(tiny_dataset))


@pytest.mark.slow
@pytest.mark.realdata
def test_real_dermoscopy_photos_resized_in_the_browser_match(web_exports, shared_data) -> None:
    """ISIC JPEGs (hundreds of pixels a side) downscaled to 32 px: the antialiased filter."""
    _skip_without()
    paths = sorted((shared_data / "ham10000-sample" / "images").glob("*.jpg"))[:8]
    if not paths:
        pytest.skip(f"no JPEG in {shared_data / 'ham10000-sample' / 'images'}")
    assert_photos_match(web_exports("fp32").path, paths)


@pytest.mark.slow
def test_the_page_works_offline_after_the_first_visit(web_exports, tiny_dataset) -> None:
    """The service worker caches the folder: with the network gone, a reload still classifies."""
    _skip_without()
    from playwright.sync_api import sync_playwright

    from skinedge.export.web.browser import CHROMIUM, CHROMIUM_ARGS, _data_url, serve_folder

    folder = web_exports("fp32").path
    image = _data_url(sample_images(tiny_dataset)[0])
    with serve_folder(folder) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            context = browser.new_context(service_workers="allow")
            page = context.new_page()
            page.goto(base + "index.html")
            page.evaluate("() => navigator.serviceWorker.ready")  # installed: folder cached
            page.evaluate("() => window.skinedgeReady")
            context.set_offline(True)
            page.reload()
            probs = page.evaluate("async (u) => (await window.skinedgeClassify(u)).probs", image)
        finally:
            browser.close()
    assert abs(sum(probs) - 1) < 1e-6


def test_missing_runtime_files_name_the_command_that_fetches_them(tmp_path,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("SKINEDGE_ORT_WEB", str(tmp_path / "empty"))
    reason = TARGETS["web"].missing_backend("fp32")
    assert reason is not None and FETCH_COMMAND in reason and "npm" in reason
    for name in ORT_WEB_FILES:  # present but not the pinned bytes
        (tmp_path / name).write_bytes(b"not onnxruntime-web")
    with pytest.raises(OrtWebMissing, match="sha256 differs"):
        ort_web_files(tmp_path)


def test_fetch_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path) -> None:
    """A real ``npm pack`` stand-in (a script) returning other bytes: nothing is cached."""
    package = tmp_path / "package" / "dist"
    package.mkdir(parents=True)
    for name in ORT_WEB_FILES:
        (package / name).write_text("tampered")
    tarball = tmp_path / "onnxruntime-web.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "package", arcname="package")
    npm = tmp_path / "npm"
    npm.write_text(f'#!/bin/sh\ncp {tarball} "$5/"\n')  # npm pack SPEC --silent --pack-destination DIR
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    cache = tmp_path / "cache"
    with pytest.raises(OrtWebMissing, match="not the pinned"):
        fetch_ort_web(cache, npm=str(npm))
    assert not cache.exists()


def test_the_browser_device_times_the_web_page_as_a_bench_row(web_exports, tiny_checkpoint,
                                                              tmp_path) -> None:
    from skinedge.bench.device import parse_device
    from skinedge.bench.harness import BenchSettings, run_bench
    from skinedge.bench.report import write_outputs

    _skip_without()
    web = web_exports("fp32").path
    onnx = export_checkpoint(tiny_checkpoint, "onnx", out_dir=tmp_path / "onnx",
                             verify_images=0).path
    result = run_bench([tiny_checkpoint, onnx, web], limit=8, out_dir=tmp_path / "bench",
                       settings=BenchSettings(threads=1, warmup=1, iterations=6),
                       devices=[parse_device("chromium")])
    rows = {row.label: row for row in result.rows}
    browser = rows["web-fp32 @ chromium"]
    assert browser.status == "ok" and browser.iterations == 6, browser
    assert 0 < browser.p50_ms <= browser.p95_ms and "latency only" in browser.reason
    assert browser.backend == "onnxruntime-web (wasm)" and browser.flip_rate is None
    skipped = rows["onnx-fp32 @ chromium"]
    assert skipped.status == "skipped" and "web exports only" in skipped.reason
    assert result.devices["chromium"]["runtimes"]["onnxruntime-web"]
    assert rows["web-fp32"].status == "ok"  # the same page's model in Python, beside it
    write_outputs(result, tmp_path / "bench")
    assert "web-fp32 @ chromium" in (tmp_path / "bench" / "bench.md").read_text()
