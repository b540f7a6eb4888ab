"""Losing nothing, against the real parts: exporter → Prometheus → enrichproxy → Prometheus.

enrichproxy runs as a real process with a disk queue and a state file; the tests stop the
downstream Prometheus for a while, or SIGKILL enrichproxy, and then read what the downstream
holds: every window present, counters never going down, no sample refused.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter
from pymongo import MongoClient
from realparts import (
    Exporter,
    MongoServer,
    PrometheusFactory,
    PrometheusProcess,
    ProxyProcess,
    build_write_request,
    post_remote_write,
    prometheus_config,
    remote_write_config,
    sample_value,
    scrape_config,
)

from enrichproxy.model import MetricType
from enrichproxy.wire.codec import compress, encode_labels
from enrichproxy.wire.v2 import CONTENT_TYPE_V2, encode_v2_request

pytestmark = pytest.mark.integration

INTERVAL_S = 1
QUERY = 'order_create_failed_total{view="business",service="checkout"}'


def proxy_config(
    tmp_path: Path, mongo_uri: str, database: str, destinations: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "metadata": {"mongodb_uri": mongo_uri, "database": database, "refresh_interval": "1h"},
        "views": [{"name": "business", "keep": ["service", "tier"]}],
        "aggregation": {
            "interval": f"{INTERVAL_S}s",
            "lateness": "1s",
            "state_path": str(tmp_path / "state" / "aggregation.json"),
            "checkpoint_interval": "1s",
        },
        "remote_write": destinations,
        "shutdown_timeout": "5s",
    }


def destination(url: str, name: str, queue: Path | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "url": url,
        "name": name,
        "min_backoff": "50ms",
        "max_backoff": "500ms",
        "shards": 2,
    }
    if queue is not None:
        config["queue"] = {"path": str(queue)}
    return config


@pytest.fixture
def seeded(mongo: MongoServer, mongo_db_name: str) -> Iterator[str]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        client[mongo_db_name]["pod_metadata"].insert_many(
            [
                {"pod": "checkout-a", "service": "checkout", "tier": "gold"},
                {"pod": "checkout-b", "service": "checkout", "tier": "gold"},
            ]
        )
    finally:
        client.close()
    yield mongo_db_name


@pytest.fixture
def failures(exporter: Exporter) -> Counter:
    """``order_create_failed_total{pod, endpoint, error_type}`` on the scraped exporter."""
    return Counter(
        "order_create_failed", "", ["pod", "endpoint", "error_type"], registry=exporter.registry
    )


@pytest.fixture
def proxy(
    tmp_path: Path, mongo: MongoServer, seeded: str, prometheus_receiver: PrometheusProcess
) -> Iterator[ProxyProcess]:
    """enrichproxy with a state file and a disk queue, writing to ``prometheus_receiver``."""
    process = ProxyProcess(
        tmp_path / "proxy",
        proxy_config(
            tmp_path,
            mongo.uri,
            seeded,
            [destination(prometheus_receiver.write_url, "sink", tmp_path / "queue")],
        ),
    )
    process.start()
    yield process
    process.stop()


def start_sender(
    factory: PrometheusFactory, exporter: Exporter, proxy: ProxyProcess
) -> PrometheusProcess:
    return factory(
        prometheus_config(
            scrape_configs=[scrape_config("checkout", [exporter.target])],
            remote_write=[remote_write_config(proxy.write_url)],
        )
    )


def checkout_history(receiver: PrometheusProcess, since: float) -> list[tuple[float, float]]:
    result = receiver.query_range(QUERY, since, time.time() + 5, step=0.25)
    assert len(result) == 1, result
    return [(float(t), float(v)) for t, v in result[0]["values"]]


def raw_samples(receiver: PrometheusProcess) -> list[tuple[float, float]]:
    """Every sample of the checkout series as stored (a range selector, not a step grid)."""
    result = receiver.query(f"{QUERY}[10m]")
    assert len(result) == 1, result
    return [(float(t), float(v)) for t, v in result[0]["values"]]


def value_is(expected: float) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda result: bool(result) and sample_value(result[0]) == expected


def assert_never_decreases(samples: list[tuple[float, float]]) -> None:
    values = [value for _, value in samples]
    assert values == sorted(values), values


def test_a_downstream_outage_leaves_no_gap(
    proxy: ProxyProcess,
    failures: Counter,
    prometheus_receiver: PrometheusProcess,
    prometheus_factory: PrometheusFactory,
    exporter: Exporter,
) -> None:
    failures.labels("checkout-a", "/orders", "timeout").inc(3)
    failures.labels("checkout-b", "/orders", "timeout").inc(4)
    receiver = prometheus_receiver
    start_sender(prometheus_factory, exporter, proxy)
    receiver.wait_for(QUERY, value_is(7), timeout=30)
    receiver.stop()
    outage_start = time.time()
    for _ in range(20):  # ~20 s of increases while the downstream is away
        failures.labels("checkout-a", "/orders", "timeout").inc()
        time.sleep(1)
    assert (proxy.metric("enrichproxy_queue_samples", destination="sink") or 0) > 0
    receiver.start()
    receiver.wait_for(QUERY, value_is(27), timeout=30)
    samples = [s for s in raw_samples(receiver) if s[0] >= outage_start]
    # One sample per window through the whole outage: no gap longer than two windows.
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(samples)]
    assert len(samples) >= 18, samples
    assert max(gaps) <= 2 * INTERVAL_S + 0.01, gaps
    assert_never_decreases(raw_samples(receiver))
    assert receiver.rejection_lines() == []


def test_a_killed_proxy_continues_its_counters(
    proxy: ProxyProcess,
    failures: Counter,
    prometheus_receiver: PrometheusProcess,
    prometheus_factory: PrometheusFactory,
    exporter: Exporter,
) -> None:
    failures.labels("checkout-a", "/orders", "timeout").inc(10)
    failures.labels("checkout-b", "/orders", "timeout").inc(5)
    receiver = prometheus_receiver
    start_sender(prometheus_factory, exporter, proxy)
    receiver.wait_for(QUERY, value_is(15), timeout=30)
    # A pod that ends before the crash: its total must stay in the sum afterwards.
    failures.labels("checkout-b", "/orders", "timeout").inc(2)
    receiver.wait_for(QUERY, value_is(17))
    failures.remove("checkout-b", "/orders", "timeout")
    time.sleep(3)
    proxy.kill()  # SIGKILL: no shutdown work at all
    failures.labels("checkout-a", "/orders", "timeout").inc(3)
    time.sleep(2)  # the sender retries meanwhile
    proxy.start()
    failures.labels("checkout-a", "/orders", "timeout").inc(1)
    receiver.wait_for(QUERY, value_is(21), timeout=30)
    time.sleep(2)
    assert_never_decreases(raw_samples(receiver))
    assert sample_value(receiver.query(QUERY)[0]) == 21
    assert receiver.rejection_lines() == []


def test_one_destination_down_does_not_hold_up_the_other(
    tmp_path: Path,
    mongo: MongoServer,
    seeded: str,
    failures: Counter,
    prometheus_receiver: PrometheusProcess,
    prometheus_factory: PrometheusFactory,
    exporter: Exporter,
) -> None:
    failures.labels("checkout-a", "/orders", "timeout").inc(1)
    down = prometheus_factory(prometheus_config(), receiver=True, name="down")
    down_url = down.write_url
    down.stop()
    proxy = ProxyProcess(
        tmp_path / "proxy",
        proxy_config(
            tmp_path,
            mongo.uri,
            seeded,
            [
                destination(down_url, "down", tmp_path / "queue-down"),
                destination(prometheus_receiver.write_url, "up"),
            ],
        ),
    )
    proxy.start()
    try:
        start_sender(prometheus_factory, exporter, proxy)
        prometheus_receiver.wait_for(QUERY, value_is(1), 30)
        for value in range(2, 6):
            failures.labels("checkout-a", "/orders", "timeout").inc()
            changed = time.time()
            prometheus_receiver.wait_for(QUERY, value_is(value), timeout=10)
            # Scrape (1 s) + window (1 s) + lateness (1 s) + sending: on time, not held up.
            assert time.time() - changed < 6
        assert (proxy.metric("enrichproxy_queue_samples", destination="down") or 0) > 0
        assert (proxy.metric("enrichproxy_forward_retries_total", destination="down") or 0) > 0
        down.start()
        down.wait_for(QUERY, value_is(5), timeout=30)
        assert_never_decreases(raw_samples(down))
        assert down.rejection_lines() == []
    finally:
        proxy.stop()


def test_an_acknowledged_write_survives_a_kill_before_any_checkpoint(
    tmp_path: Path,
    mongo: MongoServer,
    seeded: str,
    prometheus_receiver: PrometheusProcess,
) -> None:
    """A gauge sample carries nothing over to the next one: only the input log can bring it
    back after a SIGKILL that came before any checkpoint."""
    config = proxy_config(
        tmp_path,
        mongo.uri,
        seeded,
        [destination(prometheus_receiver.write_url, "sink", tmp_path / "queue")],
    )
    config["aggregation"].update({"lateness": "0s", "checkpoint_interval": "1h"})
    proxy = ProxyProcess(tmp_path / "proxy", config)
    proxy.start()
    gauge = "checkout_inflight_requests"
    now = int(time.time() * 1000) // 1000 * 1000
    try:

        def write(timestamp: int, value: float) -> None:
            body = build_write_request(
                [({"__name__": gauge, "pod": "checkout-a"}, [(timestamp, value)])]
            )
            assert post_remote_write(proxy.write_url, body)[0] == 204

        write(now - 2500, 5.0)
        write(now - 1500, 7.0)  # acknowledged, its window still open
        proxy.kill()
        proxy.start()
        write(now - 500, 9.0)  # moves the watermark: the window of 7 closes
        query = f'{gauge}{{view="business",service="checkout"}}[10m]'
        result = prometheus_receiver.wait_for(
            query, lambda r: bool(r) and len(r[0]["values"]) >= 2, timeout=20
        )
        values = {int(float(t) * 1000): float(v) for t, v in result[0]["values"]}
        assert values[now - 1000] == 7.0  # window (now-2000, now-1000]
        assert prometheus_receiver.rejection_lines() == []
    finally:
        proxy.stop()


def test_an_acknowledged_2_0_write_is_replayed_as_2_0_after_a_kill(
    tmp_path: Path,
    mongo: MongoServer,
    seeded: str,
    prometheus_receiver: PrometheusProcess,
) -> None:
    """As above, with the writes before the kill in remote write 2.0: the input log keeps each
    request's protocol, so the replay reads them as 2.0 (read as 1.0, a 2.0 body is an empty
    request, and the 7 would be gone)."""
    config = proxy_config(
        tmp_path,
        mongo.uri,
        seeded,
        [destination(prometheus_receiver.write_url, "sink", tmp_path / "queue")],
    )
    config["aggregation"].update({"lateness": "0s", "checkpoint_interval": "1h"})
    proxy = ProxyProcess(tmp_path / "proxy", config)
    proxy.start()
    gauge = "checkout_inflight_requests"
    labels = encode_labels((("__name__", gauge), ("pod", "checkout-a")))
    now = int(time.time() * 1000) // 1000 * 1000
    v2_headers = {
        "Content-Encoding": "snappy",
        "Content-Type": CONTENT_TYPE_V2,
        "X-Prometheus-Remote-Write-Version": "2.0.0",
    }
    try:

        def write_v2(timestamp: int, value: float) -> None:
            body = encode_v2_request([(labels, [(timestamp, value)], MetricType.GAUGE)])
            status, answer = proxy.post(compress(body), v2_headers)
            assert status == 204, answer

        write_v2(now - 2500, 5.0)
        write_v2(now - 1500, 7.0)  # acknowledged, its window still open
        proxy.kill()
        proxy.start()
        body = build_write_request([({"__name__": gauge, "pod": "checkout-a"}, [(now - 500, 9.0)])])
        assert post_remote_write(proxy.write_url, body)[0] == 204  # closes the window of 7
        query = f'{gauge}{{view="business",service="checkout"}}[10m]'
        result = prometheus_receiver.wait_for(
            query, lambda r: bool(r) and len(r[0]["values"]) >= 2, timeout=20
        )
        values = {int(float(t) * 1000): float(v) for t, v in result[0]["values"]}
        assert values[now - 1000] == 7.0  # window (now-2000, now-1000]
        assert prometheus_receiver.rejection_lines() == []
    finally:
        proxy.stop()
