"""Prometheus metrics of the ingest path, on a registry per app.

The counters balance: ``received = stored + duplicate + rejected + dropped``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngestMetrics"]


class IngestMetrics:
    """Counters, the request latency histogram and the write-queue gauge."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._received = Counter(
            "closedloop_events_received", "Events received in decodable batches.", registry=r
        )
        self._stored = Counter("closedloop_events_stored", "Events committed.", registry=r)
        self._duplicate = Counter(
            "closedloop_events_duplicate", "Events whose id was seen before.", registry=r
        )
        self._rejected = Counter(
            "closedloop_events_rejected",
            "Events refused by validation, by field.",
            ["reason"],
            registry=r,
        )
        self._dropped = Counter(
            "closedloop_events_dropped",
            "Valid events not stored (the client may retry), by reason.",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "closedloop_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "closedloop_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.queue_depth = Gauge(
            "closedloop_write_queue_depth", "Events waiting for the group commit.", registry=r
        )

    def received(self, n: int) -> None:
        """Count ``n`` events received."""
        self._received.inc(n)

    def stored(self, n: int) -> None:
        """Count ``n`` events stored."""
        self._stored.inc(n)

    def duplicate(self, n: int) -> None:
        """Count ``n`` duplicates."""
        self._duplicate.inc(n)

    def rejected(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events rejected for ``reason``."""
        self._rejected.labels(reason=reason).inc(n)

    def dropped(self, reason: str, n: int) -> None:
        """Count ``n`` valid events that were not stored, for ``reason``."""
        if n:
            self._dropped.labels(reason=reason).inc(n)

    def totals(self) -> dict[str, float]:
        """Current totals of the balance, summed over labels."""
        out = {"received": 0.0, "stored": 0.0, "duplicate": 0.0, "rejected": 0.0, "dropped": 0.0}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                name = sample.name.removeprefix("closedloop_events_").removesuffix("_total")
                if name in out:
                    out[name] += sample.value
        return out
