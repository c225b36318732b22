"""`bastion policy diff A B`: which decisions change between two policy versions.

The review tool for a policy pull request: rather than a text diff of rules, every
(role, region, resource, action) whose row scope changes and every (role, region,
entity.field, read|write) whose access changes — from "never" to "if status not in
closed" to "always" — one line each. A and B are policy directories or git revisions
of the policy directory (`main`, `HEAD~1`, a commit id).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from bastion.policy.compiled import FieldMask
from bastion.policy.engine import MODEL_FILE, POLICY_FILE, Policy, PolicySource
from bastion.policy.rules import FIELD_ACTIONS, PolicyError


@dataclass(frozen=True, slots=True)
class Change:
    role: str
    region: str
    target: str  # resource, or entity.field
    action: str
    before: str
    after: str

    def __str__(self) -> str:
        return (
            f"{self.role:<20} {self.region:<6} {self.target + ' ' + self.action:<40} "
            f"{self.before} -> {self.after}"
        )


def source_at(reference: str, directory: Path) -> PolicySource:
    """The policy in directory `reference`, or at git revision `reference` of `directory`."""
    candidate = Path(reference)
    if candidate.is_dir():
        return PolicySource.from_directory(candidate)
    if reference.startswith("-") or any(c.isspace() for c in reference):
        raise PolicyError(f"{reference!r} is not a git revision")
    texts = []
    for name in (MODEL_FILE, POLICY_FILE):
        try:
            # An argument list, no shell; a revision cannot start with "-" (checked above),
            # so it cannot be read as an option.
            shown = subprocess.run(  # noqa: S603
                ["git", "-C", str(directory), "show", f"{reference}:./{name}"],  # noqa: S607
                capture_output=True,
                check=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            raise PolicyError(
                f"{reference!r} is neither a policy directory nor a git revision of {directory}"
            ) from None
        texts.append(shown.stdout.decode("utf-8", errors="strict"))
    return PolicySource(texts[0], texts[1], f"{directory}@{reference}")


def diff(before: Policy, after: Policy) -> list[Change]:
    changes: list[Change] = []
    roles = sorted(before.roles | after.roles)
    regions = [r for r in after.regions if r in before.regions]
    for role in roles:
        single = frozenset({role})
        for region in regions:
            for resource, actions in after.resources.items():
                for action in actions:
                    old = _scope(before, single, region, resource, action, role)
                    new = _scope(after, single, region, resource, action, role)
                    if old != new:
                        changes.append(Change(role, region, resource, action, old, new))
            for entity, spec in after.catalog.items():
                for field_action in FIELD_ACTIONS:
                    old_mask = before.mask(single, region, entity, field_action)
                    new_mask = after.mask(single, region, entity, field_action)
                    for field in spec.fields:
                        old = access_text(old_mask, field.name)
                        new = access_text(new_mask, field.name)
                        if old != new:
                            changes.append(
                                Change(
                                    role, region, f"{entity}.{field.name}", field_action, old, new
                                )
                            )
    return changes


def _scope(
    policy: Policy, roles: frozenset[str], region: str, resource: str, action: str, role: str
) -> str:
    if role not in policy.roles:
        return "(no such role)"
    return policy.scope(roles, region, resource, action).describe()


def access_text(mask: FieldMask, name: str) -> str:
    """How a mask grants `name`: `always`, `never`, or `if <condition>[ unless <condition>]`."""
    if name in mask.always:
        return "always"
    access = mask.conditional.get(name)
    if access is None:
        return "never"
    allows = " or ".join(c.text for c in access.allows if c is not None) or "always"
    denies = " or ".join(c.text for c in access.denies if c is not None)
    return f"if {allows}" + (f" unless {denies}" if denies else "")
