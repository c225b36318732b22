"""Preparing rows in a helper process gives what preparing them here gives, in order;
a helper that cannot work leaves the rows to this process; nothing secret is shown."""

from __future__ import annotations

from bastion.bulk.mapping import parse_mapping, plan_columns
from bastion.bulk.preparation import Preparation, PreparerRecipe, RowPreparer
from bastion.crm.access import Access
from bastion.crm.catalog import ENTITIES
from bastion.policy.engine import PolicySource
from bastion.policy.lint import checked_policy
from bastion.principals.tokens import Principal
from tests.conftest import REGIONS, REPO

CONTACTS = ENTITIES["contacts"]
HEADER = ["first_name", "last_name", "email", "phone"]
SECRET = b"row-key-secret-for-tests-0123456789"


def _preparer(roles: frozenset[str]) -> tuple[RowPreparer, PreparerRecipe]:
    source = PolicySource.from_directory(REPO / "policies")
    policy, _findings = checked_policy(source, regions=REGIONS)
    principal = Principal(id="prn_tester", name="tester", roles=roles, regions=REGIONS, teams=())
    access = Access(policy, principal)
    plan = plan_columns(CONTACTS, HEADER, parse_mapping(None))
    scope = access.require("eu", CONTACTS, "create")
    recipe = PreparerRecipe(source, REGIONS, principal, "eu", plan, SECRET)
    return RowPreparer(access, "eu", scope, plan, SECRET), recipe


def _batches() -> list[list[tuple[int, list[str]]]]:
    rows = [
        (n + 2, ["Ada", f"Lovelace{n}", f"ada.{n}@example.com", f"+4930{n:07d}"]) for n in range(12)
    ]
    rows[4] = (6, ["Ada", "", "ada@example.com", "+4930000"])  # invalid: no last name
    rows[7] = (9, ["Ada", "Short"])  # invalid: too few cells
    return [rows[i : i + 5] for i in range(0, len(rows), 5)]


def _prepared(preparation: Preparation) -> list[tuple[list[object], int]]:
    out = []
    for number, batch in enumerate(_batches()):
        out += [
            ([(r.number, r.values, r.key, r.errors) for r in rows], tag)
            for rows, tag in preparation.send(batch, number)
        ]
    out += [
        ([(r.number, r.values, r.key, r.errors) for r in rows], tag)
        for rows, tag in preparation.drain()
    ]
    return out


def test_the_helper_prepares_exactly_what_this_process_would_in_file_order() -> None:
    local, recipe = _preparer(frozenset({"admin"}))
    with Preparation(local) as here:
        expected = _prepared(here)
    with Preparation(local, recipe) as helper:
        assert _prepared(helper) == expected
    assert [tag for _rows, tag in expected] == [0, 1, 2]
    rows = [row for batch, _tag in expected for row in batch]
    assert [number for number, *_ in rows] == list(range(2, 14))
    invalid = {number for number, values, _key, errors in rows if errors}
    assert invalid == {6, 9}


def test_a_helper_that_cannot_start_leaves_the_rows_to_this_process() -> None:
    """The helper's recipe names a principal with no right to create contacts: its
    start fails, and every batch is prepared here instead, none lost or reordered."""
    local, _recipe = _preparer(frozenset({"admin"}))
    _unused, broken = _preparer(frozenset({"admin"}))
    broken = PreparerRecipe(
        broken.policy,
        broken.regions,
        Principal(id="prn_nobody", name="nobody", roles=frozenset(), regions=REGIONS, teams=()),
        broken.region,
        broken.plan,
        broken.secret,
    )
    with Preparation(local) as here:
        expected = _prepared(here)
    with Preparation(local, broken) as helper:
        assert _prepared(helper) == expected


def test_the_recipe_never_shows_its_secret() -> None:
    _local, recipe = _preparer(frozenset({"admin"}))
    assert SECRET.decode() not in repr(recipe)
    assert repr(recipe) == "PreparerRecipe(entity='contacts', region='eu')"
