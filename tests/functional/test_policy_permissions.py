"""What the policy lets a caller do, as `/v1/me` and the caller's own OpenAPI document
(`GET /openapi.json` with a token) show it: derived from the compiled policy, so it is
what the pipeline enforces."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.state import State, build_state
from tests.conftest import Backend, FrozenClock, Tokens, settings_for
from tests.factories import caller, policy_dir, write_policy

REPO = Path(__file__).resolve().parents[2]
POLICY_TEXT = (REPO / "policies" / "policy.csv").read_text()


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def test_me_shows_each_roles_fields_conditions_and_scopes(
    client: TestClient, tokens: Tokens
) -> None:
    _problem(client.get("/v1/me"), 401)
    rep = client.get("/v1/me", headers=tokens.headers("sales_rep")).json()
    contacts = rep["permissions"]["contacts"]
    assert contacts["actions"] == ["create", "list", "read", "update"]
    assert contacts["scope"] == "team+own"
    assert contacts["regions"]["eu"]["scopes"]["update"] == "own"
    assert "email" in contacts["read_fields"]
    assert "birthdate" not in contacts["read_fields"] + contacts["write_fields"]
    deals = rep["permissions"]["opportunities"]
    assert "amount" in deals["read_fields"]
    assert "amount" not in deals["write_fields"]
    assert deals["conditional_write_fields"] == {"amount": "amount < 100000"}
    assert rep["resources"]["policy"] == []

    support = client.get("/v1/me", headers=tokens.headers("support_agent")).json()
    cases = support["permissions"]["cases"]
    assert cases["conditional_read_fields"] == {"description": "status not in resolved|closed"}
    assert "description" not in cases["read_fields"]
    assert "description" in cases["write_fields"]
    assert support["permissions"]["contacts"]["write_fields"] == [
        "email",
        "phone",
        "mobile",
        "mailing_street",
        "mailing_city",
        "mailing_postal_code",
        "mailing_country",
    ]

    marketing = client.get("/v1/me", headers=tokens.headers("marketing")).json()
    contacts = marketing["permissions"]["contacts"]
    assert (contacts["actions"], contacts["scope"], contacts["write_fields"]) == (
        ["list", "read"],
        "region",
        [],
    )
    assert not {"mobile", "mailing_street", "mailing_postal_code", "birthdate"} & set(
        contacts["read_fields"]
    )

    auditor = client.get("/v1/me", headers=tokens.headers("auditor")).json()
    assert all(p["actions"] == [] for p in auditor["permissions"].values())
    assert auditor["resources"]["audit"] == ["export", "read", "verify"]
    assert auditor["resources"]["policy"] == ["read"]


def test_openapi_with_a_token_is_the_callers_own_view(client: TestClient, tokens: Tokens) -> None:
    full = client.get("/openapi.json")
    assert full.status_code == 200
    document = full.json()
    assert "birthdate" in document["components"]["schemas"]["Contact"]["properties"]
    assert "delete" in document["paths"]["/v1/contacts/{id}"]
    _problem(
        client.get(
            "/openapi.json", headers={"Authorization": "Bearer bst_0000000000000000_" + "A" * 43}
        ),
        401,
    )

    headers = tokens.headers("sales_rep")
    view = client.get("/openapi.json", headers=headers).json()
    schemas, paths = view["components"]["schemas"], view["paths"]
    assert "birthdate" not in schemas["Contact"]["properties"]
    assert "_withheld" in schemas["Contact"]["properties"]
    assert "email" in schemas["Contact"]["properties"]
    assert "birthdate" not in schemas["ContactCreate"]["properties"]
    assert "birthdate" not in schemas["ContactPatch"]["properties"]
    for body in ("OpportunityCreate", "OpportunityPatch"):
        assert schemas[body]["properties"]["amount"]["x-writable-if"] == "amount < 100000"
        assert "x-writable-if" not in schemas[body]["properties"]["stage"]
    assert "delete" not in paths["/v1/contacts/{id}"]
    assert {"get", "patch"} <= set(paths["/v1/contacts/{id}"])
    assert "delete" in paths["/v1/activities/{id}"]
    me = client.get("/v1/me", headers=headers).json()
    assert view["x-bastion-permissions"]["entities"] == me["permissions"]
    assert view["x-bastion-permissions"]["resources"] == me["resources"]

    support = client.get("/openapi.json", headers=tokens.headers("support_agent")).json()
    case = support["components"]["schemas"]["Case"]["properties"]
    assert case["description"]["x-readable-if"] == "status not in resolved|closed"
    assert "post" not in support["paths"]["/v1/contacts"]

    marketing = client.get("/openapi.json", headers=tokens.headers("marketing")).json()
    filters = {p["name"] for p in marketing["paths"]["/v1/contacts"]["get"]["parameters"]}
    assert "mobile" not in filters
    assert {"email", "last_name"} <= filters
    assert "/v1/opportunities" not in marketing["paths"]

    auditor = client.get("/openapi.json", headers=tokens.headers("auditor")).json()
    assert not any(path.startswith("/v1/contacts") for path in auditor["paths"])
    assert "/v1/policy" in auditor["paths"]
    bulk = ("/v1/imports", "/v1/duplicates", "/v1/merges/{merge_id}", "/v1/analytics/pipeline")
    assert not set(bulk) & set(auditor["paths"])

    # Import, export, merge and analytics appear for the roles granted them, only.
    analyst = client.get("/openapi.json", headers=tokens.headers("analyst")).json()
    assert "/v1/analytics/pipeline" in analyst["paths"]
    assert not {"/v1/imports", "/v1/contacts/merge", "/v1/contacts/export"} & set(analyst["paths"])
    manager = client.get("/openapi.json", headers=tokens.headers("sales_manager")).json()
    assert set(bulk) | {"/v1/contacts/merge", "/v1/contacts/export"} <= set(manager["paths"])
    assert "/v1/contacts/merge" not in view["paths"]  # the sales rep's
    assert "/v1/imports" not in view["paths"]
    assert "/v1/contacts/{id}/duplicates" in view["paths"]


def test_the_callers_view_keeps_record_markers_links_and_regions_it_can_use(
    client: TestClient, tokens: Tokens
) -> None:
    """The view lists `_erased` and `_restricted` (any reader may get them), links only
    to operations it keeps, and the regions where the caller may create or list."""
    support = client.get("/openapi.json", headers=tokens.headers("support_agent")).json()
    schemas, paths = support["components"]["schemas"], support["paths"]
    assert {"_withheld", "_erased", "_restricted"} <= set(schemas["Contact"]["properties"])
    kept = {
        operation["operationId"]
        for item in paths.values()
        for method, operation in item.items()
        if method != "parameters"
    }
    links = [
        link
        for item in paths.values()
        for method, operation in item.items()
        if method != "parameters"
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert links
    assert {link["operationId"] for link in links} <= kept
    read_contact = paths["/v1/contacts/{id}"]["get"]["responses"]["200"]
    assert set(read_contact["links"]) == {"UpdateContact"}  # no delete for support agents
    assert schemas["CaseCreate"]["properties"]["region"]["enum"] == ["eu", "us"]
    listing = {p["name"]: p for p in paths["/v1/cases"]["get"]["parameters"]}
    assert listing["region"]["schema"]["enum"] == ["eu", "us"]
    eu = tokens.headers("support_agent", regions=("eu",), name="eu-agent")
    eu_only = client.get("/openapi.json", headers=eu).json()["components"]["schemas"]
    assert eu_only["CaseCreate"]["properties"]["region"]["enum"] == ["eu"]


@dataclass
class Editable:
    client: TestClient
    state: State
    directory: Path


@pytest.fixture
def editable(backend: Backend, tmp_path: Path) -> Iterator[Editable]:
    """A deployment whose policy files (a copy of the default) the test may edit."""
    directory = policy_dir(tmp_path / "policies", source=REPO / "policies")
    (tmp_path / "absent.toml").write_text("")
    configured = settings_for(backend, tmp_path, BASTION_POLICIES=str(directory))
    state = build_state(configured, clock=FrozenClock())
    try:
        yield Editable(TestClient(create_app(configured, state=state)), state, directory)
    finally:
        state.close()


def test_openapi_lists_only_the_filters_a_list_across_your_regions_accepts(
    editable: Editable,
) -> None:
    write_policy(
        editable.directory, POLICY_TEXT, append=["p2, sales_rep, us, contacts.email, read, , deny"]
    )
    editable.state.reload_policy(actor="cli:test", reason="email not readable in us")
    rep = caller(editable.state, "sales_rep", name="rep").headers  # in eu and us
    listed = editable.client.get("/v1/contacts", params={"email": "a@example.com"}, headers=rep)
    _problem(listed, 403)
    view = editable.client.get("/openapi.json", headers=rep).json()
    filters = {p["name"] for p in view["paths"]["/v1/contacts"]["get"]["parameters"]}
    assert "email" not in filters
