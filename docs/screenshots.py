"""`make screenshots`: a PNG of each main console page, into `docs/console/`.

Serves a fresh Bastion on throwaway SQLite files (the demo data set, plus a few
data subjects' requests, a legal hold and a second policy version), logs in through
the login form as the people who use each page, and photographs it in the same
headless Chromium as the browser tests (`tests/browser.py`). Run from the
repository root: `.venv/bin/python -m docs.screenshots`.
"""

from __future__ import annotations

import base64
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.browser import ConsoleSite, browser_missing, chromium, console_site, log_in, log_out

from bastion import demo
from bastion.crm.listing import ListQuery
from bastion.logs import configure_logging
from bastion.policy.engine import PolicySource
from bastion.principals.caller import Caller

OUT = Path(__file__).resolve().parent / "console"
WIDTH = 1366


def seed(site: ConsoleSite, tokens: dict[str, str]) -> None:
    with site.state() as state:
        admin = state.tokens.issue(principal_name="admin", roles=["admin"]).principal
        demo.seed(state, admin)
        for name, role in (
            ("dana.officer", "compliance_officer"),
            ("olaf.officer", "compliance_officer"),
            ("sam.support", "support_agent"),
            ("sec.admin", "security_admin"),
        ):
            tokens[name] = state.tokens.issue(principal_name=name, roles=[role]).secret
        officer = Caller(state.tokens.principal("dana.officer"))
        contacts = state.records.list_records(
            officer, "contacts", ListQuery(filters={}, limit="6", region="eu")
        ).data
        state.legal_holds.create(
            officer, {"target_id": contacts[2]["id"], "reason": "pending litigation 2026-17"}
        )
        state.records.update(
            Caller(admin),
            "contacts",
            contacts[0]["id"],
            {"birthdate": "1984-02-29"},
            if_match=f'"v{contacts[0]["version"]}"',
        )
        state.dsr.create(officer, {"type": "access", "subject_id": contacts[3]["id"]})
        # A second policy version in the history, for the diff page.
        source = state.policy.source
        changed = source.policy_text.replace(
            "p2, support_agent, *, category:contact.address, write, , allow\n", ""
        )
        state.policy_store.activate(
            PolicySource(source.model_text, changed, "review/drop-address-writes"),
            actor="cli:sec.admin",
            reason="support no longer corrects addresses",
        )
        state.policy_store.activate(source, actor="cli:sec.admin", reason="rolled back")
        tokens["contact"] = contacts[0]["id"]
        tokens["held"] = contacts[2]["id"]
    # Requests received weeks ago: one overdue, one due in a few days.
    with site.state(offset=-timedelta(days=33)) as state:
        officer = Caller(state.tokens.principal("dana.officer"))
        overdue = state.dsr.create(officer, {"type": "export", "subject_id": tokens["contact"]})
        state.dsr.verify_identity(officer, overdue["id"], "id-document")
        tokens["overdue"] = overdue["id"]
    with site.state(offset=-timedelta(days=26)) as state:
        officer = Caller(state.tokens.principal("dana.officer"))
        erasure = state.dsr.create(officer, {"type": "erasure", "subject_id": tokens["held"]})
        tokens["erasure"] = erasure["id"]


def shoot(driver: Any, site: ConsoleSite, path: str, name: str) -> None:
    driver.get(f"{site.base_url}{path}")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WIDTH, "height": min(int(height), 2200), "scale": 1},
        },
    )
    (OUT / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
    print(f"docs/console/{name}.png  {path}")


def main() -> int:
    missing = browser_missing()
    if missing is not None:
        print(f"cannot take screenshots: {missing}", file=sys.stderr)
        return 1
    configure_logging("console", "warning")
    OUT.mkdir(parents=True, exist_ok=True)
    tokens: dict[str, str] = {}
    downloads = Path(tempfile.mkdtemp(prefix="bastion-shots-"))
    try:
        with console_site(lambda site: seed(site, tokens)) as site:
            driver = chromium(downloads, width=WIDTH)
            try:
                shoot(driver, site, "/console/login", "login")
                log_in(driver, site, tokens["dana.officer"])
                shoot(driver, site, "/console/dsr", "dsr-queue")
                shoot(driver, site, f"/console/dsr/{tokens['overdue']}", "dsr-request")
                shoot(driver, site, f"/console/dsr/{tokens['erasure']}/preview", "dsr-preview")
                shoot(driver, site, "/console/audit", "audit-events")
                shoot(
                    driver,
                    site,
                    f"/console/audit/person?record_id={tokens['contact']}",
                    "audit-person",
                )
                driver.get(f"{site.base_url}/console/audit/chains")
                driver.find_element("css selector", "form[action$='/eu/verify'] button").click()
                shoot(driver, site, "/console/audit/chains", "audit-chains")
                shoot(
                    driver, site, "/console/policy?role=support_agent&region=eu", "policy-workbench"
                )
                shoot(
                    driver,
                    site,
                    f"/console/policy/view-as?record_id={tokens['contact']}&role=marketing",
                    "policy-view-as",
                )
                shoot(
                    driver,
                    site,
                    "/console/policy/explain?roles=support_agent&region=eu"
                    "&target=cases.description&action=read&values=status%3Dclosed",
                    "policy-explain",
                )
                driver.get(f"{site.base_url}/console/policy/diff")
                versions = driver.find_elements("css selector", "#d-before option")
                before, after = (
                    versions[-1].get_attribute("value"),
                    versions[0].get_attribute("value"),
                )
                shoot(
                    driver,
                    site,
                    f"/console/policy/diff?before={after}&after={before}",
                    "policy-diff",
                )
                shoot(driver, site, "/console/policy/tests", "policy-tests")
                log_out(driver)
                log_in(driver, site, tokens["sam.support"])
                shoot(driver, site, "/console/records/contacts?region=eu", "records")
                shoot(driver, site, f"/console/records/contacts/{tokens['contact']}", "record")
                log_out(driver)
                log_in(driver, site, tokens["sec.admin"])
                shoot(driver, site, "/console/keys", "keys")
            finally:
                driver.quit()
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
