"""`bastion dedup`: fill the phonetic index of old rows; scan a region for duplicates."""

from __future__ import annotations

import click

from bastion.cli.common import cli_actor, cli_settings, open_state
from bastion.principals.caller import Caller
from bastion.quality.duplicates import DEDUP_ENTITIES
from bastion.quality.reindex import DEFAULT_BATCH, MAX_BATCH, reindex
from bastion.quality.scan import BATCH


@click.group()
def dedup() -> None:
    """Duplicate detection: phonetic index maintenance and review-queue scans."""


@dedup.command("reindex")
@click.option("--region", required=True, help="The region whose rows to index.")
@click.option(
    "--batch-size", default=DEFAULT_BATCH, show_default=True, type=click.IntRange(1, MAX_BATCH)
)
def reindex_command(region: str, batch_size: int) -> None:
    """Compute the last-name phonetic index of rows that have none (resumable)."""
    settings = cli_settings()
    with open_state(settings) as state:
        if region not in state.regions:
            raise click.UsageError(f"unknown region {region!r}")
        filled = reindex(
            state.records, region, state.clock, actor=cli_actor(), batch_size=batch_size
        )
    for entity, count in filled.items():
        click.echo(f"{region} {entity}: {count} row(s) indexed")


@dedup.command("scan")
@click.option("--as", "acting_as", required=True, help="Principal name to act as.")
@click.option("--region", required=True)
@click.option("--entity", required=True, type=click.Choice(DEDUP_ENTITIES))
@click.option("--batch-size", default=BATCH, show_default=True, type=click.IntRange(1, BATCH))
def scan_command(acting_as: str, region: str, entity: str, batch_size: int) -> None:
    """Scan a region's contacts or leads and queue the likely duplicate pairs.

    Runs as the principal (its read and list scopes and field mask; it needs `merge`,
    `read` and `list`), one audited transaction per batch. Re-running refreshes open
    pairs and leaves dismissed and merged ones alone.
    """
    settings = cli_settings()
    with open_state(settings) as state:
        caller = Caller(state.tokens.principal(acting_as))
        scanned = pairs = 0
        after: str | None = None
        while True:
            progress = state.duplicates.scan(caller, entity, region, after=after, limit=batch_size)
            scanned += progress.scanned
            pairs += progress.pairs
            if progress.after is None:
                break
            after = progress.after
    click.echo(f"{region} {entity}: {scanned} record(s) scanned, {pairs} pair(s) queued")
