"""Ingest: the one path by which events enter closedloop, and the HTTP API around it."""
