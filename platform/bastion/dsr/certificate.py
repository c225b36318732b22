"""Erasure certificates: what was erased and kept, when, under which policy, signed.

The body is canonical JSON (sorted keys, no floats, UTF-8) holding ids, entity
names, counts, reason codes and times — never a value. It is signed with the
region's audit checkpoint key (Ed25519, kept outside the databases), so anyone
with the region's published verifier key (`bastion audit public-key`) can check
it, and it names the audit chain head at the moment of issue, tying the
certificate to the tamper-evident log. `bastion dsr verify-certificate FILE`
checks a certificate file; changing any byte of the body breaks the signature.

A certificate file is JSON: `{"certificate": <body>, "signature": {"key_id":
<hex>, "value": <base64>, "algorithm": "ed25519"}}`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Literal, NotRequired

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typing_extensions import TypedDict

from bastion.audit.keys import SigningKey
from bastion.dsr.erasure import KeptRecord
from bastion.dsr.model import Regime
from bastion.errors import ValidationFailed
from bastion.wire import Timestamp, closed, extensible

FORMAT: Literal["bastion-erasure-certificate-v1"] = "bastion-erasure-certificate-v1"


@extensible
class CertifiedChainHead(TypedDict):
    """The region's audit chain head when the certificate was issued."""

    chain: str
    head_seq: int
    head_hash: str
    """hex"""


@extensible
class ErasureCertificateBody(TypedDict):
    """What was erased and kept, when, under which policy: ids, names and counts only."""

    format: Literal["bastion-erasure-certificate-v1"]
    request_id: str
    region: str
    regime: Regime
    subject_ids: list[str]
    received_at: Timestamp
    approved_by: str
    completed_at: Timestamp
    policy_version: str
    erased: dict[str, list[str]]
    """Record ids erased (shells and deletions), per entity."""
    pseudonymised: NotRequired[dict[str, list[str]]]
    """Records kept whose link to the person now names the erased shell, per entity
    (certificates issued before pseudonymisation existed have none)."""
    kept: list[KeptRecord]
    keys_destroyed: int
    indexes_cleared: int
    audit: CertifiedChainHead


@extensible
class CertificateSignature(TypedDict):
    algorithm: Literal["ed25519"]
    key_id: str
    """hex: the region's audit checkpoint key (`bastion audit public-key`)."""
    value: str
    """base64"""


@closed
class SignedCertificate(TypedDict):
    """An erasure certificate: `signature` is over the canonical JSON of `certificate`."""

    certificate: ErasureCertificateBody
    signature: CertificateSignature


class CertificateInvalid(ValidationFailed):
    slug = "certificate-invalid"
    title = "Certificate invalid"


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(body: ErasureCertificateBody, key: SigningKey) -> SignedCertificate:
    """The certificate document for `body`, signed with `key`."""
    return {
        "certificate": body.copy(),
        "signature": {
            "algorithm": "ed25519",
            "key_id": key.key_id.hex(),
            "value": base64.b64encode(key.sign(canonical(body))).decode(),
        },
    }


def load(text: str) -> Any:
    """Parse a certificate file, refusing duplicate keys: a reader that takes the first
    of two `"kept"` lists would otherwise see something the signature never covered."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _value in pairs]
        if len(keys) != len(set(keys)):
            raise CertificateInvalid("the certificate repeats a key; it was tampered with")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError:
        raise CertificateInvalid("the file is not a JSON certificate") from None


def verify(document: Any, verifiers: Mapping[bytes, Ed25519PublicKey]) -> dict[str, Any]:
    """The certificate body, if `document` is one signed by one of `verifiers`.

    Raises `CertificateInvalid` naming what is wrong (malformed, unknown key,
    signature does not match the body).
    """
    if not isinstance(document, dict) or set(document) != {"certificate", "signature"}:
        raise CertificateInvalid("not a certificate document (certificate + signature)")
    body, signature = document["certificate"], document["signature"]
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CertificateInvalid(f"the certificate body is not in the {FORMAT} format")
    if not isinstance(signature, dict) or signature.get("algorithm") != "ed25519":
        raise CertificateInvalid("the signature is not an ed25519 signature")
    try:
        key_id = bytes.fromhex(str(signature.get("key_id")))
        value = base64.b64decode(str(signature.get("value")), validate=True)
    except (ValueError, binascii.Error):
        raise CertificateInvalid("the signature is malformed") from None
    key = verifiers.get(key_id)
    if key is None:
        raise CertificateInvalid("the certificate is signed by a key this region does not know")
    try:
        key.verify(value, canonical(body))
    except InvalidSignature:
        raise CertificateInvalid(
            "the signature does not match the certificate: it was altered or forged"
        ) from None
    return body


def as_text(body: Mapping[str, Any]) -> str:
    """The certificate for people (the JSON document is the one that verifies)."""
    lines = [
        "ERASURE CERTIFICATE",
        "",
        f"Request:          {body['request_id']} ({body['regime'].upper()}, "
        f"region {body['region']})",
        f"Data subject(s):  {', '.join(body['subject_ids'])}",
        f"Received:         {body['received_at']}",
        f"Approved by:      {body['approved_by']}",
        f"Completed:        {body['completed_at']}",
        f"Policy version:   {body['policy_version']}",
        f"Audit log:        chain {body['audit']['chain']} at entry {body['audit']['head_seq']} "
        f"(head {body['audit']['head_hash'][:16]}…)",
        "",
        "Erased:",
    ]
    for entity, ids in sorted(body["erased"].items()):
        lines.append(f"  {entity}: {len(ids)} record(s)")
    lines.append(f"  data keys destroyed: {body['keys_destroyed']}")
    for entity, ids in sorted(body.get("pseudonymised", {}).items()):
        lines.append(
            f"Pseudonymised (kept; their link to the person now names the erased shell): "
            f"{entity}: {len(ids)}"
        )
    lines.append(f"  search indexes cleared: {body['indexes_cleared']}")
    lines.append("")
    if body["kept"]:
        lines.append("Kept, and why:")
        for kept in body["kept"]:
            lines.append(f"  {kept['entity']} {kept['record_id']}: {kept['reason']}")
    else:
        lines.append("Nothing was kept.")
    lines += [
        "",
        "This certificate holds no personal data; verify it with",
        "  bastion dsr verify-certificate <file>",
    ]
    return "\n".join(lines) + "\n"
