"""`python -m benchmarks.rotation`: KEK rotation of a region of 100k data subjects,
under a read load, interrupted and resumed.

In process, on SQLite and (when reachable) PostgreSQL:

- N subject keys (default 100,000) wrapped under the region's KEK v1, bulk-inserted;
  a sample of them (default 2,000) each seal one value;
- reader threads decrypt sample values the whole time with their own keyring and
  no DEK cache, so every read unwraps its key through the provider as a cold cache
  would — before the rotation (the baseline) and during it;
- the rotation is stopped after a third of its batches (as if the process died),
  then resumed to the end.

Prints the rotation's rate, the reads that failed (the goal: none), whether every
key ended on the new KEK version, and the read rate during the rotation against
the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import func, insert, select

from bastion.crypto import aad
from bastion.crypto.envelope import FieldContext, seal
from bastion.crypto.keyring import Keyring
from bastion.crypto.rotation import KekRotation, RotationProgress
from bastion.crypto.tables import subject_keys
from bastion.logs import configure_logging
from bastion.state import State
from benchmarks.environment import chosen_backends
from benchmarks.pipeline import deployment

_BATCH = 5_000


class Interrupted(Exception):
    """Stands for the rotating process dying between two batches."""


def _subject(n: int) -> str:
    return f"bench-subject-{n:06d}"


def _context(n: int) -> FieldContext:
    return FieldContext("eu", "contacts", _subject(n), "email")


def _populate(state: State, subjects: int, sampled: int) -> dict[int, bytes]:
    """`subjects` keys under KEK v1 (bulk), of which `sampled` seal one value each."""
    keys = state.keys
    database = state.regions.get("eu")
    with database.transaction(write=True) as conn:  # creates KEK v1 and the region keys
        keys.dek_for_subject(conn, "eu", _subject(0))
    provider, now = keys.provider, state.clock.now()
    for start in range(1, subjects, _BATCH):
        rows = []
        for n in range(start, min(subjects, start + _BATCH)):
            key_id = os.urandom(16)
            wrapped = provider.wrap(
                "eu", 1, os.urandom(32), aad.dek_wrap("eu", _subject(n), key_id, 1, 1)
            )
            rows.append(
                {
                    "id": key_id.hex(),
                    "region": "eu",
                    "subject_id": _subject(n),
                    "version": 1,
                    "kek_version": 1,
                    "wrapped": wrapped,
                    "created_at": now,
                }
            )
        with database.transaction(write=True) as conn:
            conn.execute(insert(subject_keys), rows)
    blobs = {}
    step = max(1, subjects // sampled)
    with database.transaction() as conn:
        for n in range(0, subjects, step):
            key = keys.dek_for_subject(conn, "eu", _subject(n))
            blobs[n] = seal(key, f"user{n}@example.com".encode(), _context(n))
    return blobs


class Readers:
    """Threads decrypting sample values with an uncached keyring until stopped."""

    def __init__(self, state: State, blobs: dict[int, bytes], threads: int) -> None:
        self._state = state
        self._blobs = list(blobs.items())
        self._keyring = Keyring(
            regions=state.regions, provider=state.keys.provider, clock=state.clock, cache_size=0
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.reads = 0
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def count(self) -> int:
        with self._lock:
            return self.reads

    def _run(self, seed: int) -> None:
        chooser = random.Random(seed)
        database = self._state.regions.get("eu")
        while not self._stop.is_set():
            n, blob = chooser.choice(self._blobs)
            try:
                with database.transaction() as conn:
                    plain = self._keyring.unseal(conn, blob, _context(n))
                if plain != f"user{n}@example.com".encode():
                    raise AssertionError("decrypted the wrong value")
            except Exception as exc:
                with self._lock:
                    self.failures.append(type(exc).__name__)
                continue
            with self._lock:
                self.reads += 1


def report(backend: str, state: State, *, subjects: int, readers: int, batch: int) -> None:
    started = time.perf_counter()
    blobs = _populate(state, subjects, min(2_000, subjects))
    print(f"{backend:<10} {subjects} subject keys created in {time.perf_counter() - started:.1f} s")
    batches = (subjects + batch - 1) // batch
    with Readers(state, blobs, readers) as load:
        time.sleep(1.0)  # warm up
        before_reads, before = load.count(), time.perf_counter()
        time.sleep(5.0)
        baseline = (load.count() - before_reads) / (time.perf_counter() - before)

        seen = {"batches": 0}

        def die_after_a_third(_: RotationProgress) -> None:
            seen["batches"] += 1
            if seen["batches"] >= batches // 3:
                raise Interrupted

        rotation = KekRotation(state.keys, batch_size=batch)
        during_reads, began = load.count(), time.perf_counter()
        try:
            rotation.run("eu", progress=die_after_a_third)
        except Interrupted:
            interrupted_at = time.perf_counter() - began
        else:
            raise AssertionError("the rotation ended before it could be interrupted")
        result = rotation.resume("eu")
        elapsed = time.perf_counter() - began
        during = (load.count() - during_reads) / elapsed
        failures = list(load.failures)
    assert result is not None
    with state.regions.get("eu").transaction() as conn:
        left = conn.execute(
            select(func.count()).select_from(subject_keys).where(subject_keys.c.kek_version != 2)
        ).scalar_one()
    print(
        f"{backend:<10} rotation of {subjects} keys: {elapsed:.1f} s "
        f"({subjects / elapsed:,.0f} keys/s), interrupted after {interrupted_at:.1f} s and "
        f"resumed; {result.state}, {result.rewrapped} keys re-wrapped in both runs, "
        f"{left} left on the old version"
    )
    print(
        f"{backend:<10} reads during the rotation: {during:,.0f}/s vs {baseline:,.0f}/s before "
        f"-> {during / baseline:.2f}x; failed reads: {len(failures)} (goal: 0)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "all"), default="all")
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    configure_logging("console", "error")
    backends = chosen_backends(args.backend)
    for backend in backends:
        with (
            tempfile.TemporaryDirectory(prefix="bastion-bench-rotation-") as work,
            deployment(backend, Path(work)) as state,
        ):
            report(backend, state, subjects=args.subjects, readers=args.readers, batch=args.batch)


if __name__ == "__main__":
    main()
