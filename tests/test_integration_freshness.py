"""Fresh views by default: with the default ``lateness`` and a Prometheus sender at its default
``queue_config`` (the README's snippet: 5 s batch deadline), every window of a view reaches the
downstream within ``interval + 10 s`` of its end.

The chain is real: the load generator's fleet as a scrape target → a Prometheus with the
README's ``remote_write`` snippet → enrichproxy (the shipped configuration, 5 s windows, the
default lateness) → a Prometheus receiver. The downstream is polled every 200 ms for every
window end it holds over the last minute (not just the newest: a sender that happens to batch
two windows' input together lets two windows close in one flush); the lag of a window is when
it was first seen there minus its end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from realparts import (
    MongoServer,
    PrometheusProcess,
    ProxyProcess,
    free_port,
    prometheus_config,
    scrape_config,
    stop_all,
)
from test_integration_restart import EXAMPLE_CONFIG, PODS, FleetExporter, readme_remote_write

from enrichproxy.config.schema import AggregationConfig

pytestmark = pytest.mark.integration

INTERVAL_S = 5
SCRAPE_INTERVAL = "2s"
"""Shorter than the windows, as scrape intervals usually are."""
RUN_S = 45.0
POLL_S = 0.2
BOUND_S = INTERVAL_S + 10
RECENT_WINDOWS = 'order_create_failed_total{view="business"}[1m]'


def config(mongo_uri: str, database: str, downstream: str) -> dict[str, Any]:
    import yaml

    document: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    document["metadata"].update({"mongodb_uri": mongo_uri, "database": database})
    assert "lateness" not in document["aggregation"], "the shipped file uses the default"
    document["aggregation"]["interval"] = f"{INTERVAL_S}s"
    [destination] = document["remote_write"]
    destination["url"] = downstream
    return document


@pytest.mark.timeout(240)
def test_every_window_reaches_the_downstream_within_interval_plus_10s(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    prometheus_receiver: PrometheusProcess,
    prometheus_bin: str,
) -> None:
    from enrichproxy.cli import main

    assert AggregationConfig().lateness_ms <= 10_000
    seeded = ["loadgen", "--seed-metadata", mongo.uri, "--database", mongo_db_name]
    assert main([*seeded, "--pods", str(PODS)]) == 0
    exporter = FleetExporter(tmp_path / "exporter")
    proxy = ProxyProcess(
        tmp_path / "proxy", config(mongo.uri, mongo_db_name, prometheus_receiver.write_url)
    )
    source: PrometheusProcess | None = None
    exporter.start()
    try:
        proxy.start()
        remote_write = readme_remote_write()
        remote_write["url"] = proxy.write_url
        assert remote_write["queue_config"]["batch_send_deadline"] == "5s"  # Prometheus' default
        source_port = free_port()
        source = PrometheusProcess(
            tmp_path / "source",
            prometheus_config(
                scrape_configs=[
                    scrape_config("kubernetes-pods", [exporter.target], SCRAPE_INTERVAL)
                ],
                remote_write=[remote_write],
            ),
            port=source_port,
            binary=prometheus_bin,
            name="source",
        )
        source.start()
        downstream = prometheus_receiver
        downstream.wait_for('order_create_failed_total{view="business"}', timeout=60)
        first_seen: dict[float, float] = {}
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            seen_at = time.time()
            for series in downstream.query(RECENT_WINDOWS):
                for window_end, _ in series["values"]:
                    first_seen.setdefault(float(window_end), seen_at)
            time.sleep(POLL_S)
        assert downstream.rejection_lines() == []
    finally:
        stop_all([p for p in (source, proxy, exporter) if p is not None])
    lags = {end: seen - end for end, seen in sorted(first_seen.items())}
    # Windows already there at the first poll may have been emitted before polling started.
    first_poll = min(first_seen.values(), default=0.0)
    measured = [seen - end for end, seen in sorted(first_seen.items()) if seen > first_poll]
    print(f"lag per window (s): {', '.join(f'{lag:.1f}' for lag in measured)}")
    assert len(measured) >= RUN_S / INTERVAL_S - 2, lags
    steps = [b - a for a, b in zip(sorted(lags), sorted(lags)[1:], strict=False)]
    assert all(step == INTERVAL_S for step in steps), f"a window was skipped: {sorted(lags)}"
    assert max(measured) <= BOUND_S, lags
