"""Who is asking: a bearer token per clinician (only its sha256 is stored), two roles, and a
rate limit per token."""

from __future__ import annotations

import threading
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from skinedge.service.store import Actor

_bearer = HTTPBearer(auto_error=False, description="A token from `skinedge users add NAME`.")


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests, refilled evenly. Per process: with
    ``--workers N`` each worker keeps its own buckets."""

    #: Buckets kept before the full ones (idle long enough to refill) are forgotten.
    MAX_BUCKETS = 10_000

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[object, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: object) -> float:
        """0 when allowed now; else seconds until the next request would be."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > self.MAX_BUCKETS:
                self._forget_full(now)
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [key for key, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.capacity]
        for key in full:
            del self._buckets[key]


def client_address(request: Request) -> str | None:
    """The client's address: the connection's, or behind a trusted reverse proxy the one
    uvicorn took from X-Forwarded-For (``forwarded_allow_ips``; the header is never read here,
    so a client cannot write its own)."""
    return request.client.host[:64] if request.client else None


def current_actor(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    """The signed-in user; 401 without a valid token, 429 over the rate limit."""
    address = client_address(request)
    limiter: RateLimiter = request.app.state.limiter
    if credentials is None or not credentials.credentials:
        _throttle(limiter, ("address", address))
        raise HTTPException(401, "sign in: send `Authorization: Bearer <token>` with a token "
                                 "from `skinedge users add NAME`",
                            headers={"WWW-Authenticate": "Bearer"})
    actor = request.app.state.store.actor_for_token(credentials.credentials, address)
    if actor is None:
        _throttle(limiter, ("address", address))  # slows down token guessing
        raise HTTPException(401, "this token is unknown or revoked; ask an admin for a new "
                                 "one (`skinedge users rotate-token NAME`)",
                            headers={"WWW-Authenticate": "Bearer"})
    _throttle(limiter, ("user", actor.id))
    request.state.actor = actor.name
    return actor


def _throttle(limiter: RateLimiter, key: object) -> None:
    wait = limiter.allow(key)
    if wait:
        raise HTTPException(429, f"too many requests; try again in {wait:.0f} s",
                            headers={"Retry-After": str(max(1, round(wait)))})


def admin_actor(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
    if actor.role != "admin":
        raise HTTPException(403, "this needs the admin role")
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]
AdminActor = Annotated[Actor, Depends(admin_actor)]
