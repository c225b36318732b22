"""Outbound HTTP for webhooks, and what it refuses to reach (SSRF).

A subscription's URL is a request Bastion makes on someone's say-so, from inside the
deployment's network. So:

- only `http` and `https` URLs, without credentials or fragments, at most 2 kB;
  `https` only in production mode (or with `[webhooks] https_only`);
- the host is resolved at every attempt, and every address it resolves to must be
  public (`is_global`: not loopback, private, link-local, shared, multicast or
  reserved) or inside `[webhooks] allow_networks`; an IP literal is checked when the
  subscription is made too. The request then goes to the address that was checked
  (the `Host` header and TLS SNI carry the name, so certificates still verify), so a
  name that resolves differently a moment later (DNS rebinding) cannot redirect it;
- redirects are not followed (a 3xx is a failed attempt), environment proxies are
  not used, connect and total timeouts are bounded, and the response body is never
  read: only its status code is kept.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import httpx

from bastion.automation.settings import WebhookSettings
from bastion.errors import FieldError, ValidationFailed

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL = 2048
USER_AGENT = "Bastion-Webhooks/1"


@dataclass(frozen=True, slots=True)
class Sent:
    """What an attempt got: a status code, or an error code; how long it took."""

    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def permitted(address: Address, allowed: Sequence[Network]) -> bool:
    """Whether a delivery may connect to `address`."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in allowed):
        return True
    return address.is_global and not address.is_multicast


def check_url(url: object, settings: WebhookSettings, *, production: bool) -> str:
    """A subscription's URL, checked; `ValidationFailed` naming `url` otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise _bad(f"must be an http(s) URL of at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad("is not a valid URL") from None
    https_only = settings.https_only if settings.https_only is not None else production
    schemes = ("https",) if https_only else ("http", "https")
    if parts.scheme not in schemes:
        raise _bad(f"must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise _bad("must name a host, without user name or password")
    if parts.fragment:
        raise _bad("must not have a #fragment")
    if port == 0:
        raise _bad("must not use port 0")
    literal = _literal(parts.hostname)
    networks = settings.networks()
    if parts.hostname == "localhost" and not any(
        ipaddress.ip_address("127.0.0.1") in n for n in networks
    ):
        raise _bad("must not point at this machine")
    if literal is not None and not permitted(literal, networks):
        raise _bad("must not point at a private, loopback or reserved address")
    return url


class Sender:
    """Posts signed deliveries. Thread-safe; one connection pool per process."""

    def __init__(self, settings: WebhookSettings) -> None:
        self._settings = settings
        self._networks = settings.networks()
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _http(self) -> httpx.Client:
        """The connection pool, made on the first delivery (most processes never send)."""
        with self._lock:
            if self._client is None:
                timeout = httpx.Timeout(
                    self._settings.timeout_seconds, connect=self._settings.connect_timeout_seconds
                )
                self._client = httpx.Client(
                    timeout=timeout,
                    follow_redirects=False,
                    trust_env=False,
                    headers={"user-agent": USER_AGENT},
                )
            return self._client

    def post(self, url: str, headers: dict[str, str], body: bytes) -> Sent:
        started = time.monotonic()
        parts = urlsplit(url)
        try:
            address = self._resolve(parts)
        except _Refused as refused:
            return Sent(None, refused.code, _ms(started))
        target = _pinned(parts, address)
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        request_headers = {
            **headers,
            "content-type": "application/json",
            "host": parts.netloc.rpartition("@")[2],
        }
        try:
            with self._http().stream(
                "POST", target, content=body, headers=request_headers, extensions=extensions
            ) as response:
                return Sent(response.status_code, None, _ms(started))
        except httpx.TimeoutException:
            return Sent(None, "timeout", _ms(started))
        except httpx.HTTPError as exc:
            return Sent(None, f"transport:{type(exc).__name__.lower()}"[:64], _ms(started))

    def _resolve(self, parts: SplitResult) -> Address:
        host = parts.hostname or ""
        literal = _literal(host)
        if literal is not None:
            candidates = [literal]
        else:
            try:
                found = socket.getaddrinfo(host, parts.port, proto=socket.IPPROTO_TCP)
            except (socket.gaierror, UnicodeError):
                raise _Refused("dns-failed") from None
            candidates = [ipaddress.ip_address(str(info[4][0])) for info in found]
        # Every address must be allowed: a name that also resolves to an internal
        # address is refused whichever the client would have picked.
        if not candidates or not all(permitted(a, self._networks) for a in candidates):
            raise _Refused("address-not-allowed")
        return candidates[0]


class _Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _pinned(parts: SplitResult, address: Address) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _bad(message: str) -> ValidationFailed:
    return ValidationFailed("the webhook URL is not allowed", [FieldError("url", message)])
