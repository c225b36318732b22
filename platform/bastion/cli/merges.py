"""`bastion merges finalize`: shred the losers of merges whose undo window has passed.

The DSR worker's housekeeping does the same in every region it serves; this command
runs it on demand (or from cron where no worker runs).
"""

from __future__ import annotations

import click

from bastion.cli.common import cli_settings, open_state
from bastion.quality.finalize import finalize_due


@click.group()
def merges() -> None:
    """Merges of duplicate contacts and leads."""


@merges.command("finalize")
@click.option("--region", required=True, help="The region whose due merges to finalise.")
def finalize(region: str) -> None:
    """Finalise every merge of REGION past its undo window: each loser's data key is
    destroyed and its plaintext personal fields cleared; the merge can no longer be
    undone. One transaction per merge, each audited (`record.merge_final`)."""
    settings = cli_settings()
    if region not in settings.regions:
        raise click.BadParameter(f"{region!r} is not a configured region", param_hint="--region")
    with open_state(settings) as state:
        done = finalize_due(
            state.regions.get(region), state.keys, state.records.recorder, state.clock
        )
    click.echo(f"{done} merge(s) finalised in {region}")
