"""Signed notes and checkpoints in the C2SP formats (c2sp.org/signed-note, tlog-checkpoint).

A checkpoint says "chain `origin` had `tree_size` entries and head hash `H` at
time T", signed with the chain's Ed25519 key, which lives outside the database:

    bastion.local/audit/eu
    1234
    <base64 head hash>
    time 2026-11-24T09:00:00.000000Z

    — bastion.local/audit/eu <base64(key id ‖ signature)>

The signature covers the text above the blank line (every line ending in `\\n`).
The key id is the first 4 bytes of SHA-256(key name ‖ `\\n` ‖ 0x01 ‖ public key),
and the verifier key is published as `<name>+<hex key id>+<base64(0x01 ‖ public key)>`
(`bastion audit public-key`): the same conventions as Go's sumdb `note` package,
so third-party tooling can keep and check our checkpoints. A prune record is a
checkpoint of the prune point with one more extension line, `pruned-before <time>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ED25519 = b"\x01"
_DASH = "\u2014"
_KEY_NAME_RE = re.compile(r"[^\s+]{1,255}")
_SIGNATURE_LINE_RE = re.compile(rf"{_DASH} ([^\s+]+) ([A-Za-z0-9+/]+={{0,2}})")


class NoteError(ValueError):
    """A note or verifier key is malformed, or its signature does not verify."""


def key_id(name: str, public: bytes) -> bytes:
    """The 4-byte key id of an Ed25519 key named `name` (C2SP signed-note)."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public).digest()[:4]


def verifier_key(name: str, public: bytes) -> str:
    """`<name>+<hex key id>+<base64(0x01 ‖ public key)>`."""
    encoded = base64.b64encode(ED25519 + public).decode()
    return f"{name}+{key_id(name, public).hex()}+{encoded}"


def parse_verifier_key(text: str) -> tuple[str, bytes, Ed25519PublicKey]:
    """(name, key id, public key) of a verifier key; `NoteError` if malformed."""
    parts = text.strip().split("+", 2)  # base64 may itself contain "+"
    if len(parts) != 3 or _KEY_NAME_RE.fullmatch(parts[0]) is None:
        raise NoteError("a verifier key reads <name>+<hex key id>+<base64 key>")
    name, hex_id, encoded = parts
    try:
        raw = base64.b64decode(encoded, validate=True)
        kid = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise NoteError("the verifier key is not valid hex/base64") from None
    if len(raw) != 33 or raw[:1] != ED25519 or kid != key_id(name, raw[1:]):
        raise NoteError("the verifier key is not an Ed25519 key with a matching key id")
    return name, kid, Ed25519PublicKey.from_public_bytes(raw[1:])


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes


def checkpoint_body(origin: str, tree_size: int, head_hash: bytes, *extensions: str) -> bytes:
    """The signed text of a checkpoint: origin, size, base64 head hash, extension lines."""
    lines = [origin, str(tree_size), base64.b64encode(head_hash).decode(), *extensions]
    if any(not line or "\n" in line for line in lines):
        raise NoteError("note lines must be non-empty and single-line")
    return ("\n".join(lines) + "\n").encode()


def render_note(body: bytes, signatures: list[Signature]) -> str:
    lines = [
        f"{_DASH} {s.name} {base64.b64encode(s.key_id + s.signature).decode()}\n"
        for s in signatures
    ]
    return body.decode() + "\n" + "".join(lines)


def parse_note(text: str) -> tuple[bytes, list[Signature]]:
    """(signed body, signatures) of a note; `NoteError` if it is not one."""
    body, separator, signature_block = text.rpartition("\n\n")
    if not separator or not signature_block.endswith("\n"):
        raise NoteError("a note is a text, a blank line, and signature lines")
    signatures: list[Signature] = []
    for line in signature_block[:-1].split("\n"):
        match = _SIGNATURE_LINE_RE.fullmatch(line)
        if match is None:
            raise NoteError("a signature line reads '— <key name> <base64>'")
        raw = base64.b64decode(match.group(2))
        if len(raw) != 4 + 64:
            raise NoteError("an Ed25519 note signature is a 4-byte key id and 64 bytes")
        signatures.append(Signature(match.group(1), raw[:4], raw[4:]))
    return (body + "\n").encode(), signatures


def verify_note(text: str, verifier: str) -> bytes:
    """The signed body of `text` if `verifier` signed it; `NoteError` otherwise."""
    name, kid, public = parse_verifier_key(verifier)
    body, signatures = parse_note(text)
    for signature in signatures:
        if signature.name == name and signature.key_id == kid:
            try:
                public.verify(signature.signature, body)
            except InvalidSignature:
                raise NoteError("the note's signature does not verify") from None
            return body
    raise NoteError(f"the note has no signature by {name}")


@dataclass(frozen=True, slots=True)
class CheckpointText:
    """A parsed checkpoint body."""

    origin: str
    tree_size: int
    head_hash: bytes
    extensions: tuple[str, ...]


def parse_checkpoint(body: bytes) -> CheckpointText:
    try:
        lines = body.decode().split("\n")
    except UnicodeDecodeError:
        raise NoteError("a checkpoint is UTF-8 text") from None
    if len(lines) < 4 or lines[-1] != "" or not lines[1].isdigit():
        raise NoteError("a checkpoint reads origin, tree size, base64 hash, extensions")
    try:
        head = base64.b64decode(lines[2], validate=True)
    except binascii.Error:
        raise NoteError("the checkpoint's head hash is not base64") from None
    return CheckpointText(lines[0], int(lines[1]), head, tuple(lines[3:-1]))
