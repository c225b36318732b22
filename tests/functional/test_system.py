"""/v1/me, health, readiness (with a region down), OpenAPI and the docs page."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import create_engine
from starlette.testclient import TestClient

from bastion.app import create_app
from bastion.config import Settings
from bastion.crm.catalog import ENTITIES
from bastion.residency.databases import Database, Regions
from bastion.state import State
from tests.conftest import FrozenClock, Tokens
from tests.factories import contact_body, create


def test_me_shows_roles_regions_and_permissions(client: TestClient, tokens: Tokens) -> None:
    rep = tokens.headers("sales_rep", regions=("eu",), name="rep")
    me = client.get("/v1/me", headers=rep).json()
    assert me["name"] == "rep"
    assert me["roles"] == ["sales_rep"]
    assert me["regions"] == ["eu"]
    assert set(me["permissions"]) == set(ENTITIES)
    contacts = me["permissions"]["contacts"]
    assert contacts["actions"] == ["create", "list", "read", "update"]
    assert "last_name" in contacts["read_fields"]
    assert "converted_at" not in me["permissions"]["leads"]["write_fields"]
    assert me["permissions"]["cases"]["actions"] == ["list", "read"]
    assert me["permissions"]["cases"]["write_fields"] == []
    assert client.get("/v1/me").status_code == 401


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["databases"] == {"control": "ok", "eu": "ok", "us": "ok"}


def test_a_region_that_is_down_fails_only_its_own_requests(
    settings: Settings, state: State, tokens: Tokens
) -> None:
    admin = tokens.headers("admin")
    # The US database becomes unreachable: a server that refuses connections.
    dead = Database(
        "us",
        create_engine(
            "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
        ),
    )
    broken = State(
        settings=settings,
        clock=state.clock,
        control=state.control,
        regions=Regions({"eu": state.regions.get("eu"), "us": dead}),
        policy=state.policy,
    )
    with TestClient(create_app(settings, state=broken)) as client:
        eu = client.post("/v1/contacts", json=contact_body(region="eu"), headers=admin)
        assert eu.status_code == 201
        us = client.post("/v1/contacts", json=contact_body(region="us"), headers=admin)
        assert us.status_code == 503
        assert us.headers["content-type"] == "application/problem+json"
        assert us.json()["region"] == "us"
        assert "nobody" not in us.text
        assert "127.0.0.1" not in us.text
        assert client.get("/v1/contacts", params={"region": "eu"}, headers=admin).status_code == 200
        assert client.get("/v1/contacts", headers=admin).status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["databases"] == {"control": "ok", "eu": "ok", "us": "unavailable"}
    dead.engine.dispose()


def test_openapi_is_generated_from_the_catalog(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    for name, spec in ENTITIES.items():
        assert f"/v1/{name}" in document["paths"]
        assert f"/v1/{name}/{{id}}" in document["paths"]
        title = spec.singular.title().replace(" ", "")
        record = document["components"]["schemas"][title]["properties"]
        for field in spec.fields:
            assert record[field.name]
        create_schema = document["components"]["schemas"][f"{title}Create"]
        assert create_schema["additionalProperties"] is False
        assert {f.name for f in spec.writable_fields()} <= set(create_schema["properties"])
    email = document["components"]["schemas"]["Contact"]["properties"]["email"]["anyOf"][0]
    assert email["x-classification"] == "personal"
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "contacts" in docs.text
    assert "<script" not in docs.text


def test_openapi_documents_every_answer_an_operation_can_give(client: TestClient) -> None:
    """Found by tests/functional/test_fuzz.py: malformed bodies (400), bodies too large
    (413) or of another type (415), foreign cursors (400) and missing tokens (401) were
    answered by operations that did not document them; lead conversion documented
    only 200 and 409, no response body and no If-Match."""
    paths = client.get("/openapi.json").json()["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            codes = set(operation["responses"])
            if operation.get("security") != []:
                assert "401" in codes, (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= codes, (method, path)
            names = {p["name"] for p in operation.get("parameters", [])}
            if "cursor" in names:
                assert "400" in codes, (method, path)
    convert = paths["/v1/leads/{id}/convert"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "412", "422"} <= set(convert["responses"])
    converted = convert["responses"]["200"]["content"]["application/json"]["schema"]
    assert converted["properties"]["contact"] == {"$ref": "#/components/schemas/Contact"}
    assert "If-Match" in {p["name"] for p in convert["parameters"]}


def test_openapi_links_a_new_record_to_what_comes_next(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation_ids = {
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    }
    for name, spec in ENTITIES.items():
        created = document["paths"][f"/v1/{name}"]["post"]["responses"]["201"]
        title = spec.singular.title().replace(" ", "")
        links = created["links"]
        assert links[f"Get{title}"]["parameters"] == {"path.id": "$response.body#/id"}
        assert links[f"Update{title}"]["parameters"] == {
            "path.id": "$response.body#/id",
            "header.If-Match": "$response.header.ETag",
        }
        assert {link["operationId"] for link in links.values()} <= operation_ids
    lead = document["paths"]["/v1/leads"]["post"]["responses"]["201"]["links"]
    assert lead["ConvertLead"]["operationId"] == "convert_lead"


def test_openapi_filters_carry_their_fields_types(client: TestClient) -> None:
    listing = client.get("/openapi.json").json()["paths"]["/v1/accounts"]["get"]
    parameters = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert parameters["employee_count"] == {"type": "integer", "minimum": 0, "maximum": 10000000}
    assert parameters["annual_revenue"] == {
        "type": "string",
        "pattern": r"^[0-9]{1,15}(\.[0-9]{1,2})?$",
    }
    assert parameters["type"]["enum"]
    assert parameters["name"]["pattern"] == "^[^\\u0000-\\u001f\\u007f]*$"


def test_revoked_and_expired_tokens_stop_working(
    client: TestClient, state: State, clock: FrozenClock
) -> None:
    issued = state.tokens.issue(
        principal_name="temp", roles=["admin"], expires_in=timedelta(hours=1)
    )
    headers = {"Authorization": f"Bearer {issued.secret}"}
    create(client, "accounts", {"name": "A"}, headers)
    clock.advance(timedelta(hours=2))
    assert client.get("/v1/accounts", headers=headers).status_code == 401
    other = state.tokens.issue(principal_name="temp2", roles=["admin"])
    other_headers = {"Authorization": f"Bearer {other.secret}"}
    assert client.get("/v1/accounts", headers=other_headers).status_code == 200
    state.tokens.revoke(other.token_id)
    assert client.get("/v1/accounts", headers=other_headers).status_code == 401
