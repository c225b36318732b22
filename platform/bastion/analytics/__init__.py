"""Pipeline analytics: aggregates over opportunities, in SQL, within the caller's rights."""
