"""Request bodies that never arrive whole: a stuck sender times out, a vanished one is counted.

Raw sockets, because an HTTP client library will not send half a body on purpose.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from inprocess import config_for, metric, seed, start_app, wait_until
from realparts import MongoServer
from sinks import RecordingSink

from enrichproxy.server.app import PROXY, create_app
from enrichproxy.server.telemetry import Telemetry

DECLARED = 100_000


def head(port: int) -> bytes:
    return (
        f"POST /api/v1/write HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    ).encode() + b"0123456789"


async def ready_app(
    mongo: MongoServer,
    database: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
    **sections: Any,
) -> TestClient[Any, Any]:
    await seed(mongo.uri, database, [{"pod": "a", "service": "checkout"}])
    client = await start_app(config_for(mongo.uri, database, sink.url, **sections), clients)
    await wait_until(lambda: metric(client, "enrichproxy_ready") == 1)
    return client


async def test_a_body_that_stops_arriving_is_given_up_with_408(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
) -> None:
    client = await ready_app(mongo, mongo_db_name, sink, clients, body_read_timeout="500ms")
    port = client.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head(port))
    await writer.drain()
    async with asyncio.timeout(5):
        status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    # Closed, after aiohttp's lingering close (10 s at most) gives up on the rest of the body.
    async with asyncio.timeout(15):
        while await reader.read(65536):
            pass
    writer.close()
    assert metric(client, "enrichproxy_requests_total", code="408") == 1


async def test_a_client_that_hangs_up_mid_body_is_counted_and_logged_quietly(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run as ``serve`` runs it (aiohttp's TestServer would cancel the handler instead)."""
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    app = create_app(config_for(mongo.uri, mongo_db_name, sink.url), Telemetry())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        registry = app[PROXY].telemetry.registry

        def value(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        await wait_until(lambda: value("enrichproxy_ready") == 1)
        caplog.set_level(logging.INFO)
        for _ in range(3):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head(port))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            await writer.wait_closed()
        await wait_until(lambda: value("enrichproxy_client_disconnects_total") == 3)
        assert value("enrichproxy_requests_total", code="499") == 3
        assert value("enrichproxy_requests_total", code="500") == 0
        noisy = [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
        assert noisy == [], [r.getMessage() for r in noisy]
        assert sum("request abandoned" in r.getMessage() for r in caplog.records) == 3
    finally:
        await runner.cleanup()
