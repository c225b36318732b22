"""KEK rotation: online, resumable after a crash or a kill, and KEK retirement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

import bastion
from bastion.crypto import aad
from bastion.crypto import repository as repo
from bastion.crypto.envelope import FieldContext, seal
from bastion.crypto.errors import KeyInUse
from bastion.crypto.keyring import Keyring
from bastion.crypto.rotation import KekRotation, RotationProgress, kek_status, retire_kek
from bastion.crypto.tables import key_rotations, region_keys, subject_keys
from bastion.errors import NotFound
from bastion.state import State
from tests.conftest import Backend
from tests.unit.crypto.conftest import KeyringFactory


class Crash(Exception):
    """Stands for the process dying between two batches."""


def subject(n: int) -> str:
    return f"subject-{n:04d}"


def ctx(n: int) -> FieldContext:
    return FieldContext("eu", "contacts", subject(n), "email")


def populate(keyring: Keyring, state: State, count: int) -> dict[int, bytes]:
    """`count` subjects with one sealed value each, and the region's blind-index key."""
    blobs: dict[int, bytes] = {}
    with state.regions.get("eu").transaction(write=True) as conn:
        for n in range(count):
            key = keyring.dek_for_subject(conn, "eu", subject(n))
            blobs[n] = seal(key, f"user{n}@example.com".encode(), ctx(n))
        keyring.blind_index("eu", "contacts", "email", "x@example.com", kind="email", conn=conn)
    return blobs


def kek_versions(state: State) -> list[int]:
    with state.regions.get("eu").transaction() as conn:
        rows = list(conn.execute(select(subject_keys.c.kek_version)).scalars())
        rows += conn.execute(select(region_keys.c.kek_version)).scalars()
    return sorted(rows)


def all_readable(keyring: Keyring, state: State, blobs: dict[int, bytes]) -> bool:
    with state.regions.get("eu").transaction() as conn:
        return all(
            keyring.unseal(conn, blob, ctx(n)) == f"user{n}@example.com".encode()
            for n, blob in blobs.items()
        )


def test_rotation_rewraps_every_key_under_a_new_version(
    any_keyring: Keyring, make_keyring: KeyringFactory, state: State
) -> None:
    blobs = populate(any_keyring, state, 12)
    index = any_keyring.blind_index("eu", "contacts", "email", "x@example.com", kind="email")
    before = kek_status(any_keyring, "eu")
    assert [(v.version, v.current, v.subject_keys, v.region_keys) for v in before.versions] == [
        (1, True, 12, 1)
    ]
    reports: list[RotationProgress] = []
    result = KekRotation(any_keyring, batch_size=5).run("eu", progress=reports.append)
    assert (result.state, result.from_version, result.to_version) == ("completed", 1, 2)
    assert result.rewrapped == 13
    assert result.total == 13
    assert [r.done for r in reports] == [5, 10, 12, 13]
    assert reports[-1].finished
    assert not reports[0].finished
    assert kek_versions(state) == [2] * 13
    after = kek_status(any_keyring, "eu")
    assert [(v.version, v.current, v.subject_keys, v.region_keys) for v in after.versions] == [
        (1, False, 0, 0),
        (2, True, 12, 1),
    ]
    assert after.last_rotation is not None
    assert after.last_rotation.state == "completed"
    # A fresh process (no cache) reads everything, and indexes are unchanged.
    fresh = make_keyring(provider=any_keyring.provider, cache_size=0)
    assert all_readable(fresh, state, blobs)
    assert fresh.blind_index("eu", "contacts", "email", "x@example.com", kind="email") == index
    with state.regions.get("eu").transaction(write=True) as conn:
        assert fresh.dek_for_subject(conn, "eu", "newcomer").id  # new keys: under v2
    assert kek_versions(state) == [2] * 14


