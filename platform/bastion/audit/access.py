"""Who may read, verify, export and checkpoint which chain — and the record that they did.

A region's chain: the principal must hold the region and the policy must allow
`(roles, region, "audit", action)`. The control chain spans every region (token
and policy events concern them all), so it takes the action in *every*
configured region. Without an explicit region, queries cover the caller's
permitted regions (not the control chain; ask for `region=control`) -- except a
query about one record, which goes to the record's own region only: its id names
that region, and the id itself is never sent to (nor recorded in) another one.

Reading the audit log is itself audited: every call appends an `audit.<action>`
event to each chain it touched before answering.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bastion.audit.checkpoints import Checkpoint
from bastion.audit.events import AuditEvent
from bastion.audit.queries import EventFilter
from bastion.audit.service import AuditLog, EventPage
from bastion.audit.verify import VerifyReport
from bastion.clock import Clock
from bastion.errors import FieldError, Forbidden, NotFound, ValidationFailed
from bastion.policy.engine import Policy
from bastion.principals.tokens import Principal
from bastion.residency.databases import CONTROL
from bastion.residency.ids import region_of

RESOURCE = "audit"


@dataclass(frozen=True, slots=True)
class Caller:
    """The principal and the request it came with, for the `audit.*` event."""

    principal: Principal
    request_id: str | None = None
    client_address: str | None = None


class AuditAccess:
    def __init__(
        self, audit: AuditLog, policy: Policy, *, regions: tuple[str, ...], clock: Clock
    ) -> None:
        self._audit = audit
        self._policy = policy
        self._regions = regions
        self._clock = clock

    def chains(self, principal: Principal, action: str, region: str | None) -> list[str]:
        """The chains `principal` may `action`: `region`'s, or all its permitted regions'.

        `NotFound` for an unknown region, `Forbidden` when not allowed.
        """
        if region is None:
            permitted = [r for r in principal.regions if self._allowed(principal, action, r)]
            if not permitted:
                raise Forbidden(f"you may not {action} the audit log in any of your regions")
            return permitted
        if region == CONTROL:
            if not all(self._allowed(principal, action, r) for r in self._regions):
                raise Forbidden(f"the control audit chain needs audit {action} in every region")
            return [CONTROL]
        if region not in self._regions:
            raise NotFound(f"unknown region {region!r}")
        if not self._allowed(principal, action, region):
            raise Forbidden(f"you may not {action} the audit log of region {region}")
        return [region]

    def _chains_for(
        self, principal: Principal, action: str, region: str | None, flt: EventFilter
    ) -> list[str]:
        """`chains`, narrowed to the record's own region when `flt` names a record id."""
        home = region_of(flt.record_id)
        if home is None or region == CONTROL:
            return self.chains(principal, action, region)
        if region is not None and region != home:
            raise ValidationFailed(
                f"record_id names a record of region {home!r}, not {region!r}",
                [FieldError("record_id", f"is a record of region {home!r}")],
            )
        return self.chains(principal, action, home)

    def _allowed(self, principal: Principal, action: str, region: str) -> bool:
        return region in principal.regions and self._policy.allows(
            principal.roles, region, RESOURCE, action
        )

    def _audited(self, caller: Caller, chains: list[str], action: str, **details: Any) -> None:
        for chain in chains:
            self._audit.record(
                chain,
                AuditEvent.new(
                    self._clock,
                    actor=caller.principal.id,
                    action=f"audit.{action}",
                    entity=RESOURCE,
                    policy_version=self._policy.version,
                    request_id=caller.request_id,
                    client_address=caller.client_address,
                    details=details,
                ),
            )

    def events(
        self,
        caller: Caller,
        region: str | None,
        flt: EventFilter,
        *,
        limit: int,
        cursor: str | None,
        descending: bool,
    ) -> EventPage:
        chains = self._chains_for(caller.principal, "read", region, flt)
        page = self._audit.events(chains, flt, limit=limit, cursor=cursor, descending=descending)
        for chain in chains:
            self._audit.record(
                chain,
                AuditEvent.new(
                    self._clock,
                    actor=caller.principal.id,
                    action="audit.read",
                    entity=RESOURCE,
                    record_ids=[flt.record_id] if flt.record_id else (),
                    policy_version=self._policy.version,
                    request_id=caller.request_id,
                    client_address=caller.client_address,
                    details={"returned": len(page.data)},
                ),
            )
        return page

    def verify(
        self, caller: Caller, region: str, from_seq: int | None, witness_note: str | None = None
    ) -> VerifyReport:
        """Verify one chain, and against `witness_note` (a signed checkpoint) when given.

        Access is checked first; then a bad note is `ValidationFailed` naming `body`.
        """
        chains = self.chains(caller.principal, "verify", region)
        witness = None
        if witness_note is not None:
            witness = self._audit.witness(chains[0], witness_note, field="body")
        report = self._audit.verify(chains[0], from_seq=from_seq, witness=witness)
        details: dict[str, Any] = {"ok": report.ok, "last_seq": report.last_seq}
        if witness is not None:
            details["witness_tree_size"] = witness.tree_size
        self._audited(caller, chains, "verify", **details)
        return report

    def checkpoints(
        self, caller: Caller, region: str, *, before: int | None, limit: int
    ) -> tuple[list[Checkpoint], str]:
        chains = self.chains(caller.principal, "read", region)
        found = self._audit.checkpoints(chains[0], before=before, limit=limit)
        verifier = self._audit.verifier_key(chains[0])
        self._audited(caller, chains, "read", checkpoints=len(found))
        return found, verifier

    def create_checkpoint(self, caller: Caller, region: str) -> tuple[Checkpoint, bool]:
        """The new checkpoint (or the head's existing one) and whether it is new."""
        chains = self.chains(caller.principal, "checkpoint", region)
        before = self._audit.checkpoints(chains[0], limit=1)
        checkpoint = self._audit.checkpoint(chains[0])
        created = not before or before[0].tree_size != checkpoint.tree_size
        self._audited(caller, chains, "checkpoint", tree_size=checkpoint.tree_size)
        return checkpoint, created

    def export(
        self, caller: Caller, region: str | None, flt: EventFilter
    ) -> Iterator[dict[str, Any]]:
        """Check access and record the export now; the returned iterator streams it."""
        chains = self._chains_for(caller.principal, "export", region, flt)
        self._audited(caller, chains, "export")

        def stream() -> Iterator[dict[str, Any]]:
            for chain in chains:
                yield from self._audit.export(chain, flt)

        return stream()
