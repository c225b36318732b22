"""What the policy speaks of: resources (CRM entities and system resources) and actions.

CRM entities take the record actions. System resources are Bastion's own objects
(the audit log, keys, policies, tokens, data subjects' requests); each has its own
actions. A policy line naming an unknown resource or an action the resource does
not have is refused when the policy loads.
"""

from __future__ import annotations

from collections.abc import Mapping

RECORD_ACTIONS = ("read", "list", "create", "update", "delete")

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
}


def resource_actions(entities: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Every resource the policy may name, with its actions: CRM entities first."""
    return {**dict.fromkeys(entities, RECORD_ACTIONS), **SYSTEM_RESOURCES}
