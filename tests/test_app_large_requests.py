"""A request with very many new series is applied in steps: the writes that arrive meanwhile
are answered before it, and every sample of both arrives downstream."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from engines import engine_kind
from inprocess import (
    HEADERS,
    config_for,
    is_ready,
    proxy_of,
    seed,
    start_app,
    wait_until,
    write_body,
)
from realparts import MongoServer
from sinks import RecordingSink

from enrichproxy.wire.codec import compress, encode_labels, encode_write_request

PODS = 50
ENDPOINTS = 4_000  # 200,000 new series in one request


def huge_body(timestamp_ms: int) -> bytes:
    series = [
        (
            encode_labels((("__name__", "jobs_total"), ("endpoint", f"/{e}"), ("pod", f"p{p}"))),
            [(timestamp_ms, 1.0)],
        )
        for p in range(PODS)
        for e in range(ENDPOINTS)
    ]
    return compress(encode_write_request(series))


@pytest.mark.skipif(
    engine_kind() == "python", reason="the reference engine applies a request in one step"
)
async def test_small_writes_are_answered_while_a_huge_one_is_applied(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
) -> None:
    await seed(
        mongo.uri,
        mongo_db_name,
        [{"pod": f"p{p}", "service": "big"} for p in range(PODS)]
        + [{"pod": "a", "service": "small"}],
    )
    config = config_for(
        mongo.uri,
        mongo_db_name,
        sink.url,
        max_decoded_bytes="1GiB",
        views=[{"name": "ops", "keep": ["service"]}],
    )
    client = await start_app(config, clients)
    await wait_until(lambda: is_ready(client))
    proxy = proxy_of(client)
    now = int(time.time() * 1000)
    huge = asyncio.create_task(
        client.post("/api/v1/write", data=io.BytesIO(huge_body(now - 1000)), headers=HEADERS)
    )
    # Until its first series are planned: decompression and decoding run in a thread anyway,
    # what is tested here is that planning and applying give the loop back.
    await wait_until(lambda: proxy.engine.stats().cached_series > 0 or huge.done())
    answered_during = 0
    for value in range(1, 6):
        small = await client.post(
            "/api/v1/write",
            data=write_body("a", [(now - 1000 + value, float(value))]),
            headers=HEADERS,
        )
        assert small.status == 204
        answered_during += not huge.done()
    response = await huge
    assert response.status == 204, await response.text()
    assert answered_during >= 1, "no small write was answered while the huge one was applied"
    await client.close()  # shutdown emits the open windows
    totals = {dict(labels)["service"]: value for labels, _, value in sink.accepted_samples()}
    assert totals == {"big": PODS * ENDPOINTS * 1.0, "small": 5.0}
