"""Names that sound alike: folding, the phonetic code, and its blind index.

Duplicate detection needs a *blocking key* for names: a value stored next to the
ciphertext that two spellings of one surname share ("Smith" / "Smyth", "Müller" /
"Muller"), so candidates are found by an indexed lookup and never by decrypting a
table. Fields the catalog marks `phonetic` (contacts' and leads' `last_name`) store
in `<field>_pidx` the blind index (`crypto.blindindex.BlindIndexer`, truncated
HMAC-SHA256, the deployment's `blind_index_bits`) of the name's phonetic code:

1. fold: NFKD, drop combining marks (accents), case-fold, keep letters only
   ("  Müller-Lüdenscheidt " -> "mullerludenscheidt");
2. code: Metaphone (jellyfish) of the folded name ("muller" -> "MLR");
3. index: HMAC under a key of its own, derived with the field name
   `<field>#phonetic` in the HKDF info. The phonetic index and the exact-match index
   of one last name are therefore unrelated values and cannot be joined.

Why Metaphone and not Soundex: Soundex keeps the first letter verbatim, so names
that differ only there ("Cohn" / "Kohn", "Philips" / "Filips") never meet, and its
codes are four characters for every name. Metaphone encodes English pronunciation
rules (PH -> F, silent initial K, TH, hard/soft C and G) across the whole name and
finds those pairs. Its codes are more specific than Soundex's, which the truncation
below more than absorbs. Neither suits non-Latin scripts: a name with no Latin
letter left after folding ("李", "Жуков") gets no phonetic index and is found
through its other identifiers only.

What the index leaks, and why that is acceptable
-------------------------------------------------
Someone who can read the `contacts` or `leads` table of one region (a DBA, a
backup) learns which rows have last names with the *same truncated phonetic
code*: an equality pattern, nothing more. The key is per region, table and field,
so patterns cannot be joined across regions, tables or with the exact-match
index. With frequency analysis against public surname statistics, the largest
groups point to the commonest surnames' codes ("SM0" for Smith/Smyth/Smythe,
"MLR" for Müller/Miller/Mueller). This is less than the exact-match `last_name`
index already leaks (a phonetic code is a many-to-one function of the name, so
every group mixes several surnames), and the truncation to 16 bits adds unrelated
codes to each group (about R / 65,536 rows per index value). The benefit is that
duplicates with misspelt or transliterated surnames are found at all, by an
indexed lookup inside the caller's scope; every candidate is confirmed by
decrypting, with the caller's field mask, before it is shown. A deployment that
judges the pattern too revealing removes `phonetic=True` from the catalog.
"""

from __future__ import annotations

import unicodedata

import jellyfish

from bastion.crypto.blindindex import BlindIndexer

# The HKDF info names `<field>#phonetic`: `#` cannot occur in a catalog field name,
# so the derived key differs from every exact-match index key.
PHONETIC_SUFFIX = "#phonetic"


def fold_letters(value: str) -> str:
    """The name's Latin letters only: NFKD, accents dropped, case-folded."""
    decomposed = unicodedata.normalize("NFKD", value)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    # Metaphone speaks only ASCII; other letters would be dropped or mangled by it.
    return "".join(c for c in plain if "a" <= c <= "z")


def fold_name(value: str) -> str:
    """A name as it is compared: NFKD, accents dropped, case-folded, whitespace
    collapsed ("  José  MARÍA " -> "jose maria")."""
    decomposed = unicodedata.normalize("NFKD", value)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.casefold().split())


def phonetic_code(value: str) -> str | None:
    """The Metaphone code of the name's folded letters; None when it has none."""
    letters = fold_letters(value)
    code = jellyfish.metaphone(letters) if letters else ""
    return code or None


def phonetic_index(indexer: BlindIndexer, table: str, field: str, value: str) -> bytes | None:
    """The phonetic blind index of a name in `table.field` (None: no phonetic code)."""
    code = phonetic_code(value)
    if code is None:
        return None
    return indexer.index(table, field + PHONETIC_SUFFIX, code)
