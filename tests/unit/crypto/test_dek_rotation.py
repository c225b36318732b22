"""DEK rotation across processes: an old version is retired only once nobody seals under it.

Two keyrings over one database stand for two processes: each has its own data key
cache, and both read the clock the test moves by hand.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from bastion.crypto.envelope import FieldContext, key_id_of, reseal
from bastion.crypto.errors import KeyDestroyed, KeyInUse
from bastion.crypto.keyring import Keyring
from bastion.state import State
from tests.conftest import FrozenClock
from tests.unit.crypto.conftest import KeyringFactory

ANNA = "con_eu_01m86dzpzyehmvcb1s3m40n3bk"
TTL = timedelta(minutes=5)
MARGIN = timedelta(minutes=1)  # in-flight transactions; the keyrings below are made with it


def ctx(field: str) -> FieldContext:
    return FieldContext("eu", "contacts", ANNA, field)


def _reseal_all(keyring: Keyring, state: State, blobs: dict[str, bytes]) -> None:
    """The caller's re-scan: re-seal every value of the subject under its current key."""
    with state.regions.get("eu").transaction(write=True) as conn:
        current = keyring.dek_for_subject(conn, "eu", ANNA)
        for field, blob in blobs.items():
            old = keyring.dek_by_id(conn, "eu", key_id_of(blob))
            blobs[field] = reseal(blob, ctx(field), old, current)


def test_an_old_dek_is_not_retired_while_another_process_may_seal_under_it(
    make_keyring: KeyringFactory, state: State, clock: FrozenClock
) -> None:
    here = make_keyring(cache_ttl=TTL, in_flight_margin=MARGIN)
    there = make_keyring(cache_ttl=TTL, in_flight_margin=MARGIN)
    eu = state.regions.get("eu")
    blobs: dict[str, bytes] = {}
    with eu.transaction(write=True) as conn:
        blobs["email"] = here.seal(conn, ANNA, b"anna@example.com", ctx("email"))
    with eu.transaction() as conn:
        old = there.dek_for_subject(conn, "eu", ANNA)  # cached "there" as Anna's current key
    with eu.transaction(write=True) as conn:
        new = here.rotate_dek(conn, "eu", ANNA)
    _reseal_all(here, state, blobs)  # everything "here" can find is under the new key now

    # "There" still takes the old version for Anna's current key (the documented
    # window, at most one cache TTL) and seals a new value under it.
    with eu.transaction(write=True) as conn:
        blobs["phone"] = there.seal(conn, ANNA, b"+4930123456", ctx("phone"))
    assert key_id_of(blobs["phone"]) == old.id

    # Retiring the old version now would make that value unreadable for good.
    with eu.transaction(write=True) as conn, pytest.raises(KeyInUse, match="cache") as caught:
        here.retire_dek(conn, "eu", old.id)
    assert caught.value.status == 409
    with eu.transaction() as conn:
        deadline = here.dek_retirable_at(conn, "eu", old.id)
        assert here.dek_retirable_at(conn, "eu", new.id) is None  # the current key: never
    assert deadline is not None
    assert deadline - clock.now() > TTL

    # Once its cache's notion of "current" has expired, "there" seals under the new key.
    clock.advance(TTL)
    with eu.transaction(write=True) as conn:
        blobs["name"] = there.seal(conn, ANNA, b"Anna", ctx("name"))
    assert key_id_of(blobs["name"]) == new.id

    # Waiting alone is not enough: a re-scan from inside the window may have missed
    # values sealed after it, so it is no proof.
    rescan_too_early = clock.now()
    clock.advance(MARGIN)
    assert clock.now() > deadline
    with eu.transaction(write=True) as conn, pytest.raises(KeyInUse, match="re-scan"):
        here.retire_dek(conn, "eu", old.id, rescanned_at=rescan_too_early)

    # A re-scan after the window finds the value "there" wrote; then retiring is safe.
    _reseal_all(here, state, blobs)
    with eu.transaction(write=True) as conn:
        assert here.retire_dek(conn, "eu", old.id, rescanned_at=deadline) is True
    reader = make_keyring(cache_size=0)
    with eu.transaction() as conn:
        assert reader.unseal(conn, blobs["email"], ctx("email")) == b"anna@example.com"
        assert reader.unseal(conn, blobs["phone"], ctx("phone")) == b"+4930123456"
        assert reader.unseal(conn, blobs["name"], ctx("name")) == b"Anna"
        with pytest.raises(KeyDestroyed):
            reader.dek_by_id(conn, "eu", old.id)


def test_a_rescan_in_the_retiring_transaction_is_proof_enough(
    make_keyring: KeyringFactory, state: State, clock: FrozenClock
) -> None:
    keyring = make_keyring(cache_ttl=TTL, in_flight_margin=MARGIN)
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        blob = keyring.seal(conn, ANNA, b"anna@example.com", ctx("email"))
        old = keyring.dek_for_subject(conn, "eu", ANNA)
    with eu.transaction(write=True) as conn:
        keyring.rotate_dek(conn, "eu", ANNA)
    clock.advance(TTL + MARGIN + timedelta(seconds=1))
    with eu.transaction(write=True) as conn:
        current = keyring.dek_for_subject(conn, "eu", ANNA)
        blob = reseal(blob, ctx("email"), keyring.dek_by_id(conn, "eu", old.id), current)
        assert keyring.retire_dek(conn, "eu", old.id) is True  # rescanned_at: now
    with eu.transaction() as conn:
        assert keyring.unseal(conn, blob, ctx("email")) == b"anna@example.com"


def test_the_window_is_one_cache_ttl_plus_the_margin_after_the_rotation(
    make_keyring: KeyringFactory, state: State, clock: FrozenClock
) -> None:
    keyring = make_keyring(cache_ttl=TTL, in_flight_margin=MARGIN)
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        old = keyring.dek_for_subject(conn, "eu", ANNA)
    rotated = clock.now()
    with eu.transaction(write=True) as conn:
        keyring.rotate_dek(conn, "eu", ANNA)
    with eu.transaction() as conn:
        deadline = keyring.dek_retirable_at(conn, "eu", old.id)
    assert deadline is not None
    assert timedelta(0) <= deadline - (rotated + TTL + MARGIN) < timedelta(seconds=1)
    with eu.transaction() as conn:
        assert keyring.dek_retirable_at(conn, "eu", bytes(16)) is None  # no such key


def test_a_cache_hit_takes_a_key_as_current_for_at_most_one_ttl(
    make_keyring: KeyringFactory, state: State, clock: FrozenClock
) -> None:
    here = make_keyring(cache_ttl=TTL)
    there = make_keyring(cache_ttl=TTL)
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        old = here.dek_for_subject(conn, "eu", ANNA)
    with eu.transaction() as conn:
        there.dek_by_id(conn, "eu", old.id)  # loaded for decryption first...
    clock.advance(TTL - timedelta(minutes=1))
    with eu.transaction() as conn:
        assert there.dek_for_subject(conn, "eu", ANNA).id == old.id  # ...then found current
    with eu.transaction(write=True) as conn:
        new = here.rotate_dek(conn, "eu", ANNA)
    with eu.transaction() as conn:
        assert there.dek_for_subject(conn, "eu", ANNA).id == old.id  # a cache hit: cheap
        # Marking a cached key current never extends its life: one TTL after it was
        # loaded, "there" asks the database again.
        clock.advance(timedelta(minutes=1))
        assert there.dek_for_subject(conn, "eu", ANNA).id == new.id
