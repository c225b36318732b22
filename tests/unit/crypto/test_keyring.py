"""Per-subject data keys in the region databases: creation, lookup, binding, shredding."""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update

from bastion.crypto.datakeys import IN_FLIGHT_MARGIN
from bastion.crypto.envelope import FieldContext, key_id_of, seal, unseal
from bastion.crypto.errors import (
    DecryptionFailed,
    KeyConfigurationError,
    KeyDestroyed,
    KeyInUse,
)
from bastion.crypto.keyring import Keyring
from bastion.crypto.providers import LocalKeyProvider
from bastion.crypto.tables import region_keys, subject_keys
from bastion.errors import NotFound, ResidencyViolation
from bastion.state import State
from tests.conftest import FrozenClock, ResidencyGuard
from tests.unit.crypto.conftest import KeyringFactory, Rollback

ANNA = "con_eu_01m86dzpzyehmvcb1s3m40n3bk"
BORIS = "con_eu_01m86dzq0zehmvcb1s3m40n3bk"
CARL = "con_us_01m86dzq1zehmvcb1s3m40n3bk"


def ctx(record: str = ANNA, field: str = "email", region: str = "eu") -> FieldContext:
    return FieldContext(region, "contacts", record, field)


def test_a_subject_gets_one_key_stored_wrapped(any_keyring: Keyring, state: State) -> None:
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        key = any_keyring.dek_for_subject(conn, "eu", ANNA)
        again = any_keyring.dek_for_subject(conn, "eu", ANNA)
        blob = seal(key, b"anna@example.com", ctx())
    assert again.id == key.id
    with eu.transaction() as conn:
        rows = conn.execute(select(subject_keys)).all()
        assert any_keyring.dek_for_subject(conn, "eu", ANNA).id == key.id
        assert unseal(any_keyring.dek_by_id(conn, "eu", key.id), blob, ctx()) == b"anna@example.com"
    assert len(rows) == 1
    row = rows[0]
    assert (row.subject_id, row.version, row.kek_version, row.region) == (ANNA, 1, 1, "eu")
    assert row.id == key.id.hex()
    assert len(row.wrapped) == 12 + 32 + 16


def test_each_subject_has_its_own_key(keyring: Keyring, state: State) -> None:
    with state.regions.get("eu").transaction(write=True) as conn:
        anna = keyring.dek_for_subject(conn, "eu", ANNA)
        boris = keyring.dek_for_subject(conn, "eu", BORIS)
        blob = seal(anna, b"secret", ctx())
    assert anna.id != boris.id
    with pytest.raises(DecryptionFailed):
        unseal(boris, blob, ctx())


def test_create_false_does_not_create(keyring: Keyring, state: State) -> None:
    with state.regions.get("eu").transaction(write=True) as conn:
        assert keyring.dek_for_subject(conn, "eu", ANNA, create=False) is None
        assert conn.execute(select(subject_keys)).all() == []


def test_keyring_seal_and_unseal_conveniences(keyring: Keyring, state: State) -> None:
    with state.regions.get("eu").transaction(write=True) as conn:
        blob = keyring.seal(conn, ANNA, b"+4930123456", ctx(field="phone"))
    with state.regions.get("eu").transaction() as conn:
        assert keyring.unseal(conn, blob, ctx(field="phone")) == b"+4930123456"
        with pytest.raises(DecryptionFailed):
            keyring.unseal(conn, blob, ctx(field="email"))


def test_an_unknown_key_id_is_a_destroyed_key(keyring: Keyring, state: State) -> None:
    with state.regions.get("eu").transaction() as conn, pytest.raises(KeyDestroyed) as caught:
        keyring.dek_by_id(conn, "eu", bytes(16))
    assert caught.value.status == 410


# --- shredding -----------------------------------------------------------------------


