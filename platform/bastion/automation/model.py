"""What automation speaks of: its principal, the kinds of triggering events, the
behaviour events leads and contacts may have, durations, and topic names."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

from bastion.principals.caller import Caller, Cause
from bastion.principals.tokens import Principal

ROLE = "automation"
ACTOR = "system:automation"
# The cause recorded on changes made by lead scoring (rules use their own ids).
SCORING = "scoring"

EventKind = Literal["created", "updated", "deleted", "activity", "timer"]
KINDS: tuple[EventKind, ...] = ("created", "updated", "deleted", "activity", "timer")

# Behaviour events `POST /v1/events` takes, about a lead or a contact.
ACTIVITY_TYPES = ("email_opened", "link_clicked", "page_visited", "form_submitted")
SUBJECT_ENTITIES = ("leads", "contacts")

RULE_ID_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")
# A workflow's own webhook topic (`webhook: lead.hot` is delivered as `workflow.lead.hot`).
TOPIC_RE = re.compile(r"[a-z][a-z0-9_]{0,31}(?:\.[a-z][a-z0-9_]{0,31}){0,3}")
_DURATION_RE = re.compile(r"([1-9][0-9]{0,5})\s*(m|h|d)")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
MAX_DURATION = timedelta(days=366)


def yaml_files(directory: Path) -> dict[str, str] | None:
    """The text of each `*.yaml` (and `*.yml`) file of `directory` by file name, sorted;
    None when the directory does not exist. Raises `ValueError` naming what could not
    be read (never its content)."""
    if not directory.is_dir():
        return None
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    texts = {}
    for path in files:
        try:
            texts[path.name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path.name}: cannot read it ({type(exc).__name__})") from None
    return texts


def parse_duration(text: object) -> timedelta:
    """`90m`, `48h`, `14d` as a timedelta; ValueError (saying what is expected) else."""
    match = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError("must be a duration such as 90m, 48h or 14d")
    amount, unit = match.groups()
    duration = timedelta(**{_UNITS[unit]: int(amount)})
    if duration > MAX_DURATION:
        raise ValueError("must be at most 366 days")
    return duration


def automation_principal(regions: tuple[str, ...]) -> Principal:
    """The principal automation is: `system:automation`, with the policy's
    `automation` role, in every configured region (never a person's)."""
    return Principal(ACTOR, "automation", frozenset({ROLE}), regions, ())


def automation_caller(regions: tuple[str, ...], cause: Cause) -> Caller:
    """The caller automation acts as, with the automation event as the request id (so
    every audit event it causes names the event that made it act)."""
    return Caller(automation_principal(regions), request_id=cause.event_id, cause=cause)
