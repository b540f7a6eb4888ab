"""A `remote_write` block pasted from a Prometheus 2.42 configuration, honoured end to end.

The proxy runs as a real process with two destinations written exactly as Prometheus spells
them: a real Prometheus receiver (`queue_config`, `remote_timeout`, `write_relabel_configs`
that drop a view and add a label), and the tests' recording receiver, which shows what went on
the wire (`authorization`, `headers`, and a relabelling that keeps every view).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from inprocess import seed, write_body
from realparts import MongoServer, PrometheusProcess, ProxyProcess, post_remote_write
from sinks import RecordingSink

pytestmark = pytest.mark.integration

PASTED = """
- name: long-term
  url: {downstream}
  remote_timeout: 15s
  queue_config:
    capacity: 2500
    max_shards: 2
    min_shards: 1
    max_samples_per_send: 500
    batch_send_deadline: 5s
    min_backoff: 30ms
    max_backoff: 1s
    retry_on_http_429: true
  metadata_config:
    send: true
    send_interval: 1m
  write_relabel_configs:
    - source_labels: [view]
      regex: business
      action: drop
    - target_label: env
      replacement: prod
- name: audited
  url: {recorder}
  authorization:
    type: Bearer
    credentials: s3cret
  headers:
    X-Scope-OrgID: tenant-1
  write_relabel_configs:
    - source_labels: [__name__]
      regex: order_(.*)_total
      target_label: operation
      replacement: $1
"""


async def test_a_pasted_prometheus_block_is_honoured_end_to_end(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    prometheus_receiver: PrometheusProcess,
) -> None:
    await seed(
        mongo.uri,
        mongo_db_name,
        [{"pod": "checkout-6c8f9", "service": "checkout-service", "tier": "critical"}],
    )
    remote_write: list[dict[str, Any]] = yaml.safe_load(
        PASTED.format(downstream=prometheus_receiver.write_url, recorder=sink.url)
    )
    proxy = ProxyProcess(
        tmp_path / "proxy",
        {
            "metadata": {"mongodb_uri": mongo.uri, "database": mongo_db_name},
            "views": [
                {"name": "operational", "keep": ["service"]},
                {"name": "business", "keep": ["service", "tier"]},
            ],
            "aggregation": {"interval": "1s", "lateness": "0s"},
            "remote_write": remote_write,
        },
    )
    proxy.start()
    try:
        now = int(time.time() * 1000)
        # Two scrapes: the second one's time closes the first one's window.
        samples = [(now - 3000, 37.0), (now, 37.0)]
        body = write_body("checkout-6c8f9", samples, name="order_create_total")
        assert post_remote_write(proxy.write_url, body)[0] == 204
        async with asyncio.timeout(20):
            while len({dict(labels)["view"] for labels, _, _ in sink.accepted_samples()}) < 2:
                await asyncio.sleep(0.1)
        received = sink.accepted[0]
        assert received.headers["Authorization"] == "Bearer s3cret"
        assert received.headers["X-Scope-OrgID"] == "tenant-1"
        recorded = {dict(labels)["view"]: dict(labels) for labels, _, _ in sink.accepted_samples()}
        assert recorded["business"]["operation"] == "create"
        assert recorded["operational"]["operation"] == "create"

        found = prometheus_receiver.wait_for('order_create_total{view="operational"}')
        assert found[0]["metric"]["env"] == "prod"
        assert float(found[0]["value"][1]) == 37.0
        assert prometheus_receiver.query('order_create_total{view="business"}') == []
    finally:
        proxy.stop()
