"""The tamper-evident audit log: events, per-database hash chain, signed checkpoints, verify."""
