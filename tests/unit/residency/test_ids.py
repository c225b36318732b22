"""Record ids: Crockford base32, UUIDv7 and the strict, canonical `RecordId.parse`."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bastion.residency.ids import (
    ID_MAX_LENGTH,
    InvalidId,
    RecordId,
    decode_base32,
    encode_base32,
    is_valid_region_name,
    uuid7,
)

# No example database (it would write .hypothesis/ into the repository) and no
# deadline (a slow CI machine must not fail a correctness test).
fast = settings(
    database=None, deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)

prefixes = st.from_regex(r"[a-z]{3}", fullmatch=True)
regions = st.from_regex(r"[a-z][a-z0-9]{1,15}", fullmatch=True)
any_128 = st.integers(min_value=0, max_value=(1 << 128) - 1)


def _as_uuid7(value: int) -> uuid.UUID:
    """Force the version (7) and variant (0b10) bits of a 128-bit integer."""
    value &= ~(0xF << 76) & ~(0b11 << 62)
    return uuid.UUID(int=value | (0x7 << 76) | (0b10 << 62))


uuid7s = any_128.map(_as_uuid7)
record_ids = st.builds(RecordId, prefixes, regions, uuid7s)


def _valid_id() -> str:
    return str(RecordId("con", "eu", uuid7(NOW, bytes(range(10)))))


# --- base32 --------------------------------------------------------------------------


@fast
@given(any_128)
def test_base32_round_trips_every_128_bit_value(value: int) -> None:
    text = encode_base32(value)
    assert len(text) == 26
    assert set(text) <= set(CROCKFORD)
    assert decode_base32(text) == value


@fast
@given(any_128, any_128)
def test_base32_text_sorts_like_the_integer(a: int, b: int) -> None:
    assert (encode_base32(a) < encode_base32(b)) == (a < b)


def test_base32_known_values() -> None:
    assert encode_base32(0) == "0" * 26
    assert encode_base32(31) == "0" * 25 + "z"
    assert encode_base32((1 << 128) - 1) == "7" + "z" * 25
    assert decode_base32("7" + "z" * 25) == (1 << 128) - 1


@pytest.mark.parametrize("value", [-1, 1 << 128, 1 << 130])
def test_base32_refuses_values_outside_128_bits(value: int) -> None:
    with pytest.raises(ValueError, match="128 bits"):
        encode_base32(value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0" * 25,
        "0" * 27,
        "8" + "0" * 25,  # 2^128: one bit too many
        "z" * 26,
        "0" * 25 + "i",
        "0" * 25 + "l",
        "0" * 25 + "o",
        "0" * 25 + "u",
        "0" * 25 + "A",
        "0" * 25 + "\u0663",  # ARABIC-INDIC DIGIT THREE
        "0" * 25 + "\uff13",  # FULLWIDTH DIGIT THREE
        "0" * 25 + "-",
    ],
)
def test_decode_base32_rejects_what_encode_would_not_produce(text: str) -> None:
    with pytest.raises(InvalidId):
        decode_base32(text)


# --- region names --------------------------------------------------------------------


@fast
@given(regions)
def test_every_region_matching_the_pattern_is_valid(name: str) -> None:
    assert is_valid_region_name(name)


@fast
@given(st.text(max_size=20))
def test_region_validity_is_exactly_the_pattern(name: str) -> None:
    expected = re.fullmatch(r"[a-z][a-z0-9]{1,15}", name, flags=re.ASCII) is not None
    assert is_valid_region_name(name) == expected


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("eu", True),
        ("us", True),
        ("eu2", True),
        ("a" * 16, True),
        ("a" * 17, False),
        ("e", False),
        ("", False),
        ("EU", False),
        ("Eu", False),
        ("1eu", False),
        ("eu-west", False),
        ("eu_west", False),
        ("eu\n", False),
        (" eu", False),
        ("eu\u0663", False),
        ("\u0435u", False),  # Cyrillic e
    ],
)
def test_region_name_examples(name: str, valid: bool) -> None:
    assert is_valid_region_name(name) is valid


# --- uuid7 ---------------------------------------------------------------------------


@fast
@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)))
def test_uuid7_has_version_7_and_the_rfc_4122_variant(now: datetime) -> None:
    value = uuid7(now)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


@fast
@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)))
# Found by this test: the millisecond is computed from a float timestamp and rounds
# up when the microseconds end in ...999 on dates from about 2200 on.
@example(datetime(2247, 11, 20, 0, 42, 21, 142999, tzinfo=UTC))
@example(datetime(4185, 5, 17, 18, 17, 29, 943994, tzinfo=UTC))
def test_uuid7_timestamp_is_the_unix_millisecond_of_now(now: datetime) -> None:
    expected = (now - EPOCH) // timedelta(milliseconds=1)
    assert uuid7(now).int >> 80 == expected


@fast
@given(
    st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)),
    st.binary(min_size=10, max_size=10),
)
def test_uuid7_carries_the_given_random_bits(now: datetime, random_bytes: bytes) -> None:
    rand = int.from_bytes(random_bytes, "big")
    value = uuid7(now, random_bytes).int
    assert (value >> 64) & 0xFFF == (rand >> 62) & 0xFFF  # rand_a
    assert value & ((1 << 62) - 1) == rand & ((1 << 62) - 1)  # rand_b


def test_uuid7_is_random_when_no_bytes_are_given() -> None:
    assert len({uuid7(NOW) for _ in range(50)}) == 50


@pytest.mark.parametrize(
    "now",
    [datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(1900, 1, 1, tzinfo=UTC)],
)
def test_uuid7_refuses_times_before_the_epoch(now: datetime) -> None:
    with pytest.raises(ValueError, match="range"):
        uuid7(now)


_MS_2000 = (datetime(2000, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
_MS_2100 = (datetime(2100, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


@fast
@given(
    st.lists(
        st.tuples(st.integers(_MS_2000, _MS_2100), st.integers(0, 999)),
        min_size=2,
        max_size=20,
        unique_by=lambda t: t[0],
    ),
    prefixes,
    regions,
)
def test_ids_created_at_increasing_times_sort_in_time_order(
    stamps: list[tuple[int, int]], prefix: str, region: str
) -> None:
    # Strictly increasing milliseconds, each with an arbitrary sub-millisecond part.
    times = [EPOCH + timedelta(milliseconds=ms, microseconds=us) for ms, us in sorted(stamps)]
    ids = [str(RecordId.new(prefix, region, t)) for t in times]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)


# --- RecordId ------------------------------------------------------------------------


@fast
@given(prefixes, regions, uuid7s)
def test_record_id_round_trips(prefix: str, region: str, value: uuid.UUID) -> None:
    record_id = RecordId(prefix, region, value)
    text = str(record_id)
    assert text == f"{prefix}_{region}_{encode_base32(value.int)}"
    assert len(text) <= ID_MAX_LENGTH
    parsed = RecordId.parse(text)
    assert parsed == record_id
    assert str(parsed) == text


@fast
@given(prefixes, regions)
def test_new_ids_parse_back(prefix: str, region: str) -> None:
    record_id = RecordId.new(prefix, region, NOW)
    assert (record_id.prefix, record_id.region) == (prefix, region)
    assert record_id.uuid.version == 7
    assert RecordId.parse(str(record_id)) == record_id


def test_id_max_length_is_the_longest_possible_id() -> None:
    longest = str(RecordId.new("zzz", "z" * 16, NOW))
    assert len(longest) == ID_MAX_LENGTH == 47
    with pytest.raises(InvalidId, match="too long"):
        RecordId.parse(longest + "0")


@pytest.mark.parametrize(
    ("prefix", "region"),
    [("co", "eu"), ("cont", "eu"), ("CON", "eu"), ("c0n", "eu"), ("con", "EU"), ("con", "e")],
)
def test_record_id_refuses_bad_parts(prefix: str, region: str) -> None:
    with pytest.raises(InvalidId):
        RecordId.new(prefix, region, NOW)


def test_record_id_refuses_a_uuid_that_is_not_v7() -> None:
    with pytest.raises(InvalidId, match="UUIDv7"):
        RecordId("con", "eu", uuid.uuid4())
    text = f"con_eu_{encode_base32(uuid.uuid4().int)}"
    with pytest.raises(InvalidId, match="UUIDv7"):
        RecordId.parse(text)


def _mutations() -> list[str]:
    valid = _valid_id()
    prefix, region, body = valid.split("_")
    digit_at = next(i for i, ch in enumerate(body) if ch.isdigit())
    letter_at = next(i for i, ch in enumerate(body) if ch.isalpha())

    def body_with(index: int, ch: str) -> str:
        return f"{prefix}_{region}_{body[:index]}{ch}{body[index + 1 :]}"

    return [
        valid.upper(),
        f"CON_{region}_{body}",
        f"{prefix}_EU_{body}",
        body_with(letter_at, body[letter_at].upper()),
        valid[:-1],
        valid + "0",
        f"{prefix}_{region}_0{body}",
        f"{prefix}_{region}_{body[1:]}",
        valid + "\n",
        "\n" + valid,
        valid + " ",
        " " + valid,
        valid + "\x00",
        f"{prefix}__{region}_{body}",
        f"{prefix}-{region}-{body}",
        f"{prefix}_{region}{body}",
        f"{prefix}_{region}_{body}_",
        f"{prefix}_{region}_{body}?x=1",
        body_with(0, "8"),  # more than 128 bits
        body_with(digit_at, "\u0663"),  # ARABIC-INDIC DIGIT THREE
        body_with(digit_at, "\uff13"),  # FULLWIDTH DIGIT THREE
        body_with(digit_at, "\U0001d7d1"),  # MATHEMATICAL BOLD DIGIT THREE
        f"{prefix}_e\u0663_{body}",
        *(body_with(5, ambiguous) for ambiguous in "ilouILOU"),
        f"co_{region}_{body}",
        f"cont_{region}_{body}",
        f"{prefix}_e_{body}",
        f"{prefix}_1eu_{body}",
        f"{prefix}_{'a' * 17}_{body}",
        "",
        "_",
        "__",
    ]


@pytest.mark.parametrize("text", _mutations())
def test_parse_rejects_anything_not_exactly_canonical(text: str) -> None:
    with pytest.raises(InvalidId) as caught:
        RecordId.parse(text)
    if len(text) > 2:  # "" and "_" are trivially substrings of any message
        assert text not in str(caught.value)


def _parse(text: str) -> RecordId | InvalidId:
    try:
        return RecordId.parse(text)
    except InvalidId as exc:
        return exc


def _assert_canonical_or_rejected_quietly(text: str) -> None:
    """Either `text` is exactly the canonical form of what it parses to, or it is
    rejected with an `InvalidId` whose message does not hold it."""
    result = _parse(text)
    if isinstance(result, InvalidId):
        assert text not in str(result)
    else:
        assert str(result) == text


def _edit(valid: str, index: int, kind: int, ch: str) -> str:
    index %= len(valid) + 1
    if kind == 0:
        return valid[:index] + ch + valid[index + 1 :]
    if kind == 1:
        return valid[:index] + ch + valid[index:]
    return valid[:index] + valid[index + 1 :]


@fast
@given(record_ids, st.integers(0, 60), st.integers(0, 2), st.characters())
def test_parse_accepts_only_canonical_text_after_any_single_edit(
    record_id: RecordId, index: int, kind: int, ch: str
) -> None:
    text = _edit(str(record_id), index, kind, ch)
    _assert_canonical_or_rejected_quietly(text)


@fast
@given(st.text(min_size=8, max_size=80))
def test_parse_of_arbitrary_text_is_canonical_or_invalid_id(text: str) -> None:
    _assert_canonical_or_rejected_quietly(text)


@fast
@given(st.text(min_size=1, max_size=40).map(lambda s: f"{s}-Canary-7f3a"))
def test_invalid_id_message_never_echoes_the_input(text: str) -> None:
    with pytest.raises(InvalidId) as caught:
        RecordId.parse(text)
    assert "Canary-7f3a" not in str(caught.value)
    assert text not in repr(caught.value)


def test_invalid_id_is_a_value_error() -> None:
    assert issubclass(InvalidId, ValueError)
