"""Field-level encryption: envelope format, key providers, per-subject keys, blind indexes."""
