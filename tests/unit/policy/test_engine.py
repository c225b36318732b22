"""The policy engine: the compiled decision index must agree with Casbin everywhere."""

from __future__ import annotations

import shutil
from itertools import combinations, product
from pathlib import Path

import casbin
import pytest

from bastion.crm.catalog import ENTITIES
from bastion.policy.engine import ACTIONS, Policy, PolicyError, load_policy

REPO = Path(__file__).resolve().parents[3]
POLICIES = REPO / "policies"
REGIONS = ("eu", "us")
ENTITY_NAMES = tuple(ENTITIES)
DEFAULT_ROLES = {
    "admin",
    "sales_rep",
    "sales_manager",
    "support_agent",
    "marketing",
    "compliance_officer",
    "auditor",
    "security_admin",
}
CRM_SALES = ("accounts", "contacts", "leads", "opportunities")


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICIES, regions=REGIONS, entities=ENTITY_NAMES)


def _copy(tmp_path: Path, policy_csv: str | bytes) -> Path:
    shutil.copy(POLICIES / "model.conf", tmp_path / "model.conf")
    path = tmp_path / "policy.csv"
    if isinstance(policy_csv, bytes):
        path.write_bytes(policy_csv)
    else:
        path.write_text(policy_csv, encoding="utf-8")
    return tmp_path


def _load(directory: Path) -> Policy:
    return load_policy(directory, regions=REGIONS, entities=ENTITY_NAMES)


# --- the shipped policy --------------------------------------------------------------


def test_the_default_roles_exist(policy: Policy) -> None:
    assert policy.roles >= DEFAULT_ROLES
    assert policy.regions == REGIONS
    assert policy.entities == ENTITY_NAMES


def test_index_agrees_with_casbin_on_every_request(policy: Policy) -> None:
    requests = list(product(sorted(policy.roles), REGIONS, ENTITY_NAMES, ACTIONS))
    assert len(requests) >= len(DEFAULT_ROLES) * 2 * 6 * 5
    disagreements = [
        request
        for request in requests
        if policy.allows(frozenset({request[0]}), *request[1:]) != policy.enforce(*request)
    ]
    assert disagreements == []


def test_index_agrees_with_casbin_for_every_pair_of_roles(policy: Policy) -> None:
    """A principal holding two roles, as Casbin itself decides it with two `g` links."""
    oracle = casbin.Enforcer(str(POLICIES / "model.conf"), str(POLICIES / "policy.csv"))
    disagreements = []
    for pair in combinations(sorted(policy.roles), 2):
        user = "user:" + "+".join(pair)
        for role in pair:
            oracle.add_grouping_policy(user, role)
        for region, entity, action in product(REGIONS, ENTITY_NAMES, ACTIONS):
            expected = bool(oracle.enforce(user, region, entity, action))
            if policy.allows(frozenset(pair), region, entity, action) != expected:
                disagreements.append((pair, region, entity, action))
    assert disagreements == []


def test_actions_lists_the_allowed_actions_in_order(policy: Policy) -> None:
    for role, region, entity in product(sorted(policy.roles), REGIONS, ENTITY_NAMES):
        roles = frozenset({role})
        expected = tuple(a for a in ACTIONS if policy.enforce(role, region, entity, a))
        assert policy.actions(roles, region, entity) == expected


def test_admin_may_do_everything(policy: Policy) -> None:
    for region, entity in product(REGIONS, ENTITY_NAMES):
        assert policy.actions(frozenset({"admin"}), region, entity) == ACTIONS


@pytest.mark.parametrize("denied", ["auditor", "security_admin"])
@pytest.mark.parametrize("other", ["admin", "sales_manager", "compliance_officer"])
def test_deny_overrides_allow_across_roles(policy: Policy, denied: str, other: str) -> None:
    for region, entity, action in product(REGIONS, ENTITY_NAMES, ACTIONS):
        assert not policy.allows(frozenset({denied, other}), region, entity, action)
    for region, entity in product(REGIONS, ENTITY_NAMES):
        assert policy.actions(frozenset({denied, other}), region, entity) == ()
    # The other role alone is allowed something, so the deny is what takes it away.
    assert any(
        policy.allows(frozenset({other}), r, e, a)
        for r, e, a in product(REGIONS, ENTITY_NAMES, ACTIONS)
    )


