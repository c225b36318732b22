"""The policy engine: loading, versions, and the compiled index agreeing with Casbin."""

from __future__ import annotations

import shutil
from decimal import Decimal
from itertools import product
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.crm.catalog import ENTITIES
from bastion.policy.conditions import RecordFacts
from bastion.policy.engine import ACTIONS, Policy, PolicyError, load_policy
from bastion.policy.resources import SYSTEM_RESOURCES

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
    "dsr_processor",  # what jobs of data subjects' requests act as
    "analyst",  # pipeline figures only
    "automation",  # what workflow rules, scoring and webhooks act as
}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICIES, regions=REGIONS)


def write_policy(tmp_path: Path, policy_csv: str | bytes) -> Path:
    shutil.copy(POLICIES / "model.conf", tmp_path / "model.conf")
    path = tmp_path / "policy.csv"
    if isinstance(policy_csv, bytes):
        path.write_bytes(policy_csv)
    else:
        path.write_text(policy_csv, encoding="utf-8")
    return tmp_path


def load(directory: Path) -> Policy:
    return load_policy(directory, regions=REGIONS)


# --- the shipped policy ----------------------------------------------------------------


def test_the_default_roles_exist(policy: Policy) -> None:
    assert policy.roles == DEFAULT_ROLES
    assert policy.regions == REGIONS
    assert set(policy.resources) == set(ENTITY_NAMES) | set(SYSTEM_RESOURCES)


def _facts(entity: str, scopes: frozenset[str], values: dict[str, object]) -> RecordFacts:
    return RecordFacts(entity, values, scopes)


SCOPE_SETS = [frozenset(), frozenset({"own"}), frozenset({"team"}), frozenset({"own", "team"})]


def test_index_agrees_with_casbin_on_every_single_role_request(policy: Policy) -> None:
    disagreements = []
    for role, region, (resource, actions), scopes in product(
        sorted(policy.roles), REGIONS, policy.resources.items(), SCOPE_SETS
    ):
        facts = _facts(resource, scopes, {})
        for action in actions:
            index = policy.scope(frozenset({role}), region, resource, action).covers(scopes)
            if index != policy.enforce(role, region, resource, action, facts):
                disagreements.append((role, region, resource, action, sorted(scopes)))
    assert disagreements == []


def test_field_masks_agree_with_casbin_on_every_field(policy: Policy) -> None:
    disagreements = []
    for role, region, spec in product(sorted(policy.roles), REGIONS, ENTITIES.values()):
        roles = frozenset({role})
        for action in ("read", "write"):
            mask = policy.mask(roles, region, spec.name, action)
            for values in ({}, {"status": "closed", "amount": Decimal(200000)}):
                facts = _facts(
                    spec.name, frozenset(), {k: v for k, v in values.items() if spec.field(k)}
                )
                permitted = mask.permitted(facts)
                for field in spec.fields:
                    casbin = policy.enforce_field(
                        role, region, spec.name, field.name, action, facts
                    )
                    if (field.name in permitted) != casbin:
                        disagreements.append((role, region, spec.name, field.name, action))
    assert disagreements == []


ROLE_SETS = st.sets(st.sampled_from(sorted(DEFAULT_ROLES)), min_size=1, max_size=3)
CONDITION_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["new", "open", "pending", "resolved", "closed", None]),
        "amount": st.one_of(st.none(), st.decimals(min_value=0, max_value=10**9, places=2)),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    roles=ROLE_SETS,
    region=st.sampled_from(REGIONS),
    entity=st.sampled_from(ENTITY_NAMES),
    scopes=st.sampled_from(SCOPE_SETS),
    values=CONDITION_VALUES,
    data=st.data(),
)
def test_index_agrees_with_casbin_for_random_principals_and_records(
    policy: Policy,
    roles: set[str],
    region: str,
    entity: str,
    scopes: frozenset[str],
    values: dict[str, object],
    data: st.DataObject,
) -> None:
    """A principal with several roles: Casbin decides it for a subject linked to all of
    them (deny overrides allow across roles); the index must say the same."""
    spec = ENTITIES[entity]
    facts = _facts(entity, scopes, {k: v for k, v in values.items() if spec.field(k)})
    action = data.draw(st.sampled_from(ACTIONS))
    index = policy.scope(frozenset(roles), region, entity, action).covers(scopes)
    assert index == policy.enforce(sorted(roles), region, entity, action, facts)
    field = data.draw(st.sampled_from([f.name for f in spec.fields]))
    field_action = data.draw(st.sampled_from(["read", "write"]))
    permitted = policy.mask(frozenset(roles), region, entity, field_action).permitted(facts)
    assert (field in permitted) == policy.enforce_field(
        sorted(roles), region, entity, field, field_action, facts
    )


