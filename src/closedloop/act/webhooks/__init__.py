"""Signed webhooks: endpoints, the SSRF guard, and the durable delivery outbox."""