def test_a_crashed_rotation_resumes_where_it_stopped(
    any_keyring: Keyring, make_keyring: KeyringFactory, state: State
) -> None:
    blobs = populate(any_keyring, state, 25)
    rotation = KekRotation(any_keyring, batch_size=4)

    def crash_after_three_batches(report: RotationProgress) -> None:
        if report.done >= 12:
            raise Crash

    with pytest.raises(Crash):
        rotation.run("eu", progress=crash_after_three_batches)
    with state.regions.get("eu").transaction() as conn:
        stopped = repo.running_rotation(conn, "eu")
    assert stopped is not None
    assert stopped.rewrapped == 12
    assert kek_versions(state).count(2) == 12
    # Mid-rotation, keys under both versions unwrap (no cache: every read unwraps).
    reader = make_keyring(provider=any_keyring.provider, cache_size=0)
    assert all_readable(reader, state, blobs)

    finished = KekRotation(any_keyring, batch_size=4).resume("eu")
    assert finished is not None
    assert (finished.id, finished.state, finished.rewrapped) == (stopped.id, "completed", 26)
    assert kek_versions(state) == [2] * 26
    assert all_readable(make_keyring(provider=any_keyring.provider, cache_size=0), state, blobs)
    # Re-running is a no-op: nothing to resume, nothing touched.
    with state.regions.get("eu").transaction() as conn:
        stamps = conn.execute(select(subject_keys.c.rewrapped_at)).scalars().all()
    assert KekRotation(any_keyring).resume("eu") is None
    with state.regions.get("eu").transaction() as conn:
        assert conn.execute(select(subject_keys.c.rewrapped_at)).scalars().all() == stamps
        assert len(conn.execute(select(key_rotations)).all()) == 1
    assert any_keyring.provider.versions("eu") == (1, 2)


def test_run_resumes_a_running_rotation_instead_of_starting_another(
    keyring: Keyring, state: State
) -> None:
    populate(keyring, state, 6)
    with pytest.raises(Crash):
        KekRotation(keyring, batch_size=2).run("eu", progress=_raise(Crash))
    result = KekRotation(keyring, batch_size=2).run("eu")
    assert result.to_version == 2
    assert keyring.provider.versions("eu") == (1, 2)


def _raise(exc: type[Exception]):  # type: ignore[no-untyped-def]
    def progress(_report: RotationProgress) -> None:
        raise exc

    return progress


def test_a_rotation_resumed_after_a_newer_kek_appeared_targets_the_newest(
    keyring: Keyring, state: State
) -> None:
    blobs = populate(keyring, state, 6)
    with pytest.raises(Crash):
        KekRotation(keyring, batch_size=2).run("eu", progress=_raise(Crash))
    keyring.provider.create_version("eu", 3)  # e.g. made by hand on the HSM meanwhile
    result = KekRotation(keyring, batch_size=2).resume("eu")
    assert result is not None
    assert (result.state, result.to_version) == ("completed", 3)
    assert kek_versions(state) == [3] * 7
    keyring.cache.clear()
    assert all_readable(keyring, state, blobs)