def test_deny_overrides_allow_across_roles(policy: Policy) -> None:
    for denied, other in product(["auditor", "security_admin"], ["admin", "sales_manager"]):
        roles = frozenset({denied, other})
        for region, entity, action in product(REGIONS, ENTITY_NAMES, ACTIONS):
            assert not policy.allows(roles, region, entity, action)
            assert policy.allows(frozenset({other}), region, entity, "read")


def test_sales_manager_inherits_sales_rep(policy: Policy) -> None:
    for region, entity, action in product(REGIONS, ENTITY_NAMES, ACTIONS):
        rep = policy.scope(frozenset({"sales_rep"}), region, entity, action)
        manager = policy.scope(frozenset({"sales_manager"}), region, entity, action)
        assert rep.allow <= manager.allow
    assert (
        "amount" in policy.mask(frozenset({"sales_manager"}), "eu", "opportunities", "write").always
    )


def test_unknown_roles_and_no_roles_are_allowed_nothing(policy: Policy) -> None:
    for region, entity, action in product(REGIONS, ENTITY_NAMES, ACTIONS):
        assert not policy.allows(frozenset(), region, entity, action)
        assert not policy.allows(frozenset({"intern"}), region, entity, action)
    assert policy.mask(frozenset({"intern"}), "eu", "contacts", "read").possible == frozenset()
    assert policy.allows(frozenset({"admin", "intern"}), "eu", "contacts", "delete")


def test_unknown_region_entity_or_action_is_denied(policy: Policy) -> None:
    admin = frozenset({"admin"})
    assert not policy.allows(admin, "ap", "contacts", "read")
    assert not policy.allows(admin, "eu", "invoices", "read")
    assert not policy.allows(admin, "eu", "contacts", "approve")


def test_scopes_describe_what_a_role_sees(policy: Policy) -> None:
    rep = frozenset({"sales_rep"})
    assert policy.scope(rep, "eu", "contacts", "read").describe() == "team+own"
    assert policy.scope(rep, "eu", "contacts", "update").describe() == "own"
    assert policy.scope(rep, "eu", "accounts", "read").describe() == "region"
    assert policy.scope(rep, "eu", "contacts", "delete").describe() == "none"
    assert policy.scope(frozenset({"admin"}), "us", "cases", "delete").describe() == "all"


def test_conditional_fields_are_decided_per_record(policy: Policy) -> None:
    support = policy.mask(frozenset({"support_agent"}), "eu", "cases", "read")
    assert "description" not in support.always
    assert support.conditions() == {"description": "status not in resolved|closed"}
    open_case = _facts("cases", frozenset(), {"status": "open"})
    closed_case = _facts("cases", frozenset(), {"status": "closed"})
    assert "description" in support.permitted(open_case)
    assert "description" not in support.permitted(closed_case)
    rep = policy.mask(frozenset({"sales_rep"}), "eu", "opportunities", "write")
    assert "amount" in rep.permitted(
        _facts("opportunities", frozenset(), {"amount": Decimal(99999)})
    )
    assert "amount" not in rep.permitted(
        _facts("opportunities", frozenset(), {"amount": Decimal(100000)})
    )


# --- version -------------------------------------------------------------------------


def test_version_is_stable_for_the_same_files(policy: Policy, tmp_path: Path) -> None:
    copied = load(write_policy(tmp_path, (POLICIES / "policy.csv").read_bytes()))
    assert policy.version == load(POLICIES).version == copied.version
    assert len(policy.version) == 16
    int(policy.version, 16)


def test_version_changes_when_a_line_or_the_model_changes(policy: Policy, tmp_path: Path) -> None:
    text = (POLICIES / "policy.csv").read_text(encoding="utf-8")
    changed = text.replace(
        "p, marketing, *, leads, *, region, allow", "p, marketing, *, leads, read, region, allow"
    )
    assert changed != text
    edited = load(write_policy(tmp_path, changed))
    assert edited.version != policy.version
    assert not edited.allows(frozenset({"marketing"}), "eu", "leads", "delete")
    model = tmp_path / "model.conf"
    model.write_text(model.read_text(encoding="utf-8") + "\n# a comment\n", encoding="utf-8")
    assert load(tmp_path).version not in (policy.version, edited.version)


# --- small policies ------------------------------------------------------------------


