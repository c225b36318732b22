"""Benchmarks: Bastion against a baseline app on the same schema and databases.

`python -m benchmarks.run` (or `make bench`) runs them; see benchmarks/README.md.
"""
