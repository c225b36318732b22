"""`bastion workflows`: test the rules against their cases, check them against the
policy. Both read files only (no database)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bastion.automation.cases import CaseError, policy_findings, run_cases
from bastion.automation.rules import WorkflowError, Workflows, load_workflows
from bastion.automation.scoring import ScoringError, load_scoring
from bastion.cli.common import cli_settings
from bastion.policy.engine import PolicySource, build_policy
from bastion.policy.rules import PolicyError

_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Workflow directory (default: BASTION_AUTOMATION_WORKFLOWS, ./workflows).",
)


@click.group()
def workflows() -> None:
    """Workflow rules as code: test and check them."""


def _load(directory: Path) -> Workflows:
    try:
        return load_workflows(directory)
    except WorkflowError as exc:
        for problem in exc.problems:
            click.echo(f"ERROR {problem}", err=True)
        raise click.ClickException(f"{len(exc.problems)} problem(s) in {directory}") from None


@workflows.command("test")
@_DIR
@click.option("--cases", "cases_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="List every case, not only failures.")
def test(directory: Path | None, cases_dir: Path | None, verbose: bool) -> None:
    """Run the cases in <workflows>/tests/*.yaml: does each rule decide as expected?"""
    settings = cli_settings()
    where = directory or settings.automation.workflows
    rules = _load(where)
    try:
        outcomes = run_cases(
            cases_dir or where / "tests", rules, max_depth=settings.automation.max_chain_depth
        )
    except CaseError as exc:
        raise click.ClickException(str(exc)) from None
    failed = [o for o in outcomes if not o.passed]
    for outcome in outcomes:
        if verbose or not outcome.passed:
            click.echo(f"{'PASSED' if outcome.passed else 'FAILED'} {outcome.describe()}")
    summary = (
        f"{len(outcomes)} cases of {len(rules.rules)} rules: {len(outcomes) - len(failed)} passed"
    )
    summary += f", {len(failed)} failed" if failed else ""
    click.echo(f"== {summary} (workflows {rules.version}) ==")
    if failed:
        sys.exit(1)


@workflows.command("check")
@_DIR
def check(directory: Path | None) -> None:
    """Load the rules and the scoring model, and check that the policy lets the
    `automation` role do what they need in every region."""
    settings = cli_settings()
    rules = _load(directory or settings.automation.workflows)
    try:
        scoring = load_scoring(settings.automation.scoring)
        policy = build_policy(
            PolicySource.from_directory(settings.policies_dir), regions=settings.region_names()
        )
    except (ScoringError, PolicyError) as exc:
        raise click.ClickException(str(exc)) from None
    findings = policy_findings(rules, scoring, policy, settings.region_names())
    for finding in findings:
        click.echo(f"ERROR {finding}")
    model = f"scoring model {scoring.id}" if scoring else "no scoring model"
    click.echo(f"{len(rules.rules)} rule(s), {model}: {len(findings)} problem(s)")
    if findings:
        sys.exit(1)