def test_shred_destroys_every_version_and_the_cache(any_keyring: Keyring, state: State) -> None:
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        first = any_keyring.dek_for_subject(conn, "eu", ANNA)
        old_blob = seal(first, b"anna@old.example", ctx())
    with eu.transaction(write=True) as conn:
        second = any_keyring.rotate_dek(conn, "eu", ANNA)
        new_blob = seal(second, b"anna@new.example", ctx())
        boris = any_keyring.dek_for_subject(conn, "eu", BORIS)
        boris_blob = seal(boris, b"boris@example.com", ctx(BORIS))
    with eu.transaction() as conn:  # both of Anna's versions are cached now
        assert any_keyring.unseal(conn, old_blob, ctx()) == b"anna@old.example"
        assert any_keyring.unseal(conn, new_blob, ctx()) == b"anna@new.example"
    assert any_keyring.cache.by_id("eu", first.id) is not None
    assert any_keyring.cache.by_id("eu", second.id) is not None
    with eu.transaction(write=True) as conn:
        assert any_keyring.shred(conn, "eu", ANNA) == 2
    assert any_keyring.cache.by_id("eu", first.id) is None
    assert any_keyring.cache.by_id("eu", second.id) is None
    with eu.transaction() as conn:
        for blob in (old_blob, new_blob):
            with pytest.raises(KeyDestroyed):
                any_keyring.unseal(conn, blob, ctx())
        assert any_keyring.unseal(conn, boris_blob, ctx(BORIS)) == b"boris@example.com"
        assert any_keyring.dek_for_subject(conn, "eu", ANNA, create=False) is None


def test_a_shred_rolled_back_leaves_the_keys(keyring: Keyring, state: State) -> None:
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        blob = keyring.seal(conn, ANNA, b"x", ctx())
    with suppress(Rollback), eu.transaction(write=True) as conn:
        assert keyring.shred(conn, "eu", ANNA) == 1
        raise Rollback
    with eu.transaction() as conn:
        assert keyring.unseal(conn, blob, ctx()) == b"x"


def test_a_key_created_in_a_rolled_back_transaction_is_never_used(
    keyring: Keyring, state: State
) -> None:
    eu = state.regions.get("eu")
    lost: list[bytes] = []
    with suppress(Rollback), eu.transaction(write=True) as conn:
        lost.append(keyring.dek_for_subject(conn, "eu", ANNA).id)
        keyring.dek_by_id(conn, "eu", lost[0])  # read back in its own transaction
        raise Rollback
    with eu.transaction(write=True) as conn:
        kept = keyring.dek_for_subject(conn, "eu", ANNA)
        assert kept.id != lost[0]
        with pytest.raises(KeyDestroyed):
            keyring.dek_by_id(conn, "eu", lost[0])


# --- DEK rotation --------------------------------------------------------------------


def test_rotate_dek_then_reseal_then_retire_the_old_version(
    keyring: Keyring, state: State, clock: FrozenClock
) -> None:
    from bastion.crypto.envelope import reseal

    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        old = keyring.dek_for_subject(conn, "eu", ANNA)
        blob = seal(old, b"anna@example.com", ctx())
    with eu.transaction(write=True) as conn:
        new = keyring.rotate_dek(conn, "eu", ANNA)
        assert new.version == 2
        with pytest.raises(KeyInUse, match="current key"):
            keyring.retire_dek(conn, "eu", new.id)
    with eu.transaction(write=True) as conn, pytest.raises(KeyInUse, match="retired from"):
        keyring.retire_dek(conn, "eu", old.id)  # other processes may still seal under it
    clock.advance(keyring.cache.ttl + IN_FLIGHT_MARGIN)  # see test_dek_rotation.py
    with eu.transaction(write=True) as conn:
        assert keyring.dek_for_subject(conn, "eu", ANNA).id == new.id
        old_key = keyring.dek_by_id(conn, "eu", key_id_of(blob))
        blob = reseal(blob, ctx(), old_key, keyring.dek_for_subject(conn, "eu", ANNA))
        assert keyring.retire_dek(conn, "eu", old.id) is True
        assert keyring.retire_dek(conn, "eu", old.id) is False
    with eu.transaction() as conn:
        assert keyring.unseal(conn, blob, ctx()) == b"anna@example.com"
        with pytest.raises(KeyDestroyed):
            keyring.dek_by_id(conn, "eu", old.id)