def test_sales_manager_inherits_sales_rep(policy: Policy) -> None:
    for region, entity, action in product(REGIONS, ENTITY_NAMES, ACTIONS):
        if policy.allows(frozenset({"sales_rep"}), region, entity, action):
            assert policy.allows(frozenset({"sales_manager"}), region, entity, action)
    for region, entity in product(REGIONS, CRM_SALES):
        assert not policy.allows(frozenset({"sales_rep"}), region, entity, "delete")
        assert policy.allows(frozenset({"sales_manager"}), region, entity, "delete")
        assert policy.enforce("sales_manager", region, entity, "delete")
    assert policy.actions(frozenset({"sales_manager"}), "eu", "cases") == ("read", "list")


@pytest.mark.parametrize(
    ("role", "region", "entity", "action", "allowed"),
    [
        ("sales_rep", "eu", "contacts", "update", True),
        ("sales_rep", "us", "cases", "update", False),
        ("support_agent", "eu", "cases", "create", True),
        ("support_agent", "eu", "contacts", "delete", False),
        ("marketing", "us", "leads", "delete", True),
        ("marketing", "us", "opportunities", "read", False),
        ("compliance_officer", "eu", "activities", "read", True),
        ("compliance_officer", "eu", "contacts", "delete", False),
        ("auditor", "eu", "contacts", "read", False),
        ("security_admin", "us", "accounts", "list", False),
    ],
)
def test_examples_from_the_shipped_policy(
    policy: Policy, role: str, region: str, entity: str, action: str, allowed: bool
) -> None:
    assert policy.allows(frozenset({role}), region, entity, action) is allowed
    assert policy.enforce(role, region, entity, action) is allowed


def test_unknown_roles_and_no_roles_are_allowed_nothing(policy: Policy) -> None:
    for region, entity, action in product(REGIONS, ENTITY_NAMES, ACTIONS):
        assert not policy.allows(frozenset(), region, entity, action)
        assert not policy.allows(frozenset({"intern"}), region, entity, action)
    # An unknown role next to a real one changes nothing.
    assert policy.allows(frozenset({"admin", "intern"}), "eu", "contacts", "delete")


def test_unknown_region_entity_or_action_is_denied(policy: Policy) -> None:
    admin = frozenset({"admin"})
    assert not policy.allows(admin, "ap", "contacts", "read")
    assert not policy.allows(admin, "eu", "invoices", "read")
    assert not policy.allows(admin, "eu", "contacts", "export")


# --- version -------------------------------------------------------------------------


def test_version_is_stable_for_the_same_files(policy: Policy, tmp_path: Path) -> None:
    again = _load(POLICIES)
    copied = _load(_copy(tmp_path, (POLICIES / "policy.csv").read_bytes()))
    assert policy.version == again.version == copied.version
    assert len(policy.version) == 16
    int(policy.version, 16)


def test_version_changes_when_a_line_changes(policy: Policy, tmp_path: Path) -> None:
    text = (POLICIES / "policy.csv").read_text(encoding="utf-8")
    changed = text.replace(
        "p, marketing, *, leads, *, allow", "p, marketing, *, leads, read, allow"
    )
    assert changed != text
    edited = _load(_copy(tmp_path, changed))
    assert edited.version != policy.version
    assert not edited.allows(frozenset({"marketing"}), "eu", "leads", "delete")


def test_version_changes_when_the_model_changes(policy: Policy, tmp_path: Path) -> None:
    directory = _copy(tmp_path, (POLICIES / "policy.csv").read_bytes())
    model = directory / "model.conf"
    model.write_text(model.read_text(encoding="utf-8") + "\n# a comment\n", encoding="utf-8")
    assert _load(directory).version != policy.version


# --- small policies ------------------------------------------------------------------


def test_region_specific_rules_and_wildcards(tmp_path: Path) -> None:
    policy = _load(
        _copy(
            tmp_path,
            "p, eu_reader, eu, *, read, allow\n"
            "p, writer, *, contacts, *, allow\n"
            "p, writer, us, contacts, delete, deny\n"
            "g, lead_writer, writer\n"
            "g, boss, lead_writer\n",
        )
    )
    assert policy.roles == {"eu_reader", "writer", "lead_writer", "boss"}
    assert policy.allows(frozenset({"eu_reader"}), "eu", "cases", "read")
    assert not policy.allows(frozenset({"eu_reader"}), "us", "cases", "read")
    assert policy.allows(frozenset({"boss"}), "eu", "contacts", "delete")
    assert not policy.allows(frozenset({"boss"}), "us", "contacts", "delete")
    assert policy.allows(frozenset({"boss"}), "us", "contacts", "update")
    for role, region, entity, action in product(
        sorted(policy.roles), REGIONS, ENTITY_NAMES, ACTIONS
    ):
        assert policy.allows(frozenset({role}), region, entity, action) == policy.enforce(
            role, region, entity, action
        )


