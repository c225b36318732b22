"""`bastion dsr` (data subjects' requests, acting as a named principal) and `bastion worker`.

The commands act as a principal of the control database (`--as NAME`, e.g. a
compliance officer's), so the policy decides and the audit log names that person,
exactly as through the API.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from bastion.cli.common import cli_settings, open_state
from bastion.dsr import certificate as certificates
from bastion.dsr.model import FINAL, STEPS
from bastion.principals.caller import Caller
from bastion.state import State

_AS = click.option("--as", "acting_as", required=True, help="Principal name to act as.")


@contextmanager
def _acting(acting_as: str) -> Iterator[tuple[State, Caller]]:
    settings = cli_settings()
    with open_state(settings) as state:
        yield state, Caller(state.tokens.principal(acting_as))


def _show(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@click.group()
def dsr() -> None:
    """Data subjects' requests: create, verify, approve, follow, download."""


@dsr.command("create")
@_AS
@click.option(
    "--type",
    "request_type",
    required=True,
    type=click.Choice(["access", "export", "erasure", "rectification"]),
)
@click.option("--regime", type=click.Choice(["gdpr", "ccpa"]), default="gdpr", show_default=True)
@click.option("--subject", "subject_id", default=None, help="A contact or lead id.")
@click.option("--email", default=None, help="Find the subject by email (with --region).")
@click.option("--phone", default=None, help="Find the subject by phone (with --region).")
@click.option("--region", default=None)
@click.option(
    "--correct",
    "corrections",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Rectification: a corrected value (repeatable).",
)
def create(
    acting_as: str,
    request_type: str,
    regime: str,
    subject_id: str | None,
    email: str | None,
    phone: str | None,
    region: str | None,
    corrections: tuple[str, ...],
) -> None:
    """Record a request; it then needs identity verification and approval."""
    body: dict[str, Any] = {"type": request_type, "regime": regime}
    if subject_id:
        body["subject_id"] = subject_id
    if email or phone:
        body["identifier"] = {"email": email} if email else {"phone": phone}
    if region:
        body["region"] = region
    if corrections:
        body["corrections"] = dict(_pair(c) for c in corrections)
    with _acting(acting_as) as (state, caller):
        _show(state.dsr.create(caller, body))


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise click.BadParameter(f"{text!r} is not FIELD=VALUE")
    return name, value


@dsr.command("list")
@_AS
@click.option("--region", default=None)
@click.option("--status", default=None)
@click.option("--overdue", is_flag=True)
@click.option("--due-within-days", type=click.IntRange(1, 365), default=None)
def list_requests(
    acting_as: str,
    region: str | None,
    status: str | None,
    overdue: bool,
    due_within_days: int | None,
) -> None:
    """Open requests by deadline (overdue and due-soon marked)."""
    with _acting(acting_as) as (state, caller):
        page = state.dsr.list(
            caller,
            region=region,
            status=status,
            overdue=overdue,
            due_within_days=due_within_days,
            limit=200,
            cursor=None,
        )
    for item in page["data"]:
        flag = "OVERDUE" if item["overdue"] else ("due soon" if item["due_soon"] else "")
        click.echo(
            f"{item['id']}  {item['type']:<13} {item['status']:<19} due {item['due_at']}  {flag}"
        )


@dsr.command("show")
@_AS
@click.argument("request_id")
def show(acting_as: str, request_id: str) -> None:
    """A request: its state, deadline, steps done and result."""
    with _acting(acting_as) as (state, caller):
        _show(state.dsr.get(caller, request_id))


@dsr.command("preview")
@_AS
@click.argument("request_id")
def preview(acting_as: str, request_id: str) -> None:
    """Dry run: what would be exported, or erased and kept (and why)."""
    with _acting(acting_as) as (state, caller):
        _show(state.dsr.preview(caller, request_id))


