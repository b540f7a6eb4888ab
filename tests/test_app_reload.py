"""Reload of the running app, in-process: ``POST /-/reload`` and the per-destination views filter.

MongoDB is secantusdb in this process, the downstreams are recording receivers. The reload
through SIGHUP of a real ``enrichproxy serve`` is in test_integration_reload.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from inprocess import HEADERS, Client, metric, proxy_of, seed, wait_until
from promtext import wire_request
from realparts import MongoServer
from sinks import RecordingSink

from enrichproxy.config.schema import load_config
from enrichproxy.durability.state_store import unframe
from enrichproxy.metadata.store import FollowState
from enrichproxy.server.app import create_app
from enrichproxy.server.telemetry import Telemetry

OPS = {"name": "ops", "keep": ["service"]}
FOLLOWING = (FollowState.FOLLOWING, FollowState.POLLING)
BUSINESS = {"name": "business", "keep": ["service"]}


@pytest.fixture
async def sinks() -> AsyncIterator[tuple[RecordingSink, RecordingSink]]:
    first, second = RecordingSink(), RecordingSink()
    await first.start()
    await second.start()
    yield first, second
    await first.stop()
    await second.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    started: list[Client] = []
    yield started
    for client in started:
        await client.close()


def document(uri: str, database: str, **sections: Any) -> dict[str, Any]:
    """A configuration document; each keyword replaces a top-level section."""
    return {
        "metadata": {"mongodb_uri": uri, "database": database, "timeout": "300ms"},
        "views": [OPS, BUSINESS],
        "aggregation": {"interval": "1s", "lateness": "0s"},
        "shutdown_timeout": "2s",
        **sections,
    }


def destination(sink: RecordingSink, name: str, **keys: Any) -> dict[str, Any]:
    return {"url": sink.url, "name": name, "min_backoff": "10ms", "max_backoff": "50ms", **keys}


async def start(path: Path, config: dict[str, Any], clients: list[Client]) -> Client:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    app = create_app(load_config(str(path)), Telemetry(), config_path=str(path))
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    clients.append(client)
    await wait_until(lambda: proxy_of(client).ready)
    return client


async def write(client: Client, text: str) -> None:
    response = await client.post("/api/v1/write", data=wire_request(text), headers=HEADERS)
    assert response.status == 204, await response.text()


def second_start() -> int:
    """A whole second well in the past, so every test sample is in a window of its own."""
    return (int(time.time()) - 20) * 1000


def values_of(sink: RecordingSink, view: str) -> list[float]:
    return [value for labels, _, value in sink.accepted_samples() if dict(labels)["view"] == view]


def views_of(sink: RecordingSink) -> set[str]:
    return {dict(labels)["view"] for labels, _, _ in sink.accepted_samples()}


async def test_reload_keeps_an_unchanged_view_and_restarts_a_changed_one(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sinks: tuple[RecordingSink, RecordingSink],
    clients: list[Client],
) -> None:
    sink = sinks[0]
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout", "tier": "1"}])
    path = tmp_path / "enrichproxy.yaml"
    config = document(mongo.uri, mongo_db_name, remote_write=[destination(sink, "sink")])
    client = await start(path, config, clients)
    t = second_start()
    # A counter reset (10 → 3) before the reload: a view that keeps its state goes on from 13.
    await write(client, f'x_total{{pod="a"}} 10 @{t + 500}\nx_total{{pod="a"}} 3 @{t + 1500}')
    ops_series = (("__name__", "x_total"), ("service", "checkout"), ("view", "ops"))
    ops_group = proxy_of(client).engine.view_group(0, ops_series)
    assert ops_group is not None and ops_group.value == 13.0

    changed = {"name": "business", "keep": ["service", "tier"]}
    path.write_text(yaml.safe_dump({**config, "views": [OPS, changed]}), encoding="utf-8")
    response = await client.post("/-/reload")
    assert response.status == 200, await response.text()
    assert proxy_of(client).engine.view_group(0, ops_series) == ops_group  # moved over
    # The changed view's open window left at the reload, before the switch.
    await wait_until(lambda: values_of(sink, "business") == [10.0, 13.0])

    await write(client, f'x_total{{pod="a"}} 4 @{t + 2500}\nx_total{{pod="a"}} 5 @{t + 3500}')
    await client.close()  # shutdown emits the last windows
    assert values_of(sink, "ops") == [10.0, 13.0, 14.0, 15.0]  # no reset downstream
    # The changed view started empty: from the counter's current value, with its new labels.
    business = [
        (dict(labels).get("tier"), value)
        for labels, _, value in sink.accepted_samples()
        if dict(labels)["view"] == "business"
    ]
    assert business == [(None, 10.0), (None, 13.0), ("1", 4.0), ("1", 5.0)]
    assert metric(client, "enrichproxy_config_reloads_total", result="success") == 1
    assert metric(client, "enrichproxy_config_last_reload_successful") == 1


async def test_a_broken_file_keeps_the_running_configuration(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sinks: tuple[RecordingSink, RecordingSink],
    clients: list[Client],
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    path = tmp_path / "enrichproxy.yaml"
    config = document(mongo.uri, mongo_db_name, remote_write=[destination(sinks[0], "sink")])
    client = await start(path, config, clients)
    proxy = proxy_of(client)
    running, engine = proxy.config, proxy.engine
    loaded_at = metric(client, "enrichproxy_config_last_reload_success_timestamp_seconds")
    assert loaded_at > 0

    broken = {**config, "views": [{"name": "ops", "keep": ["1bad"]}]}
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    response = await client.post("/-/reload")
    assert response.status == 500
    answer = await response.text()
    assert "the running one is kept" in answer
    assert "views[0].keep[0]: '1bad' is not a valid label name" in answer
    assert (proxy.config, proxy.engine) == (running, engine)
    assert metric(client, "enrichproxy_config_last_reload_successful") == 0
    assert metric(client, "enrichproxy_config_reloads_total", result="failure") == 1
    assert metric(client, "enrichproxy_config_last_reload_success_timestamp_seconds") == loaded_at
    path.write_text("views: [", encoding="utf-8")
    response = await client.post("/-/reload")
    assert response.status == 500
    assert "not valid YAML" in await response.text()
    assert (await client.get("/-/ready")).status == 200  # still serving

    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert (await client.post("/-/reload")).status == 200
    assert metric(client, "enrichproxy_config_last_reload_successful") == 1
    assert metric(client, "enrichproxy_config_reloads_total", result="failure") == 2
    assert metric(client, "enrichproxy_config_reloads_total", result="success") == 1


async def test_each_destination_receives_the_views_it_lists(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sinks: tuple[RecordingSink, RecordingSink],
    clients: list[Client],
) -> None:
    only_ops, every = sinks
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    path = tmp_path / "enrichproxy.yaml"
    config = document(
        mongo.uri,
        mongo_db_name,
        remote_write=[destination(only_ops, "only", views=["ops"]), destination(every, "every")],
    )
    client = await start(path, config, clients)
    forwarder = proxy_of(client).forwarder
    kept = forwarder.destinations[0]
    t = second_start()
    await write(client, f'x_total{{pod="a"}} 1 @{t + 500}\nx_total{{pod="a"}} 2 @{t + 1500}')
    await wait_until(lambda: len(every.accepted_samples()) == 2)
    assert views_of(only_ops) == {"ops"}
    assert views_of(every) == {"ops", "business"}

    # Only the views filter changed: the same destination, queue and senders, other views.
    switched = [destination(only_ops, "only", views=["business"]), destination(every, "every")]
    path.write_text(yaml.safe_dump({**config, "remote_write": switched}), encoding="utf-8")
    assert (await client.post("/-/reload")).status == 200
    assert forwarder.destinations[0] is kept
    before = len(only_ops.accepted_samples())
    await write(client, f'x_total{{pod="a"}} 3 @{t + 2500}')
    await client.close()
    assert {dict(labels)["view"] for labels, _, _ in only_ops.accepted_samples()[before:]} == {
        "business"
    }


async def test_a_changed_destination_is_drained_and_replaced(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sinks: tuple[RecordingSink, RecordingSink],
    clients: list[Client],
) -> None:
    old, new = sinks
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    path = tmp_path / "enrichproxy.yaml"
    config = document(
        mongo.uri, mongo_db_name, views=[OPS], remote_write=[destination(old, "downstream")]
    )
    client = await start(path, config, clients)
    forwarder = proxy_of(client).forwarder
    old.hold.clear()  # the old downstream hangs: the first window stays in flight
    t = second_start()
    await write(client, f'x_total{{pod="a"}} 1 @{t + 500}\nx_total{{pod="a"}} 2 @{t + 1500}')
    await wait_until(lambda: forwarder.destinations[0].queued == 1)
    moved = {**config, "remote_write": [destination(new, "downstream")]}
    path.write_text(yaml.safe_dump(moved), encoding="utf-8")
    reload = asyncio.create_task(client.post("/-/reload"))
    await asyncio.sleep(0.2)
    assert not reload.done()  # draining the old destination
    old.hold.set()
    assert (await reload).status == 200
    # What was queued for the old URL reached it before the new destination started.
    assert [value for _, _, value in old.accepted_samples()] == [1.0]
    await write(client, f'x_total{{pod="a"}} 3 @{t + 2500}')
    await client.close()
    assert [value for _, _, value in new.accepted_samples()] == [2.0, 3.0]
    assert metric(client, "enrichproxy_queue_capacity_samples", destination="downstream") > 0


async def test_a_metadata_change_restarts_the_store_with_the_tables_it_had(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sinks: tuple[RecordingSink, RecordingSink],
    clients: list[Client],
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    path = tmp_path / "enrichproxy.yaml"
    config = document(
        mongo.uri, mongo_db_name, views=[OPS], remote_write=[destination(sinks[0], "sink")]
    )
    client = await start(path, config, clients)
    proxy = proxy_of(client)
    store, table = proxy.store, proxy.engine.planner.tables[0]
    metadata = {**config["metadata"], "refresh_interval": "5s"}
    path.write_text(yaml.safe_dump({**config, "metadata": metadata}), encoding="utf-8")
    assert (await client.post("/-/reload")).status == 200
    assert proxy.store is not store
    assert proxy.ready  # the unchanged rule kept its table: no 503 while it is read again
    assert proxy.engine.planner.tables[0] is table
    t = second_start()
    await write(client, f'x_total{{pod="a"}} 1 @{t + 500}')
    # Not before: pymongo leaks a socket when a store is stopped while it connects.
    restarted = proxy.store
    assert restarted is not None
    await wait_until(lambda: all(f.state in FOLLOWING for f in restarted.followers))
    await client.close()
    assert [dict(labels)["service"] for labels, _, _ in sinks[0].accepted_samples()] == ["checkout"]


async def test_with_a_state_file_the_reload_writes_the_new_views_at_once(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sinks: tuple[RecordingSink, RecordingSink],
    clients: list[Client],
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    path, state = tmp_path / "enrichproxy.yaml", tmp_path / "state.json"
    aggregation = {"interval": "1s", "lateness": "0s", "state_path": str(state)}
    config = document(
        mongo.uri,
        mongo_db_name,
        aggregation={**aggregation, "checkpoint_interval": "1h"},
        remote_write=[destination(sinks[0], "sink")],
    )
    client = await start(path, config, clients)
    t = second_start()
    await write(client, f'x_total{{pod="a"}} 1 @{t + 500}\nx_total{{pod="a"}} 2 @{t + 1500}')
    changed = {**config, "views": [OPS, {"name": "business", "keep": []}]}
    path.write_text(yaml.safe_dump(changed), encoding="utf-8")
    assert (await client.post("/-/reload")).status == 200
    # Checkpointed at the reload (not after checkpoint_interval): the changed view, empty.
    saved = json.loads(unframe("state", state.read_bytes()))["views"]
    assert saved["business"]["groups"] == []
    assert len(saved["ops"]["groups"]) == 1
    emitted = json.loads(unframe("emitted", (tmp_path / "state.json.emitted").read_bytes()))
    assert emitted["business"] >= t + 2000  # its last window (end, ms) left at the reload


async def test_a_proxy_without_a_file_cannot_reload(
    mongo: MongoServer,
    mongo_db_name: str,
    sinks: tuple[RecordingSink, RecordingSink],
    clients: list[Client],
    tmp_path: Path,
) -> None:
    path = tmp_path / "enrichproxy.yaml"
    path.write_text(
        yaml.safe_dump(document(mongo.uri, mongo_db_name, remote_write=[{"url": sinks[0].url}]))
    )
    client: Client = TestClient(TestServer(create_app(load_config(str(path)), Telemetry())))
    await client.start_server()
    clients.append(client)
    # Not before: pymongo leaks a socket when a store is stopped while it connects.
    await wait_until(lambda: proxy_of(client).ready)
    response = await client.post("/-/reload")
    assert response.status == 400
    assert "without a configuration file" in await response.text()
    assert (await client.get("/-/reload")).status == 405
