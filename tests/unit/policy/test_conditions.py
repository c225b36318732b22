"""Record conditions: the tiny language of `p2` conditions, typed by the catalog."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.policy.conditions import (
    ConditionError,
    RecordFacts,
    condition_holds,
    parse_condition,
    record_facts,
    scope_covers,
)


def holds(text: str, entity: str, **values: object) -> bool:
    condition = parse_condition(text, entity)
    assert condition is not None
    facts = RecordFacts(entity, values)
    assert condition.holds(facts) == condition_holds(text, facts)  # Casbin's path agrees
    return condition.holds(facts)


def test_an_empty_condition_is_none_and_always_holds() -> None:
    assert parse_condition("   ", "cases") is None
    assert condition_holds("", RecordFacts("cases"))


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(Decimal("99999.99"), True), (Decimal(100000), False), (Decimal(0), True), (None, False)],
)
def test_numbers_compare_exactly(amount: Decimal | None, expected: bool) -> None:
    assert holds("amount < 100000", "opportunities", amount=amount) is expected


def test_in_and_not_in_and_null() -> None:
    assert holds("status in open|new", "cases", status="open")
    assert not holds("status in open|new", "cases", status="closed")
    assert not holds("status in open|new", "cases", status=None)
    assert holds("status not in resolved|closed", "cases", status=None)
    assert holds("status == null", "cases")
    assert not holds("status != null", "cases")
    assert holds("status != open", "cases", status=None)


def test_clauses_joined_by_and_all_hold() -> None:
    text = "amount >= 5000 and stage == proposal"
    assert holds(text, "opportunities", amount=Decimal(5000), stage="proposal")
    assert not holds(text, "opportunities", amount=Decimal(4999), stage="proposal")
    assert not holds(text, "opportunities", amount=Decimal(6000), stage="closed_won")


def test_dates_and_booleans() -> None:
    assert holds("close_date < 2027-01-01", "opportunities", close_date=date(2026, 12, 31))
    assert not holds("close_date < 2027-01-01", "opportunities", close_date=date(2027, 1, 1))
    assert holds("do_not_contact == true", "contacts", do_not_contact=True)
    assert not holds("do_not_contact == true", "contacts", do_not_contact=False)


@pytest.mark.parametrize(
    ("text", "entity", "complaint"),
    [
        ("mood == happy", "cases", "no field 'mood'"),
        ("id == x", "cases", "no field 'id'"),
        ("description == x", "accounts", "cannot be tested"),
        ("description == x", "cases", "encrypted"),
        ("email == x", "contacts", "encrypted"),
        ("status < open", "cases", "not a number or date"),
        ("status == sleeping", "cases", "not one of"),
        ("amount < many", "opportunities", "numbers"),
        ("amount < 1e9", "opportunities", "numbers"),
        ("close_date < tomorrow", "opportunities", "not a valid date"),
        ("do_not_contact == yes", "contacts", "true or false"),
        ("status in open|null", "cases", "null cannot be listed"),
        ("amount < null", "opportunities", "only be tested with"),
        ("status = open", "cases", "cannot read the clause"),
        ("status == open or status == new", "cases", "cannot read the clause"),
        ("status == open", "invoices", "single entity"),
    ],
)
def test_bad_conditions_say_what_is_wrong(text: str, entity: str, complaint: str) -> None:
    with pytest.raises(ConditionError, match=complaint):
        parse_condition(text, entity)


def test_a_stored_value_of_another_type_never_satisfies_an_ordering() -> None:
    assert not holds("amount < 100000", "opportunities", amount="a lot")


@given(
    st.decimals(min_value=-(10**12), max_value=10**12, places=2),
    st.decimals(min_value=0, max_value=10**9, places=2),
)
def test_amount_comparisons_match_python_decimals(amount: Decimal, limit: Decimal) -> None:
    text = f"amount <= {limit}"
    assert holds(text, "opportunities", amount=amount) == (amount <= limit)


def test_old_clauses_test_the_record_before_the_write() -> None:
    condition = parse_condition("old.status not in resolved|closed", "cases")
    assert condition is not None
    assert condition.fields == frozenset({"status"})
    closing = RecordFacts("cases", {"status": "closed"}, previous={"status": "open"})
    reopening = RecordFacts("cases", {"status": "open"}, previous={"status": "closed"})
    created = RecordFacts("cases", {"status": "closed"}, previous={})
    for facts, expected in ((closing, True), (reopening, False), (created, True)):
        assert condition.holds(facts) is expected
        assert condition_holds(condition.text, facts) is expected
    # Reads have no "before": old. is the stored record itself.
    assert not holds("old.status not in resolved|closed", "cases", status="closed")
    both = "old.status == open and status == closed"
    assert condition_holds(both, closing)
    assert not condition_holds(both, reopening)


def test_record_facts_take_old_values() -> None:
    facts = record_facts("cases", {"old.status": "closed", "status": "open"})
    assert facts.values == {"status": "open"}
    assert facts.previous == {"status": "closed"}
    assert record_facts("cases", {"status": "open"}).previous is None
    with pytest.raises(ConditionError):
        record_facts("cases", {"old.mood": "x"})
    with pytest.raises(ConditionError):
        parse_condition("old.mood == x", "cases")


def test_scopes_cover_rows() -> None:
    own = RecordFacts("contacts", scopes=frozenset({"own"}))
    assert scope_covers("all", own)
    assert scope_covers("region", RecordFacts("contacts"))
    assert scope_covers("own", own)
    assert not scope_covers("team", own)


def test_record_facts_type_given_values_and_refuse_unknown_fields() -> None:
    facts = record_facts("opportunities", {"amount": "150000", "stage": "proposal"}, owner="self")
    assert facts.values == {"amount": Decimal(150000), "stage": "proposal"}
    assert facts.scopes == frozenset({"own"})
    assert record_facts("cases", {}, team="mine").scopes == frozenset({"team"})
    with pytest.raises(ConditionError):
        record_facts("cases", {"mood": "x"})
    with pytest.raises(ConditionError):
        record_facts("cases", {}, owner="me")
