"""What the policy speaks of: resources (CRM entities and system resources) and actions.

CRM entities take the record actions. System resources are Bastion's own objects
(the audit log, keys, policies, tokens, data subjects' requests); each has its own
actions. A policy line naming an unknown resource or an action the resource does
not have is refused when the policy loads.
"""

from __future__ import annotations

from collections.abc import Mapping

RECORD_ACTIONS = ("read", "list", "create", "update", "delete")
# Bulk and data-quality actions, each a separate grant: `import` (CSV import; every
# row is also a create, checked as one), `export` (CSV/JSONL of what the caller may
# read), `merge` (duplicate records into one; data subjects only).
BULK_ACTIONS = ("import", "export")
MERGE_ENTITIES = ("contacts", "leads")

SYSTEM_RESOURCES: Mapping[str, tuple[str, ...]] = {
    # Query events, verify the chain, export (JSONL), write a checkpoint on demand.
    "audit": ("read", "verify", "export", "checkpoint"),
    # Key status, and KEK/DEK rotation.
    "keys": ("read", "rotate"),
    # Read/explain the policy, reload it.
    "policy": ("read", "reload"),
    # List, issue and revoke API tokens.
    "tokens": ("read", "create", "revoke"),
    # Data subjects' requests: approve also covers verifying identity, rejecting and
    # extending the deadline; download covers export packages and certificates.
    "dsr": ("read", "list", "create", "approve", "download", "cancel"),
    # Legal holds that keep records through an erasure.
    "legal_holds": ("read", "create", "release"),
    # Pipeline analytics (aggregates over opportunities). A role with `list` on
    # opportunities sees figures over its list scope; a role with only this grant sees
    # them over this grant's scope, with groups smaller than k suppressed.
    "analytics": ("read",),
    # Behaviour events of leads and contacts: send them (`POST /v1/events`), read a
    # person's timeline (which also needs read on the person).
    "events": ("create", "read"),
    # Webhook subscriptions of a region: list and read them with their delivery log,
    # make and delete them, replay a delivery.
    "webhooks": ("read", "create", "delete", "replay"),
    # The automation run record: what each workflow rule decided, why, and what it did.
    "automation": ("read",),
}
# The entity pipeline analytics aggregates.
ANALYTICS_ENTITY = "opportunities"


def entity_actions(entity: str) -> tuple[str, ...]:
    """The actions a policy may grant on one CRM entity."""
    merge = ("merge",) if entity in MERGE_ENTITIES else ()
    return (*RECORD_ACTIONS, *BULK_ACTIONS, *merge)


def resource_actions(entities: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Every resource the policy may name, with its actions: CRM entities first."""
    return {**{entity: entity_actions(entity) for entity in entities}, **SYSTEM_RESOURCES}
