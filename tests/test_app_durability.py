"""The write path with an input log that the disk refuses: 503, and nothing applied."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from inprocess import HEADERS, config_for, metric, proxy_of, seed, start_app, wait_until, write_body
from realparts import MongoServer
from sinks import RecordingSink

from enrichproxy.durability.input_log import Ticket
from enrichproxy.wire.v2 import WireProtocol


async def test_a_write_the_disk_refuses_is_answered_503_before_anything_is_applied(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    config = config_for(
        mongo.uri,
        mongo_db_name,
        sink.url,
        aggregation={"state_path": str(tmp_path / "state.json")},
    )
    client = await start_app(config, clients)
    await wait_until(lambda: metric(client, "enrichproxy_ready") == 1)
    proxy = proxy_of(client)
    input_log = proxy.input_log
    assert input_log is not None

    def full_disk(body: bytes, protocol: WireProtocol = WireProtocol.V1) -> Ticket:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(input_log, "append", full_disk)
    body = write_body("a", [(1000, 5.0)], name="jobs_in_flight")
    response = await client.post("/api/v1/write", data=body, headers=HEADERS)
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert proxy.engine.stats().cached_series == 0  # the engine never saw it
    assert metric(client, "enrichproxy_received_samples_total") == 0

    monkeypatch.undo()
    response = await client.post("/api/v1/write", data=body, headers=HEADERS)
    assert response.status == 204
    assert proxy.engine.stats().cached_series == 1