_KILLABLE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bastion.clock import SystemClock
    from bastion.crypto.keyring import Keyring
    from bastion.crypto.providers import LocalKeyProvider
    from bastion.crypto.rotation import KekRotation
    from bastion.residency.databases import Database, Regions, create_db_engine

    url, home = sys.argv[1], sys.argv[2]
    regions = Regions({"eu": Database("eu", create_db_engine(url))})
    provider = LocalKeyProvider(Path(home), mode="development")
    keyring = Keyring(regions=regions, provider=provider, clock=SystemClock())
    KekRotation(keyring, batch_size=1).run("eu", progress=lambda _: time.sleep(0.01))
    """
)


def test_a_rotation_killed_with_sigkill_resumes(
    keyring: Keyring, state: State, backend: Backend, tmp_path: Path
) -> None:
    blobs = populate(keyring, state, 150)
    platform_dir = str(Path(bastion.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": platform_dir}
    log = tmp_path / "rotation.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", _KILLABLE, backend.urls["eu"], str(tmp_path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with state.regions.get("eu").transaction() as conn:
                running = repo.running_rotation(conn, "eu")
            if running is not None and running.rewrapped >= 20:
                break
            assert process.poll() is None, log.read_text()
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    with state.regions.get("eu").transaction() as conn:
        killed = repo.running_rotation(conn, "eu")
    assert killed is not None
    assert 20 <= killed.rewrapped < 151
    result = KekRotation(keyring, batch_size=50).resume("eu")
    assert result is not None
    assert result.state == "completed"
    assert result.id == killed.id
    assert result.rewrapped == 151  # each key re-wrapped exactly once across both runs
    assert kek_versions(state) == [2] * 151
    keyring.cache.clear()
    assert all_readable(keyring, state, blobs)


def test_reads_and_writes_never_fail_during_a_rotation(
    any_keyring: Keyring, make_keyring: KeyringFactory, state: State
) -> None:
    blobs = populate(any_keyring, state, 40)
    reader = make_keyring(provider=any_keyring.provider, cache_size=0)
    writer = make_keyring(provider=any_keyring.provider, cache_size=0)
    done = threading.Event()
    reads: list[int] = []
    failures: list[BaseException] = []
    created: list[str] = []

    def read() -> None:
        while not done.is_set():
            try:
                assert all_readable(reader, state, blobs)
                reads.append(1)
            except BaseException as exc:
                failures.append(exc)
                return

    def write() -> None:
        n = 0
        while not done.is_set():
            try:
                with state.regions.get("eu").transaction(write=True) as conn:
                    writer.dek_for_subject(conn, "eu", f"new-{n}")
                created.append(f"new-{n}")
                n += 1
                time.sleep(0.005)  # a busy app, not a tight loop starving SQLite's lock
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    try:
        result = KekRotation(any_keyring, batch_size=3).run(
            "eu", progress=lambda _: time.sleep(0.01)
        )
    finally:
        done.set()
        for thread in threads:
            thread.join(10)
    assert failures == []
    assert reads
    assert created
    assert result.state == "completed"
    assert kek_versions(state) == [2] * (41 + len(created))


def test_keys_wrapped_under_the_old_version_meanwhile_are_caught_by_another_pass(
    keyring: Keyring, state: State
) -> None:
    populate(keyring, state, 4)
    injected: list[bytes] = []

    def stale_writer(report: RotationProgress) -> None:
        # A process that chose version 1 before version 2 existed commits late.
        if not injected:
            key_id = bytes(16)  # sorts before every key: only a second pass sees it
            wrapped = keyring.provider.wrap(
                "eu", 1, os.urandom(32), aad.dek_wrap("eu", "late", key_id, 1, 1)
            )
            with state.regions.get("eu").transaction(write=True) as conn:
                repo.insert_subject_key(
                    conn,
                    repo.StoredSubjectKey(key_id.hex(), "eu", "late", 1, 1, wrapped),
                    now=state.clock.now(),
                )
            injected.append(key_id)

    result = KekRotation(keyring, batch_size=100).run("eu", progress=stale_writer)
    assert result.state == "completed"
    assert result.passes == 2
    assert kek_versions(state) == [2] * 6
    with state.regions.get("eu").transaction() as conn:
        assert keyring.dek_by_id(conn, "eu", injected[0]).subject_id == "late"


# --- retirement ----------------------------------------------------------------------


def test_a_kek_version_is_retired_only_when_nothing_uses_it(
    any_keyring: Keyring, state: State
) -> None:
    populate(any_keyring, state, 6)
    with pytest.raises(KeyInUse, match="current"):
        retire_kek(any_keyring, "eu", 1)
    with pytest.raises(Crash):
        KekRotation(any_keyring, batch_size=2).run("eu", progress=_raise(Crash))
    with pytest.raises(KeyInUse, match="still wraps 5 keys"):
        retire_kek(any_keyring, "eu", 1)
    with pytest.raises(KeyInUse, match="current"):
        retire_kek(any_keyring, "eu", 2)
    KekRotation(any_keyring).resume("eu")
    retire_kek(any_keyring, "eu", 1)
    assert any_keyring.provider.versions("eu") == (2,)
    with pytest.raises(NotFound):
        retire_kek(any_keyring, "eu", 1)
    status = kek_status(any_keyring, "eu")
    assert [(v.version, v.exists) for v in status.versions] == [(2, True)]


def test_status_flags_versions_the_provider_lost(keyring: Keyring, state: State) -> None:
    populate(keyring, state, 2)
    KekRotation(keyring).run("eu")
    with state.regions.get("eu").transaction(write=True) as conn:
        conn.execute(subject_keys.update().values(kek_version=1))  # as restored from a backup
    keyring.provider.destroy_version("eu", 1)
    status = kek_status(keyring, "eu")
    assert [(v.version, v.exists, v.subject_keys) for v in status.versions] == [
        (1, False, 2),
        (2, True, 0),
    ]


def test_a_region_without_keys_rotates_to_its_first_version(keyring: Keyring, state: State) -> None:
    assert kek_status(keyring, "us").current_version is None
    result = KekRotation(keyring).run("us")
    assert (result.from_version, result.to_version, result.rewrapped) == (None, 1, 0)
    assert keyring.provider.versions("us") == (1,)
