"""What a data subject's request is: its types, regimes, deadlines, states and steps.

A request moves through

    received -> verified -> approved -> running -> completed | partially_completed | failed
           \\-> rejected, cancelled (before it runs)

`partially_completed` is an erasure that had to keep something (a legal hold or a
retention rule); the result and the certificate say what and why. Each type runs a
fixed list of steps; a step that completed is recorded (`dsr_steps`) and never runs
again, so a worker killed at any point resumes where it stopped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, get_args

from bastion.errors import Conflict

RequestType = Literal["access", "export", "erasure", "rectification"]
Regime = Literal["gdpr", "ccpa"]
Status = Literal[
    "received",
    "verified",
    "approved",
    "running",
    "completed",
    "partially_completed",
    "failed",
    "rejected",
    "cancelled",
]

TYPES: tuple[RequestType, ...] = ("access", "export", "erasure", "rectification")
STATUSES: tuple[Status, ...] = get_args(Status)
REGIMES: tuple[Regime, ...] = ("gdpr", "ccpa")
OPEN: frozenset[str] = frozenset({"received", "verified", "approved", "running"})
FINAL: frozenset[str] = frozenset(
    {"completed", "partially_completed", "failed", "rejected", "cancelled"}
)
RUNNABLE: frozenset[str] = frozenset({"approved", "running"})
# Requests that change data for good need a second person to approve them.
FOUR_EYES: frozenset[str] = frozenset({"erasure", "rectification"})

# Days to answer, and by how much the deadline may be extended once, with a reason:
# GDPR Art. 12(3) one month (30 days here), extendable by two months; CCPA 45 + 45.
DEADLINES: dict[str, tuple[int, int]] = {"gdpr": (30, 60), "ccpa": (45, 45)}

STEPS: dict[str, tuple[str, ...]] = {
    "access": ("discover", "package", "finish"),
    "export": ("discover", "package", "finish"),
    "erasure": ("discover", "preserve", "erase", "shred", "certify", "finish"),
    "rectification": ("discover", "rectify", "finish"),
}


class InvalidTransition(Conflict):
    slug = "invalid-transition"
    title = "Not possible in this state"


def due_at(regime: str, received_at: datetime, *, extended: bool = False) -> datetime:
    base, extension = DEADLINES[regime]
    return received_at + timedelta(days=base + (extension if extended else 0))


def require_status(current: str, allowed: frozenset[str] | set[str], action: str) -> None:
    if current not in allowed:
        raise InvalidTransition(f"a request that is {current} cannot be {action}")
