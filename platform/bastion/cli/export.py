"""`bastion export ENTITY --as NAME`: the API's export, from the command line.

It acts as a principal of the control database (`--as`), like `bastion dsr`, and
runs the very service behind `GET /v1/{entity}/export` (`bulk.export`): the same
scope, the same field masks, the same `record.export` audit events naming that
principal, the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import click

from bastion.bulk.export import FORMATS, ExportQuery, export_records
from bastion.cli.common import cli_settings, open_state
from bastion.principals.caller import Caller


def _filter(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise click.BadParameter(f"{text!r} is not FIELD=VALUE", param_hint="--filter")
    return name, value


@click.command("export")
@click.argument("entity")
@click.option("--as", "acting_as", required=True, help="Principal name to act as.")
@click.option("--region", default=None, help="Only this region (default: all of yours).")
@click.option(
    "--format", "output_format", type=click.Choice(list(FORMATS)), default="csv", show_default=True
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Equality filter, as the list endpoint takes it (repeatable).",
)
@click.option(
    "--out",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write (- for standard output).",
)
def export(
    entity: str,
    acting_as: str,
    region: str | None,
    output_format: str,
    filters: tuple[str, ...],
    out: str,
) -> None:
    """Export ENTITY as CSV or JSON lines: what the principal may read, nothing more."""
    pairs = [_filter(text) for text in filters]
    names = [name for name, _value in pairs]
    if len(set(names)) != len(names):
        raise click.BadParameter("a field is filtered on more than once", param_hint="--filter")
    query = ExportQuery(format=output_format, filters=dict(pairs), region=region)
    settings = cli_settings()
    with open_state(settings) as state:
        caller = Caller(state.tokens.principal(acting_as))
        prepared = export_records(state.records, caller, entity, query)
        # Opened only now: a refused export leaves no empty file behind, and one cut
        # short (the audit log failed) leaves no file that looks complete.
        try:
            with click.open_file(out, "wb") as stream:
                for chunk in prepared.chunks:
                    stream.write(chunk)
        except BaseException:
            if out != "-":
                Path(out).unlink(missing_ok=True)
            raise
