"""The authorize step of the pipeline: one principal's rights, from the compiled policy.

Every decision the record service makes about a principal goes through `Access`:
whether an action is allowed at all (403 if not), which rows it covers (a WHERE
clause, so lists never fetch rows they then drop, and a row outside the scope is a
404), which fields a record shows, and whether a write may touch the fields it
names (403 naming them, before anything is written). Nothing else in Bastion
checks roles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import ColumnElement

from bastion.crm.catalog import EntitySpec
from bastion.crm.tables import ENTITY_TABLES
from bastion.errors import Forbidden
from bastion.policy.compiled import FieldMask, RowScope
from bastion.policy.conditions import RecordFacts, typed_values
from bastion.policy.engine import Policy
from bastion.policy.rules import FieldAction
from bastion.policy.scopes import classify, scope_clause
from bastion.principals.tokens import Principal


class FieldsForbidden(Forbidden):
    """A write or a query names fields the caller may not use; `fields` lists them."""

    def __init__(self, detail: str, fields: Iterable[str]) -> None:
        super().__init__(detail)
        self.fields = tuple(sorted(fields))

    @property
    def extensions(self) -> dict[str, object]:
        return {"fields": list(self.fields)}


class Access:
    """What one principal may do, under one loaded policy (one per request)."""

    def __init__(self, policy: Policy, principal: Principal) -> None:
        self.policy = policy
        self.principal = principal
        self._roles = principal.roles

    # -- actions and rows --------------------------------------------------------------

    def require(self, region: str, spec: EntitySpec, action: str) -> RowScope:
        """The rows `action` covers; `Forbidden` when the policy allows it on none."""
        scope = self.policy.scope(self._roles, region, spec.name, action)
        if not scope.permits_any:
            raise Forbidden(f"your roles do not allow {action} on {spec.name} in region {region}")
        return scope

    def where(self, spec: EntitySpec, scope: RowScope) -> ColumnElement[bool] | None:
        """The SQL predicate for `scope` on the entity's table (None: every row)."""
        return scope_clause(
            scope, ENTITY_TABLES[spec.name], self.principal.id, self.principal.teams
        )

    def facts(
        self,
        spec: EntitySpec,
        values: Mapping[str, Any],
        previous: Mapping[str, Any] | None = None,
    ) -> RecordFacts:
        """A record as conditions and scopes see it, for this principal; `previous`
        is the record before a write (what `old.` clauses test; `{}` for a new one)."""
        return RecordFacts(
            spec.name,
            typed_values(values),
            classify(values, self.principal.id, self.principal.teams),
            None if previous is None else typed_values(previous),
        )

    def require_in_scope(
        self, scope: RowScope, spec: EntitySpec, values: Mapping[str, Any], action: str
    ) -> None:
        """A record about to be created, or as an update would leave it, must fall inside
        that action's scope: a caller cannot hand a record to where it could not have
        created it (e.g. a rep scoped to `own` giving a contact to someone else)."""
        if not scope.covers(self.facts(spec, values).scopes):
            raise Forbidden(
                f"your {action} scope on {spec.name} is {scope.describe()}: "
                "set owner_id and team_id inside it"
            )

    def sees_kept_data(self, region: str) -> bool:
        """What an erasure kept (for a legal hold or a retention rule) is restricted to
        its purpose: only those allowed to read data subjects' requests see it."""
        return self.policy.allows(self._roles, region, "dsr", "read")

    # -- fields ------------------------------------------------------------------------

    def mask(self, region: str, spec: EntitySpec, action: FieldAction) -> FieldMask:
        return self.policy.mask(self._roles, region, spec.name, action)

    def readable(self, region: str, spec: EntitySpec, values: Mapping[str, Any]) -> frozenset[str]:
        """The fields of this record the caller may read: none at all when the record is
        outside its read scope (e.g. the answer to a create or update that a policy
        allowed without allowing the caller to read the result)."""
        scope = self.policy.scope(self._roles, region, spec.name, "read")
        mask = self.mask(region, spec, "read")
        if scope.unrestricted and not mask.conditional:
            return mask.always
        facts = self.facts(spec, values)
        if not scope.covers(facts.scopes):
            return frozenset()
        return mask.permitted(facts) if mask.conditional else mask.always

    def require_writable(
        self,
        region: str,
        spec: EntitySpec,
        names: Iterable[str],
        proposed: Mapping[str, Any] | None = None,
        *,
        previous: Mapping[str, Any] | None = None,
        label: str = "",
    ) -> None:
        """Refuse a write naming fields the caller may not write (all named at once).

        Without `proposed`, conditional fields count as writable (their conditions
        are checked once the values are known, by calling again with `proposed`:
        the record as it would be after the write, and `previous`: as it was before,
        `{}` for a new record).
        """
        mask = self.mask(region, spec, "write")
        names = set(names)
        allowed = (
            mask.possible
            if proposed is None
            else mask.permitted(self.facts(spec, proposed, {} if previous is None else previous))
        )
        refused = sorted(names - allowed)
        if refused:
            shown = [f"{label}{name}" for name in refused]
            raise FieldsForbidden(
                f"you may not write {', '.join(shown)} of {spec.name} in region {region}"
                + (" (with these values)" if proposed is not None else ""),
                shown,
            )

    def require_readable(
        self, regions: Iterable[str], spec: EntitySpec, names: Iterable[str], purpose: str
    ) -> None:
        """Filtering or sorting needs the field readable in every row: no oracle."""
        refused: set[str] = set()
        for region in regions:
            refused |= set(names) - self.mask(region, spec, "read").always
        if refused:
            raise FieldsForbidden(
                f"you may not {purpose} on {', '.join(sorted(refused))}: "
                "you cannot read it in every record",
                refused,
            )
