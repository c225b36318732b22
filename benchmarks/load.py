"""A closed-loop HTTP load generator: N workers, each sending one request at a time.

Every worker holds one keep-alive connection, sends a request, waits for the
response, records the latency and sends the next one, until the deadline.
Throughput counts successful (2xx) responses only; anything else — a non-2xx
status, a timeout, a dropped connection — is an error, counted by kind and
reported, never hidden.

The client is a minimal HTTP/1.1 implementation on asyncio streams rather than
`httpx.AsyncClient`: on this 2-core machine httpx tops out at ~700 requests/s
on one connection and drops to ~340/s with 16 concurrent connections against a
hello-world endpoint (its pool is the known bottleneck, encode/httpx#3215), so it
would have measured itself, and every ratio would have come out near 1.0. This
client needs a fraction of that CPU. `client_cpu` in the results says how busy
the load generator was; near 100% of a core, a rate may be client-bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Call:
    """One request to send: method, path (with query) and an optional JSON body."""

    method: str
    path: str
    json: Any = None


# Builds the request for the n-th call of a phase (n counts across all workers).
CallFactory = Callable[[int], Call]


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int  # responses received or failed, all kinds
    ok: int  # 2xx responses
    errors: int  # everything else
    error_kinds: dict[str, int]  # "HTTP 503", "ReadTimeout", ...
    elapsed: float  # seconds, wall clock
    throughput: float  # ok responses per second
    p50_ms: float  # of ok responses
    p99_ms: float  # of ok responses
    mean_ms: float  # of ok responses
    client_cpu: float  # load generator CPU seconds / wall seconds (1.0 = one core busy)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "elapsed_s": round(self.elapsed, 3),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "mean_ms": round(self.mean_ms, 2),
            "client_cpu": round(self.client_cpu, 2),
        }


@dataclass(slots=True)
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class HttpError(Exception):
    """The connection failed or the server's answer was not HTTP/1.1 we understand."""


class Target:
    """Where to send requests, and the headers every request carries."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError("the load generator speaks plain http:// only")
        self.host, self.port = parts.hostname, parts.port or 80
        self._common = "".join(
            f"{name}: {value}\r\n"
            for name, value in {"Host": f"{self.host}:{self.port}", **headers}.items()
        )

    def encode(self, call: Call) -> bytes:
        """The request's bytes on the wire."""
        head = f"{call.method} {call.path} HTTP/1.1\r\n{self._common}"
        if call.json is None:
            return (head + "\r\n").encode("latin-1")
        body = jsonlib.dumps(call.json).encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode("latin-1") + body


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send a request; returns (status, body)."""
        async with asyncio.timeout(self._timeout):
            return await self._exchange(raw)

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, chunked, close = _parse_head(head)
            if chunked:
                body = await _read_chunked(reader)
            else:
                body = await reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise HttpError(type(exc).__name__) from exc
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """(status, content length, chunked, connection close) from a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError("malformed status line")
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            close = value == "close"
    return int(parts[1]), length, chunked, close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readline()  # the blank line after the last chunk (no trailers)
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def run_load(
    target: Target,
    make_call: CallFactory,
    *,
    concurrency: int,
    duration: float,
    timeout: float = 30.0,
) -> LoadResult:
    """Keep `concurrency` requests in flight against `target` for `duration` seconds."""
    connections = [Connection(target.host, target.port, timeout) for _ in range(concurrency)]
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + duration
    cpu_started = time.process_time()

    async def worker(connection: Connection) -> None:
        while time.perf_counter() < deadline:
            raw = target.encode(make_call(tally.issued))
            tally.issued += 1
            sent = time.perf_counter()
            try:
                status, _body = await connection.request(raw)
            except (HttpError, TimeoutError) as exc:
                tally.errors[str(exc) or type(exc).__name__] += 1
                continue
            latency = time.perf_counter() - sent
            if 200 <= status < 300:
                tally.latencies.append(latency)
            else:
                tally.errors[f"HTTP {status}"] += 1

    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        for connection in connections:
            await connection.close()
    latencies = sorted(tally.latencies)
    ok = len(latencies)
    errors = sum(tally.errors.values())
    return LoadResult(
        requests=ok + errors,
        ok=ok,
        errors=errors,
        error_kinds=dict(tally.errors),
        elapsed=elapsed,
        throughput=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_ms=(sum(latencies) / ok * 1000) if ok else math.nan,
        client_cpu=cpu / elapsed if elapsed > 0 else 0.0,
    )
