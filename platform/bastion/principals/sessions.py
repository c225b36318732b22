"""Console sessions: a bearer token exchanged for a server-side session.

A person logs in to the console with their token once; the console then holds a
session for them instead of the token, so the token never sits in a browser. The
session's secret (256 random bits, 43 base64url characters) is the cookie's value
and its only copy; the control database stores its SHA-256, which is what a lookup
uses (timing that reveals how much of a stored hash matched says nothing about a
256-bit secret), and a public handle (`ses_…`) that audit events name.

A session ends at logout, after `idle` without a request, at `created + lifetime`,
at the token's own expiry, and as soon as its token is revoked or its principal
disabled (every request re-reads both, and the principal's current roles and
regions). Opening, closing and expiring a session are events of the control
database's audit log.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select, update

from bastion.audit import AuditEvent, append
from bastion.clock import Clock
from bastion.errors import Unauthenticated
from bastion.principals.tables import api_tokens, console_sessions, principals
from bastion.principals.tokens import Principal, TokenService
from bastion.residency.databases import Database
from bastion.residency.ids import encode_base32, uuid7

_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# `last_seen_at` is written at most this often per session: a page's burst of requests
# costs one write, and an idle timeout is exact to within this much.
_TOUCH_EVERY = timedelta(seconds=30)


class SessionEnded(Unauthenticated):
    """The session is over (logged out, timed out, its token revoked): log in again."""

    slug = "session-ended"
    title = "Session ended"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id: str
    principal: Principal
    token_id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """A new session. `secret` is the only copy of the cookie's value."""

    secret: str
    session: ConsoleSession


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


class SessionService:
    def __init__(
        self,
        control: Database,
        clock: Clock,
        tokens: TokenService,
        *,
        idle: timedelta,
        lifetime: timedelta,
    ) -> None:
        self._control = control
        self._clock = clock
        self._tokens = tokens
        self.idle = idle
        self.lifetime = lifetime

    def open(self, presented_token: str, *, client_address: str | None = None) -> OpenedSession:
        """Log in with a bearer token: a new session for its principal.

        `Unauthenticated` if the token is not live. Sessions that have ended are
        removed on the way (whoever's they were).
        """
        presented = self._tokens.identify(presented_token)
        now = self._clock.now()
        expires_at = now + self.lifetime
        if presented.expires_at is not None:
            expires_at = min(expires_at, presented.expires_at)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        session = ConsoleSession(
            id=f"ses_{encode_base32(uuid7(now).int)}",
            principal=presented.principal,
            token_id=presented.token_id,
            created_at=now,
            last_seen_at=now,
            expires_at=expires_at,
        )
        with self._control.transaction(write=True) as conn:
            self._purge(conn, now)
            conn.execute(
                insert(console_sessions).values(
                    id=session.id,
                    secret_hash=_hash(secret),
                    principal_id=session.principal.id,
                    token_id=session.token_id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=expires_at,
                )
            )
            self._audit(
                conn,
                session.principal.id,
                session.id,
                session.token_id,
                "session.open",
                client_address,
            )
        return OpenedSession(secret, session)

    def resume(self, secret: str) -> ConsoleSession:
        """The live session whose cookie holds `secret`, marked as seen now.

        `Unauthenticated` for a value that is no session; `SessionEnded` (and the
        session removed) when it timed out, expired or lost its token or principal.
        """
        if _SECRET_RE.fullmatch(secret) is None:
            raise Unauthenticated("there is no console session; log in")
        now = self._clock.now()
        with self._control.transaction() as conn:
            row = conn.execute(
                select(
                    console_sessions.c.id.label("session_id"),
                    console_sessions.c.token_id,
                    # `principals` has a created_at of its own.
                    console_sessions.c.created_at.label("session_created_at"),
                    console_sessions.c.last_seen_at,
                    console_sessions.c.expires_at,
                    api_tokens.c.revoked_at,
                    api_tokens.c.expires_at.label("token_expires_at"),
                    principals,
                )
                .join(principals, principals.c.id == console_sessions.c.principal_id)
                .join(api_tokens, api_tokens.c.id == console_sessions.c.token_id)
                .where(console_sessions.c.secret_hash == _hash(secret))
            ).one_or_none()
        if row is None:
            raise Unauthenticated("there is no such console session; log in")
        session = ConsoleSession(
            id=row.session_id,
            principal=self._tokens.principal_of(row),
            token_id=row.token_id,
            created_at=row.session_created_at,
            last_seen_at=row.last_seen_at,
            expires_at=row.expires_at,
        )
        ended = self._ended(row, now)
        if ended is not None:
            with self._control.transaction(write=True) as conn:
                removed = conn.execute(
                    delete(console_sessions).where(console_sessions.c.id == session.id)
                ).rowcount
                if removed:
                    self._audit(
                        conn,
                        session.principal.id,
                        session.id,
                        session.token_id,
                        "session.expire",
                        None,
                        reason=ended[0],
                    )
            raise SessionEnded(f"your console session ended ({ended[1]}); log in again")
        if now - session.last_seen_at >= _TOUCH_EVERY:
            with self._control.transaction(write=True) as conn:
                conn.execute(
                    update(console_sessions)
                    .where(console_sessions.c.id == session.id)
                    .values(last_seen_at=now)
                )
        return session

    def close(self, secret: str, *, client_address: str | None = None) -> None:
        """Log out: the session is removed (nothing happens if it is already gone)."""
        if _SECRET_RE.fullmatch(secret) is None:
            return
        with self._control.transaction(write=True) as conn:
            row = conn.execute(
                select(console_sessions).where(console_sessions.c.secret_hash == _hash(secret))
            ).one_or_none()
            if row is None:
                return
            conn.execute(delete(console_sessions).where(console_sessions.c.id == row.id))
            self._audit(
                conn, row.principal_id, row.id, row.token_id, "session.close", client_address
            )

    def _ended(self, row: Any, now: datetime) -> tuple[str, str] | None:
        """Why the session `row` (joined with its token and principal) is over at
        `now` -- an audit reason code and words for the person -- or None while it
        is live."""
        if row.disabled:
            return "session:principal-disabled", "your principal is disabled"
        if row.revoked_at is not None:
            return "session:token-revoked", "its token was revoked"
        if row.token_expires_at is not None and row.token_expires_at <= now:
            return "session:token-expired", "its token expired"
        if row.expires_at <= now:
            return "session:lifetime", f"a session lasts at most {_hours(self.lifetime)}"
        if row.last_seen_at + self.idle <= now:
            return "session:idle", f"no request for {_minutes(self.idle)}"
        return None

    def _purge(self, conn: Connection, now: datetime) -> None:
        """Remove every session that has timed out or expired (housekeeping: a session
        that ended is already refused by `resume`)."""
        conn.execute(
            delete(console_sessions).where(
                or_(
                    console_sessions.c.expires_at <= now,
                    console_sessions.c.last_seen_at <= now - self.idle,
                )
            )
        )

    def _audit(
        self,
        conn: Connection,
        principal_id: str,
        session_id: str,
        token_id: str,
        action: str,
        client_address: str | None,
        *,
        reason: str | None = None,
    ) -> None:
        append(
            conn,
            AuditEvent.new(
                self._clock,
                actor=principal_id,
                action=action,
                entity="sessions",
                record_ids=[principal_id],
                reason=reason,
                client_address=client_address,
                details={"session": session_id, "token": token_id},
            ),
        )


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _hours(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}"
