"""A label explosion at the documented limits keeps the real process's memory under a stated
bound (docs/operations.md#sizing).

The proxy runs as ``enrichproxy serve`` against secantusdb and a real Prometheus receiver, with
the two example views and ``limits.max_input_series: 100000``. Writes of 10,000 new series each
(a new ``pod`` value per series, the shape of a crash-looping deployment or a request id in a
label) first fill the limit, then go on at five times it. Resident memory (``VmRSS``) is read
from /proc:

* filling the limit may cost at most the documented bytes per input series (the figure for
  series that each bring a new join key, the worst case), plus the slack of a request in
  flight and the allocator's arenas (``FILL_BOUND``);
* after it, the refused series cost nothing that stays: 40 more writes of new series grow RSS
  by less than ``OVER_LIMIT_BOUND``;
* every refused sample is counted, and the cache holds exactly the limit.

A control run without the limit shows that the bound is not loose: the same explosion grows RSS
past it (native engine only: the Python engine's control would take a gigabyte and a minute of
two shared cores to prove the same).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engines import engine_kind
from pymongo import MongoClient
from realparts import (
    MongoServer,
    PrometheusProcess,
    ProxyProcess,
    build_write_request,
    post_remote_write,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
LIMIT = 100_000
SERIES_PER_WRITE = 10_000
FILL_WRITES = LIMIT // SERIES_PER_WRITE
OVER_WRITES = 40
VIEWS = 2
# docs/operations.md#sizing, for series that each bring a join-key value never seen before (a
# new pod per series, so no two share a plan template): about 2,400 bytes per input series
# with the native engine and 1,900 with the Python engine, two views (measured here: 2,352 and
# 1,918). Series that share their pod cost far less (290 and 1,800).
BYTES_PER_INPUT_SERIES = {"native": 2_500, "python": 2_000}
# A 10,000-series request in flight (its body, decompressed buffer and decoded arrays) and the
# allocator's arenas it leaves behind, measured at about 10 MiB; twice that.
REQUEST_SLACK = 24 * MIB
FILL_BOUND = {kind: LIMIT * size + REQUEST_SLACK for kind, size in BYTES_PER_INPUT_SERIES.items()}
OVER_LIMIT_BOUND = 16 * MIB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def explosion_write(first: int, timestamp_ms: int) -> bytes:
    """SERIES_PER_WRITE series never seen before: pods first .. first + SERIES_PER_WRITE."""
    return build_write_request(
        (
            {
                "__name__": "order_create_failed_total",
                "pod": f"exploding-{number}",
                "endpoint": "/orders",
                "error_type": "timeout",
            },
            [(timestamp_ms, 1.0)],
        )
        for number in range(first, first + SERIES_PER_WRITE)
    )


def config(mongo_uri: str, database: str, receiver: str, max_input_series: int) -> dict[str, Any]:
    return {
        "metadata": {"mongodb_uri": mongo_uri, "database": database, "refresh_interval": "1h"},
        "views": [
            {"name": "operational", "keep": ["service", "endpoint", "error_type"]},
            {"name": "business", "keep": ["service", "tier"]},
        ],
        "limits": {"max_series_per_request": 10_000, "max_input_series": max_input_series},
        "remote_write": [{"url": receiver, "name": "sink"}],
        "shutdown_timeout": "5s",
    }


@pytest.fixture
def seeded(mongo: MongoServer, mongo_db_name: str) -> str:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        client[mongo_db_name]["pod_metadata"].insert_one(
            {"pod": "checkout-a", "service": "checkout", "team": "shop", "tier": "gold"}
        )
    finally:
        client.close()
    return mongo_db_name


@pytest.fixture
def start_proxy(
    tmp_path: Path, mongo: MongoServer, seeded: str, prometheus_receiver: PrometheusProcess
) -> Iterator[Any]:
    started: list[ProxyProcess] = []

    def start(max_input_series: int) -> ProxyProcess:
        process = ProxyProcess(
            tmp_path / f"proxy-{len(started)}",
            config(mongo.uri, seeded, prometheus_receiver.write_url, max_input_series),
        )
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


def send(proxy: ProxyProcess, writes: range) -> None:
    for number in writes:
        body = explosion_write(number * SERIES_PER_WRITE, int(time.time() * 1000))
        status, text = post_remote_write(proxy.write_url, body, timeout=30)
        assert status == 204, text


def settled_rss(proxy: ProxyProcess) -> int:
    """RSS once the last write's flush has run (a flush tick is 1 s)."""
    assert proxy.pid is not None
    time.sleep(1.5)
    return rss_bytes(proxy.pid)


def test_a_label_explosion_at_the_limit_keeps_rss_under_the_stated_bound(start_proxy: Any) -> None:
    proxy = start_proxy(LIMIT)
    send(proxy, range(1))  # allocator and interpreter warm-up, within the limit
    start = settled_rss(proxy)
    send(proxy, range(1, FILL_WRITES))
    full = settled_rss(proxy)
    assert proxy.metric("enrichproxy_series_cache_entries") == LIMIT
    assert proxy.metric("enrichproxy_input_series_limit") == LIMIT
    assert proxy.metric("enrichproxy_aggregation_input_series_limit", view="business") == 0
    send(proxy, range(FILL_WRITES, FILL_WRITES + OVER_WRITES))
    after = settled_rss(proxy)
    refused = proxy.metric("enrichproxy_samples_dropped_total", reason="input_series_limit")
    assert refused == OVER_WRITES * SERIES_PER_WRITE
    assert proxy.metric("enrichproxy_series_cache_entries") == LIMIT
    grown_filling = full - start
    grown_over = after - full
    print(
        f"engine={engine_kind()} rss start={start / MIB:.1f} MiB full={full / MIB:.1f} MiB"
        f" after={after / MIB:.1f} MiB; filling {LIMIT} series: {grown_filling / MIB:.1f} MiB"
        f" ({grown_filling / (LIMIT - SERIES_PER_WRITE):.0f} B/series); "
        f"{OVER_WRITES * SERIES_PER_WRITE} refused: {grown_over / MIB:.1f} MiB"
    )
    assert grown_filling < FILL_BOUND[engine_kind()]
    assert grown_over < OVER_LIMIT_BOUND


@pytest.mark.skipif(
    engine_kind() != "native",
    reason="the control needs ~1 GiB and a minute with the Python engine; the native run shows "
    "the bound is not loose",
)
def test_without_the_limit_the_same_explosion_grows_past_the_bound(start_proxy: Any) -> None:
    proxy = start_proxy(0)
    send(proxy, range(1))
    start = settled_rss(proxy)
    send(proxy, range(1, FILL_WRITES + OVER_WRITES))
    after = settled_rss(proxy)
    print(f"no limit: rss grew {(after - start) / MIB:.1f} MiB")
    assert after - start > FILL_BOUND["native"] + OVER_LIMIT_BOUND
