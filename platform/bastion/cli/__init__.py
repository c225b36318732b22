"""The `bastion` command. Each command group lives in its own module and is added here."""

from bastion.cli.audit import audit
from bastion.cli.dsr import dsr, worker
from bastion.cli.keys import keys
from bastion.cli.main import main
from bastion.cli.policy import policy
from bastion.cli.rekey import rotate_dek

main.add_command(audit)
main.add_command(dsr)
main.add_command(worker)
main.add_command(keys)
keys.add_command(rotate_dek)
main.add_command(policy)

__all__ = ["main"]
