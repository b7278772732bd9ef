"""``run_in_browser``: an exported ``.web`` folder classifying images in headless Chromium.

The folder is served by ``http.server`` on 127.0.0.1 (a thread, a free port); Playwright opens
the page in the distribution's Chromium (``/usr/bin/chromium``: never ``playwright install``),
feeds each image to the page's hook ``window.skinedgeClassify`` as a data URL, and reads back
the probabilities and the page's own timings. Every request the page makes is recorded; one to
any other origin is refused, and listed in the result.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import mimetypes
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from skinedge.errors import DataError, MissingBackendError, ModelError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")
PHONE = (360, 740)


@dataclass
class BrowserRun:
    """What the page gave for each image.

    Attributes:
        probs: (N, C) class probabilities, columns in ``card.classes`` order.
        latency_ms: (N,) the model call (``session.run``) per image, after ``warmup`` calls.
        total_ms: (N,) decoding, preprocessing and the model call per image.
        requests: Every URL the page requested, in order.
        foreign: Requests to another origin (refused); empty for a page that stays offline.
        console_errors: Errors the page logged.
        screenshot: The page after the last image, when one was asked for.
    """

    probs: np.ndarray
    latency_ms: np.ndarray
    total_ms: np.ndarray
    requests: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def browser_problem(chromium: Path = CHROMIUM) -> str | None:
    """Why :func:`run_in_browser` cannot run here (None: it can)."""
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed: pip install playwright (it drives the system Chromium)"
    if not Path(chromium).exists():
        return f"no Chromium at {chromium}: install the distribution's chromium package"
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".mjs": "text/javascript",
                      ".js": "text/javascript", ".onnx": "application/octet-stream"}

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _data_url(image: Image.Image | str | Path) -> str:
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        data, mime = buffer.getvalue(), "image/png"
    else:
        path = Path(image)
        if not path.is_file():
            raise DataError(f"{path}: no such image")
        data, mime = path.read_bytes(), mimetypes.guess_type(path.name)[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def run_in_browser(folder: Path | str, images: Sequence[Image.Image | str | Path], *,
                   warmup: int = 1, screenshot: Path | str | None = None,
                   viewport: tuple[int, int] = PHONE, chromium: Path = CHROMIUM,
                   timeout_s: float = 120) -> BrowserRun:
    """Classify ``images`` with the exported page ``folder`` (``NAME.web``) in headless Chromium.

    Args:
        folder: A folder written by ``skinedge export --target web``.
        images: Image files or PIL images; sent to the page as they are (the page preprocesses).
        warmup: Model calls on the first image before timing (the first call is slower).
        screenshot: Where to save a PNG of the page after the last image (phone ``viewport``).
        viewport: Width and height of the page, in CSS pixels.

    Returns:
        :class:`BrowserRun`: probabilities (N, C), per-image latencies, the page's requests.

    Raises:
        MissingBackendError: no Playwright or no Chromium here (the message says which).
        ModelError: not an exported web folder, or the page could not load its model.
    """
    folder = Path(folder)
    if not (folder / "index.html").is_file() or not (folder / "model.card.json").is_file():
        raise ModelError(f"{folder}: not a web export (no index.html and model.card.json); export "
                         "one with `skinedge export --target web`")
    if problem := browser_problem(chromium):
        raise MissingBackendError(problem)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    urls = [_data_url(image) for image in images]
    run = BrowserRun(np.zeros((0, 0)), np.zeros(0), np.zeros(0))
    with serve_folder(folder) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=list(CHROMIUM_ARGS))
        try:
            context = browser.new_context(viewport=dict(zip(("width", "height"), viewport)),
                                          service_workers="block")
            page = context.new_page()
            page.set_default_timeout(timeout_s * 1000)

            def route(request_route) -> None:
                url = request_route.request.url
                run.requests.append(url)
                if url.startswith(base) or url.startswith("data:") or url.startswith("blob:"):
                    request_route.continue_()
                else:
                    run.foreign.append(url)
                    request_route.abort()

            context.route("**/*", route)
            page.on("console", lambda m: m.type == "error" and run.console_errors.append(m.text))
            page.on("pageerror", lambda e: run.console_errors.append(str(e)))
            page.goto(base + "index.html")
            try:
                page.evaluate("() => window.skinedgeReady")
                results = page.evaluate(
                    """async ([urls, warmup]) => {
                        for (let i = 0; i < warmup && urls.length; i++) {
                            await window.skinedgeClassify(urls[0]);
                        }
                        const out = [];
                        for (const url of urls) out.push(await window.skinedgeClassify(url));
                        return out;
                    }""", [urls, warmup])
            except PlaywrightError as exc:
                raise ModelError(f"{folder}: the page could not classify in Chromium: "
                                 f"{str(exc).splitlines()[0]} (page errors: "
                                 f"{run.console_errors[:3]})") from exc
            if screenshot is not None and results:  # as a user does: the file input
                mime, data = urls[-1][5:].split(";base64,")
                page.set_input_files("#photo", files=[{
                    "name": "photo", "mimeType": mime, "buffer": base64.b64decode(data)}])
                page.wait_for_selector("#results li")
                run.screenshot = Path(screenshot)
                page.screenshot(path=str(run.screenshot), full_page=True)
        finally:
            browser.close()
    run.probs = np.asarray([r["probs"] for r in results], dtype=np.float64).reshape(len(urls), -1)
    run.latency_ms = np.asarray([r["runMs"] for r in results], dtype=np.float64)
    run.total_ms = np.asarray([r["totalMs"] for r in results], dtype=np.float64)
    return run
