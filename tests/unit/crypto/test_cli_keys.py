"""`bastion keys`: status, rotate-kek and retire-kek on the embedded default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result

from bastion.cli import main
from bastion.config import load_settings
from bastion.crypto.envelope import FieldContext
from bastion.state import build_state
from tests.conftest import REPO

ANNA = "con_eu_01m86dzpzyehmvcb1s3m40n3bk"
CTX = FieldContext("eu", "contacts", ANNA, "email")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "none.toml"
    config.write_text("")
    return {
        "BASTION_HOME": str(tmp_path / "home"),
        "BASTION_CONFIG": str(config),
        "BASTION_POLICIES": str(REPO / "policies"),
        "BASTION_LOG_LEVEL": "ERROR",
    }


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def run(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["keys", *args], env=env, input=input)


def test_status_rotate_and_retire(env: dict[str, str]) -> None:
    assert run(env, "status").exit_code == 0  # migrates the embedded default
    settings = load_settings(env)
    state = build_state(settings)
    try:
        with state.regions.get("eu").transaction(write=True) as conn:
            blob = state.keys.seal(conn, ANNA, b"anna@example.com", CTX)
            for n in range(4):
                state.keys.dek_for_subject(conn, "eu", f"subject-{n}")
    finally:
        state.close()

    status = run(env, "status")
    assert status.exit_code == 0, status.output
    assert "region eu (provider local): current KEK v1" in status.output
    assert "region us (provider local): current KEK none yet" in status.output
    assert [line.split() for line in status.output.splitlines() if "v1 " in line] == [
        ["v1", "current", "5", "1"]
    ]

    rotated = run(env, "rotate-kek", "--region", "eu", "--batch-size", "2")
    assert rotated.exit_code == 0, rotated.output
    assert "KEK rotation to v2 completed; 6 keys re-wrapped" in rotated.output
    assert "retire-kek --region eu --version 1" in rotated.output
    assert "nothing to resume" in run(env, "rotate-kek", "--region", "eu", "--resume").output

    status = run(env, "status", "--region", "eu")
    rows = [line.split() for line in status.output.splitlines() if line.startswith("  v")]
    assert rows == [["v1", "retirable", "0", "0"], ["v2", "current", "5", "1"]]
    assert "last rotation: v1 -> v2 completed" in status.output

    refused = run(env, "retire-kek", "--region", "eu", "--version", "2", "--yes")
    assert refused.exit_code != 0
    assert "current KEK" in refused.output
    aborted = run(env, "retire-kek", "--region", "eu", "--version", "1", input="n\n")
    assert aborted.exit_code != 0
    assert (Path(env["BASTION_HOME"]) / "keys" / "eu" / "kek-v000001.key").exists()
    retired = run(env, "retire-kek", "--region", "eu", "--version", "1", "--yes")
    assert retired.exit_code == 0, retired.output
    assert not (Path(env["BASTION_HOME"]) / "keys" / "eu" / "kek-v000001.key").exists()

    state = build_state(load_settings(env))
    try:
        with state.regions.get("eu").transaction() as conn:
            assert state.keys.unseal(conn, blob, CTX) == b"anna@example.com"
    finally:
        state.close()


def test_an_unknown_region_is_an_error(env: dict[str, str]) -> None:
    for args in (("status", "--region", "ap"), ("rotate-kek", "--region", "ap")):
        result = run(env, *args)
        assert result.exit_code != 0
        assert "unknown region 'ap'" in result.output


def test_production_mode_refuses_the_local_provider(env: dict[str, str]) -> None:
    production = {**env, "BASTION_MODE": "production", "BASTION_SECRET_KEY": "s" * 40}
    result = run(production, "status")
    assert result.exit_code != 0
    assert result.exit_code == 1
    assert "refused in production mode" in result.output