# --- binding to subject and region ---------------------------------------------------


def test_a_wrapped_key_moved_to_another_subject_does_not_unwrap(
    any_keyring: Keyring, state: State
) -> None:
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        anna = any_keyring.dek_for_subject(conn, "eu", ANNA)
        boris = any_keyring.dek_for_subject(conn, "eu", BORIS)
        stolen = conn.execute(
            select(subject_keys.c.wrapped).where(subject_keys.c.id == anna.id.hex())
        ).scalar_one()
        # An attacker with write access to the table gives Boris Anna's wrapped key.
        conn.execute(
            update(subject_keys).where(subject_keys.c.id == boris.id.hex()).values(wrapped=stolen)
        )
    fresh = Keyring(regions=state.regions, provider=any_keyring.provider, clock=state.clock)
    with eu.transaction() as conn:
        with pytest.raises(DecryptionFailed):
            fresh.dek_by_id(conn, "eu", boris.id)
        with pytest.raises(DecryptionFailed):
            fresh.dek_for_subject(conn, "eu", BORIS, create=False)
        assert fresh.dek_by_id(conn, "eu", anna.id).id == anna.id


def test_a_key_row_copied_into_another_region_does_not_unwrap(
    any_keyring: Keyring, state: State, residency_guard: ResidencyGuard
) -> None:
    with state.regions.get("eu").transaction(write=True) as conn:
        anna = any_keyring.dek_for_subject(conn, "eu", ANNA)
        row = conn.execute(select(subject_keys)).one()._asdict()
        blob = seal(anna, b"anna@example.com", ctx())
    with state.regions.get("us").transaction(write=True) as conn:
        any_keyring.dek_for_subject(conn, "us", CARL)  # the US region has its own KEK
        with residency_guard.tolerated():  # the attack: an operator copies the row
            conn.execute(insert(subject_keys).values(**row))
    # As copied, the row says it is an EU key: a residency violation, not data.
    with state.regions.get("us").transaction() as conn, pytest.raises(ResidencyViolation):
        any_keyring.dek_by_id(conn, "us", anna.id)
    with state.regions.get("us").transaction(write=True) as conn:
        conn.execute(update(subject_keys).where(subject_keys.c.id == row["id"]).values(region="us"))
    with state.regions.get("us").transaction() as conn:
        # Relabelled as a US key: the US KEK cannot unwrap an EU key.
        with pytest.raises(DecryptionFailed):
            any_keyring.dek_by_id(conn, "us", anna.id)
        with pytest.raises(DecryptionFailed):
            any_keyring.unseal(conn, blob, ctx(region="us"))


def test_an_eu_key_is_never_wrapped_by_the_us_kek(any_keyring: Keyring, state: State) -> None:
    from bastion.crypto import aad

    with state.regions.get("eu").transaction(write=True) as conn:
        anna = any_keyring.dek_for_subject(conn, "eu", ANNA)
        stored = conn.execute(select(subject_keys)).one()
    with state.regions.get("us").transaction(write=True) as conn:
        any_keyring.dek_for_subject(conn, "us", CARL)
    binding = aad.dek_wrap("eu", ANNA, anna.id, 1, stored.kek_version)
    provider = any_keyring.provider
    assert len(provider.unwrap("eu", stored.kek_version, stored.wrapped, binding)) == 32
    with pytest.raises(DecryptionFailed):
        provider.unwrap("us", stored.kek_version, stored.wrapped, binding)


def test_another_regions_connection_is_refused(keyring: Keyring, state: State) -> None:
    with state.regions.get("us").transaction(write=True) as conn:
        with pytest.raises(ResidencyViolation):
            keyring.dek_for_subject(conn, "eu", ANNA)
        with pytest.raises(ResidencyViolation):
            keyring.dek_by_id(conn, "eu", bytes(16))