@dsr.command("verify")
@_AS
@click.argument("request_id")
@click.option("--method", required=True, help="How the identity was verified, e.g. id-document.")
def verify(acting_as: str, request_id: str, method: str) -> None:
    """Record that the requester's identity was verified."""
    with _acting(acting_as) as (state, caller):
        _show(state.dsr.verify_identity(caller, request_id, method))


@dsr.command("approve")
@_AS
@click.argument("request_id")
@click.option("--wait", is_flag=True, help="Run it here now and show progress.")
def approve(acting_as: str, request_id: str, wait: bool) -> None:
    """Approve a verified request; a worker runs it (or this command, with --wait)."""
    with _acting(acting_as) as (state, caller):
        approved = state.dsr.approve(caller, request_id)
        if not wait:
            _show(approved)
            return
        with _progress(approved) as bar:
            state.dsr_jobs.run_now(
                approved["region"], request_id, on_step=lambda step: bar.update(1, step)
            )
        _show(state.dsr.get(caller, request_id))


@dsr.command("watch")
@_AS
@click.argument("request_id")
@click.option(
    "--interval",
    default=2.0,
    type=click.FloatRange(0.2, 60),
    show_default=True,
    help="Seconds between looks (each look is an audited read of the request).",
)
def watch(acting_as: str, request_id: str, interval: float) -> None:
    """Follow a request's steps with a progress bar until it ends; exit status 1 unless
    it completed (fully or partially)."""
    with _acting(acting_as) as (state, caller):
        shown = state.dsr.get(caller, request_id)
        with _progress(shown) as bar:
            while shown["status"] not in FINAL:
                time.sleep(interval)
                before = _steps_done(shown)
                shown = state.dsr.get(caller, request_id)
                bar.update(_steps_done(shown) - before, shown["step"])
        _show(shown)
        if shown["status"] not in ("completed", "partially_completed"):
            sys.exit(1)


def _steps_done(request: dict[str, Any]) -> int:
    return sum(1 for step in STEPS[request["type"]] if step in (request["progress"] or {}))


@contextmanager
def _progress(request: dict[str, Any]) -> Iterator[_Steps]:
    """Progress over the request's steps, on stderr (stdout is the JSON): a bar on a
    terminal, a line per step otherwise (logs, scripts)."""
    steps = _Steps(request)
    if sys.stderr.isatty():
        with click.progressbar(
            length=steps.total,
            label=steps.label,
            file=sys.stderr,
            show_pos=True,
            item_show_func=lambda step: step,
        ) as bar:
            steps.bar = bar
            bar.update(steps.done)
            yield steps
    else:
        yield steps


class _Steps:
    def __init__(self, request: dict[str, Any]) -> None:
        self.label = f"{request['type']} {request['id']}"
        self.total = len(STEPS[request["type"]])
        self.done = _steps_done(request)
        self.bar: Any = None

    def update(self, count: int, step: str | None) -> None:
        if count <= 0:
            return
        self.done += count
        if self.bar is not None:
            self.bar.update(count, step)
        else:
            click.echo(f"{self.label}: {step} ({self.done}/{self.total})", err=True)


@dsr.command("reject")
@_AS
@click.argument("request_id")
@click.option("--reason", required=True)
def reject(acting_as: str, request_id: str, reason: str) -> None:
    with _acting(acting_as) as (state, caller):
        _show(state.dsr.reject(caller, request_id, reason))


@dsr.command("extend")
@_AS
@click.argument("request_id")
@click.option("--reason", required=True)
def extend(acting_as: str, request_id: str, reason: str) -> None:
    """Extend the deadline once (GDPR +60 days, CCPA +45), with the reason."""
    with _acting(acting_as) as (state, caller):
        _show(state.dsr.extend(caller, request_id, reason))


@dsr.command("cancel")
@_AS
@click.argument("request_id")
def cancel(acting_as: str, request_id: str) -> None:
    with _acting(acting_as) as (state, caller):
        _show(state.dsr.cancel(caller, request_id))


