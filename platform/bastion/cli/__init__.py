"""The `bastion` command. Each command group lives in its own module and is added here."""

from bastion.cli.main import main

__all__ = ["main"]
