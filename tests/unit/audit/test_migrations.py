"""Both audit migrations build the same tables, guards and grants, from one module."""

from __future__ import annotations

import ast

from sqlalchemy import text

from bastion.migrate import migrations_dir
from bastion.state import State

AUDIT_MIGRATIONS = {
    "region": "2026_11_25_1031-d3a1f0c0e502_create_audit_tables.py",
    "control": "2026_11_25_1031-d3a1f0c0e503_create_audit_tables.py",
}


def _calls(kind: str) -> set[str]:
    tree = ast.parse((migrations_dir() / "versions" / kind / AUDIT_MIGRATIONS[kind]).read_text())
    return {
        ast.unparse(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }


def test_both_audit_migrations_run_the_shared_ddl_and_nothing_else() -> None:
    for kind in AUDIT_MIGRATIONS:
        assert _calls(kind) == {"ddl.upgrade", "ddl.downgrade"}, kind


def test_region_and_control_databases_hold_the_same_audit_guards(state: State) -> None:
    def guards(chain: str) -> list[tuple[str, str]]:
        with state.audit.database(chain).transaction() as conn:
            if conn.dialect.name == "postgresql":
                query = (
                    "SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
                    "JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE c.relname LIKE 'audit%' AND NOT t.tgisinternal ORDER BY 1"
                )
            else:
                query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY 1"
            return [(str(name), str(sql)) for name, sql in conn.execute(text(query))]

    region = guards("eu")
    assert len(region) == 13  # SQLite: queue + 12 guards; PostgreSQL: queue + 6 + 6
    assert region == guards("control")
