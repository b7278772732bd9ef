"""The ``web`` export target's page, its ONNX Runtime Web files, and a headless-browser runner.

``assets/`` holds the page (``index.html``, ``app.js``, ``style.css``, ``sw.js``) that
:mod:`skinedge.export.targets.web` copies into every ``NAME.web`` folder;
:mod:`~skinedge.export.web.ortweb` pins and caches ONNX Runtime Web (``python -m
skinedge.export.web`` fetches it once); :func:`run_in_browser` classifies images with an
exported folder in headless Chromium, for parity checks and in-browser latency.
"""

from typing import Any

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "run_in_browser": "browser", "BrowserRun": "browser", "browser_problem": "browser",
    "fetch_ort_web": "ortweb", "ort_web_files": "ortweb", "ort_web_problem": "ortweb",
    "ort_web_cache": "ortweb", "ORT_WEB_VERSION": "ortweb",
}

__all__ = sorted(_EXPORTS)

_lazy = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    return _lazy(name)
