"""Principals (people and services that call Bastion) and their API tokens.

These live in the control database, which holds no personal data of customers.
"""
