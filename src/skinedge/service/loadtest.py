"""A bounded load client for the clinician service, and the check that what it was told is kept.

``run_load(plan)`` runs ``plan.clients`` concurrent clients against a running service for
``plan.seconds``: each posts a real image to ``POST /api/v1/cases`` and then reviews the case
(``verify`` and ``correct`` in turn), and records every request's latency, every answer that was
not a 2xx (by status, or by the transport error), and every acknowledged case and review.
``check_acknowledged(url, tokens, cases)`` then reads each acknowledged case back (after a crash
and a restart, say): its status and review as acknowledged, its stored image decodable.

>>> plan = LoadPlan(url="http://127.0.0.1:8000", tokens=[token], images=[jpeg_bytes], seconds=10)
>>> result = run_load(plan)
>>> result.cases_per_s, result.percentile("upload", 0.95), result.error_count
>>> check_acknowledged(plan.url, plan.tokens, result.cases).problems

The client is asyncio with one ``httpx.AsyncClient`` (one connection) per simulated clinician;
httpx comes with ``pip install 'skinedge[test]'``. It never retries a request that reached the
server: a failed request is counted, and the client goes on with the next case.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from skinedge.errors import ConfigError
from skinedge.utils.backends import require

#: Request kinds the client sends; latencies and errors are kept per kind.
KINDS = ("upload", "review")
#: How many error messages a result keeps (the counts are complete; these are examples).
MAX_ERROR_EXAMPLES = 20


@dataclass(frozen=True)
class LoadPlan:
    """What to send, to whom, for how long.

    Attributes:
        url: The service's base URL (``http://127.0.0.1:PORT``).
        tokens: Bearer tokens; client ``i`` uses ``tokens[i % len(tokens)]``.
        images: Image files' contents (JPEG, PNG, ...); client ``i`` posts image
            ``(i + n * clients) % len(images)`` as its ``n``-th case, so clients differ.
        clients: Concurrent clients (each one request at a time).
        seconds: No case starts after this many seconds; one begun before finishes (its
            upload and its review).
        review: Review every acknowledged case (verify, then correct, in turn per client).
        timeout_s: Per request; a slower answer counts as a ``ReadTimeout`` error.
        retry_pause_s: Pause after a transport error (the server is down) before the next case.
    """

    url: str
    tokens: Sequence[str]
    images: Sequence[bytes]
    clients: int = 32
    seconds: float = 60.0
    review: bool = True
    timeout_s: float = 60.0
    retry_pause_s: float = 0.2

    def check(self) -> None:
        """Raises ConfigError for a plan that cannot run (no tokens, no images, ...)."""
        if not self.tokens:
            raise ConfigError("the load plan has no token: add an account with "
                              "`skinedge users add NAME` and give its token")
        if not self.images:
            raise ConfigError("the load plan has no image: give the contents of real image "
                              "files (e.g. ham10000-sample/images/*.jpg)")
        if self.clients < 1 or self.seconds <= 0 or self.timeout_s <= 0:
            raise ConfigError(f"the load plan needs clients >= 1, seconds > 0 and timeout_s > 0, "
                              f"not {self.clients}, {self.seconds}, {self.timeout_s}")


@dataclass
class CaseRecord:
    """An acknowledged case (201) and the review sent for it, if any.

    ``review_acknowledged`` False with a ``review_action``: the review was sent but no 2xx came
    back (it may or may not have been stored).
    """

    case_id: str
    token_index: int
    prediction: str
    width: int
    height: int
    acknowledged_at: float  # seconds since the load started
    review_action: str | None = None
    review_label: str | None = None
    review_acknowledged: bool = False

    def expected_statuses(self) -> set[str]:
        """The statuses a correct server may show for this case now."""
        reviewed = {"verify": "verified", "correct": "corrected"}.get(self.review_action or "")
        if reviewed is None:
            return {"unreviewed"}
        return {reviewed} if self.review_acknowledged else {"unreviewed", reviewed}


@dataclass
class LoadResult:
    """What a load run saw. Latencies are in milliseconds, per request kind (2xx answers only)."""

    clients: int
    seconds: float  # the plan's
    elapsed_s: float  # from the first request to the last answer
    cases: list[CaseRecord] = field(default_factory=list)
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: Counter = field(default_factory=Counter)  # "upload 503", "review ConnectError"
    error_examples: list[str] = field(default_factory=list)

    @property
    def cases_per_s(self) -> float:
        return len(self.cases) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def reviews_acknowledged(self) -> int:
        return sum(case.review_acknowledged for case in self.cases)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def http_errors(self) -> Counter:
        """Errors that were answers (a status), not transport failures."""
        return Counter({k: v for k, v in self.errors.items() if k.split()[-1].isdigit()})

    def percentile(self, kind: str, q: float) -> float | None:
        """The ``q`` quantile (0-1, nearest rank) of ``kind``'s latencies; None without any."""
        values = sorted(self.latencies_ms[kind])
        if not values:
            return None
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

    def summary(self) -> dict[str, Any]:
        """Plain numbers for a report (JSON-ready)."""
        return {
            "clients": self.clients, "seconds": self.seconds, "elapsed_s": self.elapsed_s,
            "cases": len(self.cases), "reviews": self.reviews_acknowledged,
            "cases_per_s": self.cases_per_s,
            "latency_ms": {kind: {f"p{round(q * 100)}": self.percentile(kind, q)
                                  for q in (0.5, 0.95, 0.99)} for kind in KINDS},
            "errors": dict(self.errors), "error_examples": self.error_examples,
        }


