"""The `bastion` group and its core commands: serve, migrate, tokens, demo, db."""

from __future__ import annotations

import sys
from datetime import timedelta

import click

from bastion import migrate as migrations
from bastion.cli.common import cli_actor, cli_settings, is_embedded, log, open_state


@click.group()
@click.version_option(package_name="bastion")
def main() -> None:
    """Bastion: compliance-first CRM data platform."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
def serve(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API (migrating the embedded default's databases first)."""
    import uvicorn

    from bastion.app import create_app

    settings = cli_settings()
    if is_embedded(settings):
        migrations.migrate_all(settings)
    log.info("serving", url=f"http://{host}:{port}", regions=list(settings.regions))
    if workers > 1:
        uvicorn.run(
            "bastion.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            access_log=False,
        )
    else:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)


@main.command()
def migrate() -> None:
    """Bring the control database and every region database to the latest schema."""
    settings = cli_settings()
    for name, revision in migrations.migrate_all(settings):
        click.echo(f"{name}: at {revision}")


@main.group()
def tokens() -> None:
    """Issue, list and revoke API tokens."""


@tokens.command("create")
@click.option("--principal", "principal_name", required=True, help="Principal name.")
@click.option("--role", "roles", multiple=True, help="Role (repeatable).")
@click.option("--region", "regions", multiple=True, help="Permitted region (default: all).")
@click.option("--team", "teams", multiple=True, help="Team (repeatable).")
@click.option("--description", default="", help="What the token is for.")
@click.option("--expires-in-days", type=click.IntRange(1, 3650), default=None)
def tokens_create(
    principal_name: str,
    roles: tuple[str, ...],
    regions: tuple[str, ...],
    teams: tuple[str, ...],
    description: str,
    expires_in_days: int | None,
) -> None:
    """Create a token; the token is printed once, alone on the last line."""
    settings = cli_settings()
    with open_state(settings) as state:
        issued = state.tokens.issue(
            principal_name=principal_name,
            roles=roles,
            regions=regions,
            teams=teams,
            description=description,
            expires_in=timedelta(days=expires_in_days) if expires_in_days else None,
            actor=cli_actor(),
        )
    principal = issued.principal
    click.echo(
        f"token {issued.token_id} for {principal.name} ({principal.id}); "
        f"roles: {', '.join(sorted(principal.roles))}; regions: {', '.join(principal.regions)}"
    )
    click.echo("store it now; it is shown only once:")
    click.echo(issued.secret)


@tokens.command("list")
def tokens_list() -> None:
    """List tokens (never their secrets)."""
    settings = cli_settings()
    with open_state(settings) as state:
        infos = state.tokens.list()
    click.echo(f"{'TOKEN':<17} {'PRINCIPAL':<24} {'ROLES':<28} {'REGIONS':<10} STATUS")
    for info in infos:
        status = "revoked" if info.revoked_at else "active"
        if info.expires_at is not None and status == "active":
            status = f"expires {info.expires_at:%Y-%m-%d}"
        click.echo(
            f"{info.token_id:<17} {info.principal_name:<24} {','.join(info.roles):<28} "
            f"{','.join(info.regions):<10} {status}"
        )


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by its id (the 16 characters after `bst_`)."""
    settings = cli_settings()
    with open_state(settings) as state:
        state.tokens.revoke(token_id, actor=cli_actor())
    click.echo(f"revoked {token_id}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def demo(host: str, port: int) -> None:
    """Seed demo data in every region (once) and print an admin token and a curl line."""
    from bastion.demo import seed

    settings = cli_settings()
    with open_state(settings) as state:
        issued = state.tokens.issue(
            principal_name="demo-admin",
            roles=["admin"],
            description="make run demo token",
            actor=cli_actor(),
        )
        counts = seed(state, issued.principal)
    for region, created in counts.items():
        summary = ", ".join(f"{n} {entity}" for entity, n in created.items()) or "already seeded"
        click.echo(f"{region}: {summary}")
    click.echo("")
    click.echo("Try it once the server is up:")
    click.echo(
        f"  curl -s -H 'Authorization: Bearer {issued.secret}' "
        f"http://{host}:{port}/v1/contacts?limit=5"
    )
    click.echo(f"  docs: http://{host}:{port}/docs")
    click.echo(f"  console: http://{host}:{port}/console/ (log in with the token)")
    click.echo("Admin token (shown once):")
    click.echo(issued.secret)


@main.group()
def db() -> None:
    """Schema tooling: drift check and new revisions."""


@db.command("check")
def db_check() -> None:
    """Fail if the table definitions and the migrations disagree (alembic check)."""
    drift = migrations.check_drift_sqlite()
    failed = False
    for kind, differences in drift.items():
        if differences:
            failed = True
            click.echo(f"{kind}: the migrations do not match the tables:", err=True)
            for difference in differences:
                click.echo(f"  {difference}", err=True)
        else:
            click.echo(f"{kind}: migrations match the tables")
    if failed:
        click.echo("write a migration: bastion db revision --kind KIND -m MESSAGE", err=True)
        sys.exit(1)


@db.command("revision")
@click.option("--kind", type=click.Choice(["control", "region"]), required=True)
@click.option("-m", "--message", required=True)
def db_revision(kind: str, message: str) -> None:
    """Autogenerate a migration for the difference between tables and migrations."""
    path = migrations.new_revision(kind, message)
    click.echo(f"wrote {path}; review it before committing")
