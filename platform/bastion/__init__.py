"""Bastion: a compliance-first CRM data platform."""

__version__ = "0.1.0"
