"""Delivering webhooks: the queue of pending deliveries (`bastion.jobs` runs it).

Each attempt renders the payload at that moment through the subscription owner's
rights (`RecordService.get` as the owner: its row scope and field mask, audited as
its read with the delivery as request id), signs it (`signing`), posts it
(`outbound.Sender`: SSRF rules, bounded timeouts, no redirects) outside any
database transaction, then records the attempt in the delivery log. A 2xx answer
delivers it; anything else (another status, a timeout, a refused address) is retried
after `backoff` — `retry_base_seconds`, doubling, up to `retry_cap_seconds` — and
after `max_attempts` attempts the delivery is dead-lettered (`dead`, replayable).

A record the owner may no longer read (deleted, erased, outside its scope, or the
owner disabled) is sent as ids with `record: null`: the receiver learns that
something happened to an id it was told of, nothing more. Subscriptions with
`payload: ids` never carry more than ids.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Connection

from bastion.audit import AuditEvent
from bastion.automation import webhook_repository as repo
from bastion.automation.outbound import Sender, Sent
from bastion.automation.repository import due
from bastion.automation.settings import WebhookSettings
from bastion.automation.signing import headers
from bastion.automation.tables import webhook_deliveries
from bastion.automation.webhooks import secret_context
from bastion.clock import Clock
from bastion.crm.catalog import SYSTEM_FIELDS
from bastion.crm.service import RecordService
from bastion.crypto.keyring import Keyring
from bastion.errors import BastionError
from bastion.jobs import lease
from bastion.jobs.runner import TRANSIENT
from bastion.policy.engine import Policy
from bastion.principals.caller import Caller
from bastion.principals.tokens import Principal
from bastion.residency.databases import Database

log = structlog.get_logger("bastion.webhooks")
ACTOR = "system:webhooks"


class DeliveryQueue:
    """Pending deliveries of every region (a `bastion.jobs.runner.Queue`)."""

    name = "webhooks"

    def __init__(
        self,
        *,
        records: RecordService,
        keys: Keyring,
        owner: Callable[[str], Principal | None],
        clock: Clock,
        settings: WebhookSettings,
        policy: Callable[[], Policy],
        worker_id: str,
        lease_seconds: int,
    ) -> None:
        self._records = records
        self._keys = keys
        self._owner = owner
        self._clock = clock
        self._settings = settings
        self._policy = policy
        self.worker_id = worker_id
        # A lease outlives the longest attempt, so no other worker sends it meanwhile.
        self._claims = lease.Claimer(
            worker=worker_id,
            clock=clock,
            lease=timedelta(seconds=max(lease_seconds, settings.timeout_seconds * 3)),
        )
        self._sender = Sender(settings)
        self._recorder = records.recorder

    def close(self) -> None:
        self._sender.close()

    def run_region(self, database: Database, stop: threading.Event) -> int:
        sent = 0
        while not stop.is_set():
            claimed = self._claims.take(
                database,
                webhook_deliveries,
                ready=lambda at: due(webhook_deliveries, at),
                order_by=(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id),
                limit=self._settings.batch_size,
            )
            if not claimed:
                break
            for delivery_id in claimed:
                if stop.is_set():
                    break
                try:
                    self.attempt(database, delivery_id)
                except TRANSIENT:
                    raise  # the region is down: the next pass, once its lease ran out
                except Exception as exc:  # a bug must not keep a delivery from its dead letter
                    log.error(
                        "webhook_attempt_crashed",
                        delivery=delivery_id,
                        error_type=type(exc).__name__,
                    )
                    self._crashed(database, delivery_id, exc)
                sent += 1
        return sent

    def _crashed(self, database: Database, delivery_id: str, exc: Exception) -> None:
        """Record an attempt that failed inside Bastion as a failed attempt (retried on
        the backoff, then dead-lettered like any other)."""
        with database.transaction() as conn:
            delivery = repo.fetch_delivery(conn, delivery_id)
            subscription = (
                repo.fetch_subscription(conn, delivery["subscription_id"]) if delivery else None
            )
        if delivery is not None and subscription is not None:
            error = f"internal:{type(exc).__name__.lower()}"[:64]
            self._record(database, delivery, subscription, Sent(None, error, 0), [])

    def attempt(self, database: Database, delivery_id: str) -> str:
        """One attempt at a claimed delivery; its status after."""
        region = database.name
        with database.transaction() as conn:
            delivery = repo.fetch_delivery(conn, delivery_id)
            subscription = (
                repo.fetch_subscription(conn, delivery["subscription_id"]) if delivery else None
            )
            secret = None
            if subscription is not None and subscription["secret"] is not None:
                sealed = bytes(subscription["secret"])
                secret = self._keys.unseal(conn, sealed, secret_context(region, subscription["id"]))
        if delivery is None or delivery["lease_owner"] != self.worker_id:
            return "lost"
        if subscription is None or subscription["status"] != repo.ACTIVE or secret is None:
            with database.transaction(write=True) as conn:
                repo.update_delivery(
                    conn,
                    delivery_id,
                    {"status": "cancelled", "lease_owner": None, "lease_expires_at": None},
                )
            return "cancelled"
        body, sent_fields = self._payload(delivery, subscription)
        signed_at = self._clock.now()
        sent = self._sender.post(
            str(subscription["url"]), headers(secret.decode(), delivery_id, signed_at, body), body
        )
        return self._record(database, delivery, subscription, sent, sent_fields)

    def _payload(
        self, delivery: dict[str, Any], subscription: dict[str, Any]
    ) -> tuple[bytes, list[str]]:
        """The JSON body, and the fields it carries."""
        data: dict[str, Any] = {
            "id": delivery["record_id"],
            "entity": delivery["entity"],
            "region": delivery["region"],
        }
        if delivery["rule_id"] is not None:
            data["rule"] = delivery["rule_id"]
        sent_fields: list[str] = []
        if subscription["payload"] == "full":
            record = self._as_owner(delivery, subscription)
            data["record"] = record
            if record is not None:
                sent_fields = sorted(
                    name
                    for name in record
                    if not name.startswith("_") and name not in SYSTEM_FIELDS
                )
                data["changed"] = [f for f in delivery["fields"] if f in sent_fields]
            else:
                data["changed"] = []
        document = {
            "type": delivery["topic"],
            "timestamp": delivery["occurred_at"].isoformat().replace("+00:00", "Z"),
            "data": data,
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode(), sent_fields

    def _as_owner(
        self, delivery: dict[str, Any], subscription: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The record as the owner may read it now; None if it may not (or it is gone)."""
        if delivery["topic"].endswith(".deleted"):
            return None
        owner = self._owner(str(subscription["owner_id"]))
        if owner is None:
            return None
        caller = Caller(owner, request_id=f"webhook:{delivery['id']}")
        try:
            return self._records.get(caller, delivery["entity"], delivery["record_id"])
        except TRANSIENT:
            raise
        except BastionError:
            return None  # not found, erased, merged away, or outside the owner's rights

    def _record(
        self,
        database: Database,
        delivery: dict[str, Any],
        subscription: dict[str, Any],
        sent: Sent,
        sent_fields: list[str],
    ) -> str:
        now = self._clock.now()
        attempts = int(delivery["attempts"]) + 1
        if sent.ok:
            status, next_at = "delivered", None
        elif attempts >= self._settings.max_attempts:
            status, next_at = "dead", None
        else:
            wait = lease.backoff(
                attempts,
                base_seconds=self._settings.retry_base_seconds,
                cap_seconds=self._settings.retry_cap_seconds,
            )
            status, next_at = "pending", now + wait
        with database.transaction(write=True) as conn:
            if lease.lease_owner(conn, webhook_deliveries, delivery["id"]) != self.worker_id:
                return "lost"  # another worker took it over: its attempt is the one recorded
            repo.insert_attempt(
                conn,
                {
                    "delivery_id": delivery["id"],
                    "number": repo.next_attempt_number(conn, delivery["id"]),
                    "attempted_at": now,
                    "status_code": sent.status_code,
                    "error": sent.error,
                    "duration_ms": sent.duration_ms,
                    "next_attempt_at": next_at,
                },
            )
            repo.update_delivery(
                conn,
                delivery["id"],
                {
                    "status": status,
                    "attempts": attempts,
                    "next_attempt_at": next_at or now,
                    "last_status": sent.status_code,
                    "last_error": sent.error,
                    "delivered_at": now if sent.ok else None,
                    "lease_owner": None,
                    "lease_expires_at": None,
                },
            )
            self._audit(
                conn, database.name, delivery, subscription, sent, sent_fields, status, attempts
            )
        self._recorder.committed(database)
        log.info(
            "webhook_attempt",
            delivery=delivery["id"],
            subscription=subscription["id"],
            status=status,
            status_code=sent.status_code,
            error=sent.error,
        )
        return status

    def _audit(
        self,
        conn: Connection,
        region: str,
        delivery: dict[str, Any],
        subscription: dict[str, Any],
        sent: Sent,
        sent_fields: list[str],
        status: str,
        attempts: int,
    ) -> None:
        """What left the deployment: to which subscription, about which record, which
        fields (names), and how it was answered."""
        self._recorder.append(
            conn,
            region,
            AuditEvent.new(
                self._clock,
                actor=ACTOR,
                action="webhook.deliver",
                entity="webhooks",
                decision="allow",
                record_ids=[delivery["record_id"], subscription["id"], delivery["id"]],
                fields=sent_fields,
                policy_version=self._policy().version,
                request_id=f"webhook:{delivery['id']}",
                details={
                    "attempt": attempts,
                    "status_code": sent.status_code,
                    "outcome": status,
                    "payload": str(subscription["payload"]),
                },
            ),
        )
