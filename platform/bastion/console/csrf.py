"""CSRF tokens: every console POST carries one, or is refused with 403.

A session's token is an HMAC of the session's secret under a key derived from the
deployment secret (so nothing more is stored, and a token is worthless for any
other session or deployment). The login form, posted before there is a session,
gets a token bound the same way to a random value in a short-lived cookie of its
own (`Path=/console/login`), so a third-party site cannot log a victim into the
attacker's session either. `SameSite=Strict` cookies already keep cross-site posts
from carrying a session; the token is the second, independent guard (an old
browser, a same-site subdomain), and a post whose `Origin` names another host is
refused outright (console pages send `Referrer-Policy: same-origin`, so the
browser names their origin on their own posts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit

from starlette.requests import Request

from bastion.errors import Forbidden

FIELD = "csrf_token"


class CsrfRefused(Forbidden):
    slug = "csrf-refused"
    title = "Form refused"


class Csrf:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def token(self, purpose: str, secret: str) -> str:
        """The token for `purpose` ("session" or "login") bound to `secret`."""
        mac = hmac.new(self._key, f"{purpose}\0{secret}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def check(self, request: Request, purpose: str, secret: str, presented: str | None) -> None:
        """Refuse (403) a post without the right token, or from another origin."""
        origin = request.headers.get("origin")
        # "null": a browser that withholds the origin (privacy settings, a referrer
        # policy); the token still has to match.
        if origin not in (None, "null") and not _same_origin(request, origin):
            raise CsrfRefused("the form was posted from another site")
        expected = self.token(purpose, secret)
        if presented is None or not hmac.compare_digest(expected.encode(), presented.encode()):
            raise CsrfRefused(
                "the form has no valid security token; reload the page and submit it again"
            )


def _same_origin(request: Request, origin: str) -> bool:
    """Whether `origin` names the host the request was sent to. Compared with the Host
    header rather than the URL's scheme: behind a TLS-terminating proxy the server
    sees http while the browser says https, and the host is what tells sites apart."""
    host = request.headers.get("host", "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()
