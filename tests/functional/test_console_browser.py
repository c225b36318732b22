"""The console in headless Chromium against uvicorn, as people use it (SQLite only:
the same pages run on both backends in test_console_pages.py).

A compliance officer logs in, finds the overdue request in the queue, previews it,
verifies the requester, approves, watches it complete (the page's script follows
the progress) and downloads the export package. A support agent logs in and the
values its role may not read -- canaries -- are nowhere in the page source, and a
form posted without its CSRF token is refused. Skips without chromium unless
BASTION_REQUIRE_BROWSER=1 (CI), where that fails.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bastion.principals.caller import Caller
from tests.browser import (
    REQUIRED,
    ConsoleSite,
    browser_missing,
    chromium,
    console_site,
    log_in,
    log_out,
    wait_for,
)

CANARY_BIRTHDATE = "1929-04-17"
CANARY_TAX_ID = "CANARY-TAX-BROWSER-51c0"

_missing = browser_missing()
if _missing is not None:
    if REQUIRED:
        pytest.fail(f"BASTION_REQUIRE_BROWSER=1 but {_missing}", pytrace=False)
    pytest.skip(_missing, allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402 - after the skip above
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


def _seed(site: ConsoleSite, facts: dict[str, str]) -> None:
    with site.state() as state:
        admin = Caller(state.tokens.issue(principal_name="admin", roles=["admin"]).principal)
        facts["officer"] = state.tokens.issue(
            principal_name="dpo", roles=["compliance_officer"]
        ).secret
        facts["agent"] = state.tokens.issue(principal_name="agent", roles=["support_agent"]).secret
        account = state.records.create(
            admin, "accounts", {"region": "eu", "name": "Canary GmbH", "tax_id": CANARY_TAX_ID}
        ).record
        contact = state.records.create(
            admin,
            "contacts",
            {
                "region": "eu",
                "last_name": "Vogel",
                "email": "ida.vogel@example.com",
                "birthdate": CANARY_BIRTHDATE,
                "account_id": account["id"],
            },
        ).record
        facts["contact"], facts["account"] = contact["id"], account["id"]
    # Received five weeks ago: overdue under the GDPR's month.
    with site.state(offset=-timedelta(days=35)) as state:
        officer = Caller(state.tokens.principal("dpo"))
        facts["overdue"] = state.dsr.create(
            officer, {"type": "export", "subject_id": facts["contact"]}
        )["id"]


def shows(browser: Any, text: str) -> None:
    """Wait for the page the last click led to (a click does not wait for it)."""
    wait_for(lambda: text in browser.page_source, what=repr(text))


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[ConsoleSite, dict[str, str]]]:
    facts: dict[str, str] = {}
    with console_site(lambda s: _seed(s, facts)) as served:
        yield served, facts


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium(downloads)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def test_an_officer_finds_previews_approves_and_downloads_an_overdue_request(
    site: tuple[ConsoleSite, dict[str, str]], browser: Any
) -> None:
    served, facts = site
    request_id = facts["overdue"]
    log_in(browser, served, facts["officer"])
    browser.find_element(By.LINK_TEXT, "Requests").click()
    shows(browser, "Requests by deadline, earliest first")
    overdue_row = browser.find_element(By.CSS_SELECTOR, "tr.is-overdue")
    assert request_id in overdue_row.text
    assert "Overdue" in overdue_row.text
    overdue_row.find_element(By.LINK_TEXT, request_id).click()
    shows(browser, "Preview (dry run)")

    browser.find_element(By.PARTIAL_LINK_TEXT, "Preview (dry run)").click()
    shows(browser, "What was found")
    assert facts["contact"] in browser.page_source
    assert "birthdate" in browser.find_element(By.TAG_NAME, "table").text
    browser.find_element(By.LINK_TEXT, "Back to the request").click()
    shows(browser, "Record identity as verified")

    Select(browser.find_element(By.ID, "method")).select_by_value("id-document")
    browser.find_element(By.XPATH, "//button[text()='Record identity as verified']").click()
    shows(browser, "identity is recorded as verified")
    browser.find_element(By.XPATH, "//button[text()='Approve and run']").click()
    # The job runs in the server; the page's script follows it and reloads when done.
    wait_for(
        lambda: "Download the export package" in browser.page_source,
        timeout=45,
        what="the request to complete on the page",
    )
    assert "completed" in browser.find_element(By.TAG_NAME, "h1").text

    browser.find_element(By.PARTIAL_LINK_TEXT, "Download the export package").click()
    package = browser.downloads / f"{request_id}.zip"
    wait_for(package.exists, timeout=20, what="the package download")
    with zipfile.ZipFile(package) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert manifest["request"]["id"] == request_id
        assert manifest["subjects"] == [facts["contact"]]
        assert CANARY_BIRTHDATE in archive.read("data.json").decode()
    log_out(browser)
    browser.get(f"{served.base_url}/console/dsr/{request_id}")
    assert "/console/login" in browser.current_url


def test_a_support_agent_never_gets_withheld_values_and_forms_need_their_token(
    site: tuple[ConsoleSite, dict[str, str]], browser: Any
) -> None:
    served, facts = site
    log_in(browser, served, facts["agent"])
    # The first Tab reaches the skip link: the page is usable from the keyboard.
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("class") == "skip"
    for path in (
        f"/console/records/contacts/{facts['contact']}",
        "/console/records/contacts",
        f"/console/records/accounts/{facts['account']}",
        "/console/records/accounts",
    ):
        browser.get(f"{served.base_url}{path}")
        source = browser.page_source
        assert CANARY_BIRTHDATE not in source, path
        assert CANARY_TAX_ID not in source, path
    browser.get(f"{served.base_url}/console/records/contacts/{facts['contact']}")
    assert "withheld" in browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "ida.vogel@example.com" in browser.page_source

    # The edit form without its CSRF token: refused, and nothing is written.
    browser.execute_script(
        "document.querySelector(\"form.grid input[name='csrf_token']\").remove()"
    )
    email = browser.find_element(By.ID, "e-email")
    email.clear()
    email.send_keys("forged@example.com")
    browser.find_element(By.XPATH, "//button[text()='Save']").click()
    shows(browser, "security token")
    assert "Form refused" in browser.title
    browser.get(f"{served.base_url}/console/records/contacts/{facts['contact']}")
    assert "forged@example.com" not in browser.page_source
    assert "ida.vogel@example.com" in browser.page_source
