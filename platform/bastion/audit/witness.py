"""Witness checkpoints: a signed checkpoint kept outside the database, to check the chain against.

The checkpoints in `audit_checkpoints` catch a rewrite only while they are
there: whoever can rewrite the chain can also delete them. A copy held
elsewhere — the note `bastion audit checkpoint` prints, or `GET
/v1/audit/checkpoints` with `Accept: text/plain`, stored by a third party or a
cron job — cannot be deleted with the database. `bastion audit verify --against
FILE` and `POST /v1/audit/verify` check that the chain at the witness's tree size
has the witness's head hash (`checkpoint_mismatch`: rewritten) and reaches that
size at all (`truncated`).

The note must be signed by one of the chain's keys (current or archived) and name
the chain as its origin; otherwise it is bad input (`ValidationFailed` naming
`field`), not evidence of tampering.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.audit.notes import NoteError, parse_checkpoint, parse_note
from bastion.errors import FieldError, ValidationFailed

MAX_NOTE_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Witness:
    """What a witness saw: the chain had `tree_size` entries ending in `head_hash`."""

    tree_size: int
    head_hash: bytes


def parse_witness(
    text: str, origin: str, keys: Mapping[bytes, Ed25519PublicKey], *, field: str
) -> Witness:
    """The checkpoint in the signed note `text`, signed by one of `keys`, of chain `origin`.

    Trailing blank lines are ignored (a note saved from a terminal). Raises
    `ValidationFailed` naming `field` when the note is malformed, of another
    chain, or not signed by one of the chain's keys.
    """

    def invalid(message: str) -> ValidationFailed:
        return ValidationFailed(
            "the witness checkpoint is not usable", [FieldError(field, message)]
        )

    if len(text.encode()) > MAX_NOTE_BYTES:
        raise invalid(f"must be a signed note of at most {MAX_NOTE_BYTES} bytes")
    try:
        body, signatures = parse_note(text.rstrip("\n") + "\n")
        checkpoint = parse_checkpoint(body)
    except (NoteError, binascii.Error, ValueError):
        raise invalid("must be a signed checkpoint note (C2SP tlog-checkpoint)") from None
    if checkpoint.origin != origin:
        raise invalid(f"is a checkpoint of {checkpoint.origin!r}, not of {origin!r}")
    if checkpoint.tree_size < 1 or len(checkpoint.head_hash) != 32:
        raise invalid("must name a tree size of at least 1 and a SHA-256 head hash")
    for signature in signatures:
        public = keys.get(signature.key_id)
        if signature.name != origin or public is None:
            continue
        try:
            public.verify(signature.signature, body)
        except InvalidSignature:
            continue
        return Witness(checkpoint.tree_size, checkpoint.head_hash)
    raise invalid("is not signed by this chain's key")
