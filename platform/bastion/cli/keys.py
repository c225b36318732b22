"""`bastion keys`: KEK status, rotation and retirement, per region.

DEK rotation (`rotate-dek`) re-encrypts records and lives with the CRM commands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import click

from bastion.cli.common import cli_settings, open_state
from bastion.config import Settings
from bastion.crypto.errors import KeyConfigurationError
from bastion.crypto.rotation import (
    KekRotation,
    KekStatus,
    RotationProgress,
    kek_status,
    retire_kek,
)
from bastion.state import State


@contextmanager
def _state(settings: Settings) -> Iterator[State]:
    """`open_state`, with an unusable key configuration reported as a usage error."""
    try:
        with open_state(settings) as state:
            yield state
    except KeyConfigurationError as exc:
        raise click.ClickException(exc.detail) from None


@click.group()
def keys() -> None:
    """Key-encryption keys (KEKs): status, rotation, retirement."""


@keys.command("status")
@click.option("--region", default=None, help="Only this region (default: all).")
def status(region: str | None) -> None:
    """Per region: KEK versions, how many keys each wraps, the last rotation."""
    settings = cli_settings()
    with _state(settings) as state:
        names = [region] if region else list(state.regions.names)
        for name in names:
            state.regions.get(name)  # an unknown region is an error, not an empty report
            _print_status(kek_status(state.keys, name))


def _print_status(report: KekStatus) -> None:
    current = f"v{report.current_version}" if report.current_version else "none yet"
    click.echo(f"region {report.region} (provider {report.provider}): current KEK {current}")
    if report.versions:
        click.echo(f"  {'VERSION':<8} {'STATE':<12} {'SUBJECT KEYS':>12} {'REGION KEYS':>11}")
    for row in report.versions:
        if not row.exists:
            state = "MISSING"
        elif row.current:
            state = "current"
        elif row.subject_keys or row.region_keys:
            state = "in use"
        else:
            state = "retirable"
        click.echo(f"  v{row.version:<7} {state:<12} {row.subject_keys:>12} {row.region_keys:>11}")
    rotation = report.last_rotation
    if rotation is not None:
        source = f"v{rotation.from_version}" if rotation.from_version else "-"
        when = (rotation.completed_at or rotation.updated_at).isoformat(timespec="seconds")
        click.echo(
            f"  last rotation: {source} -> v{rotation.to_version} {rotation.state} {when} "
            f"({rotation.rewrapped} of {rotation.total} keys re-wrapped)"
        )


class _Progress:
    """A click progress bar opened on the first report (when the total is known)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._shown = 0

    def __call__(self, report: RotationProgress) -> None:
        if self._bar is None:
            self._bar = click.progressbar(
                length=max(report.total, 1),
                label=f"re-wrapping {report.region} keys under KEK v{report.to_version}",
                show_pos=True,
            )
            self._bar.__enter__()
        if report.total > self._bar.length:
            self._bar.length = report.total  # a further pass found more keys
        self._bar.update(report.done - self._shown)
        self._shown = report.done

    def close(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)


@keys.command("rotate-kek")
@click.option("--region", required=True, help="The region whose KEK to rotate.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--resume", "resume_only", is_flag=True, help="Only resume a running rotation.")
def rotate_kek(region: str, batch_size: int, resume_only: bool) -> None:
    """Create a new KEK version and re-wrap every key under it (resumes a running one)."""
    settings = cli_settings()
    with _state(settings) as state:
        rotation = KekRotation(state.keys, batch_size=batch_size)
        progress = _Progress()
        try:
            if resume_only:
                result = rotation.resume(region, progress=progress)
            else:
                result = rotation.run(region, progress=progress)
        finally:
            progress.close()
    if result is None:
        click.echo(f"region {region}: no KEK rotation is running; nothing to resume")
        return
    click.echo(
        f"region {region}: KEK rotation to v{result.to_version} {result.state}; "
        f"{result.rewrapped} keys re-wrapped"
    )
    if result.from_version:
        click.echo(
            f"once backups older than today have expired: "
            f"bastion keys retire-kek --region {region} --version {result.from_version}"
        )


@keys.command("retire-kek")
@click.option("--region", required=True)
@click.option("--version", "version", required=True, type=click.IntRange(min=1))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def retire(region: str, version: int, yes: bool) -> None:
    """Destroy a KEK version that no key uses any more. Irreversible."""
    if not yes:
        click.confirm(
            f"Destroy KEK v{version} of region {region}? Backups that hold keys wrapped "
            "under it become unreadable for good",
            abort=True,
        )
    settings = cli_settings()
    with _state(settings) as state:
        retire_kek(state.keys, region, version)
    click.echo(f"region {region}: KEK v{version} destroyed")
