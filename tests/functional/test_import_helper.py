"""A large file's rows are prepared in a helper process: the same import, the same
report, whether the helper prepares them or the importing process does."""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from bastion.state import State
from tests.factories import contact_body, create
from tests.functional.test_imports import CANARY, csv_text, person, post_import, problems

SETTINGS_ENV = {
    "BASTION_IMPORTS_BATCH_SIZE": "7",
    # Every file is "large": the helper prepares every batch after the first.
    "BASTION_IMPORTS_HELPER_MIN_BYTES": "0",
}


def test_a_file_prepared_by_the_helper_is_imported_and_reported_as_in_process(
    client: TestClient, admin: dict[str, str], state: State
) -> None:
    existing = create(client, "contacts", contact_body(email="taken@import.example"), admin)
    rows = [person(n) for n in range(1, 31)]
    rows[2] = person(3, email="not-an-email")  # row 4, the first batch (prepared here)
    rows[9] = person(10, opt="vielleicht")  # row 11, the second batch (the helper)
    rows[15] = person(16, email="JANA.8@Import.Example ")  # row 17: duplicate of row 9
    rows[20] = person(21, email="taken@import.example")  # row 22: an existing contact
    rows[25] = person(26, last="")  # row 27: last_name is required
    response = post_import(client, admin, csv_text(rows))
    assert response.status_code == 201, response.text
    run = response.json()
    assert (run["rows"], run["created"], run["invalid"], run["duplicates"]) == (30, 25, 3, 2)
    lines = problems(client, admin, run["id"])
    assert [(p["row"], p["field"], p["kind"]) for p in lines] == [
        (4, "email", "invalid"),
        (11, "email_opt_in", "invalid"),
        (17, "email", "duplicate"),
        (22, "email", "duplicate"),
        (27, "last_name", "invalid"),
    ]
    assert lines[3]["existing_id"] == existing["id"]
    assert all(CANARY not in json.dumps(line) for line in lines)
    found = client.get(
        "/v1/contacts", params={"email": "jana.30@import.example"}, headers=admin
    ).json()["data"]
    assert [r["last_name"] for r in found] == [f"{CANARY}30"]
    # The helper's row keys are the importer's: the same file again creates nothing.
    again = post_import(client, admin, csv_text(rows)).json()
    assert (again["created"], again["skipped"]) == (0, 25)
