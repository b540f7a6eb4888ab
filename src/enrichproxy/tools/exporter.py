"""``enrichproxy loadgen --exporter-port``: the simulated fleet as a scrape target.

The compose stack's demo-app: instead of pushing remote write, it advances the fleet every
``--scrape-interval`` and serves the latest values on ``/metrics``, typed (counter, gauge,
histogram) so the scraping Prometheus sends their metadata on to enrichproxy, as a real service
would. Pods that churn simply disappear from the exposition; Prometheus writes their stale
markers itself.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from enrichproxy.model import METRIC_NAME_LABEL, is_stale_marker
from enrichproxy.tools.loadgen import Fleet, Sample

# Family name, type and help of every series the fleet produces, keyed by sample-name suffix.
_FAMILIES = {
    "order_create_failed_total": ("order_create_failed", "counter", "Failed order creations."),
    "checkout_inflight_requests": (
        "checkout_inflight_requests",
        "gauge",
        "Requests in flight.",
    ),
    "http_request_duration_seconds_bucket": (
        "http_request_duration_seconds",
        "histogram",
        "Request duration.",
    ),
    "http_request_duration_seconds_count": (
        "http_request_duration_seconds",
        "histogram",
        "Request duration.",
    ),
    "http_request_duration_seconds_sum": (
        "http_request_duration_seconds",
        "histogram",
        "Request duration.",
    ),
}


def families(samples: list[Sample]) -> list[Metric]:
    """The exposition of one scrape: live samples grouped into typed metric families."""
    by_family: dict[str, Metric] = {}
    for sample in samples:
        if is_stale_marker(sample.value):
            continue
        labels = dict(sample.labels)
        name = labels.pop(METRIC_NAME_LABEL)
        family_name, kind, help_text = _FAMILIES.get(name, (name, "untyped", name))
        family = by_family.get(family_name)
        if family is None:
            family = by_family[family_name] = Metric(family_name, help_text, kind)
        # The scrape target adds instance and job itself.
        labels.pop("instance", None)
        labels.pop("job", None)
        family.add_sample(name, labels, sample.value)
    return list(by_family.values())


class FleetCollector(Collector):
    def __init__(self) -> None:
        self.latest: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.latest)


async def serve(fleet: Fleet, host: str, port: int, interval_s: float) -> int:
    """Advance ``fleet`` every ``interval_s`` and serve it until cancelled."""
    collector = FleetCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    collector.latest = families(fleet.scrape(int(time.time() * 1000)).samples)
    server, thread = start_http_server(port, addr=host, registry=registry)
    print(
        f"loadgen: serving {fleet.series_per_scrape:,} series of {fleet.pod_count:,} pods"
        f" on http://{host}:{port}/metrics",
        file=sys.stderr,
    )
    try:
        while True:
            await asyncio.sleep(interval_s)
            collector.latest = families(fleet.scrape(int(time.time() * 1000)).samples)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
