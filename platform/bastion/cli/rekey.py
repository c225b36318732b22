"""`bastion keys rotate-dek`: a new data key for a subject, and its data re-encrypted.

Lives apart from the other `keys` commands because it works on CRM records (it
must find every value a subject's key seals); it is added to the `keys` group.
"""

from __future__ import annotations

import click
from sqlalchemy import select

from bastion.audit import AuditEvent
from bastion.cli.common import cli_settings, open_state
from bastion.crm.subjects import Rekeyed, rotate_subject_key, subject_entity
from bastion.crypto.tables import subject_keys
from bastion.residency.ids import RecordId
from bastion.state import State


@click.command("rotate-dek")
@click.option("--subject", "subject_id", default=None, help="One data subject's record id.")
@click.option("--region", default=None, help="With --all: the region whose subjects to rotate.")
@click.option("--all", "every", is_flag=True, help="Every subject of --region, in batches.")
@click.option("--batch-size", default=200, show_default=True, type=click.IntRange(1, 10_000))
def rotate_dek(subject_id: str | None, region: str | None, every: bool, batch_size: int) -> None:
    """Start a new DEK version and re-encrypt the subject's values under it.

    Old versions stay until no process can hold them as current; retire them later
    (they are reported). Re-running is safe: values already under the newest key are
    skipped. Each subject is one transaction, audited in its region's log.
    """
    if (subject_id is None) == (not every):
        raise click.UsageError("give --subject ID, or --all with --region R")
    settings = cli_settings()
    with open_state(settings) as state:
        if subject_id is not None:
            subject_entity(subject_id)
            report = _rotate(state, RecordId.parse(subject_id).region, subject_id)
            click.echo(
                f"{subject_id}: {report.values} value(s) in {report.records} record(s) "
                f"re-encrypted; {len(report.old_key_ids)} older key version(s) to retire"
            )
            return
        if region is None:
            raise click.UsageError("--all needs --region")
        database = state.regions.get(region)
        with database.transaction() as conn:
            subjects = sorted(set(conn.execute(select(subject_keys.c.subject_id)).scalars().all()))
        total = 0
        with click.progressbar(subjects, label=f"rotating data keys in {region}") as bar:
            for index, subject in enumerate(bar, start=1):
                total += _rotate(state, region, subject).values
                if index % batch_size == 0:
                    state.audit.notify(region)
        click.echo(f"{len(subjects)} subject(s) in {region}: {total} value(s) re-encrypted")


def _rotate(state: State, region: str, subject_id: str) -> Rekeyed:
    database = state.regions.get(region)
    with database.transaction(write=True) as conn:
        report = rotate_subject_key(state.keys, conn, region, subject_id)
        state.records.recorder.append(
            conn,
            region,
            AuditEvent.new(
                state.clock,
                actor="cli",
                action="key.rotate_dek",
                entity="keys",
                record_ids=[subject_id],
                details={"records": report.records, "values": report.values},
            ),
        )
    state.audit.notify(region)
    return report
