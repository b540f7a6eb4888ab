"""Reload by SIGHUP of a real ``enrichproxy serve``, with a real Prometheus downstream.

The process keeps running through a reload that adds a view (the existing one keeps its state:
its counter goes on without a reset downstream) and through one of a broken file (refused,
logged, counted; the running configuration stays).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from realparts import (
    MongoServer,
    PrometheusProcess,
    ProxyProcess,
    build_write_request,
    poll_until,
    sample_value,
)

pytestmark = pytest.mark.integration

RW_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}


@pytest.fixture
def seeded(mongo: MongoServer, mongo_db_name: str) -> Iterator[str]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        client[mongo_db_name]["pod_metadata"].insert_one({"pod": "a", "service": "checkout"})
    finally:
        client.close()
    yield mongo_db_name


def write(proxy: ProxyProcess, timestamp_ms: int, value: float) -> None:
    body = build_write_request([({"__name__": "x_total", "pod": "a"}, [(timestamp_ms, value)])])
    status, answer = proxy.post(body, RW_HEADERS)
    assert status == 204, answer


def stored(receiver: PrometheusProcess, view: str) -> list[float]:
    """Every stored sample of the view's one series, oldest first."""
    result = receiver.query(f'x_total{{view="{view}"}}[10m]')
    return [float(value) for _, value in result[0]["values"]] if result else []


def reloads(proxy: ProxyProcess, result: str) -> float:
    return proxy.metric("enrichproxy_config_reloads_total", result=result) or 0.0


def test_sighup_reloads_and_a_broken_file_keeps_the_running_config(
    tmp_path: Path,
    mongo: MongoServer,
    seeded: str,
    prometheus_receiver: PrometheusProcess,
) -> None:
    receiver = prometheus_receiver
    config: dict[str, Any] = {
        "metadata": {"mongodb_uri": mongo.uri, "database": seeded},
        "views": [{"name": "ops", "keep": ["service"]}],
        # idle_flush: each window leaves 1 s after its last sample, no newer one needed.
        "aggregation": {"interval": "1s", "lateness": "0s", "idle_flush": "1s"},
        "remote_write": [{"url": receiver.write_url, "name": "receiver"}],
        "shutdown_timeout": "5s",
    }
    proxy = ProxyProcess(tmp_path / "proxy", config)
    proxy.start()
    try:
        t = (int(time.time()) - 60) * 1000
        write(proxy, t + 500, 10)
        write(proxy, t + 1500, 3)  # a reset: the view's counter is 13 now
        receiver.wait_for('x_total{view="ops"}', lambda r: bool(r) and sample_value(r[0]) == 13)

        proxy.reload({**config, "views": [*config["views"], {"name": "all", "keep": []}]})
        poll_until(lambda: reloads(proxy, "success") == 1, 10, "the reload")
        assert proxy.metric("enrichproxy_config_last_reload_successful") == 1
        write(proxy, t + 2500, 4)
        receiver.wait_for('x_total{view="all"}', lambda r: bool(r) and sample_value(r[0]) == 4)
        receiver.wait_for('x_total{view="ops"}', lambda r: bool(r) and sample_value(r[0]) == 14)
        assert stored(receiver, "ops") == [10, 13, 14]  # no reset across the reload

        proxy.reload(text="views: [{name: ops, keep: [1bad]}]\n")
        poll_until(lambda: reloads(proxy, "failure") == 1, 10, "the failed reload")
        assert proxy.metric("enrichproxy_config_last_reload_successful") == 0
        assert proxy.get("/-/ready")[0] == 200
        write(proxy, t + 3500, 5)  # served with the running configuration, both views
        receiver.wait_for('x_total{view="all"}', lambda r: bool(r) and sample_value(r[0]) == 5)
        receiver.wait_for('x_total{view="ops"}', lambda r: bool(r) and sample_value(r[0]) == 15)
        log = proxy.log_path.read_text()
        assert "not reloaded, the running one is kept" in log
        assert "'1bad' is not a valid label name" in log
        assert receiver.rejection_lines() == []
    finally:
        proxy.stop()
