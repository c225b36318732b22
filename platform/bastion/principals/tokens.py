"""API tokens: issued once, stored as a hash, checked in constant time, revocable.

A token reads `bst_<id>_<secret>`. The id (16 base32 characters) is public and is
what the database lookup uses; the secret is 256 random bits (43 base64url
characters) of which only the SHA-256 is stored. The hash comparison uses
`hmac.compare_digest`, so response timing does not reveal how much of a guessed
secret matched.

Each worker remembers the tokens it checked in the control database for
`token_cache_seconds` (`TokenCache`): a request then costs no control-database
transaction. The presented secret is still compared with the stored hash every
time, and the token's expiry is still checked against the clock; what may be up to
that long out of date in *other* workers is a revocation, and a principal's roles,
regions or teams replaced by a new issue (the worker that makes the change forgets
the token at once). The same bound as a policy change (`policy_poll_seconds`).
A failed authentication is never remembered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, insert, select, update

from bastion.audit import AuditEvent, append
from bastion.clock import Clock
from bastion.errors import Conflict, NotFound, Unauthenticated, ValidationFailed
from bastion.principals.tables import api_tokens, principals
from bastion.residency.databases import Database
from bastion.residency.ids import encode_base32, uuid7

_TOKEN_RE = re.compile(r"bst_([0-9a-hjkmnp-tv-z]{16})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
_TEAM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_BAD_TOKEN = "the bearer token is invalid, expired or revoked"  # noqa: S105


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a person or a service, with roles and permitted regions."""

    id: str
    name: str
    roles: frozenset[str]
    regions: tuple[str, ...]
    teams: tuple[str, ...]

    @property
    def default_region(self) -> str:
        return self.regions[0]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A newly created token. `secret` is the only copy of the full token."""

    token_id: str
    secret: str
    principal: Principal
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Presented:
    """A live token as presented: whose it is, its public id, when it expires."""

    principal: Principal
    token_id: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: str
    principal_name: str
    roles: tuple[str, ...]
    regions: tuple[str, ...]
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _parse(presented: str) -> tuple[str, bytes]:
    """A presented token's id and the hash of its secret; `Unauthenticated` if it is
    not shaped like a token."""
    match = _TOKEN_RE.fullmatch(presented)
    if match is None:
        raise Unauthenticated(_BAD_TOKEN)
    token_id, secret = match.groups()
    return token_id, _hash(secret)


@dataclass(frozen=True, slots=True)
class _Checked:
    """A token as the control database showed it, valid then."""

    secret_hash: bytes
    expires_at: datetime | None
    principal: Principal
    recheck_at: datetime  # after this, the database is asked again


class TokenCache:
    """Tokens checked in the control database, by token id: at most `size`, each for
    at most `ttl` after it was read (a hit never extends that), least recently used
    going first. `ttl` 0 keeps nothing. Thread-safe; holds hashes, never secrets.

    A lookup that began before a `forget` cannot put back what it read (`epoch`): a
    request racing a revocation in this worker is not remembered past it."""

    def __init__(self, *, ttl: timedelta, size: int, clock: Clock) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._enabled = ttl > timedelta(0) and size > 0
        self._entries: OrderedDict[str, _Checked] = OrderedDict()
        self._lock = threading.Lock()
        self._forgotten = 0  # how many forgets so far: the epoch

    def __repr__(self) -> str:
        return f"TokenCache(ttl={self._ttl}, size={self._size}, held={len(self._entries)})"

    def get(self, token_id: str) -> _Checked | None:
        if not self._enabled:
            return None
        with self._lock:
            entry = self._entries.get(token_id)
            if entry is None:
                return None
            if entry.recheck_at <= self._clock.now():
                del self._entries[token_id]
                return None
            self._entries.move_to_end(token_id)
            return entry

    @property
    def epoch(self) -> int:
        """Taken before reading the database, handed back to `put`."""
        return self._forgotten

    def put(
        self,
        token_id: str,
        secret_hash: bytes,
        expires_at: datetime | None,
        principal: Principal,
        *,
        epoch: int,
    ) -> None:
        if not self._enabled:
            return
        entry = _Checked(secret_hash, expires_at, principal, self._clock.now() + self._ttl)
        with self._lock:
            if epoch != self._forgotten:
                return  # something was forgotten while this was read: maybe this
            self._entries[token_id] = entry
            self._entries.move_to_end(token_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def forget(self, token_id: str) -> None:
        with self._lock:
            self._forgotten += 1
            self._entries.pop(token_id, None)

    def forget_principal(self, principal_id: str) -> None:
        with self._lock:
            self._forgotten += 1
            for token_id in [t for t, e in self._entries.items() if e.principal.id == principal_id]:
                del self._entries[token_id]


class TokenService:
    """Issues, lists, revokes and authenticates tokens against the control database."""

    def __init__(
        self,
        control: Database,
        clock: Clock,
        *,
        known_roles: frozenset[str],
        known_regions: Sequence[str],
        cache_ttl: timedelta = timedelta(0),
        cache_size: int = 10_000,
    ) -> None:
        self._control = control
        self._clock = clock
        self._known_roles = known_roles
        self._known_regions = tuple(known_regions)
        self._cache = TokenCache(ttl=cache_ttl, size=cache_size, clock=clock)

    def issue(
        self,
        *,
        principal_name: str,
        roles: Sequence[str] = (),
        regions: Sequence[str] = (),
        teams: Sequence[str] = (),
        description: str = "",
        expires_in: timedelta | None = None,
        actor: str = "cli",
    ) -> IssuedToken:
        """Create a token for the principal named `principal_name`.

        A new principal is created with `roles` (at least one), `regions` (default:
        every configured region) and `teams`. For an existing principal, roles,
        regions and teams given here replace the stored ones. The issue is recorded
        in the control database's audit log, in the same transaction, as `actor`.
        """
        self._check_principal(principal_name, roles, regions, teams, description)
        now = self._clock.now()
        token_id = encode_base32(int.from_bytes(secrets.token_bytes(10), "big"))[-16:]
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        expires_at = now + expires_in if expires_in is not None else None
        with self._control.transaction(write=True) as conn:
            principal = self._upsert_principal(conn, principal_name, roles, regions, teams, now)
            conn.execute(
                insert(api_tokens).values(
                    id=token_id,
                    principal_id=principal.id,
                    secret_hash=_hash(secret),
                    description=description,
                    created_at=now,
                    expires_at=expires_at,
                    revoked_at=None,
                )
            )
            append(
                conn,
                AuditEvent.new(
                    self._clock,
                    actor=actor,
                    action="token.create",
                    entity="tokens",
                    record_ids=[principal.id],
                    details={
                        "token": token_id,
                        "roles": ",".join(sorted(principal.roles)),
                        "regions": ",".join(principal.regions),
                        "expires": expires_at is not None,
                    },
                ),
            )
        # Its other tokens now stand for the replaced roles, regions and teams.
        self._cache.forget_principal(principal.id)
        return IssuedToken(
            token_id=token_id,
            secret=f"bst_{token_id}_{secret}",
            principal=principal,
            expires_at=expires_at,
        )

    def authenticate(self, presented: str) -> Principal:
        """The principal a bearer token belongs to; `Unauthenticated` if none. A token
        checked in the control database less than the cache's time to live ago is not
        looked up again (see the module's docstring); its secret and expiry are."""
        token_id, presented_hash = _parse(presented)
        cached = self._from_cache(token_id, presented_hash)
        if cached is not None:
            return cached
        epoch = self._cache.epoch
        found = self._identified(token_id, presented_hash)
        self._cache.put(token_id, presented_hash, found.expires_at, found.principal, epoch=epoch)
        return found.principal

    def identify(self, presented: str) -> Presented:
        """The principal a bearer token belongs to, and which token it is (the console
        ties a session to it); `Unauthenticated` if the token is not a live one. Always
        from the control database, never the cache: a login, not every request."""
        return self._identified(*_parse(presented))

    def _identified(self, token_id: str, presented_hash: bytes) -> Presented:
        with self._control.transaction() as conn:
            row = conn.execute(
                select(
                    api_tokens.c.secret_hash,
                    api_tokens.c.expires_at,
                    api_tokens.c.revoked_at,
                    principals,
                )
                .join(principals, principals.c.id == api_tokens.c.principal_id)
                .where(api_tokens.c.id == token_id)
            ).one_or_none()
        # Compare even when the id is unknown, so both paths cost the same.
        expected = row.secret_hash if row is not None else b"\0" * 32
        matches = hmac.compare_digest(expected, presented_hash)
        if row is None or not matches or row.revoked_at is not None or row.disabled:
            raise Unauthenticated(_BAD_TOKEN)
        self._check_expiry(row.expires_at)
        return Presented(self.principal_of(row), token_id, row.expires_at)

    def authenticate_cached(self, presented: str) -> Principal | None:
        """`authenticate` if the cache can answer without the database (no I/O: safe
        on the event loop), else None. `Unauthenticated` as `authenticate`."""
        return self._from_cache(*_parse(presented))

    def _from_cache(self, token_id: str, presented_hash: bytes) -> Principal | None:
        cached = self._cache.get(token_id)
        if cached is None:
            return None
        if not hmac.compare_digest(cached.secret_hash, presented_hash):
            raise Unauthenticated(_BAD_TOKEN)
        self._check_expiry(cached.expires_at)
        return cached.principal

    def _check_expiry(self, expires_at: datetime | None) -> None:
        if expires_at is not None and expires_at <= self._clock.now():
            raise Unauthenticated(_BAD_TOKEN)

    def principal(self, name: str) -> Principal:
        """The principal called `name` (for CLI commands that act as a person);
        `NotFound` if there is none, `Unauthenticated` if it is disabled."""
        with self._control.transaction() as conn:
            row = conn.execute(select(principals).where(principals.c.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"no principal is called {name!r}")
        if row.disabled:
            raise Unauthenticated(f"principal {name!r} is disabled")
        return self.principal_of(row)

    def principal_by_id(self, principal_id: str) -> Principal | None:
        """The enabled principal with this id, as it is now (roles, regions and teams
        may have changed since it did something); None if there is none or it is
        disabled. Webhooks render payloads through their owner's current rights."""
        with self._control.transaction() as conn:
            row = conn.execute(
                select(principals).where(principals.c.id == principal_id)
            ).one_or_none()
        return None if row is None or row.disabled else self.principal_of(row)

    def team_members(self, team: str, region: str) -> list[str]:
        """Ids of the enabled principals of `team` that may work in `region`, in id
        order (the pool a round-robin assignment takes turns over)."""
        with self._control.transaction() as conn:
            rows = conn.execute(
                select(principals.c.id, principals.c.teams, principals.c.regions)
                .where(principals.c.disabled.is_(False))
                .order_by(principals.c.id)
            ).all()
        return [str(r.id) for r in rows if team in (r.teams or []) and region in (r.regions or [])]

    def principal_of(self, row: Any) -> Principal:
        """A `principals` row as a `Principal`, keeping only regions still configured."""
        return Principal(
            id=row.id,
            name=row.name,
            roles=frozenset(row.roles),
            regions=tuple(r for r in row.regions if r in self._known_regions),
            teams=tuple(row.teams),
        )

    def list(self) -> list[TokenInfo]:
        with self._control.transaction() as conn:
            rows = conn.execute(
                select(api_tokens, principals.c.name, principals.c.roles, principals.c.regions)
                .join(principals, principals.c.id == api_tokens.c.principal_id)
                .order_by(api_tokens.c.created_at, api_tokens.c.id)
            ).all()
        return [
            TokenInfo(
                token_id=r.id,
                principal_name=r.name,
                roles=tuple(r.roles),
                regions=tuple(r.regions),
                description=r.description,
                created_at=r.created_at,
                expires_at=r.expires_at,
                revoked_at=r.revoked_at,
            )
            for r in rows
        ]

    def revoke(self, token_id: str, *, actor: str = "cli") -> None:
        """Revoke a token by id (audited as `actor`). Raises `NotFound`, or `Conflict`
        if it is already revoked."""
        with self._control.transaction(write=True) as conn:
            current = conn.execute(
                select(api_tokens.c.revoked_at, api_tokens.c.principal_id).where(
                    api_tokens.c.id == token_id
                )
            ).one_or_none()
            if current is None:
                raise NotFound("no token with that id")
            if current.revoked_at is not None:
                raise Conflict("the token is already revoked")
            conn.execute(
                update(api_tokens)
                .where(api_tokens.c.id == token_id)
                .values(revoked_at=self._clock.now())
            )
            append(
                conn,
                AuditEvent.new(
                    self._clock,
                    actor=actor,
                    action="token.revoke",
                    entity="tokens",
                    record_ids=[current.principal_id],
                    details={"token": token_id},
                ),
            )
        # After the commit: a lookup racing it may have read the row before it.
        self._cache.forget(token_id)

    def _check_principal(
        self,
        name: str,
        roles: Sequence[str],
        regions: Sequence[str],
        teams: Sequence[str],
        description: str,
    ) -> None:
        problems: list[str] = []
        if _NAME_RE.fullmatch(name) is None:
            problems.append("the principal name must be 1-100 letters, digits or . _ @ -")
        unknown_roles = sorted(set(roles) - self._known_roles)
        if unknown_roles:
            problems.append(
                f"unknown role(s) {', '.join(unknown_roles)}; the policy defines: "
                f"{', '.join(sorted(self._known_roles))}"
            )
        unknown_regions = sorted(set(regions) - set(self._known_regions))
        if unknown_regions:
            problems.append(f"unknown region(s) {', '.join(unknown_regions)}")
        if any(_TEAM_RE.fullmatch(t) is None for t in teams):
            problems.append("team ids are lower-case letters, digits and dashes")
        if len(description) > 200:
            problems.append("the description must be at most 200 characters")
        if problems:
            raise ValidationFailed("; ".join(problems))

    def _upsert_principal(
        self,
        conn: Connection,
        name: str,
        roles: Sequence[str],
        regions: Sequence[str],
        teams: Sequence[str],
        now: datetime,
    ) -> Principal:
        row = conn.execute(select(principals).where(principals.c.name == name)).one_or_none()
        if row is None:
            if not roles:
                raise ValidationFailed(f"principal {name!r} is new: give at least one role")
            principal = Principal(
                id=f"prn_{encode_base32(uuid7(now).int)}",
                name=name,
                roles=frozenset(roles),
                regions=tuple(dict.fromkeys(regions or self._known_regions)),
                teams=tuple(dict.fromkeys(teams)),
            )
            conn.execute(
                insert(principals).values(
                    id=principal.id,
                    name=name,
                    roles=sorted(principal.roles),
                    regions=list(principal.regions),
                    teams=list(principal.teams),
                    disabled=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            return principal
        changes: dict[str, object] = {}
        if roles:
            changes["roles"] = sorted(set(roles))
        if regions:
            changes["regions"] = list(dict.fromkeys(regions))
        if teams:
            changes["teams"] = list(dict.fromkeys(teams))
        if changes:
            conn.execute(
                update(principals)
                .where(principals.c.id == row.id)
                .values(**changes, updated_at=now)
            )
        return Principal(
            id=row.id,
            name=row.name,
            roles=frozenset(cast("list[str]", changes.get("roles", row.roles))),
            regions=tuple(cast("list[str]", changes.get("regions", row.regions))),
            teams=tuple(cast("list[str]", changes.get("teams", row.teams))),
        )
