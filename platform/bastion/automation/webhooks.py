"""Webhook subscriptions: made, listed, deleted; their deliveries' log, and replay.

A subscription lives in one region and hears that region's changes only (its rows,
its deliveries and its secret are in that region's database). It declares where its
endpoint runs (`endpoint_region`): an endpoint declared in another region may only
subscribe with `payload: ids` — deliveries then carry ids, never a field — so data of
one region never goes to an endpoint declared in another. Full payloads are the
record rendered through the subscription owner's field mask and row scope when the
delivery is sent (`delivery`), so a webhook never sends a field its owner may not
read.

Topics: `<entity>.created|updated|deleted` (or `<entity>.*`) for record changes, and
`workflow.<topic>` (or `workflow.*`) for workflow rules' `webhook` actions.

The secret (`whsec_…`) is returned once, when the subscription is made; it is kept
sealed under the subscription's own data key, which deleting the subscription
destroys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from bastion.automation import paging
from bastion.automation import webhook_repository as repo
from bastion.automation.model import TOPIC_RE
from bastion.automation.outbound import check_url
from bastion.automation.settings import WebhookSettings
from bastion.automation.signing import new_secret
from bastion.clock import Clock
from bastion.crm.catalog import ENTITIES
from bastion.crm.cursors import CursorCodec
from bastion.crm.records import to_json_value
from bastion.crypto.envelope import FieldContext
from bastion.crypto.keyring import Keyring
from bastion.dsr.gate import Gate
from bastion.errors import Conflict, FieldError, NotFound, ValidationFailed
from bastion.principals.caller import Caller
from bastion.residency.databases import Regions
from bastion.residency.ids import RecordId, is_valid_region_name

MAX_TOPICS = 20
_KINDS = ("created", "updated", "deleted", "*")
_FIELDS = {"url", "topics", "region", "endpoint_region", "payload", "description"}
_STATUSES = ("pending", "delivered", "dead", "cancelled")
_DESCRIPTION = re.compile(r"[^\x00-\x1f\x7f]{0,200}")


def secret_context(region: str, subscription_id: str) -> FieldContext:
    return FieldContext(region, "webhook_subscriptions", subscription_id, "secret")


def valid_topic(topic: object) -> bool:
    if not isinstance(topic, str):
        return False
    head, _, tail = topic.partition(".")
    if head in ENTITIES:
        return tail in _KINDS
    return head == "workflow" and (tail == "*" or TOPIC_RE.fullmatch(tail) is not None)


def delivery_row(
    region: str,
    subscription_id: str,
    source_id: str,
    topic: str,
    entity: str,
    record_id: str,
    rule_id: str | None,
    fields: list[str],
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": str(RecordId.new("whd", region, now)),
        "region": region,
        "subscription_id": subscription_id,
        "source_id": source_id,
        "topic": topic,
        "entity": entity,
        "record_id": record_id,
        "rule_id": rule_id,
        "fields": fields,
        "occurred_at": now,
        "status": "pending",
        "attempts": 0,
        "replays": 0,
        "next_attempt_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "last_status": None,
        "last_error": None,
        "created_at": now,
        "delivered_at": None,
    }


def fan_out(
    conn: Connection,
    region: str,
    listened: list[str],
    topic: str,
    *,
    source_id: str,
    entity: str,
    record_id: str,
    rule_id: str | None,
    fields: list[str],
    now: datetime,
) -> int:
    """A delivery (once per subscription and source) to every active subscription
    listening to one of `listened`, as `topic`; how many subscriptions listen."""
    subscriptions = repo.subscribers(conn, listened)
    repo.insert_deliveries(
        conn,
        [
            delivery_row(region, s, source_id, topic, entity, record_id, rule_id, fields, now)
            for s in subscriptions
        ],
    )
    return len(subscriptions)


class Webhooks:
    def __init__(
        self,
        *,
        regions: Regions,
        keys: Keyring,
        gate: Gate,
        clock: Clock,
        settings: WebhookSettings,
        production: bool,
        cursors: CursorCodec,
    ) -> None:
        self._regions = regions
        self._keys = keys
        self._gate = gate
        self._clock = clock
        self._settings = settings
        self._production = production
        self._cursors = cursors

    def create(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        """A new subscription, with its secret (shown this once)."""
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise ValidationFailed(
                "invalid subscription",
                [FieldError(n, "is not a field of a subscription") for n in unknown],
            )
        region = body.get(
            "region", caller.principal.default_region if caller.principal.regions else None
        )
        if not isinstance(region, str) or region not in self._regions:
            raise ValidationFailed(
                "invalid subscription", [FieldError("region", "is not a configured region")]
            )
        policy = self._gate.allow(caller, region, "webhooks", "create")
        values = self._checked(body, region)
        now = self._clock.now()
        subscription_id = str(RecordId.new("whk", region, now))
        secret = new_secret()
        database = self._regions.get(region)
        with database.transaction(write=True) as conn:
            sealed = self._keys.seal(
                conn, subscription_id, secret.encode(), secret_context(region, subscription_id)
            )
            row = {
                **values,
                "id": subscription_id,
                "region": region,
                "owner_id": caller.principal.id,
                "secret": sealed,
                "status": repo.ACTIVE,
                "created_at": now,
                "deleted_at": None,
            }
            topics = row.pop("topics")
            repo.insert_subscription(conn, row, topics)
            self._gate.audit(
                conn,
                caller,
                region,
                policy,
                "webhook.create",
                [subscription_id],
                "webhooks",
                {"payload": row["payload"], "endpoint_region": row["endpoint_region"]},
            )
            shown = show(repo.fetch_subscription(conn, subscription_id) or {})
        return {**shown, "secret": secret}

    def _checked(self, body: Mapping[str, Any], region: str) -> dict[str, Any]:
        errors: list[FieldError] = []
        try:
            url = check_url(body.get("url"), self._settings, production=self._production)
        except ValidationFailed as exc:
            errors.extend(exc.errors)
            url = ""
        topics = body.get("topics")
        if not isinstance(topics, list) or not 1 <= len(topics) <= MAX_TOPICS:
            errors.append(FieldError("topics", f"must list 1 to {MAX_TOPICS} topics"))
            topics = []
        for index, topic in enumerate(topics):
            if not valid_topic(topic):
                errors.append(
                    FieldError(
                        f"topics[{index}]",
                        "must be <entity>.created|updated|deleted|* or workflow.<topic>",
                    )
                )
        payload = body.get("payload", "full")
        if payload not in ("full", "ids"):
            errors.append(FieldError("payload", "must be full or ids"))
        endpoint = body.get("endpoint_region")
        if not isinstance(endpoint, str) or not is_valid_region_name(endpoint):
            errors.append(
                FieldError("endpoint_region", "must name the region the endpoint runs in")
            )
        elif endpoint != region and payload == "full":
            errors.append(
                FieldError(
                    "endpoint_region",
                    f"an endpoint outside {region} may receive {region} data as ids only "
                    "(payload: ids)",
                )
            )
        description = body.get("description")
        if description is not None and (
            not isinstance(description, str) or _DESCRIPTION.fullmatch(description) is None
        ):
            errors.append(FieldError("description", "must be one line of at most 200 characters"))
        if errors:
            raise ValidationFailed("invalid subscription", errors)
        return {
            "url": url,
            "topics": sorted(set(topics)),
            "payload": payload,
            "endpoint_region": endpoint,
            "description": description,
        }

    def list(
        self, caller: Caller, *, region: str | None, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        """Active subscriptions of one region (default: the caller's first), newest first."""
        name = self._gate.one_region(caller, region, "webhooks", "read")
        fingerprint = f"webhooks:{name}"
        before = paging.position(self._cursors, fingerprint, cursor)
        with self._regions.get(name).transaction() as conn:
            found = repo.list_subscriptions(conn, before=before, limit=limit + 1)
        shown, next_cursor = paging.page(self._cursors, fingerprint, found, limit, "created_at")
        page = [show(s) for s in shown]
        return {"data": page, "next_cursor": next_cursor}

    def get(self, caller: Caller, subscription_id: str) -> dict[str, Any]:
        region = self._gate.route(caller, subscription_id, "whk", "webhook subscription")
        self._gate.allow(caller, region, "webhooks", "read", [subscription_id])
        with self._regions.get(region).transaction() as conn:
            return show(self._subscription(conn, subscription_id))

    def delete(self, caller: Caller, subscription_id: str) -> None:
        """Delete a subscription: its pending deliveries are cancelled, its secret's key
        destroyed; its delivery log stays."""
        region = self._gate.route(caller, subscription_id, "whk", "webhook subscription")
        policy = self._gate.allow(caller, region, "webhooks", "delete", [subscription_id])
        with self._regions.get(region).transaction(write=True) as conn:
            self._subscription(conn, subscription_id)
            repo.delete_subscription(conn, subscription_id, self._clock.now())
            self._keys.shred(conn, region, subscription_id)
            self._gate.audit(
                conn, caller, region, policy, "webhook.delete", [subscription_id], "webhooks"
            )

    def deliveries(
        self,
        caller: Caller,
        subscription_id: str,
        *,
        status: str | None,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        """A subscription's deliveries, newest first, each with its attempts."""
        if status is not None and status not in _STATUSES:
            raise ValidationFailed(
                "invalid request", [FieldError("status", f"must be one of {', '.join(_STATUSES)}")]
            )
        region = self._gate.route(caller, subscription_id, "whk", "webhook subscription")
        self._gate.allow(caller, region, "webhooks", "read", [subscription_id])
        fingerprint = f"deliveries:{subscription_id}:{status}"
        before = paging.position(self._cursors, fingerprint, cursor)
        with self._regions.get(region).transaction() as conn:
            self._subscription(conn, subscription_id, deleted_too=True)
            found = repo.deliveries(
                conn, subscription_id, status=status, before=before, limit=limit + 1
            )
            shown, next_cursor = paging.page(self._cursors, fingerprint, found, limit, "created_at")
            attempts = repo.attempts_of(conn, [d["id"] for d in shown])
        page = [show_delivery(d, attempts[d["id"]]) for d in shown]
        return {"data": page, "next_cursor": next_cursor}

    def replay(self, caller: Caller, subscription_id: str, delivery_id: str) -> dict[str, Any]:
        """Send a delivered or dead-lettered delivery again (same `webhook-id`, so the
        receiver can tell it is the same message), with a fresh round of attempts."""
        region = self._gate.route(caller, subscription_id, "whk", "webhook subscription")
        policy = self._gate.allow(caller, region, "webhooks", "replay", [subscription_id])
        now = self._clock.now()
        with self._regions.get(region).transaction(write=True) as conn:
            subscription = self._subscription(conn, subscription_id)
            delivery = repo.fetch_delivery(conn, delivery_id)
            if delivery is None or delivery["subscription_id"] != subscription["id"]:
                raise NotFound("the subscription has no delivery with that id")
            if delivery["status"] not in ("delivered", "dead"):
                raise Conflict(
                    f"the delivery is {delivery['status']}: "
                    "only a delivered or dead-lettered one is replayed"
                )
            repo.update_delivery(
                conn,
                delivery_id,
                {
                    "status": "pending",
                    "attempts": 0,
                    "replays": int(delivery["replays"]) + 1,
                    "next_attempt_at": now,
                    "lease_owner": None,
                    "lease_expires_at": None,
                },
            )
            self._gate.audit(
                conn,
                caller,
                region,
                policy,
                "webhook.replay",
                [subscription_id, delivery_id],
                "webhooks",
            )
            replayed = repo.fetch_delivery(conn, delivery_id) or {}
            attempts = repo.attempts_of(conn, [delivery_id])[delivery_id]
        return show_delivery(replayed, attempts)

    @staticmethod
    def _subscription(
        conn: Connection, subscription_id: str, *, deleted_too: bool = False
    ) -> dict[str, Any]:
        found = repo.fetch_subscription(conn, subscription_id)
        if found is None or (found["status"] != repo.ACTIVE and not deleted_too):
            raise NotFound("no webhook subscription has that id")
        return found


def show(subscription: Mapping[str, Any]) -> dict[str, Any]:
    """A subscription as the API shows it (never its secret)."""
    return {
        key: to_json_value(subscription.get(key))
        for key in (
            "id",
            "region",
            "url",
            "topics",
            "endpoint_region",
            "payload",
            "description",
            "owner_id",
            "status",
            "created_at",
        )
    }


def show_delivery(delivery: Mapping[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    shown = {
        key: to_json_value(delivery.get(key))
        for key in (
            "id",
            "subscription_id",
            "topic",
            "entity",
            "record_id",
            "rule_id",
            "status",
            "attempts",
            "replays",
            "next_attempt_at",
            "last_status",
            "last_error",
            "created_at",
            "delivered_at",
        )
    }
    if shown["status"] != "pending":
        shown["next_attempt_at"] = None
    shown["log"] = [
        {
            "number": a["number"],
            "attempted_at": to_json_value(a["attempted_at"]),
            "status_code": a["status_code"],
            "error": a["error"],
            "duration_ms": a["duration_ms"],
            "next_attempt_at": to_json_value(a["next_attempt_at"]),
        }
        for a in attempts
    ]
    return shown
