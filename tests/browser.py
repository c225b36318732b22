"""The console in a real browser: Debian's headless Chromium, driven by Selenium
through Debian's chromium-driver, against a real uvicorn server.

Why Selenium and not Playwright: the `chromium-driver` package is built from the
same source as `chromium`, so driver and browser always match, and nothing needs a
browser download (Playwright's Python package drives a Chromium build of its own
revision; with another one it may or may not work). `.ci/run` installs both
packages; `BASTION_REQUIRE_BROWSER=1` makes a missing browser a failure instead of
a skip.

Used by `tests/functional/test_console_browser.py` and by `docs/screenshots.py`
(the screenshots in the README), so both see the console the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.environment import Server, app_databases, bastion_environment, migrate_databases

from bastion.config import load_settings
from bastion.state import State, build_state

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REQUIRED = os.environ.get("BASTION_REQUIRE_BROWSER") == "1"
# The flags the project uses for Chromium everywhere: no sandbox (containers run as
# root), no GPU, and none of the background traffic a browser makes on its own.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--lang=en-GB",
)


def browser_missing() -> str | None:
    """None when Chromium, its driver and Selenium are installed; else what is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        return f"missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
    return None


def chromium(downloads: Path, *, width: int = 1366, height: int = 900) -> WebDriver:
    """A headless Chromium whose downloads land in `downloads` without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    # Both paths given: Selenium's driver manager is never asked (it would download).
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    return driver


class ShiftedClock:
    """A clock `offset` away from now (a request received weeks ago is overdue now)."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class ConsoleSite:
    """A Bastion served by uvicorn on a free loopback port, on throwaway SQLite files."""

    base_url: str
    env: dict[str, str]
    home: Path
    server: Server

    def state(
        self, *, offset: timedelta = timedelta(0)
    ) -> contextlib.AbstractContextManager[State]:
        """A `State` on the site's databases (in this process), its clock `offset` away."""

        @contextlib.contextmanager
        def opened() -> Iterator[State]:
            built = build_state(load_settings(self.env), clock=ShiftedClock(offset))
            try:
                yield built
            finally:
                built.close()

        return opened()


@contextlib.contextmanager
def console_site(seed: Callable[[ConsoleSite], None] | None = None) -> Iterator[ConsoleSite]:
    """Migrate fresh SQLite databases, let `seed` fill them, then serve them."""
    workdir = Path(tempfile.mkdtemp(prefix="bastion-console-"))
    try:
        with app_databases("sqlite", "bastion", workdir) as databases:
            env = {
                **bastion_environment(databases),
                # Plain http on 127.0.0.1: the cookie may go without `Secure` on loopback.
                "BASTION_CONSOLE_COOKIE_SECURE": "false",
                "BASTION_DSR_IN_PROCESS": "true",
                "BASTION_DSR_POLL_SECONDS": "0.2",
                "BASTION_LOG_LEVEL": "warning",
            }
            migrate_databases(env)
            server = Server("console", "bastion.app:app_from_environment", env, databases.home)
            site = ConsoleSite(server.base_url, env, databases.home, server)
            if seed is not None:
                seed(site)
            server.start()
            try:
                server.wait_ready()
                yield site
            finally:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for(condition: Callable[[], bool], *, timeout: float = 20.0, what: str = "") -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}")


def log_in(driver: WebDriver, site: ConsoleSite, token: str) -> None:
    """Log in through the login form, as a person would."""
    from selenium.webdriver.common.by import By

    driver.get(f"{site.base_url}/console/login")
    wait_for(lambda: bool(driver.find_elements(By.ID, "token")), what="the login form")
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form[action='/console/login'] button").click()
    wait_for(lambda: "/console/login" not in driver.current_url, what="the login to go through")


def log_out(driver: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "form[action='/console/logout'] button").click()
    wait_for(lambda: "/console/login" in driver.current_url, what="the logout")
