"""What every `bastion` command shares: settings, logging and a `State` to work on."""

from __future__ import annotations

import getpass
import re
from collections.abc import Iterator
from contextlib import contextmanager

import click
import structlog

from bastion import migrate as migrations
from bastion.automation.rules import WorkflowError
from bastion.automation.scoring import ScoringError
from bastion.config import ConfigError, Settings, load_settings
from bastion.errors import BastionError
from bastion.logs import configure_logging
from bastion.policy.engine import PolicyError
from bastion.state import State, build_state

log = structlog.get_logger("bastion.cli")


def cli_settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_format, settings.log_level)
    if settings.generated_secret:
        log.warning(
            "development_secret",
            detail="using a generated development secret; set BASTION_SECRET_KEY in production",
            home=str(settings.home),
        )
    return settings


def cli_actor() -> str:
    """Who the audit log says acted for a CLI command: `cli:<os user>` (normalised to
    the characters an audit actor may hold)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return "cli"
    safe = re.sub(r"[^a-z0-9_.-]", "_", user.lower())[:64]
    return f"cli:{safe}" if safe else "cli"


def is_embedded(settings: Settings) -> bool:
    """Whether every database is a SQLite file of the embedded default (auto-migrated)."""
    urls = [settings.control_url, *(r.url for r in settings.regions.values())]
    return all(url.get_secret_value().startswith("sqlite") for url in urls)


@contextmanager
def open_state(settings: Settings) -> Iterator[State]:
    if is_embedded(settings):
        migrations.migrate_all(settings)
    try:
        state = build_state(settings, activate_policy_files=False)
    except (PolicyError, WorkflowError, ScoringError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield state
    except BastionError as exc:
        raise click.ClickException(exc.detail) from None
    finally:
        state.close()
