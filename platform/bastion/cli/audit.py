"""`bastion audit`: verify, checkpoint, export and prune the audit chains; manage their keys.

`--region` takes a region name or `control`; without it a command covers every
region and the control chain. `verify` exits 0 printing OK when every chain and
checkpoint verifies, and 1 naming the first bad sequence number otherwise; 2 for
bad usage, e.g. `--from` more than one past a chain's head (nothing there to
verify: likely a mistake, and never reported as tampering), or an `--against`
note that is not a checkpoint of the chain signed by its key.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from bastion.audit import AuditEvent, key_ring
from bastion.audit.keys import AuditKeyError
from bastion.audit.queries import parse_filter
from bastion.audit.verify import VerifyReport
from bastion.audit.witness import MAX_NOTE_BYTES, Witness
from bastion.cli.common import cli_settings, open_state
from bastion.config import Settings
from bastion.errors import Conflict, ValidationFailed
from bastion.residency.databases import CONTROL
from bastion.state import State

CLI_ACTOR = "cli"

region_option = click.option(
    "--region", default=None, help="A region name or `control` (default: all chains)."
)


@click.group()
def audit() -> None:
    """The tamper-evident audit log: verify, checkpoint, export, prune, keys."""


@contextmanager
def _state() -> Iterator[State]:
    settings = cli_settings()
    try:
        with open_state(settings) as state:
            yield state
    except AuditKeyError as exc:
        raise click.ClickException(str(exc)) from None


def _chains(names: tuple[str, ...], region: str | None) -> list[str]:
    if region is None:
        return list(names)
    if region not in names:
        raise click.BadParameter(f"unknown chain {region!r}; one of {', '.join(names)}")
    return [region]


def _all_chains(settings: Settings) -> tuple[str, ...]:
    return (*settings.region_names(), CONTROL)


@audit.command("verify")
@region_option
@click.option("--from", "from_seq", type=click.IntRange(min=1), default=None, help="Start here.")
@click.option(
    "--against",
    type=click.Path(exists=True, dir_okay=False, readable=True),
    default=None,
    help="A signed checkpoint note kept outside the database (needs --region).",
)
def verify(region: str | None, from_seq: int | None, against: str | None) -> None:
    """Re-walk each chain and its signed checkpoints; name the first bad sequence number.

    With --against, the chain must also agree with that witness copy of a
    checkpoint (as printed by `bastion audit checkpoint`): a database whose
    checkpoints were deleted along with a rewrite or truncation is still caught.
    """
    if against is not None and region is None:
        raise click.UsageError("--against checks one chain; name it with --region")
    failed: list[tuple[str, int | None]] = []
    with _state() as state:
        for chain in _chains(_all_chains(state.settings), region):
            witness = _witness(state, chain, against) if against is not None else None
            total = max(state.audit.head_seq(chain) - (from_seq or 1) + 1, 0)
            try:
                with click.progressbar(
                    length=total, label=f"verifying {chain}", file=sys.stderr
                ) as bar:
                    report = state.audit.verify(
                        chain, from_seq=from_seq, progress=bar.update, witness=witness
                    )
            except ValidationFailed as exc:
                problems = "; ".join(f"--{e.field} {e.message}" for e in exc.errors)
                raise click.UsageError(f"{chain}: {problems or exc.detail}") from None
            except Conflict as exc:
                raise click.ClickException(f"{chain}: {exc.detail}") from None
            problem = report.problem
            _warn_times(chain, report)
            if problem is None:
                checked = f"; agrees with the witness at {witness.tree_size}" if witness else ""
                click.echo(
                    f"{chain}: OK ({report.entries} entries verified, seq {report.first_seq}.."
                    f"{report.last_seq}; {report.checkpoints} checkpoints; "
                    f"{report.pending} pending{checked})"
                )
                continue
            failed.append((chain, problem.seq))
            where = f"sequence number {problem.seq}" if problem.seq is not None else "an event"
            event = f" (event {problem.event_id})" if problem.event_id else ""
            click.echo(f"{chain}: FAILED at {where}: {problem.kind}: {problem.detail}{event}")
    if failed:
        for chain, seq in failed:
            shown = seq if seq is not None else "none (an event without one)"
            click.echo(f"{chain}: first bad sequence number: {shown}", err=True)
        sys.exit(1)


def _witness(state: State, chain: str, path: str) -> Witness:
    with open(path, "rb") as handle:
        raw = handle.read(MAX_NOTE_BYTES + 1)
    try:
        return state.audit.witness(chain, raw.decode("utf-8"), field="against")
    except UnicodeDecodeError:
        raise click.UsageError("--against must be a UTF-8 signed note") from None
    except ValidationFailed as exc:
        raise click.UsageError("; ".join(f"--{e.field} {e.message}" for e in exc.errors)) from None


def _warn_times(chain: str, report: VerifyReport) -> None:
    if report.time_anomalies:
        click.echo(
            f"{chain}: warning: {report.time_anomalies} events are dated outside the signed "
            "checkpoint times around them by more than the clock tolerance (backdated, or "
            f"skewed clocks); the first at sequence number {report.first_time_anomaly_seq}",
            err=True,
        )


@audit.command("checkpoint")
@region_option
def checkpoint(region: str | None) -> None:
    """Chain pending events and sign a checkpoint now; print it as a signed note."""
    with _state() as state:
        for chain in _chains(_all_chains(state.settings), region):
            try:
                signed = state.audit.checkpoint(chain)
            except Conflict:
                click.echo(f"{chain}: empty chain, no checkpoint")
                continue
            click.echo(signed.note, nl=False)
            click.echo("")


@audit.command("export")
@region_option
@click.option("--actor")
@click.option("--record-id")
@click.option("--entity")
@click.option("--action")
@click.option("--decision", type=click.Choice(["allow", "deny"]))
@click.option("--since", help="ISO 8601 time with a zone (inclusive).")
@click.option("--until", help="ISO 8601 time with a zone (exclusive).")
def export(
    region: str | None,
    actor: str | None,
    record_id: str | None,
    entity: str | None,
    action: str | None,
    decision: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Write matching events as JSON lines to stdout, oldest first, with their hashes."""
    params = {
        "actor": actor,
        "record_id": record_id,
        "entity": entity,
        "action": action,
        "decision": decision,
        "since": since,
        "until": until,
    }
    try:
        flt = parse_filter(params)
    except ValidationFailed as exc:
        problems = "; ".join(f"--{e.field.replace('_', '-')} {e.message}" for e in exc.errors)
        raise click.UsageError(problems) from None
    with _state() as state:
        for chain in _chains(_all_chains(state.settings), region):
            state.audit.record(
                chain,
                AuditEvent.new(state.clock, actor=CLI_ACTOR, action="audit.export", entity="audit"),
            )
            for event in state.audit.export(chain, flt):
                click.echo(json.dumps(event, ensure_ascii=False, separators=(",", ":")))


