"""Enrich: joins, derived implicit measures, quality estimate and PII redaction."""
