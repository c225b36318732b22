"""Blind indexes: per-region, per-field truncated HMACs of normalised values."""

from __future__ import annotations

import os
from collections import Counter
from contextlib import suppress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bastion.crypto.blindindex import BlindIndexer
from bastion.crypto.errors import UnindexableValue
from bastion.crypto.keyring import Keyring
from bastion.crypto.rotation import KekRotation
from bastion.crypto.tables import region_keys
from bastion.state import State
from tests.unit.crypto.conftest import KeyringFactory, Rollback

fast = settings(database=None, deadline=None, max_examples=100)
INDEXER = BlindIndexer("eu", os.urandom(32))


@fast
@given(st.text(min_size=1, max_size=40).filter(str.strip))
def test_spellings_of_one_email_share_an_index(local: str) -> None:
    address = f"{local.strip()}@example.com"
    plain = INDEXER.index_value("contacts", "email", address, kind="email")
    shouted = INDEXER.index_value("contacts", "email", f"  {address.upper()} ", kind="email")
    if address.upper().casefold() == address.casefold():
        assert shouted == plain
    assert len(plain) == 2


def test_fields_tables_and_regions_have_unrelated_indexes() -> None:
    root = os.urandom(32)
    eu, us = BlindIndexer("eu", root), BlindIndexer("us", root)
    places = [
        (eu, "contacts", "email"),
        (eu, "leads", "email"),
        (eu, "contacts", "secondary_email"),
        (us, "contacts", "email"),  # same root key, other region: still another key
    ]
    # 16-bit indexes of four independent keys collide by chance ~1 in 10,000.
    distinct = [
        len(
            {
                indexer.index(table, field, f"user{n}@example.com")
                for indexer, table, field in places
            }
        )
        for n in range(32)
    ]
    assert sum(d == 4 for d in distinct) >= 30


@pytest.mark.parametrize(("bits", "length", "mask"), [(16, 2, 0xFF), (12, 2, 0xF0), (20, 3, 0xF0)])
def test_indexes_are_truncated_to_the_configured_bits(bits: int, length: int, mask: int) -> None:
    indexer = BlindIndexer("eu", os.urandom(32), bits=bits)
    for n in range(50):
        index = indexer.index("contacts", "email", f"user{n}@example.com")
        assert len(index) == length
        assert index[-1] & ~mask & 0xFF == 0


def test_truncation_makes_collisions_as_designed() -> None:
    # C = R / 2^L: 4096 distinct values in 8-bit indexes give ~16 per index value.
    indexer = BlindIndexer("eu", os.urandom(32), bits=8)
    counts = Counter(indexer.index("contacts", "email", f"u{n}@example.com") for n in range(4096))
    assert len(counts) == 256
    assert min(counts.values()) >= 2
    assert max(counts.values()) < 64


def test_lengths_outside_8_to_32_bits_are_refused() -> None:
    for bits in (7, 33):
        with pytest.raises(ValueError, match="8-32 bits"):
            BlindIndexer("eu", os.urandom(32), bits=bits)


def test_the_indexer_repr_shows_no_key() -> None:
    root = os.urandom(32)
    assert root.hex() not in repr(BlindIndexer("eu", root))


# --- through the keyring -------------------------------------------------------------


def test_the_region_root_key_is_created_once_and_stored_wrapped(
    any_keyring: Keyring, make_keyring: KeyringFactory, state: State
) -> None:
    index = any_keyring.blind_index("eu", "contacts", "email", "Anna@Example.com", kind="email")
    assert index == any_keyring.blind_index(
        "eu", "contacts", "email", " anna@example.COM", kind="email"
    )
    with state.regions.get("eu").transaction() as conn:
        rows = conn.execute(select(region_keys)).all()
    assert [(r.purpose, r.region, r.kek_version) for r in rows] == [("blind-index", "eu", 1)]
    assert len(rows[0].wrapped) == 60
    # Another process (another keyring, same provider) computes the same index.
    other = make_keyring(provider=any_keyring.provider)
    assert other.blind_index("eu", "contacts", "email", "anna@example.com", kind="email") == index
    # The US region has its own root key.
    us = any_keyring.blind_index("us", "contacts", "email", "anna@example.com", kind="email")
    with state.regions.get("us").transaction() as conn:
        assert len(conn.execute(select(region_keys)).all()) == 1
    assert isinstance(us, bytes)


def test_the_root_key_survives_a_kek_rotation(
    keyring: Keyring, make_keyring: KeyringFactory, state: State
) -> None:
    before = keyring.blind_index("eu", "contacts", "phone", "+49 30 1234567", kind="phone")
    KekRotation(keyring).run("eu")
    with state.regions.get("eu").transaction() as conn:
        assert conn.execute(select(region_keys.c.kek_version)).scalar_one() == 2
    fresh = make_keyring(provider=keyring.provider)
    assert fresh.blind_index("eu", "contacts", "phone", "+49301234567", kind="phone") == before


def test_the_root_key_can_be_created_inside_the_callers_write_transaction(
    keyring: Keyring, state: State
) -> None:
    with state.regions.get("eu").transaction(write=True) as conn:
        inside = keyring.blind_index(
            "eu", "contacts", "email", "a@example.com", kind="email", conn=conn
        )
    assert keyring.blind_index("eu", "contacts", "email", "a@example.com", kind="email") == inside


def test_a_root_key_from_a_rolled_back_transaction_is_not_kept(
    keyring: Keyring, state: State
) -> None:
    values = [f"user{n}@example.com" for n in range(20)]
    lost: list[bytes] = []
    with suppress(Rollback), state.regions.get("eu").transaction(write=True) as conn:
        lost += [
            keyring.blind_index("eu", "contacts", "email", v, kind="email", conn=conn)
            for v in values
        ]
        raise Rollback
    assert len(lost) == len(values)
    kept = [keyring.blind_index("eu", "contacts", "email", v, kind="email") for v in values]
    with state.regions.get("eu").transaction() as conn:
        assert len(conn.execute(select(region_keys)).all()) == 1
    assert kept != lost  # the rolled-back root key was not reused


def test_unindexable_values_raise_a_422(keyring: Keyring) -> None:
    with pytest.raises(UnindexableValue) as caught:
        keyring.blind_index("eu", "contacts", "phone", "call me maybe", kind="phone")
    assert caught.value.status == 422
