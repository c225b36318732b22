"""Data subjects' requests: access, export, erasure and rectification as resumable jobs."""