def test_region_specific_rules_wildcards_and_inheritance(tmp_path: Path) -> None:
    policy = load(
        write_policy(
            tmp_path,
            "p, eu_reader, eu, *, read, all, allow\n"
            "p, writer, *, contacts, *, own, allow\n"
            "p, writer, us, contacts, delete, all, deny\n"
            "g, lead_writer, writer\n"
            "g, boss, lead_writer\n",
        )
    )
    assert policy.roles == {"eu_reader", "writer", "lead_writer", "boss"}
    assert policy.allows(frozenset({"eu_reader"}), "eu", "cases", "read")
    assert policy.allows(frozenset({"eu_reader"}), "eu", "audit", "read")
    assert not policy.allows(frozenset({"eu_reader"}), "us", "cases", "read")
    assert policy.scope(frozenset({"boss"}), "eu", "contacts", "delete").describe() == "own"
    assert not policy.allows(frozenset({"boss"}), "us", "contacts", "delete")
    for role, region, entity, action, scopes in product(
        sorted(policy.roles), REGIONS, ENTITY_NAMES, ACTIONS, SCOPE_SETS
    ):
        assert policy.scope(frozenset({role}), region, entity, action).covers(
            scopes
        ) == policy.enforce(role, region, entity, action, _facts(entity, scopes, {}))


def test_denied_scopes_are_subtracted(tmp_path: Path) -> None:
    policy = load(
        write_policy(
            tmp_path,
            "p, r, *, contacts, read, region, allow\np, r, *, contacts, read, own, deny\n",
        )
    )
    scope = policy.scope(frozenset({"r"}), "eu", "contacts", "read")
    assert scope.covers(frozenset({"team"}))
    assert not scope.covers(frozenset({"own"}))
    assert scope.describe() == "region-own"


def test_empty_policy_allows_nothing(tmp_path: Path) -> None:
    policy = load(write_policy(tmp_path, "# nothing yet\n\n"))
    assert policy.roles == frozenset()
    assert not policy.allows(frozenset({"admin"}), "eu", "contacts", "read")


def test_policy_without_spaces_after_commas(tmp_path: Path) -> None:
    policy = load(
        write_policy(
            tmp_path, "p,reader,eu,contacts,read,all,allow\np2,reader,eu,contacts.*,read,,allow\n"
        )
    )
    assert policy.allows(frozenset({"reader"}), "eu", "contacts", "read")
    assert "email" in policy.mask(frozenset({"reader"}), "eu", "contacts", "read").always
    assert policy.enforce_field("reader", "eu", "contacts", "email", "read")


def test_field_groups_from_the_catalog_and_from_g2_lines(tmp_path: Path) -> None:
    policy = load(
        write_policy(
            tmp_path,
            "p, r, *, contacts, read, all, allow\n"
            "p2, r, *, category:contact, read, , allow\n"
            "p2, r, *, class:sensitive, read, , deny\n"
            "g2, contacts.department, group:org\n"
            "p2, r, *, group:org, read, , allow\n",
        )
    )
    readable = policy.mask(frozenset({"r"}), "eu", "contacts", "read").always
    assert {"email", "phone", "mobile", "first_name", "mailing_city", "department"} <= readable
    assert "birthdate" not in readable
    assert "lead_source" not in readable  # business data, in no group granted
    for field in ENTITIES["contacts"].fields:
        assert (field.name in readable) == policy.enforce_field(
            "r", "eu", "contacts", field.name, "read"
        )


