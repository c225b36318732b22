"""Request rate limits per bearer token: token buckets in each worker process.

Every request takes one token from its caller's bucket: the bucket of the bearer
token it presents (hashed: the secret is never kept), or of its client address
when it presents none. A bucket holds up to `burst` tokens and refills at
`requests_per_second`; an empty one answers 429 problem+json with `Retry-After`
(whole seconds until a token is back), before authentication, the database or the
policy are touched — so a flood with a wrong token costs one hash and a dict
lookup. `/healthz` and `/readyz` are exempt (load balancers probe them).

Guessing tokens is limited apart: every 401 takes a token from its client
address's failure bucket (`failed_auth_per_minute`, that many at once); while the
bucket is empty, every request from that address is 429 -- whatever token it
presents, since a guess cannot be told from a valid token before the lookup. A
fresh random token per request thus gets no fresh allowance.

The buckets are per worker process: with N uvicorn workers a token's effective
ceiling is N times the configured rate (a shared store would cost every request a
round trip). At most `max_tracked` buckets are kept; the least recently used one
is dropped first, which can only make a limit more lenient, never block someone
who was not flooding.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.api.problems import problem
from bastion.errors import BastionError

EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


class LimitSettings(BaseModel):
    """The `[limits]` table of bastion.toml and `BASTION_LIMITS_*` variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Sustained requests per second per token (per worker); 0 turns limiting off.
    requests_per_second: float = Field(default=100.0, ge=0, le=1_000_000)
    # Requests a token may make at once before the sustained rate applies.
    burst: int = Field(default=200, ge=1, le=1_000_000)
    # Failed authentications per client address per minute (and at once); 0: no limit.
    failed_auth_per_minute: int = Field(default=60, ge=0, le=1_000_000)
    max_tracked: int = Field(default=100_000, ge=100, le=10_000_000)


class TooManyRequests(BastionError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the rate limit for this token is exceeded; retry in {retry_after} s")
        self.retry_after = retry_after


class TokenBuckets:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_tracked: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max = max_tracked
        self._clock = clock
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # tokens, at

    def wait(self, key: bytes) -> float:
        """Seconds until `key` has a token (0.0: it has one now); takes nothing."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def take(self, key: bytes) -> float:
        """Take one token for `key`: 0.0 if there was one, else seconds until there is."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        waited = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            waited = (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return waited


class RateLimit:
    """ASGI middleware applying `TokenBuckets` per bearer token (or client address),
    and per client address to failed authentications."""

    def __init__(self, app: ASGIApp, *, settings: LimitSettings) -> None:
        self.app = app
        self._buckets = (
            TokenBuckets(
                settings.requests_per_second, settings.burst, max_tracked=settings.max_tracked
            )
            if settings.requests_per_second > 0
            else None
        )
        failures = settings.failed_auth_per_minute
        self._failures = (
            TokenBuckets(failures / 60, failures, max_tracked=settings.max_tracked)
            if failures > 0
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        address = _address_key(scope)
        failures = self._failures
        wait = failures.wait(address) if failures is not None else 0.0
        if not wait and self._buckets is not None:
            wait = self._buckets.take(_caller_key(scope, address))
        if wait > 0:
            request_id = scope.get("state", {}).get("request_id")
            response = problem(TooManyRequests(max(1, math.ceil(wait))), request_id)
            await response(scope, receive, send)
            return
        if failures is None:
            await self.app(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                failures.take(address)
            await send(message)

        await self.app(scope, receive, counting)


def _address_key(scope: Scope) -> bytes:
    client = scope.get("client")
    return b"a" + (client[0] if client else "").encode()


def _caller_key(scope: Scope, address: bytes) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return b"t" + hashlib.sha256(value).digest()[:16]
    return address
