"""Policy versions in the control database and how workers follow the active one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bastion.config import Settings
from bastion.policy.engine import PolicySource
from bastion.policy.rules import PolicyError
from bastion.state import State, build_state
from tests.conftest import REPO, Backend, FrozenClock, settings_for


def policy_dir(tmp_path: Path, name: str, extra: str = "") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    shutil.copy(REPO / "policies" / "model.conf", directory / "model.conf")
    text = (REPO / "policies" / "policy.csv").read_text(encoding="utf-8")
    (directory / "policy.csv").write_text(text + extra, encoding="utf-8")
    return directory


DENY_EMAIL = "p2, sales_rep, *, contacts.email, read, , deny\n"


def test_the_first_start_records_and_activates_the_files(state: State) -> None:
    assert state.policy_store.active_version() == state.policy.version
    (change,) = state.policy_store.history()
    assert change.old_version is None
    assert change.new_version == state.policy.version
    assert change.actor == "system:start"
    assert "+p, admin, *, *, *, all, allow" in change.diff


def test_activate_records_who_when_and_the_diff(state: State, tmp_path: Path) -> None:
    old = state.policy.version
    source = PolicySource.from_directory(policy_dir(tmp_path, "new", DENY_EMAIL))
    change = state.policy_store.activate(source, actor="cli:x", reason="PR 42")
    assert change is not None
    assert (change.old_version, change.new_version) == (old, source.version)
    added = [line for line in change.diff.splitlines() if line.startswith("+")]
    assert added == ["+++ b/policy.csv", "+p2, sales_rep, *, contacts.email, read, , deny"]
    assert "+p2, sales_rep, *, contacts.email, read, , deny" in change.diff
    assert state.policy_store.activate(source, actor="cli:x", reason="again") is None
    assert [c.reason for c in state.policy_store.history()][:1] == ["PR 42"]
    assert state.policy_store.source(source.version) == PolicySource(
        source.model_text, source.policy_text, source.origin
    )


def test_only_if_new_never_reactivates_a_known_version(state: State, tmp_path: Path) -> None:
    original = state.policy.source
    newer = PolicySource.from_directory(policy_dir(tmp_path, "new", DENY_EMAIL))
    state.policy_store.activate(newer, actor="cli:a", reason="r")
    assert (
        state.policy_store.activate(
            original, actor="system:old_host", reason="start", only_if_new=True
        )
        is None
    )
    assert state.policy_store.active_version() == newer.version


def test_a_worker_follows_the_active_version(state: State, tmp_path: Path) -> None:
    newer = PolicySource.from_directory(policy_dir(tmp_path, "new", DENY_EMAIL))
    state.policy_store.activate(newer, actor="cli:a", reason="r")
    rep = frozenset({"sales_rep"})
    assert "email" in state.policy.mask(rep, "eu", "contacts", "read").always
    assert state.policy_watcher.sync() is True
    assert state.policy.version == newer.version
    assert "email" not in state.policy.mask(rep, "eu", "contacts", "read").always
    assert state.policy_watcher.sync() is False


def test_a_version_this_worker_cannot_build_leaves_its_policy_running(state: State) -> None:
    broken = PolicySource(state.policy.source.model_text, "p, r, *, audit, read, own, allow\n", "x")
    state.policy_store.activate(broken, actor="cli:a", reason="r")
    running = state.policy.version
    assert state.policy_watcher.sync() is False
    assert state.policy.version == running
    assert state.policy_watcher.sync() is False  # not retried in a loop


def test_reload_refuses_broken_files_and_keeps_the_active_version(
    backend: Backend, tmp_path: Path, clock: FrozenClock
) -> None:
    good = policy_dir(tmp_path, "good")
    (tmp_path / "absent.toml").write_text("")
    settings: Settings = settings_for(backend, tmp_path, BASTION_POLICIES=str(good))
    state = build_state(settings, clock=clock)
    try:
        before = state.policy_store.active_version()
        (good / "policy.csv").write_text("p, r, *, contacts, read, mine, allow\n", encoding="utf-8")
        with pytest.raises(PolicyError, match=r"policy\.csv:1"):
            state.reload_policy(actor="cli:a", reason="r")
        (good / "policy.csv").write_text("p, r, *, keys, read, own, allow\n", encoding="utf-8")
        with pytest.raises(PolicyError, match="scope-on-system-resource"):
            state.reload_policy(actor="cli:a", reason="r")
        assert state.policy_store.active_version() == before
        assert state.policy.version == before
    finally:
        state.close()


def test_an_old_host_restarting_does_not_roll_the_policy_back(
    backend: Backend, tmp_path: Path, clock: FrozenClock
) -> None:
    (tmp_path / "absent.toml").write_text("")
    old_dir = policy_dir(tmp_path, "old")
    new_dir = policy_dir(tmp_path, "new", DENY_EMAIL)
    first = build_state(settings_for(backend, tmp_path, BASTION_POLICIES=str(old_dir)), clock=clock)
    first.close()
    second = build_state(
        settings_for(backend, tmp_path, BASTION_POLICIES=str(new_dir)), clock=clock
    )
    new_version = second.policy.version
    second.close()
    restarted = build_state(
        settings_for(backend, tmp_path, BASTION_POLICIES=str(old_dir)), clock=clock
    )
    try:
        assert restarted.policy.version == new_version
        assert restarted.policy_store.active_version() == new_version
    finally:
        restarted.close()
