"""The field ciphertext format: round trips, and every kind of tampering rejected."""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.crypto.envelope import (
    ALGORITHM_AES_256_GCM,
    FORMAT_VERSION,
    HEADER_BYTES,
    KEY_ID_BYTES,
    OVERHEAD_BYTES,
    DataKey,
    FieldContext,
    key_id_of,
    new_key_id,
    reseal,
    seal,
    unseal,
)
from bastion.crypto.errors import DecryptionFailed, MalformedCiphertext

fast = settings(database=None, deadline=None, max_examples=150)

RECORD = "con_eu_01m86dzpzyehmvcb1s3m40n3bk"
OTHER_RECORD = "con_eu_01m86dzq0zehmvcb1s3m40n3bk"
EMAIL = FieldContext("eu", "contacts", RECORD, "email")


def make_key(material: bytes | None = None, *, subject: str = RECORD) -> DataKey:
    return DataKey(
        key_id=new_key_id(),
        region="eu",
        subject_id=subject,
        version=1,
        material=material or os.urandom(32),
    )


KEY = make_key()

names = st.text(min_size=1, max_size=40)
contexts = st.builds(FieldContext, names, names, names, names)


# --- round trip ----------------------------------------------------------------------


@fast
@given(st.binary(max_size=2048), contexts)
def test_seal_then_unseal_gives_back_the_plaintext(plaintext: bytes, ctx: FieldContext) -> None:
    blob = seal(KEY, plaintext, ctx)
    assert len(blob) == len(plaintext) + OVERHEAD_BYTES
    assert key_id_of(blob) == KEY.id
    assert unseal(KEY, blob, ctx) == plaintext


@fast
@given(st.binary(min_size=1, max_size=64))
def test_each_seal_uses_a_fresh_nonce(plaintext: bytes) -> None:
    assert seal(KEY, plaintext, EMAIL) != seal(KEY, plaintext, EMAIL)


def test_the_header_is_version_algorithm_and_key_id() -> None:
    blob = seal(KEY, b"anna@example.com", EMAIL)
    assert blob[0] == FORMAT_VERSION
    assert blob[1] == ALGORITHM_AES_256_GCM
    assert blob[2:HEADER_BYTES] == KEY.id
    assert len(KEY.id) == KEY_ID_BYTES


def test_an_empty_value_round_trips() -> None:
    assert unseal(KEY, seal(KEY, b"", EMAIL), EMAIL) == b""


def test_reseal_moves_a_value_to_a_new_key() -> None:
    new = make_key()
    blob = seal(KEY, b"anna@example.com", EMAIL)
    moved = reseal(blob, EMAIL, KEY, new)
    assert key_id_of(moved) == new.id
    assert unseal(new, moved, EMAIL) == b"anna@example.com"
    with pytest.raises(DecryptionFailed):
        reseal(moved, EMAIL, KEY, new)  # not under the old key any more


# --- tampering -----------------------------------------------------------------------


def test_flipping_any_single_byte_fails() -> None:
    blob = seal(KEY, b"anna@example.com", EMAIL)
    for position in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[position] ^= bit
            with pytest.raises(DecryptionFailed):
                unseal(KEY, bytes(tampered), EMAIL)


def test_every_truncation_fails_and_so_does_an_extension() -> None:
    blob = seal(KEY, b"anna@example.com", EMAIL)
    for length in range(len(blob)):
        with pytest.raises(DecryptionFailed):
            unseal(KEY, blob[:length], EMAIL)
    with pytest.raises(DecryptionFailed):
        unseal(KEY, blob + b"\x00", EMAIL)


@pytest.mark.parametrize(
    "elsewhere",
    [
        FieldContext("eu", "contacts", OTHER_RECORD, "email"),  # another row
        FieldContext("eu", "contacts", RECORD, "phone"),  # another field
        FieldContext("eu", "leads", RECORD, "email"),  # another table
        FieldContext("us", "contacts", RECORD, "email"),  # another region
    ],
    ids=["record", "field", "table", "region"],
)
def test_a_ciphertext_copied_to_another_place_fails(elsewhere: FieldContext) -> None:
    blob = seal(KEY, b"anna@example.com", EMAIL)
    with pytest.raises(DecryptionFailed) as caught:
        unseal(KEY, blob, elsewhere)
    assert "integrity" in caught.value.detail


