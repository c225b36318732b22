"""The `bastion` command on the embedded default (SQLite under BASTION_HOME)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.cli import main
from bastion.config import load_settings
from bastion.state import build_state
from tests.conftest import REPO


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "BASTION_HOME": str(tmp_path / "home"),
        "BASTION_CONFIG": str(tmp_path / "none.toml"),
        "BASTION_POLICIES": str(REPO / "policies"),
        "BASTION_LOG_LEVEL": "ERROR",
    }


@pytest.fixture(autouse=True)
def _reset_structlog():  # type: ignore[no-untyped-def]
    yield
    structlog.reset_defaults()


def _run(env: dict[str, str], *args: str) -> str:
    (Path(env["BASTION_CONFIG"])).write_text("")
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_migrate_tokens_and_demo(env: dict[str, str]) -> None:
    migrated = _run(env, "migrate")
    assert {line.split(":")[0] for line in migrated.splitlines()} == {"control", "eu", "us"}

    output = _run(
        env, "tokens", "create", "--principal", "alice", "--role", "sales_rep", "--region", "eu"
    )
    token = output.splitlines()[-1]
    assert token.startswith("bst_")
    listed = _run(env, "tokens", "list")
    assert "alice" in listed
    assert token not in listed
    assert token.split("_", 2)[2] not in listed  # the secret (base64url may hold "_")

    demo = _run(env, "demo")
    admin_token = demo.splitlines()[-1]
    assert "curl" in demo
    assert admin_token in demo
    again = _run(env, "demo")
    assert "already seeded" in again

    # The server remembers a checked token for a short while (0.2 s here, 2 s by
    # default): a revocation made by the CLI, another process, reaches it within that.
    settings = load_settings({**env, "BASTION_TOKEN_CACHE_SECONDS": "0.2"})
    state = build_state(settings)
    try:
        with TestClient(create_app(settings, state=state)) as client:
            rep = {"Authorization": f"Bearer {token}"}
            admin = {"Authorization": f"Bearer {admin_token}"}
            assert client.get("/v1/me", headers=rep).json()["regions"] == ["eu"]
            contacts = client.get("/v1/contacts", headers=admin).json()["data"]
            assert {c["region"] for c in contacts} == {"eu", "us"}
            leads = client.get("/v1/leads", params={"status": "converted"}, headers=admin)
            assert len(leads.json()["data"]) == 2
            token_id = token.split("_")[1]
            _run(env, "tokens", "revoke", token_id)
            deadline = time.monotonic() + 5
            while client.get("/v1/me", headers=rep).status_code != 401:
                assert time.monotonic() < deadline, "the revocation never reached the server"
                time.sleep(0.05)
    finally:
        state.close()


def test_db_check_passes_on_the_shipped_migrations(env: dict[str, str]) -> None:
    output = _run(env, "db", "check")
    assert "control: migrations match the tables" in output
    assert "region: migrations match the tables" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tokens", "create", "--principal", "bob", "--role", "emperor"], "role"),
        (
            ["tokens", "create", "--principal", "bob", "--role", "admin", "--region", "mars"],
            "region",
        ),
        (["tokens", "create", "--principal", "bad name!", "--role", "admin"], "name"),
        (["tokens", "revoke", "nope"], "token"),
    ],
)
def test_cli_errors_are_clear(env: dict[str, str], args: list[str], message: str) -> None:
    Path(env["BASTION_CONFIG"]).write_text("")
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code != 0
    assert message in result.output.lower()
    assert "Traceback" not in result.output


def test_production_mode_refuses_the_generated_secret(env: dict[str, str]) -> None:
    Path(env["BASTION_CONFIG"]).write_text("")
    result = CliRunner().invoke(main, ["migrate"], env={**env, "BASTION_MODE": "production"})
    assert result.exit_code != 0
    assert "secret_key" in result.output


def test_workflows_test_and_check_pass_on_the_shipped_rules_and_name_what_is_wrong(
    env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **env,
        "BASTION_AUTOMATION_WORKFLOWS": str(REPO / "workflows"),
        "BASTION_AUTOMATION_SCORING": str(REPO / "scoring"),
    }
    assert "13 cases of 4 rules: 13 passed" in _run(env, "workflows", "test")
    assert "4 rule(s), scoring model fit-and-engagement: 0 problem(s)" in _run(
        env, "workflows", "check"
    )
    broken = tmp_path / "broken"
    (broken / "tests").mkdir(parents=True)
    (broken / "rules.yaml").write_text(
        "rules:\n  - {id: x, entity: cases, trigger: {on: time, after: soon}, "
        "actions: [{escalate: priority}]}\n"
    )
    result = CliRunner().invoke(main, ["workflows", "test", "--dir", str(broken)], env=env)
    assert result.exit_code == 1
    assert "rules.yaml: rule 'x': trigger.after: must be a duration" in result.output
    assert "Traceback" not in result.output
    failing = tmp_path / "failing"
    (failing / "tests").mkdir(parents=True)
    (failing / "rules.yaml").write_text((REPO / "workflows" / "service.yaml").read_text())
    (failing / "tests" / "cases.yaml").write_text(
        "cases:\n  - {name: wrong, rule: escalate-stale-cases, event: {kind: timer}, "
        "record: {status: closed}, expect: {fires: true}}\n"
    )
    result = CliRunner().invoke(main, ["workflows", "test", "--dir", str(failing)], env=env)
    assert result.exit_code == 1
    assert (
        "FAILED cases.yaml::cases[0]: rule escalate-stale-cases: expected fired, got not_matched"
        in result.output
    )
