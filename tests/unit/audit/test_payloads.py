"""How verify reads the record ids a payload indexes: its fast path agrees with a full parse."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from bastion.audit.encoding import payload_bytes
from bastion.audit.payloads import index_matches

ids = st.lists(st.text(min_size=1, max_size=12), max_size=3, unique=True)


@given(named=ids, indexed=ids)
def test_the_index_matches_exactly_the_payloads_record_ids(
    named: list[str], indexed: list[str]
) -> None:
    payload = payload_bytes(
        record_ids=named, fields=[], client_address=None, reason=None, details={}
    ).decode()
    assert index_matches(payload, indexed) is (sorted(named) == sorted(indexed))


@given(first=ids, last=ids, indexed=ids)
def test_a_hand_written_payload_is_read_as_json_reads_it(
    first: list[str], last: list[str], indexed: list[str]
) -> None:
    # Duplicate keys and look-alike strings: the last top-level member counts.
    decoy = json.dumps(',"record_ids":' + json.dumps(indexed) + "}")
    payload = (
        '{"record_ids":' + json.dumps(first) + ',"x":' + decoy + ',"record_ids":'
        + json.dumps(last, separators=(",", ":")) + "}"
    )  # fmt: skip
    assert index_matches(payload, indexed) is (sorted(last) == sorted(indexed))
