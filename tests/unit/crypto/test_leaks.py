"""No key material (nor a plaintext) in any repr, str, exception or log event."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
import structlog
from sqlalchemy import select

from bastion.crypto import aad
from bastion.crypto import repository as repo
from bastion.crypto.envelope import FieldContext, seal, unseal
from bastion.crypto.errors import DecryptionFailed, KeyDestroyed
from bastion.crypto.keyring import Keyring
from bastion.crypto.rotation import KekRotation, kek_status, retire_kek
from bastion.crypto.settings import KeySettings
from bastion.crypto.tables import region_keys, subject_keys
from bastion.state import State

CANARY = b"canary-4f1c9e@example.com"
ANNA = "con_eu_01m86dzpzyehmvcb1s3m40n3bk"
CTX = FieldContext("eu", "contacts", ANNA, "email")


def _spellings(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    ]


def test_a_whole_key_lifecycle_leaks_nothing(
    any_keyring: Keyring,
    key_settings: KeySettings,
    state: State,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    secrets: list[bytes] = [CANARY]
    provider = any_keyring.provider
    eu = state.regions.get("eu")
    with structlog.testing.capture_logs() as events:
        with eu.transaction(write=True) as conn:
            key = any_keyring.dek_for_subject(conn, "eu", ANNA)
            blob = seal(key, CANARY, CTX)
            any_keyring.blind_index("eu", "contacts", "email", "a@b.ex", kind="email", conn=conn)
            stored = repo.subject_key(conn, key.id.hex())
            root_row = conn.execute(select(region_keys)).one()
        assert stored is not None
        # The test recovers the key material itself, to look for it everywhere.
        secrets.append(
            provider.unwrap("eu", 1, stored.wrapped, aad.dek_wrap("eu", ANNA, key.id, 1, 1))
        )
        secrets.append(
            provider.unwrap(
                "eu",
                1,
                root_row.wrapped,
                aad.region_key_wrap("eu", "blind-index", bytes.fromhex(root_row.id), 1),
            )
        )
        for bad in (blob[:-1] + bytes([blob[-1] ^ 1]), blob[:10]):
            with pytest.raises(DecryptionFailed) as caught:
                unseal(key, bad, CTX)
            texts += [str(caught.value), repr(caught.value)]
        kek_files = tmp_path / "keys" / "eu"
        KekRotation(any_keyring, batch_size=1).run("eu")
        secrets += [p.read_bytes() for p in sorted(kek_files.glob("kek-v*.key"))]
        retire_kek(any_keyring, "eu", 1)
        texts.append(repr(kek_status(any_keyring, "eu")))
        with eu.transaction(write=True) as conn:
            any_keyring.shred(conn, "eu", ANNA)
        with eu.transaction() as conn, pytest.raises(KeyDestroyed) as destroyed:
            any_keyring.unseal(conn, blob, CTX)
        texts += [str(destroyed.value), repr(destroyed.value)]

    texts += [
        repr(any_keyring),
        repr(provider),
        repr(key),
        str(key),
        repr(stored),
        repr(any_keyring.cache),
        repr(any_keyring.blind_indexer("eu")),
        repr(key_settings),
        str(events),
        caplog.text,
    ]
    for text in texts:
        for secret in secrets:
            for spelling in _spellings(secret):
                assert spelling not in text
        assert "bastion-test-pin" not in text
    assert stored.wrapped.hex() not in repr(stored)


def test_data_keys_are_recoverable_only_through_the_provider(
    any_keyring: Keyring, state: State
) -> None:
    """The stored row alone never contains the DEK: it must be unwrapped."""
    with state.regions.get("eu").transaction(write=True) as conn:
        key = any_keyring.dek_for_subject(conn, "eu", ANNA)
        row = conn.execute(select(subject_keys)).one()
    material = any_keyring.provider.unwrap(
        "eu", row.kek_version, row.wrapped, aad.dek_wrap("eu", ANNA, key.id, 1, row.kek_version)
    )
    for spelling in _spellings(material):
        assert spelling not in repr(row)
        assert spelling not in repr(key)
    assert material not in bytes(row.wrapped)
