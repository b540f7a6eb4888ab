"""End to end with the real parts: exporter → Prometheus → enrichproxy → Prometheus.

A Prometheus scrapes a prometheus_client exporter every second and remote-writes to enrichproxy
(a real process), which joins each series with documents in secantusdb (a MongoDB wire-protocol
server) and forwards both views to a second Prometheus acting as receiver. Everything is read
back through the receiver's query API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter, Gauge
from pymongo import MongoClient
from realparts import (
    Exporter,
    MongoServer,
    PrometheusFactory,
    PrometheusProcess,
    ProxyProcess,
    prometheus_config,
    remote_write_config,
    sample_value,
    scrape_config,
)

from enrichproxy.wire.codec import compress, encode_labels, encode_write_request

pytestmark = pytest.mark.integration

DOCUMENTS: list[dict[str, Any]] = [
    {"pod": "checkout-a", "service": "checkout", "team": "orders", "tier": "gold"},
    {"pod": "checkout-b", "service": "checkout", "team": "orders", "tier": "gold"},
    {"pod": "payment-a", "service": "payment", "team": "payments", "tier": 1},  # stringified
    {"service": "orphan"},  # no key: skipped, logged, counted
]
RW_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


def proxy_config(mongo_uri: str, database: str, receiver_url: str) -> dict[str, Any]:
    return {
        "log_level": "info",
        "metadata": {
            "mongodb_uri": mongo_uri,
            "database": database,
            "collection": "pod_metadata",
            "refresh_interval": "1s",
        },
        "views": [
            {"name": "operational", "keep": ["service", "endpoint", "error_type"]},
            {
                "name": "business",
                "keep": ["service", "tier"],
                "match": '{__name__=~"order_.*|payment_.*"}',
            },
        ],
        "aggregation": {"interval": "1s", "lateness": "1s"},
        "remote_write": [{"url": receiver_url, "min_backoff": "50ms", "max_backoff": "1s"}],
        "shutdown_timeout": "5s",  # within ProxyProcess.stop's 10 s before SIGKILL
    }


@pytest.fixture
def proxy(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    prometheus_receiver: PrometheusProcess,
) -> Iterator[ProxyProcess]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        client[mongo_db_name]["pod_metadata"].insert_many([dict(d) for d in DOCUMENTS])
    finally:
        client.close()
    process = ProxyProcess(
        tmp_path / "proxy", proxy_config(mongo.uri, mongo_db_name, prometheus_receiver.write_url)
    )
    process.start()
    yield process
    process.stop()


def by_labels(result: list[dict[str, Any]], *names: str) -> dict[tuple[str, ...], float]:
    return {tuple(item["metric"].get(n, "") for n in names): sample_value(item) for item in result}


def test_views_arrive_enriched_and_aggregated(
    proxy: ProxyProcess,
    prometheus_receiver: PrometheusProcess,
    prometheus_factory: PrometheusFactory,
    exporter: Exporter,
) -> None:
    failures = Counter(
        "order_create_failed",
        "Failed order creations",
        ["pod", "endpoint", "error_type"],
        registry=exporter.registry,
    )
    inflight = Gauge(
        "checkout_inflight_requests", "Requests in flight", ["pod"], registry=exporter.registry
    )
    failures.labels("checkout-a", "/orders", "timeout").inc(10)
    failures.labels("checkout-a", "/orders", "db_error").inc(3)
    failures.labels("checkout-b", "/orders", "timeout").inc(7)
    failures.labels("checkout-b", "/cart", "timeout").inc(5)
    failures.labels("payment-a", "/orders", "timeout").inc(20)
    failures.labels("mystery-1", "/orders", "timeout").inc(1)  # no document: kept unenriched
    inflight.labels("checkout-a").set(2)
    inflight.labels("checkout-b").set(3)
    prometheus_factory(
        prometheus_config(
            scrape_configs=[scrape_config("checkout", [exporter.target])],
            remote_write=[remote_write_config(proxy.write_url)],
            external_labels={"cluster": "demo-eu1"},
        )
    )
    receiver = prometheus_receiver

    business = 'order_create_failed_total{view="business"}'
    expected_business = {
        ("checkout", "gold"): 25.0,
        ("payment", "1"): 20.0,
        ("", ""): 1.0,  # mystery-1: no document, forwarded unenriched
    }
    result = receiver.wait_for(
        business, lambda r: by_labels(r, "service", "tier") == expected_business, timeout=30
    )
    for item in result:
        assert set(item["metric"]) <= {"__name__", "service", "tier", "view"}

    operational = receiver.wait_for(
        'order_create_failed_total{view="operational"}',
        lambda r: len(r) == 5,
    )
    assert by_labels(operational, "service", "endpoint", "error_type") == {
        ("checkout", "/orders", "timeout"): 17.0,
        ("checkout", "/orders", "db_error"): 3.0,
        ("checkout", "/cart", "timeout"): 5.0,
        ("payment", "/orders", "timeout"): 20.0,
        ("", "/orders", "timeout"): 1.0,  # mystery-1: no document, forwarded unenriched
    }
    gauge = receiver.wait_for('checkout_inflight_requests{view="operational"}')
    assert by_labels(gauge, "service") == {("checkout",): 5.0}
    assert receiver.query('checkout_inflight_requests{view="business"}') == []
    assert receiver.query('{pod!=""}') == []  # no view carries pod

    # Increases flow through; a counter reset of one pod never makes the sum go down.
    failures.labels("checkout-a", "/orders", "timeout").inc(5)
    receiver.wait_for(
        business, lambda r: by_labels(r, "service", "tier").get(("checkout", "gold")) == 30.0
    )
    failures.remove("checkout-b", "/orders", "timeout")
    failures.labels("checkout-b", "/orders", "timeout").inc(1)  # 7 → 1: a reset
    receiver.wait_for(
        business, lambda r: by_labels(r, "service", "tier").get(("checkout", "gold")) == 31.0
    )
    history = receiver.query_range(
        'order_create_failed_total{view="business",service="checkout"}',
        time.time() - 120,
        time.time(),
        step=0.5,
    )
    values = [float(v) for _, v in history[0]["values"]]
    assert values == sorted(values)
    assert values[-1] == 31.0

    # Metadata-only requests taught enrichproxy the families; lookups were counted.
    assert (proxy.metric("enrichproxy_lookups_total", result="hit") or 0) > 0
    assert (proxy.metric("enrichproxy_lookups_total", result="miss") or 0) > 0
    assert proxy.metric("enrichproxy_metadata_table_documents") == 3
    assert proxy.metric("enrichproxy_metadata_documents_rejected_total", reason="missing_key")
    assert (proxy.metric("enrichproxy_received_metadata_total") or 0) > 0
    assert receiver.rejection_lines() == []


def test_bad_input_is_refused_and_the_server_stays_up(
    proxy: ProxyProcess, prometheus_receiver: PrometheusProcess
) -> None:
    assert proxy.post(b"not snappy at all", RW_HEADERS)[0] == 400
    status, reason = proxy.post(compress(b"\x0a\xff\xff"), RW_HEADERS)
    assert status == 400
    assert "protobuf" in reason
    huge = b"\x80\x80\x80\x80\x08" + b"\x00" * 16  # declares 2 GiB decoded
    assert proxy.post(huge, RW_HEADERS)[0] == 413
    unknown = {
        **RW_HEADERS,
        "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v3.Request",
    }
    assert proxy.post(compress(b""), unknown)[0] == 415
    assert proxy.post(b"", {**RW_HEADERS, "Content-Encoding": "gzip"})[0] == 415
    assert proxy.get("/api/v1/write")[0] == 405
    assert proxy.get("/-/healthy")[0] == 200
    assert proxy.get("/-/ready")[0] == 200

    # And it still does its job.
    labels = (
        ("__name__", "order_create_failed_total"),
        ("endpoint", "/x"),
        ("error_type", "timeout"),
        ("pod", "checkout-a"),
    )
    now = int(time.time() * 1000)
    body = compress(encode_write_request([(encode_labels(labels), [(now - 3000, 4.0)])]))
    assert proxy.post(body, RW_HEADERS)[0] == 204
    later = compress(encode_write_request([(encode_labels(labels), [(now, 6.0)])]))
    assert proxy.post(later, RW_HEADERS)[0] == 204
    prometheus_receiver.wait_for(
        'order_create_failed_total{view="business",service="checkout"}',
        lambda r: bool(r) and sample_value(r[0]) in (4.0, 6.0),
    )
    assert proxy.metric("enrichproxy_requests_total", code="400") == 2
    assert proxy.metric("enrichproxy_requests_total", code="413") == 1
    assert proxy.metric("enrichproxy_requests_total", code="415") == 2
    assert proxy.stop() == 0  # SIGTERM: open windows emitted, queues drained, clean exit
    prometheus_receiver.wait_for(
        'order_create_failed_total{view="business",service="checkout"}',
        lambda r: bool(r) and sample_value(r[0]) == 6.0,
    )
    assert prometheus_receiver.rejection_lines() == []