@audit.command("prune")
@region_option
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def prune(region: str | None, dry_run: bool) -> None:
    """Remove segments older than the retention period, leaving a signed prune record.

    Run it as the database owner (the application role may not delete).
    """
    with _state() as state:
        for chain in _chains(_all_chains(state.settings), region):
            plan = state.audit.prune(chain, actor=CLI_ACTOR, dry_run=dry_run)
            cutoff = plan.cutoff.isoformat()
            if plan.upto_seq is None:
                click.echo(f"{chain}: nothing checkpointed before {cutoff}; nothing to prune")
            elif dry_run:
                click.echo(f"{chain}: would remove {plan.entries} entries (seq ..{plan.upto_seq})")
            else:
                click.echo(f"{chain}: removed {plan.entries} entries (seq ..{plan.upto_seq})")


@audit.command("keygen")
@region_option
def keygen(region: str | None) -> None:
    """Create each chain's Ed25519 checkpoint signing key if it is missing (mode 0600)."""
    settings = cli_settings()
    ring = key_ring(settings.audit, home=settings.home, production=False)
    for chain in _chains(_all_chains(settings), region):
        key, created = ring.generate(chain)
        state = "created" if created else "exists"
        click.echo(f"{chain}: {state} {ring.directory / f'{chain}.ed25519'}")
        click.echo(f"  {key.verifier_key}")


@audit.command("public-key")
@region_option
def public_key(region: str | None) -> None:
    """Print each chain's verifier key (`<name>+<key id>+<base64 key>`) for third parties."""
    settings = cli_settings()
    ring = key_ring(settings.audit, home=settings.home, production=settings.mode == "production")
    for chain in _chains(_all_chains(settings), region):
        try:
            click.echo(ring.signing_key(chain).verifier_key)
        except AuditKeyError as exc:
            raise click.ClickException(str(exc)) from None
