"""A request with very many new series is applied in steps: the writes that arrive meanwhile
are answered before it, and every sample of both arrives downstream."""

from __future__ import annotations

import asyncio
import io
import time
from types import SimpleNamespace
from typing import Any, cast

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

from enrichproxy.engine.interface import FlushSteps, IngestSteps, ViewOutput
from enrichproxy.engine.native import NativeEngine
from enrichproxy.model import OutputSample
from enrichproxy.server import app as app_module
from enrichproxy.server.app import Proxy
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


async def start_big_app(
    mongo: MongoServer,
    database: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
    **sections: Any,
) -> TestClient[Any, Any]:
    """The app over a table of the huge request's pods (service "big") and pod "a" ("small"),
    taking requests of up to 1 GiB decoded; ``sections`` as for config_for."""
    await seed(
        mongo.uri,
        database,
        [{"pod": f"p{p}", "service": "big"} for p in range(PODS)]
        + [{"pod": "a", "service": "small"}],
    )
    config = config_for(mongo.uri, database, sink.url, max_decoded_bytes="1GiB", **sections)
    return await start_app(config, clients)


@pytest.mark.skipif(
    engine_kind() == "python", reason="the reference engine applies a request in one step"
)
async def test_small_writes_are_answered_while_a_huge_one_is_applied(
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
) -> None:
    client = await start_big_app(
        mongo, mongo_db_name, sink, clients, views=[{"name": "ops", "keep": ["service"]}]
    )
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


@pytest.mark.skipif(engine_kind() == "python", reason="the reference engine flushes in one step")
async def test_small_writes_are_applied_between_the_steps_of_a_large_flush(
    monkeypatch: pytest.MonkeyPatch,
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
) -> None:
    """Closing the window of 200,000 series gives the engine to the writes between steps."""
    client = await start_big_app(
        mongo,
        mongo_db_name,
        sink,
        clients,
        views=[{"name": "ops", "keep": ["service", "endpoint"]}],  # 4,001 output series
        # The huge request's series send nothing more: its window waits for them no longer
        # than this much sample time.
        aggregation={"idle_flush": "1s"},
    )
    await wait_until(lambda: is_ready(client))
    proxy = proxy_of(client)
    engine = proxy.engine
    assert isinstance(engine, NativeEngine)
    engine.flush_step_inputs = 64  # many steps: a write in flight surely lands between two
    monkeypatch.setattr(app_module, "FORWARD_SLICE_SAMPLES", 500)  # queued in 9 slices
    events: list[tuple[str, int]] = []
    flush_steps, ingest_steps = engine.flush_steps, engine.ingest_steps

    def recorded_flush(now_ms: int, final: bool = False) -> FlushSteps:
        steps = flush_steps(now_ms, final)
        events.append(("flush-begin", 0))
        outputs = yield from steps
        events.append(("flush-end", sum(len(output.samples) for output in outputs)))
        return outputs

    def recorded_ingest(prepared: object, now_ms: int) -> IngestSteps:
        result = yield from ingest_steps(prepared, now_ms)
        events.append(("ingest", result.samples))
        return result

    engine.flush_steps = recorded_flush  # type: ignore[method-assign]
    engine.ingest_steps = recorded_ingest  # type: ignore[method-assign]
    now = int(time.time() * 1000)
    response = await client.post(
        "/api/v1/write", data=io.BytesIO(huge_body(now - 2000)), headers=HEADERS
    )
    assert response.status == 204, await response.text()
    # Small writes one after another move the watermark past the huge window; the flush that
    # closes it runs while they keep coming.
    big_flush_done = False
    for value in range(1, 400):
        small = await client.post(
            "/api/v1/write",
            data=write_body("a", [(int(time.time() * 1000), float(value))]),
            headers=HEADERS,
        )
        assert small.status == 204
        big_flush_done = any(kind == "flush-end" and n >= ENDPOINTS for kind, n in events)
        if big_flush_done:
            break
        await asyncio.sleep(0.01)
    assert big_flush_done, [e for e in events if e[0] != "ingest"]
    end = next(i for i, (kind, n) in enumerate(events) if kind == "flush-end" and n >= ENDPOINTS)
    begin = max(i for i, (kind, _) in enumerate(events[:end]) if kind == "flush-begin")
    between = [event for event in events[begin:end] if event[0] == "ingest"]
    assert between, f"no write was applied during the flush: {events[begin : end + 1]}"
    await client.close()  # shutdown emits the open windows
    big = {
        dict(labels)["endpoint"]: sample_value
        for labels, _, sample_value in sink.accepted_samples()
        if dict(labels)["service"] == "big"
    }
    assert len(big) == ENDPOINTS
    assert set(big.values()) == {float(PODS)}


class CountingForwarder:
    def __init__(self) -> None:
        self.queued: list[tuple[str | None, int]] = []
        self.syncs = 0

    def enqueue(self, samples: list[OutputSample], view: str | None = None) -> None:
        self.queued.append((view, len(samples)))

    def sync(self) -> None:
        self.syncs += 1


class NoTelemetry:
    def record_outputs(self, outputs: list[ViewOutput]) -> None:
        pass


async def test_output_left_unqueued_by_a_cancelled_flusher_waits_for_the_next_flush() -> None:
    """The windows are marked emitted before their samples are queued: a flusher stopped
    between two slices leaves the rest where the shutdown flush queues it first."""
    forwarder = CountingForwarder()
    proxy = cast(Proxy, SimpleNamespace(forwarder=forwarder, telemetry=NoTelemetry()))
    sample = OutputSample(b"", 0, 1.0)
    outputs = [ViewOutput("ops", [sample] * 40_000), ViewOutput("biz", [sample] * 10)]
    unqueued: list[ViewOutput] = []
    task = asyncio.create_task(app_module.forward_in_slices(proxy, outputs, unqueued))
    await asyncio.sleep(0)  # the first slice is queued, then it gives the loop back
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert forwarder.queued == [("ops", app_module.FORWARD_SLICE_SAMPLES)]
    left = [(piece.view, len(piece.samples)) for piece in unqueued]
    assert sum(n for _, n in forwarder.queued + left) == 40_010
    assert left[-1] == ("biz", 10)

    done = CountingForwarder()
    proxy = cast(Proxy, SimpleNamespace(forwarder=done, telemetry=NoTelemetry()))
    await app_module.forward_in_slices(proxy, outputs, [])
    assert sum(n for _, n in done.queued) == 40_010
    assert done.syncs == 1
