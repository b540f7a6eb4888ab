"""The aiohttp app in-process: readiness, back-pressure, metadata failures, answers by code.

MongoDB is a real wire-protocol server (secantusdb); the downstream is an in-process recording
receiver so failures can be staged. tests/test_integration_pipeline.py covers the real
Prometheus on both sides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from inprocess import HEADERS, config_for, metric, proxy_of, seed, start_app, wait_until, write_body
from realparts import MongoProcess, MongoServer, free_port
from sinks import Answer, RecordingSink

RULE = "pod_metadata"  # the one rule of the single-rule configuration, named by its collection


async def test_writes_get_503_until_the_metadata_table_is_loaded(
    sink: RecordingSink, clients: list[TestClient[Any, Any]]
) -> None:
    dead_mongo = f"mongodb://127.0.0.1:{free_port()}/"
    client = await start_app(config_for(dead_mongo, "metrics", sink.url), clients)
    response = await client.post(
        "/api/v1/write", data=write_body("a", [(1000, 1)]), headers=HEADERS
    )
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert (await client.get("/-/ready")).status == 503
    assert (await client.get("/-/healthy")).status == 200
    await wait_until(
        lambda: asyncio.sleep(
            0,
            bool(metric(client, "enrichproxy_metadata_reloads_total", rule=RULE, result="failure")),
        )
    )
    assert metric(client, "enrichproxy_ready") == 0


async def test_full_queue_answers_503_and_loses_nothing(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    config = config_for(
        mongo.uri,
        mongo_db_name,
        sink.url,
        remote_write=[
            {
                "url": sink.url,
                "capacity": 1,
                "shards": 1,
                "min_backoff": "10ms",
                "max_backoff": "50ms",
            }
        ],
    )
    client = await start_app(config, clients)
    await wait_until(lambda: _ok(client.get("/-/ready")))
    sink.hold.clear()  # the downstream hangs: nothing leaves the queue
    now = int(time.time() * 1000)
    first = await client.post(
        "/api/v1/write", data=write_body("a", [(now - 5000, 1)]), headers=HEADERS
    )
    assert first.status == 204
    second = await client.post(
        "/api/v1/write", data=write_body("a", [(now - 2000, 2)]), headers=HEADERS
    )
    assert second.status == 204
    # The flusher emits the first window into the queue, which is then full.
    await wait_until(lambda: asyncio.sleep(0, proxy_of(client).forwarder.full))
    refused = await client.post("/api/v1/write", data=write_body("a", [(now, 3)]), headers=HEADERS)
    assert refused.status == 503
    assert "queue" in await refused.text()
    sink.hold.set()
    await wait_until(lambda: asyncio.sleep(0, not proxy_of(client).forwarder.full))
    retried = await client.post("/api/v1/write", data=write_body("a", [(now, 3)]), headers=HEADERS)
    assert retried.status == 204
    await client.close()  # shutdown: the open windows are emitted and drained
    values = [value for _, _, value in sink.accepted_samples()]
    assert values == [1.0, 2.0, 3.0]


async def _ok(request: Awaitable[Any]) -> bool:
    response = await request
    return bool(response.status == 200)


async def test_permanent_downstream_refusal_is_counted(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    client = await start_app(config_for(mongo.uri, mongo_db_name, sink.url), clients)
    await wait_until(lambda: _ok(client.get("/-/ready")))
    sink.answers.append(Answer(400, "out of order sample"))
    now = int(time.time() * 1000)
    for offset, value in ((5000, 1.0), (3000, 2.0), (1000, 3.0)):
        response = await client.post(
            "/api/v1/write", data=write_body("a", [(now - offset, value)]), headers=HEADERS
        )
        assert response.status == 204
    await wait_until(
        lambda: asyncio.sleep(
            0,
            bool(
                metric(
                    client,
                    "enrichproxy_forward_samples_dropped_total",
                    destination=_dest(sink),
                    reason="400",
                )
            ),
        )
    )
    await client.close()  # the last window leaves at shutdown, after the refused batch
    assert [value for _, _, value in sink.accepted_samples()] == [3.0]


def _dest(sink: RecordingSink) -> str:
    return sink.url.split("/")[2]


async def test_failed_reload_keeps_the_last_table(
    tmp_path: Path, sink: RecordingSink, clients: list[TestClient[Any, Any]]
) -> None:
    mongo = MongoProcess(tmp_path / "mongo")
    mongo.start()
    try:
        await seed(mongo.uri, "metrics", [{"pod": "a", "service": "checkout"}])
        client = await start_app(config_for(mongo.uri, "metrics", sink.url), clients)
        await wait_until(lambda: _ok(client.get("/-/ready")))
        await asyncio.to_thread(mongo.kill)
        failures_before = metric(
            client, "enrichproxy_metadata_reloads_total", rule=RULE, result="failure"
        )
        await wait_until(
            lambda: asyncio.sleep(
                0,
                (
                    metric(
                        client, "enrichproxy_metadata_reloads_total", rule=RULE, result="failure"
                    )
                    or 0
                )
                > (failures_before or 0),
            ),
        )
        assert (await client.get("/-/ready")).status == 200
        now = int(time.time() * 1000)
        for offset, value in ((3000, 7.0), (0, 8.0)):
            response = await client.post(
                "/api/v1/write", data=write_body("a", [(now - offset, value)]), headers=HEADERS
            )
            assert response.status == 204
        await wait_until(lambda: asyncio.sleep(0, bool(sink.accepted_samples())))
        labels, _, value = sink.accepted_samples()[0]
        assert dict(labels)["service"] == "checkout"
        assert value == 7.0
        assert (metric(client, "enrichproxy_metadata_age_seconds", rule=RULE) or 0) > 0
    finally:
        await asyncio.to_thread(mongo.stop)
