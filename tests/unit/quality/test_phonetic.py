"""The phonetic code of names and its blind index."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.crypto.blindindex import BlindIndexer
from bastion.crypto.errors import UnindexableValue
from bastion.crypto.normalize import normalize_phone
from bastion.quality.phonetic import fold_letters, fold_name, phonetic_code, phonetic_index


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Smith", "Smyth"),
        ("Müller", "Muller"),
        ("Müller", "Mueller"),
        ("José", "JOSE"),
        ("Cohn", "Kohn"),
        ("  Schmidt ", "schmidt"),
    ],
)
def test_names_that_sound_alike_share_a_code(a: str, b: str) -> None:
    assert phonetic_code(a) is not None
    assert phonetic_code(a) == phonetic_code(b)


@pytest.mark.parametrize(("a", "b"), [("Smith", "Jones"), ("Weber", "Wagner"), ("Li", "Lee-Ann")])
def test_names_that_sound_different_do_not(a: str, b: str) -> None:
    assert phonetic_code(a) != phonetic_code(b)


def test_folding_drops_accents_case_and_everything_but_letters() -> None:
    assert fold_letters("  Müller-Lüdenscheidt ") == "mullerludenscheidt"
    assert fold_name("  José  MARÍA ") == "jose maria"


@pytest.mark.parametrize("name", ["李", "Жуков", "", " - "])
def test_a_name_without_latin_letters_has_no_code(name: str) -> None:
    assert phonetic_code(name) is None


@given(st.text(max_size=40))
def test_folding_is_idempotent(name: str) -> None:
    assert fold_name(fold_name(name)) == fold_name(name)
    assert fold_letters(fold_letters(name)) == fold_letters(name)


def test_the_phonetic_index_has_its_own_key_per_region() -> None:
    root = os.urandom(32)
    eu, us = BlindIndexer("eu", root), BlindIndexer("us", root)
    index = phonetic_index(eu, "contacts", "last_name", "Smith")
    assert index is not None
    assert len(index) == 2
    assert index == phonetic_index(eu, "contacts", "last_name", "Smyth")
    assert index != phonetic_index(us, "contacts", "last_name", "Smith")
    # Not the exact-match index of the code, nor of the name, under the field's own key.
    assert index != eu.index("contacts", "last_name", "SM0")
    assert index != eu.index("contacts", "last_name", "smith")
    assert phonetic_index(eu, "contacts", "last_name", "李") is None


def test_phone_normalisation_needs_the_country_code() -> None:
    assert normalize_phone("+49 30 1234567") == normalize_phone("+49301234567") == "+49301234567"
    with pytest.raises(UnindexableValue):
        normalize_phone("030 1234567")
