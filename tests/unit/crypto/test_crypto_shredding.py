"""Crypto-shredding reaches backups once the KEK versions that wrapped them are destroyed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from bastion.crypto.envelope import FieldContext
from bastion.crypto.errors import KeyDestroyed
from bastion.crypto.keyring import Keyring
from bastion.crypto.rotation import KekRotation, retire_kek
from bastion.crypto.tables import region_keys, subject_keys
from bastion.residency.databases import Database, Regions, create_db_engine
from bastion.state import State
from tests.unit.crypto.conftest import KeyringFactory

ANNA = "con_eu_01m86dzpzyehmvcb1s3m40n3bk"
BORIS = "con_eu_01m86dzq0zehmvcb1s3m40n3bk"


def ctx(record: str) -> FieldContext:
    return FieldContext("eu", "contacts", record, "email")


def _dump(state: State) -> dict[str, list[dict[str, Any]]]:
    """A logical backup of the region's key tables (what pg_dump would hold)."""
    with state.regions.get("eu").transaction() as conn:
        return {
            table.name: [row._asdict() for row in conn.execute(select(table))]
            for table in (subject_keys, region_keys)
        }


def _restore(backup: dict[str, list[dict[str, Any]]], template: Path, path: Path) -> Database:
    shutil.copy(template / "eu.db", path)
    database = Database("eu", create_db_engine(f"sqlite:///{path}"))
    with database.transaction(write=True) as conn:
        for table in (subject_keys, region_keys):
            if backup[table.name]:
                conn.execute(insert(table), backup[table.name])
    return database


def test_a_backup_loses_a_shredded_subject_once_old_keks_are_destroyed(
    any_keyring: Keyring,
    make_keyring: KeyringFactory,
    state: State,
    sqlite_template: Path,
    tmp_path: Path,
) -> None:
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        anna = any_keyring.seal(conn, ANNA, b"anna@example.com", ctx(ANNA))
        boris = any_keyring.seal(conn, BORIS, b"boris@example.com", ctx(BORIS))
    backup = _dump(state)  # the nightly backup, taken before the erasure

    with eu.transaction(write=True) as conn:
        assert any_keyring.shred(conn, "eu", ANNA) == 1
    with eu.transaction() as conn, pytest.raises(KeyDestroyed):
        any_keyring.unseal(conn, anna, ctx(ANNA))

    # Until the KEK that wrapped it is destroyed, the backup still yields Anna's key.
    restored = _restore(backup, sqlite_template, tmp_path / "restored-eu.db")
    try:
        from_backup = make_keyring(
            provider=any_keyring.provider, regions=Regions({"eu": restored}), cache_size=0
        )
        with restored.transaction() as conn:
            assert from_backup.unseal(conn, anna, ctx(ANNA)) == b"anna@example.com"

        # The retention period passes: rotate the KEK, then destroy the old version.
        KekRotation(any_keyring).run("eu")
        retire_kek(any_keyring, "eu", 1)

        with restored.transaction() as conn:
            with pytest.raises(KeyDestroyed, match="KEK version 1"):
                from_backup.unseal(conn, anna, ctx(ANNA))
            # Everything else in that old backup is gone too: backups older than the
            # destroyed KEK are expired by definition.
            with pytest.raises(KeyDestroyed):
                from_backup.unseal(conn, boris, ctx(BORIS))
    finally:
        restored.engine.dispose()

    # The live database is untouched: every other subject still decrypts.
    fresh = make_keyring(provider=any_keyring.provider, cache_size=0)
    with eu.transaction() as conn:
        assert fresh.unseal(conn, boris, ctx(BORIS)) == b"boris@example.com"
        with pytest.raises(KeyDestroyed):
            fresh.unseal(conn, anna, ctx(ANNA))
