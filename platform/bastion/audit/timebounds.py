"""Time anomalies: events dated outside the signed checkpoint times around them.

An event's `occurred_at` comes from the application, which may set any time (a
compromised or buggy writer can backdate an event so it falls outside "who
accessed X last month"). The signed checkpoints bracket it: an event chained
after the checkpoint at size N existed after N's signed time, and one chained at
or before size M existed before M's. `verify` counts events whose time is more
than the clock tolerance (`AuditSettings.clock_tolerance_seconds`, default 5
minutes) earlier than the checkpoint before them or later than the checkpoint
after them — back- or forward-dated, or hosts whose clocks disagree by more than
the tolerance, or a request transaction open that long — and names the first.
It is a warning, not a failure: the chain itself is intact. Events after the
newest checkpoint are bounded below only; a walk started with `from` has no
lower bound until it passes a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta

from bastion.audit.checkpoints import Checkpoint
from bastion.audit.encoding import format_time


class TimeBounds:
    """The canonical-time window an event at the current position must fall in."""

    def __init__(self, checkpoints: Mapping[int, Checkpoint | None], tolerance: timedelta) -> None:
        self._tolerance = tolerance
        self.lower = ""  # canonical times compare as strings
        self._ahead: Iterator[tuple[int, Checkpoint]] = iter(
            sorted((s, c) for s, c in checkpoints.items() if c is not None)
        )
        self._next_size, self._upper = 0, ""
        self._advance(1)

    def upper(self, seq: int) -> str:
        if seq > self._next_size:
            self._advance(seq)
        return self._upper

    def passed(self, checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:
            self.lower = format_time(checkpoint.created_at - self._tolerance)

    def _advance(self, seq: int) -> None:
        for size, checkpoint in self._ahead:
            if size >= seq:
                self._next_size = size
                self._upper = format_time(checkpoint.created_at + self._tolerance)
                return
        self._next_size, self._upper = 1 << 62, "\uffff"