def test_swapping_two_fields_values_fails_both_ways() -> None:
    phone = FieldContext("eu", "contacts", RECORD, "phone")
    sealed_email = seal(KEY, b"anna@example.com", EMAIL)
    sealed_phone = seal(KEY, b"+4930123456", phone)
    with pytest.raises(DecryptionFailed):
        unseal(KEY, sealed_email, phone)
    with pytest.raises(DecryptionFailed):
        unseal(KEY, sealed_phone, EMAIL)


def test_context_parts_cannot_be_shifted_into_each_other() -> None:
    # Without length prefixes ("ab", "c") and ("a", "bc") would authenticate alike.
    left = FieldContext("eu", "contacts", "ab", "c")
    right = FieldContext("eu", "contacts", "a", "bc")
    assert left.encoded != right.encoded
    with pytest.raises(DecryptionFailed):
        unseal(KEY, seal(KEY, b"x", left), right)


def test_another_subjects_key_cannot_open_it() -> None:
    blob = seal(KEY, b"anna@example.com", EMAIL)
    with pytest.raises(DecryptionFailed):
        unseal(make_key(), blob, EMAIL)


def test_relabelling_the_key_id_fails_even_with_the_right_key_material() -> None:
    material = os.urandom(32)
    original, twin = make_key(material), make_key(material)
    blob = seal(original, b"anna@example.com", EMAIL)
    relabelled = blob[:2] + twin.id + blob[HEADER_BYTES:]
    with pytest.raises(DecryptionFailed):
        unseal(twin, relabelled, EMAIL)


@pytest.mark.parametrize(("position", "value"), [(0, 2), (0, 0), (1, 2), (1, 0)])
def test_unknown_versions_and_algorithms_are_malformed(position: int, value: int) -> None:
    blob = bytearray(seal(KEY, b"anna@example.com", EMAIL))
    blob[position] = value
    with pytest.raises(MalformedCiphertext):
        key_id_of(bytes(blob))


@fast
@given(st.binary(max_size=OVERHEAD_BYTES - 1))
def test_anything_shorter_than_the_overhead_is_malformed(blob: bytes) -> None:
    with pytest.raises(MalformedCiphertext):
        key_id_of(blob)


def test_a_non_bytes_value_is_malformed() -> None:
    with pytest.raises(MalformedCiphertext):
        key_id_of("not bytes")  # type: ignore[arg-type]


def test_errors_are_server_side_and_name_no_value() -> None:
    blob = seal(KEY, b"anna@example.com", EMAIL)
    with pytest.raises(DecryptionFailed) as caught:
        unseal(KEY, blob[:-1] + bytes([blob[-1] ^ 1]), EMAIL)
    error = caught.value
    assert error.status == 500
    assert "anna" not in str(error)
    assert blob.hex() not in str(error)
    assert error.__cause__ is None
    assert error.__suppress_context__


# --- contexts and keys ---------------------------------------------------------------


@pytest.mark.parametrize("part", ["region", "table", "record_id", "field"])
def test_every_context_part_is_required(part: str) -> None:
    values = {"region": "eu", "table": "contacts", "record_id": RECORD, "field": "email"}
    values[part] = ""
    with pytest.raises(ValueError, match=part):
        FieldContext(**values)


def test_a_data_key_shows_no_key_material_and_cannot_be_pickled() -> None:
    material = os.urandom(32)
    key = make_key(material)
    for text in (repr(key), str(key)):
        assert material.hex() not in text
        assert key.id.hex() in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_a_data_key_must_be_256_bits() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(key_id=new_key_id(), region="eu", subject_id="s", version=1, material=b"k" * 16)
