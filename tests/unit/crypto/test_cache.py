"""The data key cache: bounded LRU, time to live on the injected clock, shred eviction."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

from bastion.crypto.cache import DataKeyCache
from bastion.crypto.envelope import DataKey, new_key_id
from bastion.crypto.keyring import Keyring
from bastion.state import State
from tests.conftest import FrozenClock
from tests.unit.crypto.conftest import KeyringFactory

TTL = timedelta(minutes=5)


def make_key(subject: str = "subject-a", region: str = "eu") -> DataKey:
    return DataKey(
        key_id=new_key_id(), region=region, subject_id=subject, version=1, material=os.urandom(32)
    )


def test_least_recently_used_keys_go_first(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=2, ttl=TTL, clock=clock)
    a, b, c = make_key("a"), make_key("b"), make_key("c")
    cache.put(a)
    cache.put(b)
    assert cache.by_id("eu", a.id) is a  # a is now the most recently used
    cache.put(c)
    assert cache.by_id("eu", b.id) is None
    assert cache.by_id("eu", a.id) is a
    assert cache.by_id("eu", c.id) is c
    assert len(cache) == 2


def test_keys_expire_after_the_ttl(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=10, ttl=TTL, clock=clock)
    key = make_key()
    cache.put(key, current=True)
    clock.advance(TTL - timedelta(seconds=1))
    assert cache.by_id("eu", key.id) is key
    assert cache.current("eu", key.subject_id) is key
    clock.advance(timedelta(seconds=2))
    assert cache.by_id("eu", key.id) is None
    assert cache.current("eu", key.subject_id) is None
    assert len(cache) == 0


def test_a_hit_does_not_extend_the_ttl(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=10, ttl=TTL, clock=clock)
    key = make_key()
    cache.put(key)
    for _ in range(4):
        clock.advance(timedelta(minutes=1))
        assert cache.by_id("eu", key.id) is key
    clock.advance(timedelta(minutes=1, seconds=1))
    assert cache.by_id("eu", key.id) is None


def test_current_follows_its_key_out_of_the_cache(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=1, ttl=TTL, clock=clock)
    first = make_key("a")
    cache.put(first, current=True)
    cache.put(make_key("b"))
    assert cache.current("eu", "a") is None


def test_a_slow_reader_cannot_mark_a_superseded_version_current_again(
    clock: FrozenClock,
) -> None:
    cache = DataKeyCache(size=10, ttl=TTL, clock=clock)
    v1 = make_key("a")
    v2 = DataKey(
        key_id=new_key_id(), region="eu", subject_id="a", version=2, material=os.urandom(32)
    )
    cache.put(v2, current=True)
    cache.put(v1, current=True)  # read from a snapshot taken before v2 committed
    assert cache.current("eu", "a") is v2
    assert cache.by_id("eu", v1.id) is v1  # still there for decryption


def test_a_current_mark_lasts_one_ttl_from_when_it_was_made(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=10, ttl=TTL, clock=clock)
    key = make_key()
    cache.put(key)
    clock.advance(timedelta(minutes=4))
    cache.put(key, current=True)  # marking it current extends nothing
    clock.advance(timedelta(minutes=1, seconds=1))
    assert cache.current("eu", key.subject_id) is None
    assert cache.ttl == TTL


def test_regions_are_separate(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=10, ttl=TTL, clock=clock)
    key = make_key(region="eu")
    cache.put(key)
    assert cache.by_id("us", key.id) is None


def test_a_shredded_subject_is_evicted_and_not_recached_for_a_ttl(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=10, ttl=TTL, clock=clock)
    v1, v2, other = make_key("a"), make_key("a"), make_key("b")
    for key in (v1, v2, other):
        cache.put(key, current=True)
    cache.evict_subject("eu", "a", shredded=True)
    assert cache.by_id("eu", v1.id) is None
    assert cache.by_id("eu", v2.id) is None
    assert cache.current("eu", "a") is None
    assert cache.by_id("eu", other.id) is other
    # A request that read the key just before the shred committed cannot put it back.
    cache.put(v2, current=True)
    assert cache.by_id("eu", v2.id) is None
    clock.advance(TTL + timedelta(seconds=1))
    cache.put(v2)
    assert cache.by_id("eu", v2.id) is v2


def test_size_zero_or_ttl_zero_disable_the_cache(clock: FrozenClock) -> None:
    for cache in (
        DataKeyCache(size=0, ttl=TTL, clock=clock),
        DataKeyCache(size=10, ttl=timedelta(0), clock=clock),
    ):
        key = make_key()
        cache.put(key, current=True)
        assert cache.by_id("eu", key.id) is None
        assert len(cache) == 0


def test_the_cache_is_thread_safe(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=50, ttl=TTL, clock=clock)
    keys = [make_key(f"s{i % 20}") for i in range(200)]
    errors: list[BaseException] = []

    def churn(offset: int) -> None:
        try:
            for i in range(2000):
                key = keys[(i + offset) % len(keys)]
                cache.put(key, current=i % 3 == 0)
                cache.by_id("eu", key.id)
                cache.current("eu", key.subject_id)
                if i % 97 == 0:
                    cache.evict_subject("eu", key.subject_id, shredded=i % 2 == 0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n * 13,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 50


def test_the_repr_shows_no_keys(clock: FrozenClock) -> None:
    cache = DataKeyCache(size=10, ttl=TTL, clock=clock)
    key = make_key()
    cache.put(key)
    assert key.id.hex() not in repr(cache)
    assert "held=1" in repr(cache)


# --- through the keyring -------------------------------------------------------------


def test_the_keyring_serves_repeated_lookups_from_the_cache(
    make_keyring: KeyringFactory, state: State, clock: FrozenClock
) -> None:
    keyring = make_keyring(cache_ttl=TTL)
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        key = keyring.dek_for_subject(conn, "eu", "subject-a")
    with eu.transaction() as conn:
        loaded = keyring.dek_by_id(conn, "eu", key.id)
        assert keyring.dek_by_id(conn, "eu", key.id) is loaded
        assert keyring.dek_for_subject(conn, "eu", "subject-a") is loaded
    clock.advance(TTL + timedelta(seconds=1))
    with eu.transaction() as conn:
        assert keyring.dek_by_id(conn, "eu", key.id) is not loaded


def test_another_process_stops_decrypting_a_shredded_subject_within_one_ttl(
    make_keyring: KeyringFactory, state: State, clock: FrozenClock
) -> None:
    here, there = make_keyring(cache_ttl=TTL), make_keyring(cache_ttl=TTL)
    eu = state.regions.get("eu")
    with eu.transaction(write=True) as conn:
        key = here.dek_for_subject(conn, "eu", "subject-a")
    with eu.transaction() as conn:
        there.dek_by_id(conn, "eu", key.id)  # cached "there"
    with eu.transaction(write=True) as conn:
        here.shred(conn, "eu", "subject-a")
    with eu.transaction() as conn:
        assert there.dek_by_id(conn, "eu", key.id).id == key.id  # the documented window
        clock.advance(TTL)
        assert _destroyed(there, conn, key.id)


def _destroyed(keyring: Keyring, conn: object, key_id: bytes) -> bool:
    from bastion.crypto.errors import KeyDestroyed

    try:
        keyring.dek_by_id(conn, "eu", key_id)  # type: ignore[arg-type]
    except KeyDestroyed:
        return True
    return False
