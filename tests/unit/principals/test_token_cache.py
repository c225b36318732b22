"""The per-worker token cache: what it spares (the control database), what it never
skips (the secret, the expiry), and how long a change made elsewhere takes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event

from bastion.errors import Unauthenticated
from bastion.principals.tokens import TokenCache, TokenService
from bastion.state import State
from tests.conftest import FrozenClock

TTL = timedelta(seconds=2)


def _other_worker(state: State, clock: FrozenClock) -> TokenService:
    """A second worker's token service on the same control database."""
    return TokenService(
        state.control,
        clock,
        known_roles=state.policy.roles,
        known_regions=state.regions.names,
        cache_ttl=TTL,
    )


def _control_statements(state: State) -> list[str]:
    seen: list[str] = []

    def record(_c: object, _cur: object, statement: str, *_: object) -> None:
        seen.append(statement)

    event.listen(state.control.engine, "before_cursor_execute", record)
    return seen


def test_a_checked_token_is_not_looked_up_again_within_the_ttl(
    state: State, clock: FrozenClock
) -> None:
    issued = state.tokens.issue(principal_name="alice", roles=["sales_rep"], regions=["eu"])
    first = state.tokens.authenticate(issued.secret)
    statements = _control_statements(state)
    assert state.tokens.authenticate(issued.secret) == first
    assert statements == []
    clock.advance(TTL)
    assert state.tokens.authenticate(issued.secret) == first
    assert any("api_tokens" in s for s in statements)


def test_a_wrong_secret_for_a_cached_token_id_is_refused(state: State) -> None:
    issued = state.tokens.issue(principal_name="alice", roles=["sales_rep"])
    state.tokens.authenticate(issued.secret)
    prefix, token_id, secret = issued.secret.split("_", 2)
    forged = f"{prefix}_{token_id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
    with pytest.raises(Unauthenticated):
        state.tokens.authenticate(forged)
    assert state.tokens.authenticate(issued.secret).name == "alice"


def test_a_cached_token_still_expires_on_time(state: State, clock: FrozenClock) -> None:
    issued = state.tokens.issue(
        principal_name="brief", roles=["admin"], expires_in=timedelta(seconds=1)
    )
    state.tokens.authenticate(issued.secret)
    clock.advance(timedelta(seconds=1))  # within the cache's TTL, past the expiry
    with pytest.raises(Unauthenticated):
        state.tokens.authenticate(issued.secret)


def test_a_failed_authentication_is_not_remembered(state: State) -> None:
    issued = state.tokens.issue(principal_name="alice", roles=["sales_rep"])
    prefix, token_id, secret = issued.secret.split("_", 2)
    with pytest.raises(Unauthenticated):
        state.tokens.authenticate(f"{prefix}_{token_id}_{secret[::-1]}")
    statements = _control_statements(state)
    state.tokens.authenticate(issued.secret)
    assert any("api_tokens" in s for s in statements)


def test_a_revocation_in_this_worker_takes_effect_at_once(state: State) -> None:
    issued = state.tokens.issue(principal_name="alice", roles=["sales_rep"])
    state.tokens.authenticate(issued.secret)
    state.tokens.revoke(issued.token_id)
    with pytest.raises(Unauthenticated):
        state.tokens.authenticate(issued.secret)


def test_a_revocation_elsewhere_reaches_this_worker_within_the_ttl(
    state: State, clock: FrozenClock
) -> None:
    worker = _other_worker(state, clock)
    issued = state.tokens.issue(principal_name="alice", roles=["sales_rep"])
    worker.authenticate(issued.secret)
    state.tokens.revoke(issued.token_id)
    worker.authenticate(issued.secret)  # the bounded window: still accepted here
    clock.advance(TTL)
    with pytest.raises(Unauthenticated):
        worker.authenticate(issued.secret)


def test_new_roles_for_a_principal_apply_at_once_in_the_issuing_worker(
    state: State, clock: FrozenClock
) -> None:
    first = state.tokens.issue(principal_name="alice", roles=["sales_rep"], regions=["eu"])
    assert state.tokens.authenticate(first.secret).roles == {"sales_rep"}
    state.tokens.issue(principal_name="alice", roles=["support_agent"], regions=["eu"])
    assert state.tokens.authenticate(first.secret).roles == {"support_agent"}


def test_a_ttl_of_zero_checks_every_request(state: State, clock: FrozenClock) -> None:
    worker = TokenService(
        state.control,
        clock,
        known_roles=state.policy.roles,
        known_regions=state.regions.names,
        cache_ttl=timedelta(0),
    )
    issued = state.tokens.issue(principal_name="alice", roles=["sales_rep"])
    worker.authenticate(issued.secret)
    state.tokens.revoke(issued.token_id)
    with pytest.raises(Unauthenticated):
        worker.authenticate(issued.secret)


def test_a_lookup_racing_a_forget_is_not_put_back(state: State, clock: FrozenClock) -> None:
    """A worker reads the token, a revocation commits and forgets it, then the read
    would be remembered: it is not."""
    cache = TokenCache(ttl=TTL, size=10, clock=clock)
    principal = state.tokens.issue(principal_name="alice", roles=["admin"]).principal
    epoch = cache.epoch
    cache.forget("tok1")
    cache.put("tok1", b"x" * 32, None, principal, epoch=epoch)
    assert cache.get("tok1") is None
    cache.put("tok1", b"x" * 32, None, principal, epoch=cache.epoch)
    assert cache.get("tok1") is not None


def test_the_cache_holds_at_most_its_size_least_recently_used_first(
    state: State, clock: FrozenClock
) -> None:
    cache = TokenCache(ttl=TTL, size=2, clock=clock)
    principal = state.tokens.issue(principal_name="alice", roles=["admin"]).principal
    for token_id in ("a", "b"):
        cache.put(token_id, b"x" * 32, None, principal, epoch=cache.epoch)
    assert cache.get("a") is not None  # now "b" is the least recently used
    cache.put("c", b"x" * 32, None, principal, epoch=cache.epoch)
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None
    assert "held=2" in repr(cache)
    assert "x" * 8 not in repr(cache)
