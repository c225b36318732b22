"""Bulk data in and out of the pipeline: CSV import and CSV/JSONL export.

Both go through the same steps as a single record (`crm.pipeline`): an import is a
run of creates in batches, each row checked as a create would be; an export is a
list, through the caller's row scope and field masks. Both are audited.
"""
