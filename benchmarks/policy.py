"""`python -m benchmarks.policy`: the policy layer's cost, against Casbin's own `enforce`.

For policies of 1,000 and 10,000 lines (the shipped policy plus generated roles
with entity rules, field rules, denies and conditions), the decision a GET needs —
the row scope of `read` on the entity and the read mask of its fields — is made:

- by the compiled index, as requests make it (memoized per role set);
- by the index for a role set it has not seen (the first request after a reload);
- by Casbin, one `enforce` for the entity and one per field, as a naive
  implementation would (the baseline).

and the policy's share of a GET of a contact through the record service (SQLite,
in process, so the HTTP stack does not dilute it). Ratios are against the baseline
measured in the same run; never a timed assertion anywhere.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bastion.crm.access import Access
from bastion.crm.catalog import ENTITIES
from bastion.logs import configure_logging
from bastion.policy.conditions import RecordFacts
from bastion.policy.engine import Policy, PolicySource, build_policy
from bastion.principals.caller import Caller
from benchmarks.environment import POLICIES, REGIONS

ENTITY_NAMES = tuple(ENTITIES)
ACTIONS = ("read", "list", "create", "update", "delete")
SCOPES = ("all", "region", "team", "own")


def generated_policy(lines: int, seed: int = 7) -> PolicySource:
    """The shipped policy plus generated roles until the file has `lines` rules."""
    rng = random.Random(seed)
    shipped = (POLICIES / "policy.csv").read_text(encoding="utf-8")
    rules = [line for line in shipped.splitlines() if line and not line.startswith("#")]
    out = [shipped]
    count, role = len(rules), 0
    while count < lines:
        name = f"gen_role_{role}"
        role += 1
        for _ in range(20):
            entity = rng.choice(ENTITY_NAMES)
            spec = ENTITIES[entity]
            if rng.random() < 0.5:
                action = rng.choice(ACTIONS)
                effect = "deny" if rng.random() < 0.1 else "allow"
                out.append(
                    f"p, {name}, {rng.choice(['*', *REGIONS])}, {entity}, {action}, "
                    f"{rng.choice(SCOPES)}, {effect}"
                )
            else:
                field = rng.choice(spec.fields).name
                pattern = rng.choice([f"{entity}.{field}", f"{entity}.*", "class:sensitive"])
                effect = "deny" if rng.random() < 0.15 else "allow"
                condition = ""
                if entity == "cases" and pattern.startswith("cases") and rng.random() < 0.3:
                    condition = "status not in closed|resolved"
                out.append(
                    f"p2, {name}, *, {pattern}, {rng.choice(['read', 'write'])}, "
                    f"{condition}, {effect}"
                )
            count += 1
        if role > 1 and rng.random() < 0.3:
            out.append(f"g, {name}, gen_role_{rng.randrange(role - 1)}")
            count += 1
    model = (POLICIES / "model.conf").read_text(encoding="utf-8")
    return PolicySource(model, "\n".join(out) + "\n", f"generated-{lines}")


def per_call(function: Callable[[], object], *, seconds: float, minimum: int = 5) -> float:
    """Median seconds per call over several timed batches."""
    batch, samples = 1, []
    deadline = time.perf_counter() + seconds
    while len(samples) < minimum or time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(batch):
            function()
        elapsed = time.perf_counter() - started
        samples.append(elapsed / batch)
        if elapsed < 0.01:
            batch *= 2
    return statistics.median(samples)


def decision_benchmarks(policy: Policy, seconds: float) -> dict[str, float]:
    roles = frozenset({"sales_rep", "support_agent"})
    facts = RecordFacts("contacts", {}, frozenset({"own"}))

    def indexed() -> object:
        scope = policy.scope(roles, "eu", "contacts", "read")
        return scope.covers(facts.scopes), policy.mask(roles, "eu", "contacts", "read").permitted(
            facts
        )

    counter = iter(range(10**9))

    def cold() -> object:
        # A role set the memo has never seen: forces the union of the roles' tables.
        unseen = frozenset({"sales_rep", "support_agent", f"no_such_role_{next(counter)}"})
        return policy.scope(unseen, "eu", "contacts", "read"), policy.mask(
            unseen, "eu", "contacts", "read"
        )

    fields = [f.name for f in ENTITIES["contacts"].fields]

    def casbin() -> object:
        allowed = policy.enforce(sorted(roles), "eu", "contacts", "read", facts)
        return allowed, [
            policy.enforce_field(sorted(roles), "eu", "contacts", f, "read", facts) for f in fields
        ]

    return {
        "index": per_call(indexed, seconds=seconds),
        "index_cold": per_call(cold, seconds=seconds),
        "casbin": per_call(casbin, seconds=seconds, minimum=3),
    }


def get_share(seconds: float) -> dict[str, float]:
    """The policy's share of a GET through the record service on SQLite."""
    from bastion.config import load_settings
    from bastion.migrate import migrate_all
    from bastion.state import build_state

    with tempfile.TemporaryDirectory(prefix="bastion-bench-policy-") as home:
        (Path(home) / "empty.toml").write_text("")
        settings = load_settings(
            {
                "BASTION_HOME": home,
                "BASTION_CONFIG": str(Path(home) / "empty.toml"),
                "BASTION_POLICIES": str(POLICIES),
                "BASTION_LOG_LEVEL": "error",
            }
        )
        migrate_all(settings)
        state = build_state(settings)
        try:
            issued = state.tokens.issue(principal_name="bench", roles=["sales_rep"], teams=["t1"])
            principal = issued.principal
            caller = Caller(principal)
            record = state.records.create(
                caller, "contacts", {"last_name": "Bench", "email": "b@example.com"}
            ).record

            def get() -> object:
                return state.records.get(caller, "contacts", record["id"])

            def policy_work() -> object:
                access = Access(state.policy, principal)
                spec = ENTITIES["contacts"]
                scope = access.require("eu", spec, "read")
                return access.where(spec, scope), access.readable("eu", spec, record)

            return {
                "get": per_call(get, seconds=seconds),
                "policy": per_call(policy_work, seconds=seconds),
            }
        finally:
            state.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    configure_logging("console", "error")  # the dev-KEK warnings are expected here
    print("policy decision for a GET: scope of read + read mask of contacts (~19 fields)")
    header = ("lines", "load ms", "index µs", "cold µs", "casbin µs", "casbin/index")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (7, 8, 9, 8, 11, 13), strict=True)))
    for lines in (1_000, 10_000):
        source = generated_policy(lines)
        started = time.perf_counter()
        policy = build_policy(source, regions=REGIONS)
        load_ms = (time.perf_counter() - started) * 1000
        result = decision_benchmarks(policy, args.seconds)
        print(
            f"{lines:>7} {load_ms:>8.0f} {result['index'] * 1e6:>9.2f} "
            f"{result['index_cold'] * 1e6:>8.1f} {result['casbin'] * 1e6:>11.0f} "
            f"{result['casbin'] / result['index']:>12.0f}x"
        )
    share = get_share(args.seconds)
    print(
        f"GET of a contact (service, SQLite): {share['get'] * 1e6:.0f} µs; "
        f"policy work in it: {share['policy'] * 1e6:.1f} µs "
        f"= {share['policy'] / share['get']:.1%} of the GET"
    )


if __name__ == "__main__":
    main()
