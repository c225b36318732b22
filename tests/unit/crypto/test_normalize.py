"""Normalisation of blind-indexed values: one spelling per value, idempotent."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bastion.crypto.errors import UnindexableValue
from bastion.crypto.normalize import (
    INDEX_KINDS,
    normalize,
    normalize_email,
    normalize_name,
    normalize_phone,
)

fast = settings(database=None, deadline=None, max_examples=200)


def fullwidth(text: str) -> str:
    """The full-width forms (U+FF01-FF5E) of printable ASCII, as some keyboards type them."""
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


ascii_words = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1)
spaces = st.text(alphabet=" \t\n\u00a0\u3000", max_size=3)


def _indexable(kind: str, value: str) -> str | None:
    try:
        return normalize(kind, value)  # type: ignore[arg-type]
    except UnindexableValue:
        return None


@fast
@given(st.sampled_from(INDEX_KINDS), st.text(max_size=60))
def test_every_normaliser_is_idempotent(kind: str, value: str) -> None:
    once = _indexable(kind, value)
    assume(once is not None)
    assert normalize(kind, once) == once  # type: ignore[arg-type, arg-type]


@fast
@given(ascii_words, spaces, spaces)
def test_email_ignores_case_and_surrounding_space(local: str, before: str, after: str) -> None:
    address = f"{local}@Example.COM"
    assert normalize_email(f"{before}{address.upper()}{after}") == normalize_email(address)


def test_email_examples() -> None:
    assert normalize_email("  Anna.Schmidt@Example.COM ") == "anna.schmidt@example.com"
    # Full-width letters (NFKC) and the German sharp s (full case folding).
    assert normalize_email(f"{fullwidth('ANNA')}@example.com") == "anna@example.com"
    assert normalize_email("STRASSE@example.com") == normalize_email("straße@example.com")


@fast
@given(st.lists(ascii_words, min_size=1, max_size=4), spaces, spaces)
def test_names_collapse_whitespace_and_case(words: list[str], gap: str, edge: str) -> None:
    spaced = edge + (" " + gap).join(w.upper() for w in words) + edge
    assert normalize_name(spaced) == normalize_name(" ".join(words))


def test_name_examples() -> None:
    assert normalize_name("  Anna\tMARIA   Schmidt ") == "anna maria schmidt"
    assert normalize_name(fullwidth("Jos") + "é") == normalize_name("JOSE\u0301")  # NFKC


@pytest.mark.parametrize(
    "spelling",
    [
        "+49 30 1234567",
        "+49-30-1234567",
        "+49 (30) 123 45 67",
        "+4930 1234567",
        fullwidth("+49301234567"),
    ],
)
def test_phone_spellings_normalise_to_one_e164(spelling: str) -> None:
    assert normalize_phone(spelling) == "+49301234567"


@fast
@given(
    st.sampled_from(["+1 415 555 2671", "+44 20 7946 0958", "+33 1 42 68 53 00"]),
    st.sampled_from([" ", "-", ".", ""]),
)
def test_phone_separators_do_not_matter(number: str, separator: str) -> None:
    assert normalize_phone(number.replace(" ", separator)) == normalize_phone(number)


@pytest.mark.parametrize("value", ["", "not a number", "030 1234567", "+", "+99 1"])
def test_unparseable_phones_are_unindexable_and_not_echoed(value: str) -> None:
    with pytest.raises(UnindexableValue) as caught:
        normalize_phone(value)
    assert caught.value.status == 422
    if value.strip():
        assert value not in caught.value.detail


@pytest.mark.parametrize("kind", ["email", "name"])
def test_blank_values_are_unindexable(kind: str) -> None:
    with pytest.raises(UnindexableValue):
        normalize(kind, "  \t ")  # type: ignore[arg-type]


def test_exact_keeps_case_but_composes() -> None:
    assert normalize("exact", "Cafe\u0301") == "Café"
    assert normalize("exact", "ABC") != normalize("exact", "abc")


def test_an_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown blind index kind"):
        normalize("ssn", "123")  # type: ignore[arg-type]
