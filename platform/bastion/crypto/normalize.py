"""Normalisation of searchable values before they are blind-indexed.

A blind index only finds exact matches of its input, so every spelling of one
value that a person would call "the same" must normalise to the same text:
`Alice@Example.COM ` and `alice@example.com`, `+49 30 1234567` and
`+49301234567`. Each normaliser is idempotent (normalising twice changes
nothing), which the property tests check.

Case folding uses Unicode's full case folding (`str.casefold`), bracketed by NFKC
so that compatibility forms (full-width letters, ligatures) and the characters
case folding produces are themselves in NFKC: `NFKC(casefold(NFKC(s)))`, the
usual approximation of Unicode's NFKC_Casefold.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Literal

import phonenumbers

from bastion.crypto.errors import UnindexableValue

IndexKind = Literal["email", "phone", "name", "exact"]
INDEX_KINDS: tuple[IndexKind, ...] = ("email", "phone", "name", "exact")


def _fold(value: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())


def normalize_email(value: str) -> str:
    """Trim, NFKC, case-fold. The local part is folded too: mailbox providers
    treat it case-insensitively in practice, and a missed duplicate is worse for
    data subjects' requests than a false positive, which the caller filters after
    decrypting anyway."""
    # Trim after folding: NFKC can turn a character into a space plus a combining mark.
    folded = _fold(value).strip()
    if not folded:
        raise UnindexableValue("an empty email address cannot be indexed")
    return folded


def normalize_phone(value: str) -> str:
    """E.164 (`+` and digits) via libphonenumber; the number must carry its `+country` code.

    Raises `UnindexableValue` when it is not a parseable international number.
    """
    try:
        number = phonenumbers.parse(unicodedata.normalize("NFKC", value).strip(), None)
    except phonenumbers.NumberParseException:
        raise _invalid("phone") from None
    if not phonenumbers.is_possible_number(number):
        raise _invalid("phone")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_name(value: str) -> str:
    """NFKC, case-fold, and collapse every run of whitespace to one space (trimmed)."""
    folded = " ".join(_fold(value).split())
    if not folded:
        raise UnindexableValue("an empty name cannot be indexed")
    return folded


def normalize_exact(value: str) -> str:
    """NFC only: the same characters, however they were composed; case matters."""
    return unicodedata.normalize("NFC", value)


NORMALIZERS: dict[IndexKind, Callable[[str], str]] = {
    "email": normalize_email,
    "phone": normalize_phone,
    "name": normalize_name,
    "exact": normalize_exact,
}


def normalize(kind: IndexKind, value: str) -> str:
    """`value` normalised for a blind index of this kind; `UnindexableValue` if impossible."""
    try:
        normalizer = NORMALIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown blind index kind {kind!r}") from None
    if not isinstance(value, str):
        raise _invalid(kind)
    return normalizer(value)


def _invalid(kind: str) -> UnindexableValue:
    # The caller knows which field it was and re-raises with its path if needed.
    return UnindexableValue(f"the value is not a valid {kind} and cannot be indexed")
