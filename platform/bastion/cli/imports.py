"""`bastion import ENTITY FILE`: a CSV file into one region, acting as a named principal.

The same `Importer.run` as `POST /v1/imports`, reading the file from disk (any size:
it streams). A progress bar goes to stderr; the run's summary (JSON) to stdout; with
`--report`, the report's lines (row, field, kind, message, existing_id) to a CSV file.
Running the same command again resumes an unfinished run, or creates nothing new.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from bastion.bulk.mapping import parse_mapping
from bastion.cli.common import cli_settings, open_state
from bastion.crm.catalog import ENTITIES
from bastion.principals.caller import Caller

_REPORT_PAGE = 1000


@click.command("import")
@click.argument("entity", type=click.Choice(sorted(ENTITIES)))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--as", "acting_as", required=True, help="Principal name to act as.")
@click.option("--region", default=None, help="Region to import into (default: the principal's).")
@click.option(
    "--map",
    "mapping_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Mapping file (YAML): columns, ignore, defaults, formats.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the report's lines (invalid rows, duplicates) to this CSV file.",
)
def import_csv(
    entity: str,
    file: Path,
    acting_as: str,
    region: str | None,
    mapping_file: Path | None,
    report: Path | None,
) -> None:
    """Import a CSV file of ENTITY records (created through the full pipeline)."""
    mapping = parse_mapping(mapping_file.read_text("utf-8") if mapping_file else None)
    settings = cli_settings()
    with open_state(settings) as state:
        caller = Caller(state.tokens.principal(acting_as))
        bar = click.progressbar(
            length=file.stat().st_size,
            label=f"importing {file.name}",
            file=sys.stderr,
        )
        with file.open("rb") as source, bar:
            done = 0

            def advance(position: int) -> None:
                nonlocal done
                bar.update(position - done)
                done = position

            run = state.imports.run(
                caller,
                entity,
                source,
                region=region,
                mapping=mapping,
                file_name=file.name,
                progress=advance,
            )
        click.echo(json.dumps(run.as_json(), indent=2, sort_keys=True))
        if report is not None:
            with report.open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(["row", "field", "kind", "message", "existing_id"])
                cursor: str | None = None
                while True:
                    page, cursor = state.imports.problems(
                        caller, run.id, cursor=cursor, limit=_REPORT_PAGE
                    )
                    for line in page:
                        writer.writerow(
                            [line.row, line.field, line.kind, line.message, line.existing_id or ""]
                        )
                    if cursor is None:
                        break
