"""Data quality on encrypted data: duplicate detection and merging of people."""
