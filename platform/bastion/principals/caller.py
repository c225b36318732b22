"""`Caller`: who is asking, and for the audit log, through which request from where."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bastion.principals.tokens import Principal


@dataclass(frozen=True, slots=True)
class Cause:
    """Why an automated caller acts: the automation event it answers, the rule (or
    `scoring`) acting, and how many automated changes led here. A change made with a
    cause carries it on, one level deeper, so automation can bound its own chains."""

    event_id: str
    rule: str
    depth: int


@dataclass(frozen=True, slots=True)
class Caller:
    """A principal making one request. `request_id` and `client_address` go into the
    audit events the request causes; jobs and the CLI leave them empty. `cause` is
    set only when automation acts."""

    principal: Principal
    request_id: str | None = None
    client_address: str | None = None
    cause: Cause | None = None

    @classmethod
    def of(
        cls, principal: Principal, request_id: str | None = None, client: str | None = None
    ) -> Caller:
        """A caller with the client's address kept only if it is an IP address (test
        clients and Unix sockets report other things)."""
        address = None
        if client:
            try:
                address = str(ipaddress.ip_address(client))
            except ValueError:
                address = None
        return cls(principal, request_id, address)
