"""The in-process cache of unwrapped data keys: bounded LRU with a time to live.

Unwrapping a DEK costs a database read plus a KEK operation (about 30 us on an
HSM); a request touches the same few subjects' keys many times. The cache keeps
at most `size` keys, each for at most `ttl` after it was loaded, whichever comes
first: the bound caps the key material a process holds in memory, the TTL caps
how long another process may keep decrypting a subject after a shred there (a
shred in *this* process evicts at once). Thread-safe: one lock, held for dict
operations only.

It also remembers which key is each subject's *current* one (the key new values
are sealed under), so sealing needs no database read. That, too, is stale at
most one TTL: a key is served as current no longer than `ttl` after it was put
(right after the database read that found it current), and never longer than
the key itself stays cached. So after `rotate_dek` in another process, this one
may go on sealing under the old version for up to one TTL (plus the length of
the transaction that read it) -- the window `Keyring.retire_dek` waits out.

A shredded subject is also remembered for one TTL, so a concurrent request that
read the key just before the shred committed cannot put it back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from bastion.clock import Clock
from bastion.crypto.envelope import DataKey

_Subject = tuple[str, str]  # (region, subject id)
_KeyRef = tuple[str, bytes]  # (region, key id)


@dataclass(slots=True)
class _Entry:
    key: DataKey
    expires: datetime


class DataKeyCache:
    """Unwrapped DEKs by (region, key id), and each subject's current key. Thread-safe.

    Contract:
    - `by_id` returns a key at most `ttl` after it was first `put` (a hit never
      extends that), or None; at most `size` keys are held, least recently used
      going first;
    - `current` returns the key last `put` with `current=True` for the subject, at
      most `ttl` after that `put` and only while `by_id` would still return it;
    - `evict_subject` / `evict_key` / `clear` take effect at once; after
      `evict_subject(..., shredded=True)` the subject's keys are not cached again
      for one `ttl`;
    - `size` 0 or `ttl` 0 disable it: every lookup misses, `put` keeps nothing.
    Keys are shared, immutable `DataKey`s; nothing here reads the database.
    """

    def __init__(self, *, size: int, ttl: timedelta, clock: Clock) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._enabled = size > 0 and ttl > timedelta(0)
        self._entries: OrderedDict[_KeyRef, _Entry] = OrderedDict()
        self._by_subject: dict[_Subject, set[bytes]] = {}
        # subject -> (key id, deadline): the key served as current until the deadline.
        self._current: dict[_Subject, tuple[bytes, datetime]] = {}
        self._shredded: OrderedDict[_Subject, datetime] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DataKeyCache(size={self._size}, ttl={self._ttl}, held={len(self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ttl(self) -> timedelta:
        """How long a key (or a subject's current key) may be served after it was loaded."""
        return self._ttl

    def by_id(self, region: str, key_id: bytes) -> DataKey | None:
        if not self._enabled:
            return None
        now = self._clock.now()
        with self._lock:
            entry = self._entries.get((region, key_id))
            if entry is None:
                return None
            if entry.expires <= now:
                self._drop((region, key_id))
                return None
            self._entries.move_to_end((region, key_id))
            return entry.key

    def current(self, region: str, subject_id: str) -> DataKey | None:
        """The subject's current key, if it was cached as current within the last TTL."""
        if not self._enabled:
            return None
        subject = (region, subject_id)
        with self._lock:
            marked = self._current.get(subject)
            if marked is None:
                return None
            key_id, deadline = marked
            if deadline <= self._clock.now():
                del self._current[subject]
                return None
        return self.by_id(region, key_id)

    def put(self, key: DataKey, *, current: bool = False) -> None:
        """Cache `key` (as its subject's current key if `current`); LRU entries make room."""
        if not self._enabled:
            return
        now = self._clock.now()
        subject = (key.region, key.subject_id)
        ref = (key.region, key.id)
        with self._lock:
            shredded = self._shredded.get(subject)
            if shredded is not None:
                if shredded > now:
                    return
                del self._shredded[subject]
            # The TTL runs from when a key was first loaded: putting it again (e.g. to
            # mark it current) never extends it.
            if ref not in self._entries:
                self._entries[ref] = _Entry(key, now + self._ttl)
            self._entries.move_to_end(ref)
            self._by_subject.setdefault(subject, set()).add(key.id)
            if current and not self._newer_current(subject, key, now):
                self._current[subject] = (key.id, now + self._ttl)
            while len(self._entries) > self._size:
                self._drop(next(iter(self._entries)))

    def evict_subject(self, region: str, subject_id: str, *, shredded: bool = False) -> None:
        """Forget every key of the subject; with `shredded`, refuse to re-cache it for a TTL."""
        subject = (region, subject_id)
        with self._lock:
            for key_id in self._by_subject.pop(subject, set()):
                self._entries.pop((region, key_id), None)
            self._current.pop(subject, None)
            if shredded and self._enabled:
                self._shredded[subject] = self._clock.now() + self._ttl
                self._shredded.move_to_end(subject)
                while len(self._shredded) > self._size:
                    self._shredded.popitem(last=False)

    def evict_key(self, region: str, key_id: bytes) -> None:
        with self._lock:
            self._drop((region, key_id))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_subject.clear()
            self._current.clear()
            self._shredded.clear()

    def _newer_current(self, subject: _Subject, key: DataKey, now: datetime) -> bool:
        """Whether a newer version is marked current already (a slower reader of an
        older snapshot must not put the superseded key back)."""
        marked = self._current.get(subject)
        if marked is None or marked[1] <= now:
            return False
        entry = self._entries.get((subject[0], marked[0]))
        return entry is not None and entry.key.version > key.version

    def _drop(self, ref: _KeyRef) -> None:
        entry = self._entries.pop(ref, None)
        if entry is None:
            return
        subject = (entry.key.region, entry.key.subject_id)
        ids = self._by_subject.get(subject)
        if ids is not None:
            ids.discard(entry.key.id)
            if not ids:
                del self._by_subject[subject]
        marked = self._current.get(subject)
        if marked is not None and marked[0] == entry.key.id:
            del self._current[subject]
