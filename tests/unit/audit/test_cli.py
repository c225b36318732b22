"""`bastion audit checkpoint|export|prune|keygen|public-key` against the test databases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from bastion.audit import AuditLog, key_ring
from bastion.audit.keys import AuditKeyError
from bastion.audit.notes import verify_note
from bastion.audit.settings import AuditSettings
from bastion.cli import main
from bastion.crm.cursors import CursorCodec
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock
from tests.unit.audit.conftest import CONTACT, append_many, cli_env, superuser


def _run(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, ["audit", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_checkpoint_prints_a_note_that_the_public_key_verifies(
    state: State, backend: Backend, tmp_path: Path
) -> None:
    env = cli_env(backend, tmp_path)
    append_many(state, "eu", 3)
    note = _run(env, "checkpoint", "--region", "eu")
    assert note.startswith("bastion.local/audit/eu\n3\n")
    verifier = _run(env, "public-key", "--region", "eu").strip()
    verify_note(note.strip("\n") + "\n", verifier)
    assert "us: empty chain" in _run(env, "checkpoint")


def test_export_writes_json_lines_and_is_itself_audited(
    state: State, backend: Backend, tmp_path: Path
) -> None:
    env = cli_env(backend, tmp_path)
    append_many(state, "eu", 2)
    lines = _run(env, "export", "--region", "eu", "--record-id", CONTACT).splitlines()
    assert [json.loads(line)["record_ids"] for line in lines] == [[CONTACT], [CONTACT]]
    again = _run(env, "export", "--region", "eu", "--action", "audit.export").splitlines()
    assert len(again) == 2  # this export's event and the previous one's
    bad = CliRunner().invoke(main, ["audit", "export", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2
    assert "--since" in bad.output


def test_prune_dry_run_and_prune(
    state: State, backend: Backend, tmp_path: Path, clock: FrozenClock
) -> None:
    env = cli_env(backend, tmp_path)
    append_many(state, "eu", 4)
    state.audit.checkpoint("eu")
    assert "nothing to prune" in _run(env, "prune", "--region", "eu")
    # The CLI uses the system clock: retention is measured from now, so make it one day.
    env["BASTION_AUDIT_RETENTION_DAYS"] = "1"
    assert "would remove 4 entries (seq ..4)" in _run(env, "prune", "--region", "eu", "--dry-run")
    assert "removed 4 entries" in _run(env, "prune", "--region", "eu")
    assert "eu: OK" in _run(env, "verify", "--region", "eu")


def test_keygen_creates_missing_keys_once(backend: Backend, tmp_path: Path) -> None:
    env = {**cli_env(backend, tmp_path), "BASTION_AUDIT_SIGNING_KEY_DIR": str(tmp_path / "k")}
    first = _run(env, "keygen")
    assert first.count(": created") == 3
    assert _run(env, "keygen").count(": exists") == 3
    assert {p.name for p in (tmp_path / "k").glob("*.ed25519")} == {
        "eu.ed25519",
        "us.ed25519",
        "control.ed25519",
    }


def test_production_without_keys_fails_clearly(
    state: State, backend: Backend, tmp_path: Path
) -> None:
    env = {
        **cli_env(backend, tmp_path),
        "BASTION_MODE": "production",
        "BASTION_AUDIT_SIGNING_KEY_DIR": str(tmp_path / "none"),
    }
    result = CliRunner().invoke(main, ["audit", "public-key"], env=env)
    assert result.exit_code == 1
    assert "bastion audit keygen" in result.output
    settings = AuditSettings(signing_key_dir=str(tmp_path / "none"))
    ring = key_ring(settings, home=tmp_path, production=True)
    with pytest.raises(AuditKeyError, match="bastion audit keygen"):
        AuditLog(
            databases={"eu": state.audit.database("eu")},
            clock=state.clock,
            settings=AuditSettings(),
            keys=ring,
            cursors=CursorCodec(b"x" * 32),
        )


def test_checkpoints_signed_before_a_key_rotation_still_verify(
    state: State, tmp_path: Path
) -> None:
    append_many(state, "eu", 2)
    old = state.audit.checkpoint("eu")
    keys = tmp_path / "audit-keys"
    shutil.move(keys / "eu.ed25519", tmp_path / "retired-eu.ed25519")
    rotated = build_state(state.settings, clock=state.clock)
    try:
        append_many(rotated, "eu", 2)
        new = rotated.audit.checkpoint("eu")
        assert new.key_id != old.key_id
        report = rotated.audit.verify("eu")
        assert report.ok, report.problem
        assert report.checkpoints == 2
    finally:
        rotated.close()


def test_verify_from_past_the_head_is_a_usage_error(
    state: State, backend: Backend, tmp_path: Path
) -> None:
    env = cli_env(backend, tmp_path)
    append_many(state, "eu", 3)
    state.audit.flush("eu")
    assert "eu: OK (0 entries" in _run(env, "verify", "--region", "eu", "--from", "4")
    past = CliRunner().invoke(main, ["audit", "verify", "--region", "eu", "--from", "9"], env=env)
    assert past.exit_code == 2, past.output
    assert "--from must be at most 4" in past.output
    assert "FAILED" not in past.output


def test_verify_against_a_witness_note_file(state: State, backend: Backend, tmp_path: Path) -> None:
    env = cli_env(backend, tmp_path)
    append_many(state, "eu", 4)
    witness = tmp_path / "witness.note"
    witness.write_text(_run(env, "checkpoint", "--region", "eu"))  # as printed, blank line too
    ok = _run(env, "verify", "--region", "eu", "--against", str(witness))
    assert "eu: OK" in ok
    assert "agrees with the witness at 4" in ok
    with superuser(state.audit.database("eu")) as conn:
        conn.execute(text("DELETE FROM audit_checkpoints"))
        tail = "(SELECT event_id FROM audit_chain WHERE seq > 2)"
        conn.execute(text(f"DELETE FROM audit_record_refs WHERE event_id IN {tail}"))  # noqa: S608
        conn.execute(text(f"DELETE FROM audit_events WHERE id IN {tail}"))  # noqa: S608
        conn.execute(text("DELETE FROM audit_chain WHERE seq > 2"))
    env_ok = _run(env, "verify", "--region", "eu")  # nothing in the database contradicts it
    assert "eu: OK" in env_ok
    bad = CliRunner().invoke(
        main, ["audit", "verify", "--region", "eu", "--against", str(witness)], env=env
    )
    assert bad.exit_code == 1
    assert "FAILED at sequence number 3: truncated" in bad.stdout
    unnamed = CliRunner().invoke(main, ["audit", "verify", "--against", str(witness)], env=env)
    assert unnamed.exit_code == 2
    other = CliRunner().invoke(
        main, ["audit", "verify", "--region", "us", "--against", str(witness)], env=env
    )
    assert other.exit_code == 2
    assert "--against" in other.output