def run_load(plan: LoadPlan) -> LoadResult:
    """Run ``plan`` to its deadline and return what was seen (blocks; see :class:`LoadPlan`)."""
    plan.check()
    return asyncio.run(_run(plan))


async def _run(plan: LoadPlan) -> LoadResult:
    result = LoadResult(clients=plan.clients, seconds=plan.seconds, elapsed_s=0.0)
    start = time.monotonic()
    await asyncio.gather(*(_client(plan, i, start, result) for i in range(plan.clients)))
    result.elapsed_s = time.monotonic() - start
    return result


async def _client(plan: LoadPlan, index: int, start: float, result: LoadResult) -> None:
    httpx = require("httpx", "test")
    token_index = index % len(plan.tokens)
    headers = {"Authorization": f"Bearer {plan.tokens[token_index]}"}
    deadline = start + plan.seconds
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=plan.url, headers=headers, limits=limits,
                                 timeout=plan.timeout_s) as client:
        n = 0
        while time.monotonic() < deadline:
            image = plan.images[(index + n * plan.clients) % len(plan.images)]
            fields = {"patient_ref": f"load-{index}-{n}", "body_site": "back"}
            status, answer = await _send(client, result, "upload", "POST", "/api/v1/cases",
                                         files={"image": ("lesion.jpg", image, "image/jpeg")},
                                         data=fields)
            n += 1
            if answer is None:
                if status is None:  # the server is down: do not spin
                    await asyncio.sleep(plan.retry_pause_s)
                continue
            case = CaseRecord(answer["id"], token_index, answer["prediction"],
                              answer["image"]["width"], answer["image"]["height"],
                              time.monotonic() - start)
            result.cases.append(case)
            if plan.review:
                codes = [p["code"] for p in answer["probabilities"]]
                if n % 2:
                    case.review_action, case.review_label = "verify", case.prediction
                    body = {"action": "verify"}
                else:
                    case.review_action = "correct"
                    case.review_label = next(c for c in codes if c != case.prediction)
                    body = {"action": "correct", "label": case.review_label,
                            "note": "load test: corrected"}
                status, reviewed = await _send(client, result, "review", "POST",
                                               f"/api/v1/cases/{case.case_id}/review",
                                               json=body)
                case.review_acknowledged = reviewed is not None
                if status is None:
                    await asyncio.sleep(plan.retry_pause_s)


