"""What every response passes through: the upload size limit, security headers, and the
Prometheus request metrics. Plain ASGI (no BaseHTTPMiddleware), so streaming and background
work are untouched."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Sent with every response. The web page loads nothing from elsewhere, runs no inline script
#: or style, and may not be framed.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
     b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(self), microphone=(), geolocation=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The service's Prometheus metrics, in a registry of its own per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("skinedge_http_requests", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "skinedge_http_request_seconds", "Time to answer a request.", ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.inference = Histogram(
            "skinedge_inference_seconds", "Model inference time per image.",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=self.registry)
        self.cases = Counter("skinedge_cases_created", "Cases created.", registry=self.registry)
        self.reviews = Counter("skinedge_reviews", "Reviews recorded.", ["action"],
                               registry=self.registry)
        self.erasures = Counter("skinedge_cases_erased", "Cases erased.",
                                registry=self.registry)


class Guard:
    """ASGI middleware: refuses bodies over ``max_body`` bytes with 413 before the app reads
    them, adds :data:`SECURITY_HEADERS` (and ``Cache-Control: no-store`` under ``/api``), and
    counts and times requests by route template (never by path: paths hold case ids)."""

    def __init__(self, app: Any, max_upload_mb: float, metrics: Metrics):
        self.app = app
        self.max_upload_mb = max_upload_mb
        # The image may be max_upload_mb; the multipart envelope and form fields come on top.
        self.max_body = int(max_upload_mb * 1024 * 1024) + (1 << 16)
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        no_store = scope["path"].startswith("/api/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if no_store:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                await self._too_large(send_with_headers)
                return
            if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body = await _read_capped(receive, self.max_body)
                if body is None:
                    await self._too_large(send_with_headers)
                    return
                receive = _replay(body)
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            # Labels from a fixed set: a client's invented method must not add a time series.
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(
                time.perf_counter() - start)

    async def _too_large(self, send: Any) -> None:
        body = json.dumps({"detail": f"the upload is larger than this server's limit of "
                                     f"{self.max_upload_mb:g} MB; send a smaller image"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body.encode()})


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_capped(receive: Any, limit: int) -> bytes | None:
    """The whole body of a request sent without Content-Length; None when over ``limit``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
