"""Pure rules of data subjects' requests: deadlines, transitions, certificates, CSV cells."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from bastion.audit.keys import SigningKey
from bastion.crm.catalog import ENTITIES
from bastion.dsr import certificate
from bastion.dsr.erasure import retention_years
from bastion.dsr.model import InvalidTransition, due_at, require_status
from bastion.dsr.package import _cell

RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("regime", "extended", "days"),
    [("gdpr", False, 30), ("gdpr", True, 90), ("ccpa", False, 45), ("ccpa", True, 90)],
)
def test_deadlines_follow_the_regime_and_one_extension(
    regime: str, extended: bool, days: int
) -> None:
    assert due_at(regime, RECEIVED, extended=extended) == RECEIVED + timedelta(days=days)


def test_a_transition_from_a_state_not_allowed_is_a_conflict() -> None:
    require_status("verified", {"verified"}, "approved")
    with pytest.raises(InvalidTransition) as raised:
        require_status("received", {"verified"}, "approved")
    assert raised.value.status == 409
    assert "received" in raised.value.detail


def _key(name: str = "eu") -> SigningKey:
    return SigningKey(name, Ed25519PrivateKey.generate())


_KEY = _key()


def _body() -> dict[str, Any]:
    return {
        "format": certificate.FORMAT,
        "request_id": "dsr_eu_01jd0000000000000000000000",
        "region": "eu",
        "regime": "gdpr",
        "subject_ids": ["con_eu_01jd0000000000000000000001"],
        "received_at": "2026-03-01T12:00:00+00:00",
        "approved_by": "prn_01jd0000000000000000000000",
        "completed_at": "2026-03-02T12:00:00+00:00",
        "policy_version": "abc",
        "erased": {"activities": ["act_eu_01jd0000000000000000000002"]},
        "pseudonymised": {},
        "kept": [],
        "keys_destroyed": 1,
        "indexes_cleared": 4,
        "audit": {"chain": "eu", "head_seq": 9, "head_hash": "00" * 32},
    }


def test_a_signed_certificate_verifies_and_names_its_body() -> None:
    key = _key()
    document = certificate.sign(_body(), key)
    assert certificate.verify(document, {key.key_id: key.private.public_key()}) == _body()
    text = certificate.as_text(document["certificate"])
    assert "dsr_eu_01jd0000000000000000000000" in text
    assert "activities: 1 record(s)" in text


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["certificate"]["erased"]["activities"].append("act_eu_x"),
        lambda d: d["certificate"].__setitem__("completed_at", "2026-01-01T00:00:00+00:00"),
        lambda d: d["certificate"].__setitem__("keys_destroyed", 0),
        lambda d: d["certificate"]["kept"].append({"record_id": "x"}),
        lambda d: d["certificate"].__setitem__("extra", True),
    ],
)
def test_any_change_to_a_certificate_breaks_its_signature(change: Any) -> None:
    key = _key()
    document = certificate.sign(_body(), key)
    altered = copy.deepcopy(document)
    change(altered)
    with pytest.raises(certificate.CertificateInvalid, match="altered or forged"):
        certificate.verify(altered, {key.key_id: key.private.public_key()})


def test_malformed_or_foreign_certificates_are_refused_with_a_reason() -> None:
    key, stranger = _key(), _key()
    verifiers = {key.key_id: key.private.public_key()}
    document = certificate.sign(_body(), key)
    cases: list[tuple[Any, str]] = [
        ([], "not a certificate document"),
        ({"certificate": _body()}, "not a certificate document"),
        ({**document, "note": "x"}, "not a certificate document"),
        (
            {**document, "certificate": {**_body(), "format": "v0"}},
            "format",
        ),
        (
            {**document, "signature": {**document["signature"], "algorithm": "rsa"}},
            "ed25519",
        ),
        (
            {**document, "signature": {**document["signature"], "value": "***"}},
            "malformed",
        ),
        (
            {**document, "signature": {**document["signature"], "key_id": "zz"}},
            "malformed",
        ),
        (certificate.sign(_body(), stranger), "does not know"),
    ]
    for candidate, reason in cases:
        with pytest.raises(certificate.CertificateInvalid, match=reason):
            certificate.verify(candidate, verifiers)


@given(st.binary(min_size=64, max_size=64))
def test_a_forged_signature_never_verifies(forged: bytes) -> None:
    key = _KEY
    document = certificate.sign(_body(), key)
    document["signature"]["value"] = base64.b64encode(forged).decode()
    with pytest.raises(certificate.CertificateInvalid):
        certificate.verify(document, {key.key_id: key.private.public_key()})


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("+cmd", "'+cmd"),
        ("-cmd", "'-cmd"),
        ("\tx", "'\tx"),
        ("+4930123456", "+4930123456"),  # a phone number stays a phone number
        ("-12.5", "-12.5"),
        ("Anna", "Anna"),
        ("", ""),
        (7, 7),
        (None, None),
    ],
)
def test_csv_cells_never_start_a_formula(value: Any, shown: Any) -> None:
    assert _cell(value) == shown


@given(st.text(min_size=1))
def test_no_csv_cell_starts_with_a_formula_character(text: str) -> None:
    cell = _cell(text)
    first, second = cell[0], cell[1:2]
    assert first not in "=@\t\r"
    assert not (first in "+-" and not second.isdigit())


def test_erasure_may_delete_activities_and_cases_because_nothing_links_to_them() -> None:
    """Erasure deletes the activities and cases about a person outright; were a field
    to link to one, a kept record could be left pointing at nothing."""
    linking = [
        f"{spec.name}.{field.name}"
        for spec in ENTITIES.values()
        for field in spec.fields
        if field.type == "ref" and field.ref in ("activities", "cases")
    ]
    assert linking == []


def test_retention_rules_test_plain_fields_so_stored_rows_answer_them() -> None:
    for spec in ENTITIES.values():
        for rule in spec.retention:
            field = spec.field(rule.field)
            assert field is not None, (spec.name, rule.field)
            assert not field.encrypted, (spec.name, rule.field)
            row = {rule.field: next(iter(rule.values))}
            assert retention_years(spec, row) == rule.years
            assert retention_years(spec, {rule.field: None}) == 0
