"""Keeping the metadata table fresh against a real MongoDB wire-protocol server (secantusdb).

The proxy runs in-process (the real app) with an in-process recording downstream; a sender
task posts one sample of ``jobs_total{pod=...}`` per pod every 50 ms at wall-clock time, and the
tests watch which service label the forwarded (aggregated) series carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inprocess import (
    HEADERS,
    Client,
    config_for,
    is_ready,
    metric,
    proxy_of,
    seed,
    start_app,
    wait_until,
    write_body,
)
from pymongo import AsyncMongoClient, WriteConcern
from realparts import MongoProcess, MongoServer
from sinks import RecordingSink

from enrichproxy.config.schema import Config
from enrichproxy.durability.state_store import unframe
from enrichproxy.metadata.store import SNAPSHOT_KIND
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request

pytestmark = pytest.mark.integration

INTERVAL_MS = 100
RULE = "pod_metadata"


@pytest.fixture
def mongo_process(tmp_path: Path) -> Iterator[MongoProcess]:
    process = MongoProcess(tmp_path / "mongo")
    process.start()
    yield process
    process.stop()


def fresh_config(uri: str, database: str, sink: RecordingSink, **metadata: Any) -> Config:
    return config_for(
        uri,
        database,
        sink.url,
        # A full reload only every hour: whatever shows up sooner came by the change stream.
        metadata={"refresh_interval": "1h", **metadata},
        aggregation={"interval": f"{INTERVAL_MS}ms", "lateness": "0s"},
    )


class Sender:
    """Posts one increasing sample per pod every 50 ms until stopped."""

    def __init__(self, client: Client, pods: list[str]) -> None:
        self.client = client
        self.pods = pods
        self.value = 0.0
        self.statuses: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.value += 1
            now = int(time.time() * 1000)
            for pod in self.pods:
                response = await self.client.post(
                    "/api/v1/write", data=write_body(pod, [(now, self.value)]), headers=HEADERS
                )
                self.statuses.append(response.status)
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def windows_with(sink: RecordingSink, service: str | None) -> list[int]:
    """Window ends (ms) of forwarded samples whose service label is ``service``."""
    return sorted(
        timestamp
        for labels, timestamp, _ in sink.accepted_samples()
        if dict(labels).get("service") == service
    )


async def first_window_with(
    sink: RecordingSink, service: str | None, after_ms: int, timeout: float = 5.0
) -> int:
    async with asyncio.timeout(timeout):
        while True:
            later = [w for w in windows_with(sink, service) if w > after_ms]
            if later:
                return later[0]
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def collection(uri: str, database: str) -> AsyncIterator[Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        yield client[database].get_collection("pod_metadata", write_concern=WriteConcern(j=True))
    finally:
        await client.close()


async def test_every_kind_of_change_is_forwarded_within_a_second(
    mongo: MongoServer, mongo_db_name: str, sink: RecordingSink, clients: list[Client]
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"_id": "a", "pod": "a", "service": "s1"}])
    client = await start_app(fresh_config(mongo.uri, mongo_db_name, sink), clients)
    await wait_until(lambda: is_ready(client))
    sender = Sender(client, ["a", "b"])
    sender.start()
    try:
        await first_window_with(sink, "s1", 0)
        async with collection(mongo.uri, mongo_db_name) as pods:
            steps: list[tuple[str, Callable[[], Awaitable[Any]], str | None]] = [
                (
                    "update",
                    lambda: pods.update_one({"_id": "a"}, {"$set": {"service": "s2"}}),
                    "s2",
                ),
                (
                    "insert",
                    lambda: pods.insert_one({"_id": "b", "pod": "b", "service": "s4"}),
                    "s4",
                ),
                (
                    "replace",
                    lambda: pods.replace_one({"_id": "a"}, {"pod": "a", "service": "s3"}),
                    "s3",
                ),
                ("delete", lambda: pods.delete_one({"_id": "b"}), None),
            ]
            for operation, change, service in steps:
                before = int(time.time() * 1000)
                await change()
                window = await first_window_with(sink, service, before)
                # The first window holding a sample of the changed labels ends this long after
                # the change: within a second, plus at most one window of sample time.
                assert window - before <= 1000 + INTERVAL_MS, (operation, window - before)
                assert metric(client, "enrichproxy_metadata_changes_total", operation=operation)
    finally:
        await sender.stop()
    assert set(sender.statuses) == {204}
    assert metric(client, "enrichproxy_metadata_reloads_total", result="success") == 1
    assert metric(client, "enrichproxy_metadata_follow_state", state="following") == 1


async def test_a_mongodb_restart_loses_and_repeats_no_change(
    mongo_process: MongoProcess, sink: RecordingSink, clients: list[Client]
) -> None:
    await seed(mongo_process.uri, "metrics", [{"_id": "a", "pod": "a", "service": "s0"}])
    client = await start_app(fresh_config(mongo_process.uri, "metrics", sink), clients)
    await wait_until(lambda: is_ready(client))
    await wait_until(
        lambda: metric(client, "enrichproxy_metadata_follow_state", state="following") == 1
    )
    sender = Sender(client, ["a"])
    sender.start()
    try:
        await asyncio.to_thread(mongo_process.kill)
        await wait_until(
            lambda: metric(client, "enrichproxy_metadata_follow_state", state="down") == 1
        )
        # MongoDB is gone: the proxy keeps serving from its table.
        assert await is_ready(client)
        down_since = int(time.time() * 1000)
        await first_window_with(sink, "s0", down_since)
        await asyncio.to_thread(mongo_process.start)
        # Changes made as soon as it is back, before the proxy's stream has resumed.
        async with collection(mongo_process.uri, "metrics") as pods:
            for number in range(1, 4):
                await pods.update_one({"_id": "a"}, {"$set": {"service": f"s{number}"}})
        await first_window_with(sink, "s3", down_since, timeout=20)
        await wait_until(
            lambda: metric(client, "enrichproxy_metadata_changes_total", operation="update") >= 3
        )
        await asyncio.sleep(0.5)  # nothing more may arrive
    finally:
        await sender.stop()
    assert metric(client, "enrichproxy_metadata_changes_total", operation="update") == 3
    assert set(sender.statuses) == {204}
    table = proxy_of(client).engine.planner.tables[0]
    assert table.lookup(("a",)) == (("service", "s3"),)


async def test_a_standalone_server_is_polled(
    tmp_path: Path, sink: RecordingSink, clients: list[Client]
) -> None:
    standalone = MongoProcess(tmp_path / "standalone", extra_args=["--standalone"])
    standalone.start()
    try:
        await seed(standalone.uri, "metrics", [{"_id": "a", "pod": "a", "service": "s1"}])
        config = fresh_config(standalone.uri, "metrics", sink, refresh_interval="300ms")
        client = await start_app(config, clients)
        await wait_until(lambda: is_ready(client))
        await wait_until(
            lambda: metric(client, "enrichproxy_metadata_follow_state", state="polling") == 1
        )
        async with collection(standalone.uri, "metrics") as pods:
            await pods.update_one({"_id": "a"}, {"$set": {"service": "s2"}})
        await wait_until(
            lambda: (
                proxy_of(client).engine.planner.tables[0].lookup(("a",)) == (("service", "s2"),)
            ),
            timeout=5,
        )
    finally:
        await asyncio.to_thread(standalone.stop)


async def test_cold_start_with_mongodb_down_uses_the_snapshot(
    tmp_path: Path, mongo_process: MongoProcess, sink: RecordingSink, clients: list[Client]
) -> None:
    snapshot = tmp_path / "state" / "metadata.json"
    await seed(mongo_process.uri, "metrics", [{"_id": "a", "pod": "a", "service": "s1"}])
    config = fresh_config(mongo_process.uri, "metrics", sink, snapshot_path=str(snapshot))
    first = await start_app(config, clients)
    await wait_until(lambda: is_ready(first))
    await wait_until(snapshot.exists, timeout=10)
    await first.close()
    saved = json.loads(unframe(SNAPSHOT_KIND, snapshot.read_bytes()))  # checksum checked
    assert saved["rules"][0]["entries"] == [[["a"], {"service": "s1"}]]

    await asyncio.to_thread(mongo_process.stop)
    second = await start_app(config, clients)
    await wait_until(lambda: is_ready(second), timeout=5)
    assert "stale" in await (await second.get("/-/ready")).text()
    assert metric(second, "enrichproxy_metadata_stale", rule=RULE) == 1
    now = int(time.time() * 1000)
    for offset, value in ((2000, 1.0), (0, 2.0)):
        response = await second.post(
            "/api/v1/write", data=write_body("a", [(now - offset, value)]), headers=HEADERS
        )
        assert response.status == 204
    await first_window_with(sink, "s1", now - 3000)

    await asyncio.to_thread(mongo_process.start)
    await wait_until(lambda: metric(second, "enrichproxy_metadata_stale", rule=RULE) == 0, 20)
    assert "stale" not in await (await second.get("/-/ready")).text()


async def test_cold_start_with_mongodb_down_and_no_snapshot_waits(
    tmp_path: Path, mongo_process: MongoProcess, sink: RecordingSink, clients: list[Client]
) -> None:
    await seed(mongo_process.uri, "metrics", [{"_id": "a", "pod": "a", "service": "s1"}])
    await asyncio.to_thread(mongo_process.stop)
    config = fresh_config(
        mongo_process.uri, "metrics", sink, snapshot_path=str(tmp_path / "none.json")
    )
    client = await start_app(config, clients)
    await asyncio.sleep(1)
    assert not await is_ready(client)
    response = await client.post(
        "/api/v1/write", data=write_body("a", [(int(time.time() * 1000), 1.0)]), headers=HEADERS
    )
    assert response.status == 503
    await asyncio.to_thread(mongo_process.start)
    await wait_until(lambda: is_ready(client), timeout=20)


async def test_chained_rules_with_a_composite_key(
    mongo: MongoServer, mongo_db_name: str, sink: RecordingSink, clients: list[Client]
) -> None:
    client_db: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri)
    try:
        database = client_db[mongo_db_name]
        await database["pods"].insert_many(
            [
                {"namespace": "shop", "pod": "a", "service": "checkout", "tier": "gold"},
                {"namespace": "test", "pod": "a", "service": "checkout-canary", "tier": "dev"},
                {"namespace": "shop", "pod": ["not", "a", "scalar"], "service": "x"},
            ]
        )
        await database["services"].insert_many(
            [{"service": "checkout", "owner": "team-orders", "slack_channel": "#orders"}]
        )
    finally:
        await client_db.close()
    config = config_for(
        mongo.uri,
        mongo_db_name,
        sink.url,
        metadata={
            "refresh_interval": "1h",
            "rules": [
                {
                    "name": "pods",
                    "collection": "pods",
                    "key_labels": ["namespace", "pod"],
                    "fields": ["service", "tier"],
                },
                {
                    "name": "owners",
                    "collection": "services",
                    "key_label": "service",
                    "fields": ["owner", "slack_channel"],
                    "drop_key_labels": False,
                },
            ],
        },
        views=[{"name": "ops", "keep": ["service", "tier", "owner", "slack_channel"]}],
    )
    client = await start_app(config, clients)
    await wait_until(lambda: is_ready(client))
    now = int(time.time() * 1000)
    series = []
    for namespace in ("shop", "test"):
        labels = (
            ("__name__", "jobs_total"),
            ("namespace", namespace),
            ("pod", "a"),
        )
        series.append((encode_labels(labels), [(now - 2000, 1.0), (now, 2.0)]))
    body = compress(encode_write_request(series))
    assert (await client.post("/api/v1/write", data=body, headers=HEADERS)).status == 204
    await client.close()  # emits the open windows
    outputs = {tuple(sorted(dict(labels).items())) for labels, _, _ in sink.accepted_samples()}
    assert outputs == {
        (
            ("__name__", "jobs_total"),
            ("owner", "team-orders"),
            ("service", "checkout"),
            ("slack_channel", "#orders"),
            ("tier", "gold"),
            ("view", "ops"),
        ),
        # No owner for the canary service: the second rule misses and keeps the series.
        (
            ("__name__", "jobs_total"),
            ("service", "checkout-canary"),
            ("tier", "dev"),
            ("view", "ops"),
        ),
    }
    assert metric(client, "enrichproxy_lookups_total", rule="pods", result="hit") == 2
    assert metric(client, "enrichproxy_lookups_total", rule="owners", result="hit") == 1
    assert metric(client, "enrichproxy_lookups_total", rule="owners", result="miss") == 1
    assert (
        metric(
            client,
            "enrichproxy_metadata_documents_rejected_total",
            rule="pods",
            reason="invalid_key",
        )
        == 1
    )
