"""How alike two people are, from what the caller can see of them.

`compare` takes two records *as rendered for the caller* (`crm.records.render`: a
field the caller may not read is absent, not null) and returns the reasons they
look alike; `score` turns reasons into a number in [0, 1]. Working on rendered
records is the guarantee that a field the caller cannot read never contributes:
its value is simply not there, so neither is its match (which would leak "these
two hidden mobiles are equal"). Reasons carry field names and how they matched,
never values.

Evidence combines as a noisy-OR, `1 - prod(1 - weight * similarity)`: each reason
alone gives at most its weight, several reasons reinforce each other, and the
score never leaves [0, 1]. An equal email says more than an equal phone (shared
office lines), which says more than a name (namesakes exist); two people at the
same account is weak evidence on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jellyfish

from bastion.crm.catalog import EntitySpec
from bastion.crm.codec import index_kind
from bastion.crypto.errors import UnindexableValue
from bastion.crypto.normalize import normalize
from bastion.quality.phonetic import fold_name, phonetic_code

MatchKind = Literal["exact", "similar", "phonetic"]

# Identifiers: equal once normalised (email case-folded, phone E.164) or not at all.
IDENTIFIERS = ("email", "phone", "mobile")
NAMES = ("first_name", "last_name")
WEIGHTS: Mapping[str, float] = {
    "email": 0.9,
    "phone": 0.8,
    "mobile": 0.8,
    "last_name": 0.6,
    "first_name": 0.4,
    "account_id": 0.3,
}
# Jaro-Winkler similarity from which two different spellings count as "similar".
SIMILAR = 0.85
# Decimal places kept of scores and similarities.
DIGITS = 4


@dataclass(frozen=True, slots=True)
class Reason:
    """One field that matched: how, and how closely (1.0 for exact)."""

    field: str
    match: MatchKind
    similarity: float

    def as_json(self) -> dict[str, Any]:
        return {"field": self.field, "match": self.match, "similarity": self.similarity}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Reason:
        return cls(str(value["field"]), value["match"], float(value["similarity"]))


def score(reasons: Iterable[Reason]) -> float:
    """The noisy-OR of the reasons' weighted similarities, rounded to `DIGITS` places."""
    missing = math.prod(1.0 - WEIGHTS.get(r.field, 0.0) * r.similarity for r in reasons)
    return round(1.0 - missing, DIGITS)


def compare(spec: EntitySpec, record: Mapping[str, Any], other: Mapping[str, Any]) -> list[Reason]:
    """Why two rendered records of `spec` look like the same person (possibly nothing)."""
    reasons: list[Reason] = []
    for name in IDENTIFIERS:
        field = spec.field(name)
        a, b = record.get(name), other.get(name)
        if field is None or a is None or b is None:
            continue
        try:
            kind = index_kind(field)
            if normalize(kind, str(a)) == normalize(kind, str(b)):
                reasons.append(Reason(name, "exact", 1.0))
        except UnindexableValue:
            continue  # a value we cannot normalise matches nothing
    for name in NAMES:
        field = spec.field(name)
        a, b = record.get(name), other.get(name)
        if field is None or a is None or b is None:
            continue
        reason = _name_reason(name, str(a), str(b), phonetic=field.phonetic)
        if reason is not None:
            reasons.append(reason)
    account = record.get("account_id")
    same_account = account is not None and account == other.get("account_id")
    if spec.field("account_id") is not None and same_account:
        reasons.append(Reason("account_id", "exact", 1.0))
    return reasons


def _name_reason(name: str, a: str, b: str, *, phonetic: bool) -> Reason | None:
    """Exact once folded; else phonetic (same Metaphone code) or similar (Jaro-Winkler
    at least `SIMILAR`), with the Jaro-Winkler similarity of the folded names."""
    left, right = fold_name(a), fold_name(b)
    if not left or not right:
        return None
    if left == right:
        return Reason(name, "exact", 1.0)
    similarity = round(jellyfish.jaro_winkler_similarity(left, right), DIGITS)
    code = phonetic_code(left) if phonetic else None
    if code is not None and code == phonetic_code(right):
        return Reason(name, "phonetic", similarity)
    if similarity >= SIMILAR:
        return Reason(name, "similar", similarity)
    return None