@dsr.command("package")
@_AS
@click.argument("request_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def package(acting_as: str, request_id: str, out: Path) -> None:
    """Download an access/export package (a zip) to --out."""
    with _acting(acting_as) as (state, caller):
        data, digest = state.dsr.package(caller, request_id)
    out.write_bytes(data)
    click.echo(f"wrote {out} ({len(data)} bytes, sha256 {digest})")


@dsr.command("certificate")
@_AS
@click.argument("request_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--text", "as_text", is_flag=True, help="The readable form instead of JSON.")
def certificate(acting_as: str, request_id: str, out: Path | None, as_text: bool) -> None:
    """An erasure certificate (the JSON document is the one that verifies)."""
    with _acting(acting_as) as (state, caller):
        document = state.dsr.certificate(caller, request_id)
    text = (
        certificates.as_text(document["certificate"])
        if as_text
        else json.dumps(document, indent=2, sort_keys=True) + "\n"
    )
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}")


@dsr.command("verify-certificate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def verify_certificate(path: Path) -> None:
    """Check an erasure certificate's signature with its region's audit key."""
    try:
        document = certificates.load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        click.echo("INVALID: the file is not a JSON certificate", err=True)
        sys.exit(1)
    except certificates.CertificateInvalid as exc:
        click.echo(f"INVALID: {exc.detail}", err=True)
        sys.exit(1)
    region = document.get("certificate", {}).get("region") if isinstance(document, dict) else None
    settings = cli_settings()
    with open_state(settings) as state:
        if not isinstance(region, str) or region not in state.regions:
            click.echo("INVALID: the certificate names no configured region", err=True)
            sys.exit(1)
        try:
            body = certificates.verify(document, state.audit.keys.verifiers(region))
        except certificates.CertificateInvalid as exc:
            click.echo(f"INVALID: {exc.detail}", err=True)
            sys.exit(1)
    click.echo(
        f"OK: certificate of {body['request_id']} ({body['region']}), completed "
        f"{body['completed_at']}, signed by the {region} audit key"
    )


@dsr.command("hold")
@_AS
@click.argument("target_id")
@click.option("--reason", required=True)
@click.option("--expires-at", default=None, help="RFC 3339 time the hold ends by itself.")
def hold(acting_as: str, target_id: str, reason: str, expires_at: str | None) -> None:
    """Put a legal hold on a data subject (all their records) or on one record."""
    body: dict[str, Any] = {"target_id": target_id, "reason": reason}
    if expires_at:
        body["expires_at"] = expires_at
    with _acting(acting_as) as (state, caller):
        _show(state.legal_holds.create(caller, body))


@dsr.command("release-hold")
@_AS
@click.argument("hold_id")
def release_hold(acting_as: str, hold_id: str) -> None:
    with _acting(acting_as) as (state, caller):
        _show(state.legal_holds.release(caller, hold_id))


@click.command()
@click.option("--once", is_flag=True, help="Run what is waiting, then exit.")
def worker(once: bool) -> None:
    """Run background jobs: data subjects' requests and automation (rules, timers,
    scoring, webhook deliveries). Any number of workers may run side by side."""
    settings = cli_settings()
    with open_state(settings) as state:
        runner = state.jobs
        if once:
            counts = runner.run_once()
            others = ", ".join(f"{name} {n}" for name, n in counts.items() if name != "dsr")
            click.echo(f"automation jobs run: {others}")
            # Last, alone on its line: what scripts (and the crash tests) read.
            click.echo(f"ran {counts['dsr']} request(s)")
            return
        click.echo(f"worker {state.dsr_jobs.worker_id} running; Ctrl-C to stop")
        try:
            while True:
                runner.run_once()
                time.sleep(settings.dsr.poll_seconds)
        except KeyboardInterrupt:
            click.echo("stopped")
