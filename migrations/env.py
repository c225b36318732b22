"""The one Alembic environment for both kinds of database (control and region).

Run migrations through `bastion.migrate` (`bastion migrate`, `bastion db check`,
`bastion db revision`), not the `alembic` command: it passes the open connection
and the database kind in `config.attributes`, and points `version_locations` at
`versions/<kind>/`, so each kind has its own linear history.
"""

from alembic import context

from bastion import migrate

config = context.config

if context.is_offline_mode():
    raise RuntimeError("Bastion migrations run online only, through bastion.migrate")

connection = config.attributes.get("connection")
kind = config.attributes.get("kind")
if connection is None or kind not in migrate.KINDS:
    raise RuntimeError(
        "run Bastion migrations through bastion.migrate (bastion migrate / bastion db ...), "
        "which supplies the connection and the database kind"
    )

context.configure(connection=connection, **migrate.context_options(kind))

with context.begin_transaction():
    context.run_migrations()