def test_empty_policy_allows_nothing(tmp_path: Path) -> None:
    policy = _load(_copy(tmp_path, "# nothing yet\n\n"))
    assert policy.roles == frozenset()
    assert policy.rules == ()
    assert not policy.allows(frozenset({"admin"}), "eu", "contacts", "read")


def test_policy_without_spaces_after_commas(tmp_path: Path) -> None:
    policy = _load(_copy(tmp_path, "p,reader,eu,contacts,read,allow\n"))
    assert policy.allows(frozenset({"reader"}), "eu", "contacts", "read")
    assert policy.enforce("reader", "eu", "contacts", "read")


# --- invalid policies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("p, reader, eu, contacts, export, allow", "unknown action"),
        ("p, reader, eu, invoices, read, allow", "unknown entity"),
        ("p, reader, ap, contacts, read, allow", "unknown region"),
        ("p, reader, EU, contacts, read, allow", "unknown region"),
        ("p, reader, eu, contacts, read, permit", "effect"),
        ("p, reader, eu, contacts, read, Allow", "effect"),
        ("p, , eu, contacts, read, allow", "role is empty"),
        ("p, reader, eu, contacts, read", "a rule is"),
        ("p, reader, eu, contacts, read, allow, extra", "a rule is"),
        ("q, reader, eu, contacts, read, allow", "a rule is"),
        ("reader, eu, contacts, read, allow", "a rule is"),
        ("g, sales_manager", "role link"),
        ("g, sales_manager, sales_rep, eu", "role link"),
        ("g, , sales_rep", "role link"),
    ],
)
def test_invalid_lines_raise_policy_error_naming_file_and_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    directory = _copy(tmp_path, f"# header\np, admin, *, *, *, allow\n{line}\n")
    with pytest.raises(PolicyError) as caught:
        _load(directory)
    message = str(caught.value)
    assert f"{directory / 'policy.csv'}:3" in message
    assert complaint in message


@pytest.mark.parametrize(
    "policy_csv",
    [
        # Casbin treats ( ) [ ] as nesting when it splits a line, so these lines do not
        # have the shape the validator checked.
        pytest.param("p, sales(rep, eu, contacts, read, allow\n", id="open-paren"),
        pytest.param("p, sales]rep, eu, contacts, read, allow\n", id="close-bracket"),
        # Casbin splits lines on \n only; str.splitlines also splits on \r, \v, \f, ...
        pytest.param("p, reader, eu, contacts, read, allow\r# note, more\n", id="carriage-return"),
        # Casbin loads this as one rule whose effect is "allow\r# note".
        pytest.param("p, reader, eu, contacts, read, allow\r# note\n", id="cr-bad-effect"),
        pytest.param(
            "p, reader, eu, contacts, read, allow\x0bp, writer, eu, contacts, update, allow\n",
            id="vertical-tab",
        ),
        pytest.param(b"p, r\xe9ader, eu, contacts, read, allow\n", id="not-utf8"),
    ],
)
def test_malformed_lines_raise_policy_error_naming_the_policy_file(
    tmp_path: Path, policy_csv: str | bytes
) -> None:
    directory = _copy(tmp_path, policy_csv)
    with pytest.raises(PolicyError) as caught:
        _load(directory)
    assert str(directory / "policy.csv") in str(caught.value)


@pytest.mark.parametrize("missing", ["model.conf", "policy.csv"])
def test_missing_file_raises_policy_error_naming_it(tmp_path: Path, missing: str) -> None:
    directory = _copy(tmp_path, "p, admin, *, *, *, allow\n")
    (directory / missing).unlink()
    with pytest.raises(PolicyError) as caught:
        _load(directory)
    assert str(directory / missing) in str(caught.value)


def test_missing_directory_raises_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        _load(tmp_path / "nowhere")


def test_broken_model_raises_policy_error_naming_it(tmp_path: Path) -> None:
    directory = _copy(tmp_path, "p, admin, *, *, *, allow\n")
    (directory / "model.conf").write_text("[request_definition]\nr = sub\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        _load(directory)
    assert str(directory / "model.conf") in str(caught.value)


def test_regions_and_entities_bound_what_the_policy_may_name(tmp_path: Path) -> None:
    directory = _copy(tmp_path, "p, reader, ap, contacts, read, allow\n")
    with pytest.raises(PolicyError, match="unknown region 'ap'"):
        _load(directory)
    policy = load_policy(directory, regions=("ap",), entities=("contacts",))
    assert policy.allows(frozenset({"reader"}), "ap", "contacts", "read")
    with pytest.raises(PolicyError, match="unknown entity 'contacts'"):
        load_policy(directory, regions=("ap",), entities=("accounts",))
