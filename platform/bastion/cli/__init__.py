"""The `bastion` command. Each command group lives in its own module and is added here."""

from bastion.cli.audit import audit
from bastion.cli.dedup import dedup
from bastion.cli.dsr import dsr, worker
from bastion.cli.export import export
from bastion.cli.imports import import_csv
from bastion.cli.keys import keys
from bastion.cli.main import main
from bastion.cli.merges import merges
from bastion.cli.policy import policy
from bastion.cli.rekey import rotate_dek
from bastion.cli.workflows import workflows

main.add_command(audit)
main.add_command(dedup)
main.add_command(dsr)
main.add_command(worker)
main.add_command(export)
main.add_command(import_csv)
main.add_command(keys)
main.add_command(merges)
keys.add_command(rotate_dek)
main.add_command(policy)
main.add_command(workflows)

__all__ = ["main"]
