"""`bastion policy`: test, lint, explain, diff, reload, status and history.

test, lint, explain and diff read policy files only (no database); reload, status
and history work on the control database, where versions and changes are recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bastion.cli.common import cli_actor, cli_settings, open_state
from bastion.policy.cases import CaseError, load_checks, run_checks
from bastion.policy.conditions import ConditionError, record_facts
from bastion.policy.diff import diff, source_at
from bastion.policy.engine import Policy, PolicySource, build_policy
from bastion.policy.explain import ExplainError, explain
from bastion.policy.lint import errors, lint
from bastion.policy.rules import PolicyError


@click.group()
def policy() -> None:
    """Policy-as-code tools: test, lint, explain, diff, reload."""


def _load(directory: Path | None) -> tuple[Policy, Path]:
    settings = cli_settings()
    where = directory or settings.policies_dir
    try:
        loaded = build_policy(PolicySource.from_directory(where), regions=settings.region_names())
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    return loaded, where


_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Policy directory (default: BASTION_POLICIES, ./policies).",
)


@policy.command("test")
@_DIR
@click.option("--cases", "cases_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="List every check, not only failures.")
def test(directory: Path | None, cases_dir: Path | None, verbose: bool) -> None:
    """Run the declarative cases in <policies>/tests/*.yaml against Casbin and the index."""
    loaded, where = _load(directory)
    try:
        checks = load_checks(cases_dir or where / "tests")
    except CaseError as exc:
        raise click.ClickException(str(exc)) from None
    outcomes = run_checks(loaded, checks)
    failed = [o for o in outcomes if not o.passed]
    for outcome in outcomes:
        if verbose or not outcome.passed:
            status = "PASSED" if outcome.passed else "FAILED"
            click.echo(f"{status} {outcome.describe()}")
    cases = len({o.check.source for o in outcomes})
    summary = f"{len(outcomes)} checks in {cases} cases: {len(outcomes) - len(failed)} passed"
    summary += f", {len(failed)} failed" if failed else ""
    click.echo(f"== {summary} (policy {loaded.version}) ==")
    if failed:
        sys.exit(1)


@policy.command("lint")
@_DIR
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
def lint_command(directory: Path | None, strict: bool, as_json: bool) -> None:
    """Report unknown names, unreachable and shadowed rules, risky grants."""
    loaded, _ = _load(directory)
    findings = lint(loaded)
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for finding in findings:
            click.echo(str(finding))
        click.echo(
            f"{len(errors(findings))} error(s), {len(findings) - len(errors(findings))} warning(s)"
        )
    if errors(findings) or (strict and findings):
        sys.exit(1)


@policy.command("explain")
@_DIR
@click.option("--role", "roles", multiple=True, required=True, help="Role (repeatable).")
@click.option("--region", required=True)
@click.option("--owner", type=click.Choice(["self", "other"]), default="other", show_default=True)
@click.option("--team", type=click.Choice(["mine", "other"]), default="other", show_default=True)
@click.option("--set", "values", multiple=True, metavar="FIELD=VALUE", help="Record field value.")
@click.option("--json", "as_json", is_flag=True)
@click.argument("target")
@click.argument("action")
def explain_command(
    directory: Path | None,
    roles: tuple[str, ...],
    region: str,
    owner: str,
    team: str,
    values: tuple[str, ...],
    as_json: bool,
    target: str,
    action: str,
) -> None:
    """Explain a decision: TARGET is an entity (contacts) or a field (contacts.email)."""
    loaded, _ = _load(directory)
    attributes = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not FIELD=VALUE", param_hint="--set")
        attributes[name] = value
    try:
        facts = record_facts(target.partition(".")[0], attributes, owner=owner, team=team)
        explanation = explain(loaded, roles, region, target, action, facts)
    except (ExplainError, ConditionError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(explanation.as_dict(), indent=2))
        return
    decision = "ALLOW" if explanation.allowed else "DENY"
    click.echo(f"{decision}: {explanation.reason}")
    click.echo(
        f"  policy {explanation.policy_version}; row scope of the action: {explanation.scope}"
    )
    for title, rules in (
        ("field rules", explanation.rules),
        ("record rules", explanation.entity_rules),
    ):
        if rules:
            click.echo(f"  {title}:")
            for rule in rules:
                click.echo(f"    {rule.line}  {rule.text}")
    if not explanation.consistent:
        click.echo("  WARNING: Casbin and the compiled index disagree; report this", err=True)
        sys.exit(2)


@policy.command("diff")
@_DIR
@click.argument("before")
@click.argument("after")
def diff_command(directory: Path | None, before: str, after: str) -> None:
    """Decisions that change from BEFORE to AFTER (directories or git revisions)."""
    settings = cli_settings()
    where = directory or settings.policies_dir
    try:
        old = build_policy(source_at(before, where), regions=settings.region_names())
        new = build_policy(source_at(after, where), regions=settings.region_names())
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    changes = diff(old, new)
    for change in changes:
        click.echo(str(change))
    click.echo(f"{len(changes)} decision(s) change ({old.version} -> {new.version})")


@policy.command("reload")
@click.option("--reason", default="reloaded from the command line", show_default=True)
def reload(reason: str) -> None:
    """Load the policy files and activate them in every running worker."""
    settings = cli_settings()
    with open_state(settings) as state:
        old = state.policy.version
        try:
            loaded, change, findings = state.reload_policy(actor=cli_actor(), reason=reason)
        except PolicyError as exc:
            raise click.ClickException(f"refused; the active policy keeps running: {exc}") from None
    for finding in findings:
        click.echo(str(finding))
    if change is None:
        click.echo(f"policy {loaded.version} is already active")
    else:
        click.echo(f"activated policy {loaded.version} (was {change.old_version or old})")


@policy.command("status")
def status() -> None:
    """The policy version in the files and the one active in the control database."""
    settings = cli_settings()
    with open_state(settings) as state:
        active = state.policy_store.active_version()
    try:
        files = PolicySource.from_directory(settings.policies_dir).version
    except PolicyError as exc:
        files = f"unreadable: {exc}"
    click.echo(f"files:  {files} ({settings.policies_dir})")
    click.echo(f"active: {active or '(none recorded yet)'}")


@policy.command("history")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--diff", "show_diff", is_flag=True, help="Show each change's text diff.")
def history(limit: int, show_diff: bool) -> None:
    """Who changed the active policy, when, from which version to which."""
    settings = cli_settings()
    with open_state(settings) as state:
        changes = state.policy_store.history(limit)
    for change in changes:
        click.echo(
            f"{change.changed_at:%Y-%m-%d %H:%M:%S} {change.actor:<30} "
            f"{change.old_version or '-':<16} -> {change.new_version}  {change.reason}"
        )
        if show_diff:
            click.echo(change.diff)