# --- invalid policies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("p, reader, eu, contacts, approve, all, allow", "unknown action"),
        ("p, reader, eu, invoices, read, all, allow", "unknown resource"),
        ("p, reader, ap, contacts, read, all, allow", "unknown region"),
        ("p, reader, EU, contacts, read, all, allow", "unknown region"),
        ("p, reader, eu, contacts, read, mine, allow", "scope"),
        ("p, reader, eu, contacts, read, all, permit", "effect"),
        ("p, reader, eu, contacts, read, all, Allow", "effect"),
        ("p, , eu, contacts, read, all, allow", "role is empty"),
        ("p, Reader, eu, contacts, read, all, allow", "lower-case"),
        ("p, reader, eu, contacts, read, allow", "a rule is"),
        ("p, reader, eu, contacts, read, all, allow, extra", "a rule is"),
        ("q, reader, eu, contacts, read, all, allow", "a rule is"),
        ("reader, eu, contacts, read, all, allow", "a rule is"),
        ("p2, reader, eu, contacts.email, read, allow", "a field rule is"),
        ("p2, reader, eu, contacts.nickname, read, , allow", "no field 'nickname'"),
        ("p2, reader, eu, invoices.*, read, , allow", "none of these"),
        ("p2, reader, eu, *.email, read, , allow", "none of these"),
        ("p2, reader, eu, contacts*, read, , allow", "none of these"),
        ("p2, reader, eu, class:secret, read, , allow", "no field of the catalog"),
        ("p2, reader, eu, category:weather, read, , allow", "no field of the catalog"),
        ("p2, reader, eu, group:nobody, read, , allow", "no g2 line"),
        ("p2, reader, eu, contacts.email, delete, , allow", "read, write or *"),
        ("p2, reader, eu, class:personal, read, status == open, allow", "one entity"),
        ("p2, reader, eu, cases.*, read, mood == happy, allow", "no field 'mood'"),
        ("p2, reader, eu, cases.*, read, status < open, allow", "not a number or date"),
        ("p2, reader, eu, cases.*, read, status == sleeping, allow", "not one of"),
        ("p2, reader, eu, opportunities.*, read, amount < lots, allow", "numbers"),
        ("p2, reader, eu, opportunities.*, read, amount <, allow", "cannot read the clause"),
        ("g, sales_manager", "role link"),
        ("g, sales_manager, sales_rep, eu", "role link"),
        ("g, , sales_rep", "role link"),
        ("g2, contacts.email, vip", "group:"),
        ("g2, contacts.nickname, group:x", "not a field"),
        ('p, reader, eu, contacts, read, all, "allow"', "only letters"),
        ("p, reader(x), eu, contacts, read, all, allow", "only letters"),
    ],
)
def test_invalid_lines_raise_policy_error_naming_file_and_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    directory = write_policy(tmp_path, f"# header\np, admin, *, *, *, all, allow\n{line}\n")
    with pytest.raises(PolicyError) as caught:
        load(directory)
    message = str(caught.value)
    assert f"{directory / 'policy.csv'}:3" in message
    assert complaint in message


@pytest.mark.parametrize(
    "policy_csv",
    [
        pytest.param("p, sales(rep, eu, contacts, read, all, allow\n", id="open-paren"),
        pytest.param("p, sales]rep, eu, contacts, read, all, allow\n", id="close-bracket"),
        pytest.param(
            "p, reader, eu, contacts, read, all, allow\r# note, more\n", id="carriage-return"
        ),
        pytest.param(
            "p, reader, eu, contacts, read, all, allow\x0bp, w, eu, contacts, update, all, allow\n",
            id="vertical-tab",
        ),
        pytest.param(b"p, r\xe9ader, eu, contacts, read, all, allow\n", id="not-utf8"),
    ],
)
def test_malformed_lines_raise_policy_error_naming_the_policy_file(
    tmp_path: Path, policy_csv: str | bytes
) -> None:
    directory = write_policy(tmp_path, policy_csv)
    with pytest.raises(PolicyError) as caught:
        load(directory)
    assert str(directory / "policy.csv") in str(caught.value)


@pytest.mark.parametrize("missing", ["model.conf", "policy.csv"])
def test_missing_file_raises_policy_error_naming_it(tmp_path: Path, missing: str) -> None:
    directory = write_policy(tmp_path, "p, admin, *, *, *, all, allow\n")
    (directory / missing).unlink()
    with pytest.raises(PolicyError) as caught:
        load(directory)
    assert str(directory / missing) in str(caught.value)


def test_missing_directory_raises_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_broken_model_raises_policy_error_naming_it(tmp_path: Path) -> None:
    directory = write_policy(tmp_path, "p, admin, *, *, *, all, allow\n")
    (directory / "model.conf").write_text("[request_definition]\nr = sub\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load(directory)
    assert str(directory / "model.conf") in str(caught.value)


def test_a_model_with_other_request_shapes_is_refused(tmp_path: Path) -> None:
    directory = write_policy(tmp_path, "p, admin, *, *, *, all, allow\n")
    model = directory / "model.conf"
    model.write_text(
        model.read_text(encoding="utf-8").replace(
            "r = sub, dom, obj, act, rec", "r = sub, dom, obj, act, rec, extra"
        ),
        encoding="utf-8",
    )
    with pytest.raises(PolicyError, match="defines it differently"):
        load(directory)


def test_regions_bound_what_the_policy_may_name(tmp_path: Path) -> None:
    directory = write_policy(tmp_path, "p, reader, ap, contacts, read, all, allow\n")
    with pytest.raises(PolicyError, match="unknown region 'ap'"):
        load(directory)
    policy = load_policy(directory, regions=("ap",))
    assert policy.allows(frozenset({"reader"}), "ap", "contacts", "read")
