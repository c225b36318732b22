"""What every operation on a system resource of a region goes through first (data
subjects' requests, legal holds, activity events, webhook subscriptions, automation
runs): the caller's region, the policy's decision on the resource (a refusal is
audited in the region asked about), and routing an id to its region."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from bastion.audit import AuditEvent
from bastion.clock import Clock
from bastion.crm.auditing import Recorder
from bastion.errors import FieldError, Forbidden, NotFound, ValidationFailed
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller
from bastion.residency.databases import Regions
from bastion.residency.ids import InvalidId, RecordId

# The audit action prefix of each resource's operations (`hold.create`, `webhook.read`).
_EVENT_PREFIX = {
    "dsr": "dsr",
    "legal_holds": "hold",
    "events": "events",
    "webhooks": "webhook",
    "automation": "automation",
}


class Gate:
    def __init__(
        self,
        *,
        regions: Regions,
        recorder: Recorder,
        clock: Clock,
        policy: Callable[[], Policy],
    ) -> None:
        self._regions = regions
        self._recorder = recorder
        self._clock = clock
        self._policy = policy

    def allow(
        self,
        caller: Caller,
        region: str,
        resource: str,
        action: str,
        record_ids: list[str] | None = None,
    ) -> Policy:
        """The policy's decision; a refusal (a region the caller does not hold, or an
        action its roles do not allow) is audited in the region asked about."""
        policy = self._policy()
        principal = caller.principal
        if region not in principal.regions:
            self._refused(caller, region, resource, action, record_ids, policy)
            raise Forbidden(f"you may not access region {region}")
        if not policy.allows(principal.roles, region, resource, action):
            self._refused(caller, region, resource, action, record_ids, policy)
            raise Forbidden(f"your roles do not allow {action} on {resource} in region {region}")
        return policy

    def _refused(
        self,
        caller: Caller,
        region: str,
        resource: str,
        action: str,
        record_ids: list[str] | None,
        policy: Policy,
    ) -> None:
        if region not in self._regions:
            return  # no such region: nowhere to record it (callers answer 404/422)
        with self._regions.get(region).transaction(write=True) as conn:
            self._recorder.append(
                conn,
                region,
                AuditEvent.new(
                    self._clock,
                    actor=caller.principal.id,
                    action=f"{_EVENT_PREFIX[resource]}.{action}",
                    entity=resource,
                    decision="deny",
                    record_ids=record_ids or [],
                    reason="policy:action-denied",
                    policy_version=policy.version,
                    request_id=caller.request_id,
                    client_address=caller.client_address,
                ),
            )

    def audit(
        self,
        conn: Connection,
        caller: Caller,
        region: str,
        policy: Policy,
        action: str,
        record_ids: list[str],
        entity: str = "dsr",
        details: dict[str, Any] | None = None,
    ) -> None:
        self._recorder.append(
            conn,
            region,
            AuditEvent.new(
                self._clock,
                actor=caller.principal.id,
                action=action,
                entity=entity,
                record_ids=record_ids,
                policy_version=policy.version,
                request_id=caller.request_id,
                client_address=caller.client_address,
                details=details,
            ),
        )

    def route(self, caller: Caller, record_id: str, prefix: str, what: str) -> str:
        """The region of a request or hold id the caller may reach (else 404)."""
        try:
            parsed = RecordId.parse(record_id)
        except InvalidId:
            raise NotFound(f"no {what} has that id") from None
        if parsed.prefix != prefix or parsed.region not in self._regions:
            raise NotFound(f"no {what} has that id")
        if parsed.region not in caller.principal.regions:
            raise NotFound(f"no {what} has that id in your regions")
        return parsed.region

    def one_region(self, caller: Caller, region: str | None, resource: str, action: str) -> str:
        """The region a one-region list covers (the one asked for, or the caller's
        first), allowed by the policy; 422 for an unknown one, 403 without any."""
        if region is None:
            if not caller.principal.regions:
                raise Forbidden("you are not permitted in any region")
            region = caller.principal.default_region
        if region not in self._regions:
            raise ValidationFailed(
                "invalid request", [FieldError("region", "is not a configured region")]
            )
        self.allow(caller, region, resource, action)
        return region

    def listed_regions(
        self, caller: Caller, region: str | None, resource: str, action: str
    ) -> list[str]:
        """The regions a list covers (the one asked for, or all of the caller's), each
        allowed by the policy."""
        regions = [region] if region else list(caller.principal.regions)
        for name in regions:
            if name not in self._regions:
                raise ValidationFailed(
                    "invalid request", [FieldError("region", "is not a configured region")]
                )
            self.allow(caller, name, resource, action)
        return regions
