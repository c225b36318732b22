"""Querying events: filters, pages merged across regions, sealed cursors, index use."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from bastion.audit.queries import EventFilter, parse_filter, select_events
from bastion.errors import BadRequest, ValidationFailed
from bastion.state import State
from tests.conftest import FrozenClock
from tests.unit.audit.conftest import CONTACT, append_many

OTHER = "con_us_01m86ch3m0e6vstgmhk1bp3v8x"
ADMIN = "prn_01jd00000000000000000000zz"


def test_filters_select_by_actor_record_action_decision_and_time(
    state: State, clock: FrozenClock
) -> None:
    append_many(state, "eu", 3)
    start = clock.now()
    clock.advance(timedelta(minutes=1))
    append_many(state, "eu", 2, actor=ADMIN, action="record.update", decision="deny")
    append_many(state, "us", 2, record_ids=[OTHER])

    def ids(chains: list[str], flt: EventFilter) -> int:
        return len(state.audit.events(chains, flt, limit=100).data)

    assert ids(["eu", "us"], EventFilter()) == 7
    assert ids(["eu"], EventFilter(actor=ADMIN)) == 2
    assert ids(["eu", "us"], EventFilter(record_id=CONTACT)) == 5
    assert ids(["eu", "us"], EventFilter(record_id=OTHER)) == 2
    assert ids(["eu"], EventFilter(action="record.update", decision="deny")) == 2
    assert ids(["eu"], EventFilter(decision="allow", entity="contacts")) == 3
    assert ids(["eu"], EventFilter(since=start + timedelta(seconds=1))) == 2
    assert ids(["eu"], EventFilter(until=start)) == 3


def test_pages_merge_regions_by_time_and_cursors_are_sealed(state: State) -> None:
    for _ in range(3):
        append_many(state, "eu", 2)
        append_many(state, "us", 2, record_ids=[OTHER])
    seen: list[str] = []
    cursor = None
    while True:
        page = state.audit.events(["eu", "us"], EventFilter(), limit=5, cursor=cursor)
        seen += [e["occurred_at"] + e["id"] for e in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 12
    assert seen == sorted(seen, reverse=True)  # newest first, no duplicates across pages
    ascending = state.audit.events(["eu", "us"], EventFilter(), limit=12, descending=False)
    assert [e["occurred_at"] + e["id"] for e in ascending.data] == sorted(seen)

    first = state.audit.events(["eu", "us"], EventFilter(), limit=5)
    assert first.next_cursor is not None
    for bad in (first.next_cursor[:-2] + "AA", "not a cursor!", "x" * 5000):
        with pytest.raises(BadRequest):
            state.audit.events(["eu", "us"], EventFilter(), limit=5, cursor=bad)
    with pytest.raises(BadRequest):  # a cursor of another query
        state.audit.events(["eu"], EventFilter(), limit=5, cursor=first.next_cursor)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"record_id": "anna@example.com"}, "record_id"),
        ({"actor": "Anna Schmidt"}, "actor"),
        ({"decision": "perhaps"}, "decision"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no zone
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"action": "DROP TABLE"}, "action"),
    ],
)
def test_bad_filters_are_refused_naming_the_parameter(params: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        parse_filter(params)
    assert [e.field for e in raised.value.errors] == [field]


def test_who_accessed_record_x_is_one_indexed_query(state: State) -> None:
    append_many(state, "eu", 3)
    database = state.audit.database("eu")
    flt = parse_filter({"record_id": CONTACT, "since": "2026-01-01T00:00:00Z"})
    query = select_events(flt, after=None, descending=True, limit=50)
    with database.transaction() as conn:
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {compiled}")))
            assert "pk_audit_record_refs" in plan
        else:
            plan = "\n".join(
                str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
            )
            assert "SEARCH audit_record_refs USING COVERING INDEX" in plan
            assert "(record_id=? AND occurred_at>?)" in plan