async def _send(client: Any, result: LoadResult, kind: str, method: str, path: str,
                **request: Any) -> tuple[int | None, dict | None]:
    """One request: ``(status, JSON answer)`` when 2xx; ``(status, None)`` for another status
    and ``(None, None)`` for a transport error, each counted in ``result.errors``."""
    import httpx

    began = time.perf_counter()
    try:
        response = await client.request(method, path, **request)
    except httpx.HTTPError as exc:
        _count(result, f"{kind} {type(exc).__name__}", str(exc)[:200])
        return None, None
    elapsed_ms = (time.perf_counter() - began) * 1000
    if not 200 <= response.status_code < 300:
        _count(result, f"{kind} {response.status_code}", response.text[:200])
        return response.status_code, None
    result.latencies_ms[kind].append(elapsed_ms)
    return response.status_code, response.json()


def _count(result: LoadResult, key: str, detail: str) -> None:
    result.errors[key] += 1
    if len(result.error_examples) < MAX_ERROR_EXAMPLES:
        result.error_examples.append(f"{key}: {detail}")


@dataclass
class CheckReport:
    """What :func:`check_acknowledged` found; ``problems`` empty when everything was there."""

    cases: int = 0  # acknowledged cases asked for
    cases_found: int = 0  # answered 200 with an expected status
    reviews: int = 0  # acknowledged reviews among them
    reviews_found: int = 0  # shown with the acknowledged action and label
    images_decoded: int = 0  # GET /image decoded to an image of the case's size
    problems: list[str] = field(default_factory=list)


def check_acknowledged(url: str, tokens: Sequence[str], cases: Sequence[CaseRecord], *,
                       concurrency: int = 8, timeout_s: float = 60.0) -> CheckReport:
    """Read back every acknowledged case with its owner's token: ``GET /api/v1/cases/{id}``
    must answer its acknowledged review (or, for a review that was sent but not acknowledged,
    either that review or none), and ``GET /api/v1/cases/{id}/image`` must decode to an image
    of the case's size."""
    return asyncio.run(_check(url, tokens, cases, concurrency, timeout_s))


async def _check(url: str, tokens: Sequence[str], cases: Sequence[CaseRecord],
                 concurrency: int, timeout_s: float) -> CheckReport:
    httpx = require("httpx", "test")
    report = CheckReport(cases=len(cases), reviews=sum(c.review_acknowledged for c in cases))
    queue: asyncio.Queue[CaseRecord] = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
            while not queue.empty():
                case = queue.get_nowait()
                headers = {"Authorization": f"Bearer {tokens[case.token_index]}"}
                try:
                    await _check_case(client, headers, case, report)
                except httpx.HTTPError as exc:
                    report.problems.append(f"{case.case_id}: {type(exc).__name__} {exc}")

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return report


async def _check_case(client: Any, headers: dict, case: CaseRecord, report: CheckReport) -> None:
    from PIL import Image

    response = await client.get(f"/api/v1/cases/{case.case_id}", headers=headers)
    if response.status_code != 200:
        report.problems.append(f"{case.case_id}: GET answered {response.status_code} "
                               f"{response.text[:200]}")
        return
    shown = response.json()
    if shown["status"] not in case.expected_statuses():
        report.problems.append(f"{case.case_id}: status {shown['status']!r}, expected one of "
                               f"{sorted(case.expected_statuses())}")
    else:
        report.cases_found += 1
        if case.review_acknowledged:
            review = shown.get("review") or {}
            if (review.get("action"), review.get("label")) == (case.review_action,
                                                               case.review_label):
                report.reviews_found += 1
            else:
                report.problems.append(f"{case.case_id}: review {review!r}, acknowledged "
                                       f"{case.review_action} {case.review_label}")
    image = await client.get(f"/api/v1/cases/{case.case_id}/image", headers=headers)
    if image.status_code != 200:
        report.problems.append(f"{case.case_id}: GET image answered {image.status_code}")
        return
    try:
        with Image.open(io.BytesIO(image.content)) as picture:
            picture.load()
            size = picture.size
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        report.problems.append(f"{case.case_id}: the stored image does not decode: {exc}")
        return
    if size != (case.width, case.height):
        report.problems.append(f"{case.case_id}: the stored image is {size}, the case says "
                               f"{(case.width, case.height)}")
    else:
        report.images_decoded += 1