def test_a_subject_of_another_region_is_refused(keyring: Keyring, state: State) -> None:
    with state.regions.get("eu").transaction(write=True) as conn:
        with pytest.raises(ResidencyViolation, match="region 'us'"):
            keyring.dek_for_subject(conn, "eu", CARL)
        with pytest.raises(ValueError, match="subject id"):
            keyring.dek_for_subject(conn, "eu", "")
        # Opaque subject identifiers (not record ids) are allowed.
        assert keyring.dek_for_subject(conn, "eu", "employee-4711").subject_id == "employee-4711"


def test_an_unknown_region_is_not_found(keyring: Keyring, state: State) -> None:
    with state.regions.get("eu").transaction() as conn, pytest.raises(NotFound):
        keyring.dek_for_subject(conn, "ap", ANNA)


def test_a_provider_without_the_keks_of_existing_keys_is_refused(
    keyring: Keyring,
    make_keyring: KeyringFactory,
    state: State,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with state.regions.get("eu").transaction(write=True) as conn:
        keyring.dek_for_subject(conn, "eu", ANNA)
    other_home = tmp_path_factory.mktemp("other-home")
    elsewhere = make_keyring(provider=LocalKeyProvider(other_home, mode="development"))
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn, pytest.raises(KeyConfigurationError, match="HOME"):
        elsewhere.dek_for_subject(conn, "eu", BORIS)
    assert elsewhere.provider.versions("eu") == ()


# --- concurrency ---------------------------------------------------------------------


def test_two_transactions_creating_one_subjects_key_end_with_one_key(
    keyring: Keyring, state: State
) -> None:
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        keyring.dek_for_subject(conn, "eu", BORIS)  # the region's KEK exists already
    first_created = threading.Event()
    second_started = threading.Event()
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with eu.transaction(write=True) as conn:
                results["first"] = keyring.dek_for_subject(conn, "eu", ANNA).id
                first_created.set()
                second_started.wait(5)
                time.sleep(0.3)  # the second is now blocked on our insert (or lock)
        except BaseException as exc:
            errors.append(exc)
            first_created.set()

    def second() -> None:
        try:
            first_created.wait(5)
            second_started.set()
            with eu.transaction(write=True) as conn:
                results["second"] = keyring.dek_for_subject(conn, "eu", ANNA).id
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert results["first"] == results["second"]
    with eu.transaction() as conn:
        rows = conn.execute(select(subject_keys).where(subject_keys.c.subject_id == ANNA)).all()
    assert len(rows) == 1


def test_many_threads_racing_for_a_new_subject_agree(
    make_keyring: KeyringFactory, state: State
) -> None:
    keyrings = [make_keyring(cache_size=0) for _ in range(6)]  # six "processes"
    eu = state.regions.get("eu")
    barrier = threading.Barrier(len(keyrings))
    ids: list[bytes] = []
    errors: list[BaseException] = []

    def create(keyring: Keyring) -> None:
        try:
            barrier.wait(5)
            with eu.transaction(write=True) as conn:
                ids.append(keyring.dek_for_subject(conn, "eu", ANNA).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(k,)) for k in keyrings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert errors == []
    assert len(set(ids)) == 1
    assert len(ids) == len(keyrings)
    assert keyrings[0].provider.versions("eu") == (1,)
    with eu.transaction() as conn:
        assert len(conn.execute(select(subject_keys)).all()) == 1
        assert len(conn.execute(select(region_keys)).all()) == 1  # born with the KEK


# --- State wiring --------------------------------------------------------------------


def test_the_state_has_a_keyring_from_the_settings(state: State) -> None:
    assert isinstance(state.keys, Keyring)
    assert state.keys.provider.name == "local"
    with state.regions.get("eu").transaction(write=True) as conn:
        blob = state.keys.seal(conn, ANNA, b"x", ctx())
    with state.regions.get("eu").transaction() as conn:
        assert state.keys.unseal(conn, blob, ctx()) == b"x"
    assert (state.settings.home / "keys" / "eu" / "kek-v000001.key").is_file()
    assert state.keys.ping("eu")


def test_cache_ttl_comes_from_the_settings(state: State) -> None:
    assert state.keys.cache._ttl == timedelta(seconds=state.settings.keys.cache_ttl_seconds)
