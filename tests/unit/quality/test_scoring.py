"""Scoring two rendered records: reasons from readable fields only, score in [0, 1]."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bastion.crm.catalog import ENTITIES
from bastion.quality.scoring import WEIGHTS, Reason, compare, score

CONTACTS = ENTITIES["contacts"]


def matched(a: dict[str, Any], b: dict[str, Any]) -> dict[str, str]:
    return {r.field: r.match for r in compare(CONTACTS, a, b)}


def test_identifiers_match_once_normalised() -> None:
    a = {"email": "ANNA@X.COM ", "phone": "+49301234567", "mobile": None}
    b = {"email": "anna@x.com", "phone": "+49301234567", "mobile": "+49301234567"}
    assert matched(a, b) == {"email": "exact", "phone": "exact"}


def test_names_match_exactly_phonetically_or_by_similarity() -> None:
    assert matched({"first_name": " José "}, {"first_name": "jose"}) == {"first_name": "exact"}
    assert matched({"last_name": "Smith"}, {"last_name": "Smyth"}) == {"last_name": "phonetic"}
    # First names have no phonetic code: a close spelling is "similar".
    assert matched({"first_name": "Johanna"}, {"first_name": "Johana"}) == {"first_name": "similar"}
    assert matched({"last_name": "Smith"}, {"last_name": "Jones"}) == {}


def test_an_absent_field_never_matches() -> None:
    # A field the caller may not read is absent from the rendered record.
    assert matched({"mobile": "+4915112345678"}, {"first_name": "Eva"}) == {}
    assert matched({}, {"mobile": "+4915112345678"}) == {}


def test_same_account_is_weak_evidence() -> None:
    assert score(compare(CONTACTS, {"account_id": "acc_1"}, {"account_id": "acc_1"})) == 0.3


@given(
    st.lists(
        st.builds(
            Reason,
            st.sampled_from(sorted(WEIGHTS)),
            st.sampled_from(["exact", "similar", "phonetic"]),
            st.floats(0, 1),
        ),
        max_size=8,
    )
)
def test_the_score_stays_in_range_and_grows_with_evidence(reasons: list[Reason]) -> None:
    value = score(reasons)
    assert 0 <= value <= 1
    assert score([*reasons, Reason("email", "exact", 1.0)]) >= value
