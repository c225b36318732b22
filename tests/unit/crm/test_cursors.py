"""List cursors: sealed, opaque, bound to their query, and rejected when touched."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.crm.catalog import ENTITIES
from bastion.crm.cursors import CURSOR_MAX_LENGTH, CursorCodec, Position, advanced
from bastion.errors import BadRequest

fast = settings(database=None, deadline=None, max_examples=150)

SECRET = b"test-secret-0123456789abcdef0123456789abcdef"
QUERY = '["contacts",[],"created_at",["eu","us"]]'
ROW_ID = "con_eu_01m86dzpzyehmvcb1s3m40n3bk"
CODEC = CursorCodec(SECRET)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _sealed_bytes(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def _encode(sealed: bytes) -> str:
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def _rejected(codec: CursorCodec, query: str, cursor: str) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        codec.open(query, cursor)
    return caught.value


# --- round trip ----------------------------------------------------------------------


@fast
@given(json_values, st.text(min_size=1, max_size=60), st.text(max_size=200))
def test_round_trip(value: Any, row_id: str, query: str) -> None:
    cursor = CODEC.seal(query, Position(value, row_id))
    assert CODEC.open(query, cursor) == Position(value, row_id)


def test_cursor_is_url_safe_ascii_without_padding() -> None:
    cursor = CODEC.seal(QUERY, Position("2026-11-24T09:00:00Z", ROW_ID))
    assert cursor.isascii()
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(cursor) <= CURSOR_MAX_LENGTH


def test_a_fresh_nonce_every_time() -> None:
    position = Position("same", ROW_ID)
    cursors = {CODEC.seal(QUERY, position) for _ in range(20)}
    assert len(cursors) == 20
    assert {CODEC.open(QUERY, c) for c in cursors} == {position}


def test_another_codec_with_the_same_secret_opens_it() -> None:
    cursor = CODEC.seal(QUERY, Position(42, ROW_ID))
    assert CursorCodec(SECRET).open(QUERY, cursor) == Position(42, ROW_ID)


def test_every_legal_sort_value_gives_a_cursor_that_opens() -> None:
    # A list sorted by a string field ends a page on a row whose value may be as long
    # as the catalog allows, in any script; its next-page cursor must open again.
    refused = []
    for spec in ENTITIES.values():
        for field in spec.fields:
            if not (field.sortable and field.type == "string" and field.max_length):
                continue
            for char in ("a", "\u00e9", "\u4e2d", "\U0001f600"):
                position = Position(char * field.max_length, ROW_ID)
                cursor = CODEC.seal(QUERY, position)
                try:
                    assert CODEC.open(QUERY, cursor) == position
                except BadRequest:
                    refused.append((f"{spec.name}.{field.name}", hex(ord(char)), len(cursor)))
    assert refused == []


# --- confidentiality -----------------------------------------------------------------


@fast
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789@.", min_size=6, max_size=60))
def test_the_sort_value_is_not_readable_from_the_cursor(value: str) -> None:
    cursor = CODEC.seal(QUERY, Position(value, ROW_ID))
    sealed = _sealed_bytes(cursor)
    assert value not in cursor
    assert value.encode() not in sealed
    assert ROW_ID not in cursor
    assert ROW_ID.encode() not in sealed


def test_a_canary_value_is_not_in_the_cursor() -> None:
    canary = "alice.canary@example.com"
    cursor = CODEC.seal(QUERY, Position(canary, ROW_ID))
    assert canary not in cursor
    for variant in (canary, canary.upper(), canary.lower()):
        assert variant.encode() not in _sealed_bytes(cursor)
        assert base64.urlsafe_b64encode(variant.encode()).decode()[:16] not in cursor


# --- binding and tampering -----------------------------------------------------------


@fast
@given(st.text(max_size=80), st.text(max_size=80))
def test_a_cursor_for_another_query_is_rejected(query: str, other: str) -> None:
    if query == other:
        other = query + "x"
    cursor = CODEC.seal(query, Position("v", ROW_ID))
    _rejected(CODEC, other, cursor)


@pytest.mark.parametrize(
    "other",
    [
        '["contacts",[],"created_at",["eu"]]',
        '["contacts",[],"-created_at",["eu","us"]]',
        '["leads",[],"created_at",["eu","us"]]',
        '["contacts",[["last_name","x"]],"created_at",["eu","us"]]',
        "",
    ],
)
def test_a_cursor_replayed_against_a_changed_list_is_rejected(other: str) -> None:
    cursor = CODEC.seal(QUERY, Position("v", ROW_ID))
    _rejected(CODEC, other, cursor)


@fast
@given(st.data())
def test_any_single_bit_flip_is_rejected(data: st.DataObject) -> None:
    cursor = CODEC.seal(QUERY, Position("2026-11-24T09:00:00Z", ROW_ID))
    sealed = bytearray(_sealed_bytes(cursor))
    index = data.draw(st.integers(0, len(sealed) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    sealed[index] ^= 1 << bit
    _rejected(CODEC, QUERY, _encode(bytes(sealed)))


@fast
@given(st.data())
def test_truncated_or_extended_ciphertext_is_rejected(data: st.DataObject) -> None:
    sealed = _sealed_bytes(CODEC.seal(QUERY, Position(123, ROW_ID)))
    cut = data.draw(st.integers(0, len(sealed) - 1), label="keep")
    _rejected(CODEC, QUERY, _encode(sealed[:cut]))
    extra = data.draw(st.binary(min_size=1, max_size=8), label="extra")
    _rejected(CODEC, QUERY, _encode(sealed + extra))


def test_a_cursor_from_another_secret_is_rejected() -> None:
    other = CursorCodec(b"another-secret-0123456789abcdef0123456789")
    cursor = other.seal(QUERY, Position("v", ROW_ID))
    assert other.open(QUERY, cursor) == Position("v", ROW_ID)
    _rejected(CODEC, QUERY, cursor)
    _rejected(other, QUERY, CODEC.seal(QUERY, Position("v", ROW_ID)))


def test_a_forged_cursor_with_a_chosen_position_is_rejected() -> None:
    nonce = b"\x00" * 12
    forged = _encode(nonce + b'["zzz","con_eu_01m86dzpzyehmvcb1s3m40n3bk"]' + b"\x00" * 16)
    _rejected(CODEC, QUERY, forged)


def test_a_sealed_non_string_id_is_rejected() -> None:
    # Sealed under the right key, but the row id is not a string.
    cursor = CODEC.seal(QUERY, Position("v", 12))  # type: ignore[arg-type]
    _rejected(CODEC, QUERY, cursor)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "a",
        "abc",
        "AAAA",
        "A" * 40,
        "!!!!",
        "not a cursor",
        "====",
        "%%%%%%%%",
        "A" * (CURSOR_MAX_LENGTH + 1),
        "A" * 100_000,
        "caf\u00e9" * 10,
        "\u0410" * 40,
        "\x00" * 40,
    ],
)
def test_garbage_is_rejected(cursor: str) -> None:
    error = _rejected(CODEC, QUERY, cursor)
    assert error.status == 400
    if len(cursor) > 3:
        assert cursor not in error.detail


@fast
@given(st.text(max_size=300))
def test_arbitrary_text_is_rejected_with_bad_request(text: str) -> None:
    _rejected(CODEC, QUERY, text)


def test_an_oversized_cursor_is_rejected_before_decoding() -> None:
    cursor = CODEC.seal(QUERY, Position("v", ROW_ID))
    padded = cursor + "A" * (CURSOR_MAX_LENGTH - len(cursor) + 1)
    assert len(padded) == CURSOR_MAX_LENGTH + 1
    _rejected(CODEC, QUERY, padded)


def test_characters_outside_base64url_are_rejected() -> None:
    # open() must accept only what seal() produces: a valid cursor with stray
    # characters appended is not one of ours.
    cursor = CODEC.seal(QUERY, Position("v", ROW_ID))
    accepted = []
    for suffix in ("!!!!", "....", "\t\t\t\t", "    ", "====", "\n\n\n\n"):
        try:
            CODEC.open(QUERY, cursor + suffix)
        except BadRequest:
            continue
        accepted.append(suffix)
    assert accepted == []


def test_the_error_message_is_generic() -> None:
    errors = {
        _rejected(CODEC, "other query", CODEC.seal(QUERY, Position("v", ROW_ID))).detail,
        _rejected(CODEC, QUERY, "garbage-cursor").detail,
        _rejected(CODEC, QUERY, "A" * (CURSOR_MAX_LENGTH + 1)).detail,
    }
    assert len(errors) == 1
    (detail,) = errors
    assert "cursor" in detail


# --- per-region positions ------------------------------------------------------------


@fast
@given(
    st.dictionaries(
        st.sampled_from(["eu", "us", "apac"]),
        st.tuples(json_scalars, st.text(min_size=1, max_size=40)),
        max_size=3,
    ),
    st.text(max_size=200),
)
def test_positions_round_trip(positions: dict[str, tuple[Any, str]], query: str) -> None:
    sealed = {region: Position(value, row_id) for region, (value, row_id) in positions.items()}
    cursor = CODEC.seal_positions(query, sealed)
    assert CODEC.open_positions(query, cursor) == sealed


def test_a_single_position_cursor_is_not_a_positions_cursor_nor_the_reverse() -> None:
    single = CODEC.seal(QUERY, Position(1, ROW_ID))
    with pytest.raises(BadRequest):
        CODEC.open_positions(QUERY, single)
    several = CODEC.seal_positions(QUERY, {"eu": Position(1, ROW_ID)})
    with pytest.raises(BadRequest):
        CODEC.open(QUERY, several)
    with pytest.raises(BadRequest):
        CODEC.open_positions(QUERY + "x", several)


def test_advanced_moves_each_region_to_its_last_emitted_row_only() -> None:
    start = {"eu": Position(1, "a"), "us": Position(1, "b")}
    moved = advanced(start, [("eu", Position(2, "c")), ("eu", Position(3, "d"))])
    assert moved == {"eu": Position(3, "d"), "us": Position(1, "b")}
    assert start == {"eu": Position(1, "a"), "us": Position(1, "b")}  # not changed in place
    assert advanced({}, [("apac", Position(5, "e"))]) == {"apac": Position(5, "e")}
