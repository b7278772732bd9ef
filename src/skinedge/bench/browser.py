"""``skinedge bench --device chromium``: a web export timed in the browser that runs it.

The page of ``skinedge export --target web`` classifies with ONNX Runtime Web (WebAssembly);
a phone's browser runs the same code, so its model call timed in headless Chromium here is
the figure a web developer needs, beside the same ONNX model in Python's ONNX Runtime. The page
preprocesses photos itself (the card's resize in app.js), so it is given random photos of the
model's input size and timed per call (``session.run``); its probabilities are checked against
Python's by the export's own browser test, not here: these rows are latency only.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from skinedge.bench.device import Device
from skinedge.errors import ConfigError, MissingBackendError, ModelError


class BrowserDevice(Device):
    """Headless Chromium on this machine (Debian's ``chromium``, driven by Playwright)."""

    name = "chromium"

    def describe(self) -> dict[str, Any]:
        from skinedge.export.web import browser_problem
        from skinedge.export.web.browser import CHROMIUM
        from skinedge.export.web.ortweb import ORT_WEB_PACKAGE, ORT_WEB_VERSION
        from skinedge.utils.cpu import cpu_info

        if problem := browser_problem():
            raise ConfigError(f"--device chromium: {problem}")
        version = subprocess.run([str(CHROMIUM), "--version"], capture_output=True,
                                 text=True, timeout=60).stdout.strip()
        return {"cpu": cpu_info(), "os": platform.platform(), "python": None,
                "runtimes": {"chromium": version or None, ORT_WEB_PACKAGE: ORT_WEB_VERSION}}

    def cannot_run(self, model: Path) -> str | None:
        if (Path(model) / "index.html").is_file():
            return None
        return "the browser runs web exports only (skinedge export --target web)"

    def measure(self, model: Path, settings, *, inputs: Path | None = None,
                shape: tuple[int, ...] | None = None, probs_out: Path | None = None) -> dict:
        from PIL import Image

        from skinedge.export.web import run_in_browser

        size = shape[-1] if shape else 224
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
                  for _ in range(settings.iterations)]
        try:
            run = run_in_browser(model, images, warmup=max(settings.warmup, 1),
                                 timeout_s=settings.timeout_s)
        except (MissingBackendError, ModelError) as exc:
            return {"error": str(exc)}
        if run.foreign:
            return {"error": f"the page requested other origins: {run.foreign[:3]}"}
        latency = run.latency_ms
        return {"backend": "onnxruntime-web (wasm)", "threads": 1, "cpus": None,
                "execution": {"browser": "Chromium (headless)", "backend": "wasm",
                              "wasm_threads": 1}, "load_s": None,
                "cold_ms": None, "p50_ms": float(np.percentile(latency, 50)),
                "p95_ms": float(np.percentile(latency, 95)),
                "p99_ms": float(np.percentile(latency, 99)), "mean_ms": float(latency.mean()),
                "iterations": len(latency), "warmup": max(settings.warmup, 1),
                "peak_rss_mb": None, "model_rss_mb": None,
                "latency_only": "random photos timed in the page (session.run); the page's "
                                "parity with Python is the web export's browser test"}
