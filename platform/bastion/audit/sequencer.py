"""The background sequencer thread, and the health of the chains it keeps.

One `Sequencer` per process calls `AuditLog.tick(chain)` for every chain, every
`sequencer_interval_seconds` or at once after `notify`. A chain whose tick
fails — its database is down, or a row in it is not what the code expects — is
logged and retried at the next round; it never stops the thread or the other
chains. What each chain's last round did is kept for `AuditLog.health()`, which
`/readyz` can use: an unreachable database, a dead sequencer thread or a pending
event older than `max_backlog_age_seconds` make it not ok.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from sqlalchemy.exc import SQLAlchemyError

from bastion.errors import BastionError

log = structlog.get_logger("bastion.audit")

SequencerState = Literal["running", "stopped", "dead"]


@dataclass(frozen=True, slots=True)
class TickStatus:
    """The sequencer's record of one chain: consecutive failures and the last error's type."""

    failures: int = 0
    last_error: str | None = None
    last_success_monotonic: float | None = None


@dataclass(frozen=True, slots=True)
class ChainHealth:
    chain: str
    reachable: bool
    head_seq: int | None
    pending: int | None
    oldest_pending_seconds: float | None
    sequencer_failures: int
    last_error: str | None
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "ok": self.ok,
            "reachable": self.reachable,
            "head_seq": self.head_seq,
            "pending": self.pending,
            "oldest_pending_seconds": self.oldest_pending_seconds,
            "sequencer_failures": self.sequencer_failures,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class AuditHealth:
    """Every chain's backlog and the sequencer's state. `ok`: ready to serve audited writes."""

    sequencer: SequencerState
    chains: tuple[ChainHealth, ...]

    @property
    def ok(self) -> bool:
        return self.sequencer != "dead" and all(chain.ok for chain in self.chains)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sequencer": self.sequencer,
            "chains": [chain.to_json() for chain in self.chains],
        }


class Chains(Protocol):
    """What the sequencer drives (`AuditLog`)."""

    @property
    def chains(self) -> tuple[str, ...]: ...

    def tick(self, chain: str) -> int: ...


class Sequencer:
    """One background thread per process that keeps every chain chained and checkpointed."""

    def __init__(self, audit: Chains, interval: float) -> None:
        self._audit = audit
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._status: dict[str, TickStatus] = {}
        self._status_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="audit-sequencer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def state(self) -> SequencerState:
        if self._thread.is_alive():
            return "running"
        return "stopped" if self._stopping.is_set() or self._thread.ident is None else "dead"

    def status(self, chain: str) -> TickStatus:
        with self._status_lock:
            return self._status.get(chain, TickStatus())

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self.run_once()
        self.run_once()  # chain what the last requests appended

    def run_once(self) -> None:
        for chain in self._audit.chains:
            try:
                self._audit.tick(chain)
            except (BastionError, SQLAlchemyError) as exc:
                # One database down must not stop the others; the next tick retries.
                log.warning("audit_sequencer_failed", chain=chain, error=type(exc).__name__)
                self._failed(chain, exc)
            except Exception as exc:
                # Not an expected failure (a row the code cannot read, a bug): keep the
                # thread and the other chains going, and say so loudly. Only the type
                # is logged: a message could quote a row.
                log.error("audit_sequencer_error", chain=chain, error=type(exc).__name__)
                self._failed(chain, exc)
            else:
                with self._status_lock:
                    self._status[chain] = TickStatus(0, None, time.monotonic())

    def _failed(self, chain: str, exc: Exception) -> None:
        with self._status_lock:
            previous = self._status.get(chain, TickStatus())
            self._status[chain] = TickStatus(
                previous.failures + 1, type(exc).__name__, previous.last_success_monotonic
            )
