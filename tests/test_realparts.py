"""The integration harness itself works: each real part starts, answers and stops."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import Counter
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError
from realparts import (
    Exporter,
    MissingBinaryError,
    MongoProcess,
    MongoServer,
    PrometheusFactory,
    PrometheusProcess,
    build_write_request,
    find_binary,
    port_is_open,
    prometheus_config,
    promtool_check_config,
    remote_write_config,
    sample_value,
    scrape_config,
    values_by,
    write_config,
)

pytestmark = pytest.mark.integration

Doc = dict[str, object]


def test_generated_configs_pass_promtool(tmp_path: Path, prometheus_bin: str) -> None:
    sender = prometheus_config(
        scrape_configs=[
            scrape_config("checkout", ["127.0.0.1:9100"], labels={"team": "shop"}),
            scrape_config("slow", ["127.0.0.1:9101"], scrape_interval="5s"),
        ],
        remote_write=[
            remote_write_config("http://127.0.0.1:9200/api/v1/write"),
            remote_write_config(
                "http://127.0.0.1:9201/api/v1/write",
                name="second",
                queue_config={"max_samples_per_send": 500},
                send_metadata=False,
            ),
        ],
        external_labels={"cluster": "test", "replica": "a"},
    )
    assert sender["remote_write"][0]["queue_config"] == {
        "batch_send_deadline": "200ms",
        "min_backoff": "50ms",
        "max_backoff": "1s",
    }
    assert "SUCCESS" in promtool_check_config(write_config(tmp_path / "sender.yml", sender))
    promtool_check_config(write_config(tmp_path / "receiver.yml", prometheus_config()))

    broken = prometheus_config(scrape_configs=[scrape_config("bad", ["127.0.0.1:1"], "nonsense")])
    with pytest.raises(AssertionError, match="promtool check config"):
        promtool_check_config(write_config(tmp_path / "broken.yml", broken))


def test_missing_prometheus_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingBinaryError, match=r"apt-get install -y prometheus"):
        find_binary("prometheus", "/nonexistent/prometheus")


async def test_mongo_insert_and_find(mongo: MongoServer, mongo_db_name: str) -> None:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongo.uri, serverSelectionTimeoutMS=5000)
    try:
        collection = client[mongo_db_name]["pods"]
        await collection.insert_one({"_id": "checkout-6c8f9", "team": "shop", "tier": 1})
        found = await collection.find_one({"team": "shop"}, {"_id": 0})
        assert found == {"team": "shop", "tier": 1}
        hello = await client.admin.command("hello")
        assert hello["setName"] == "secantus"
    finally:
        await client.close()


def test_receiver_stores_hand_built_request(prometheus_receiver: PrometheusProcess) -> None:
    receiver = prometheus_receiver
    now_ms = int(time.time() * 1000)
    labels = {"__name__": "harness_probe", "pod": "checkout-6c8f9", "endpoint": "/orders"}
    status, text = receiver.remote_write(
        build_write_request([(labels, [(now_ms - 1000, 1.0), (now_ms, 2.5)])])
    )
    assert (status, text) == (204, "")

    result = receiver.query('harness_probe{pod="checkout-6c8f9"}')
    assert len(result) == 1
    assert result[0]["metric"] == {
        "__name__": "harness_probe",
        "pod": "checkout-6c8f9",
        "endpoint": "/orders",
    }
    assert sample_value(result[0]) == 2.5
    assert sample_value(receiver.query("timestamp(harness_probe)")[0]) == now_ms / 1000
    assert receiver.series("harness_probe") == [labels]
    window = receiver.query_range("harness_probe", now_ms / 1000 - 1, now_ms / 1000, 1)
    assert [value for _, value in window[0]["values"]] == ["1", "2.5"]
    assert receiver.rejection_lines() == []
    with pytest.raises(AssertionError, match=r"last result: \[\]"):
        receiver.wait_for('harness_probe{pod="absent"}', timeout=0.3)

    # A sample older than the newest one is refused, and the log check notices it.
    status, text = receiver.remote_write(build_write_request([(labels, [(now_ms - 500, 9.0)])]))
    assert status == 400
    assert "out of order" in text
    assert receiver.rejection_lines() != []


async def test_sender_forwards_exporter_counter(
    exporter: Exporter,
    prometheus_receiver: PrometheusProcess,
    prometheus_factory: PrometheusFactory,
) -> None:
    failed = Counter(
        "order_create_failed",
        "Orders that could not be created.",
        ["pod", "endpoint", "error_type"],
        registry=exporter.registry,
    )
    failed.labels("checkout-6c8f9", "/orders", "timeout").inc(3)
    failed.labels("checkout-7d2a1", "/orders", "timeout").inc(1)
    assert 'order_create_failed_total{endpoint="/orders"' in exporter.scrape()

    sender = prometheus_factory(
        prometheus_config(
            scrape_configs=[scrape_config("checkout", [exporter.target])],
            remote_write=[remote_write_config(prometheus_receiver.write_url)],
            external_labels={"cluster": "demo-eu1"},
        )
    )
    query = 'order_create_failed_total{job="checkout",cluster="demo-eu1"}'
    result = await prometheus_receiver.wait_for_async(
        query, lambda r: values_by(r, "pod") == {"checkout-6c8f9": 3.0, "checkout-7d2a1": 1.0}
    )
    assert result[0]["metric"]["instance"] == exporter.target
    assert sender.query("up")[0]["value"][1] == "1"

    failed.labels("checkout-6c8f9", "/orders", "timeout").inc(2)
    await prometheus_receiver.wait_for_async(
        query, lambda r: values_by(r, "pod").get("checkout-6c8f9") == 5.0
    )
    assert prometheus_receiver.rejection_lines() == []
    assert sender.log_lines("level=error") == []


async def test_mongo_process_survives_sigkill(mongo_process: MongoProcess) -> None:
    port = mongo_process.port
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        mongo_process.uri, serverSelectionTimeoutMS=300
    )
    try:
        # j=True: a w:1 write acknowledged less than ~0.5 s before a SIGKILL can be lost.
        pods = client.enrich.get_collection("pods", write_concern=WriteConcern(j=True))
        await pods.insert_one({"_id": "checkout-6c8f9", "team": "shop"})

        mongo_process.kill()
        assert not mongo_process.running
        assert not port_is_open(port)
        # A pooled connection dies first (AutoReconnect), then server selection times out.
        with pytest.raises(AutoReconnect):
            await pods.find_one({"_id": "checkout-6c8f9"})
        with pytest.raises(ServerSelectionTimeoutError):
            await pods.find_one({"_id": "checkout-6c8f9"})

        await mongo_process.start_async()
        assert mongo_process.port == port
        # The same client reconnects by itself (its monitor may need a few heartbeats on a busy
        # machine: bounded retries); the write made before the SIGKILL is still there.
        found = None
        async with asyncio.timeout(15):
            while found is None:
                try:
                    found = await pods.find_one({"_id": "checkout-6c8f9"})
                except ServerSelectionTimeoutError:
                    await asyncio.sleep(0.2)
        assert found == {
            "_id": "checkout-6c8f9",
            "team": "shop",
        }
    finally:
        await client.close()
    assert mongo_process.starts == 2
