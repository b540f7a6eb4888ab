"""The forwarder against an in-process receiver that fails on demand."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import pytest
from realparts import free_port
from sinks import MOVED_PATH, Answer, RecordingSink

from enrichproxy.config.relabel import parse_relabel_config
from enrichproxy.config.schema import QueueConfig, RemoteWriteConfig, Secret
from enrichproxy.durability.health import DurabilityHealth
from enrichproxy.forward.forwarder import (
    REMOTE_WRITE_HEADERS,
    Destination,
    encode_batch,
    is_retryable,
    retry_after_seconds,
)
from enrichproxy.model import OutputSample
from enrichproxy.server.telemetry import Telemetry
from enrichproxy.wire.codec import decode_labels, decode_write_request, decompress, encode_labels


def _sample(series: int, timestamp: int, value: float = 1.0) -> OutputSample:
    labels = (("__name__", "m_total"), ("series", str(series)), ("view", "v"))
    return OutputSample(encode_labels(labels), timestamp, value)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _destination(
    url: str, session: aiohttp.ClientSession, telemetry: Telemetry, **overrides: object
) -> Destination:
    settings: dict[str, object] = {
        "url": url,
        "name": "sink",
        "min_backoff_ms": 10,
        "max_backoff_ms": 50,
        "shards": 2,
    }
    settings.update(overrides)
    return Destination(RemoteWriteConfig(**settings), session, telemetry)  # type: ignore[arg-type]


def _value(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


def test_encode_batch_groups_samples_per_series_in_order() -> None:
    batch = [_sample(1, 1000), _sample(2, 1000), _sample(1, 2000, 2.0)]
    request = decode_write_request(decompress(encode_batch(batch)))
    assert [(dict(decode_labels(s.label_bytes))["series"], s.samples) for s in request.series] == [
        ("1", [(1000, 1.0), (2000, 2.0)]),
        ("2", [(1000, 1.0)]),
    ]


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    assert 15 < (retry_after_seconds(later) or 0) <= 20
    assert retry_after_seconds("100000") == 300.0  # capped


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (None, True),
        (500, True),
        (503, True),
        (429, True),
        (401, True),
        (403, True),
        (404, True),
        (301, True),
        (302, True),
        (307, True),
        (400, False),
        (409, False),
        (413, False),
        (415, False),
        (422, False),
    ],
)
def test_which_answers_are_retried(status: int | None, retry: bool) -> None:
    assert is_retryable(status) is retry


async def test_sends_with_remote_write_headers_and_extra_headers(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    destination = _destination(
        sink.url, session, telemetry, headers=(("X-Scope-OrgID", "tenant-1"),)
    )
    destination.start()
    destination.enqueue([_sample(1, 1000)])
    await sink.wait_accepted(1)
    assert await destination.drain(5)
    await destination.stop()
    headers = sink.accepted[0].headers
    for name, value in REMOTE_WRITE_HEADERS.items():
        assert headers[name] == value
    assert headers["X-Scope-OrgID"] == "tenant-1"
    assert _value(telemetry, "enrichproxy_forward_samples_total", destination="sink") == 1


async def test_retries_5xx_and_connection_errors_until_accepted(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    sink.answers.extend([Answer(500, "boom"), Answer(503)])
    destination = _destination(sink.url, session, telemetry, shards=1)
    destination.start()
    destination.enqueue([_sample(1, 1000)])
    await sink.wait_accepted(1)
    assert await destination.drain(5)
    await destination.stop()
    assert len(sink.attempts) == 3
    assert sink.accepted_samples() == [(sink.accepted[0].series[0][0], 1000, 1.0)]
    assert _value(telemetry, "enrichproxy_forward_retries_total", destination="sink") == 2
    assert _value(telemetry, "enrichproxy_forward_requests_total", destination="sink", code="500")


async def test_connection_refused_is_retried_and_counted(session: aiohttp.ClientSession) -> None:
    telemetry = Telemetry()
    url = f"http://127.0.0.1:{free_port()}/api/v1/write"
    destination = _destination(url, session, telemetry, shards=1, capacity=1)
    destination.start()
    destination.enqueue([_sample(1, 1000)])
    assert destination.full
    async with asyncio.timeout(5):
        while _value(telemetry, "enrichproxy_forward_retries_total", destination="sink") < 2:
            await asyncio.sleep(0.01)
    # Shutting down with the destination still down: given up within the deadline, counted.
    await destination.drain(0.2)
    await destination.stop()
    assert destination.queued == 0
    assert _value(telemetry, "enrichproxy_forward_requests_total", destination="sink", code="error")
    assert (
        _value(
            telemetry,
            "enrichproxy_forward_samples_dropped_total",
            destination="sink",
            reason="shutdown",
        )
        == 1
    )


async def test_429_honours_retry_after(sink: RecordingSink, session: aiohttp.ClientSession) -> None:
    telemetry = Telemetry()
    sink.answers.append(Answer(429, "slow down", {"Retry-After": "1"}))
    destination = _destination(sink.url, session, telemetry, shards=1)
    destination.start()
    started = time.monotonic()
    destination.enqueue([_sample(1, 1000)])
    await sink.wait_accepted(1)
    elapsed = time.monotonic() - started
    await destination.stop()
    assert len(sink.attempts) == 2
    assert elapsed >= 0.95  # backoff alone would have been <= 50 ms


async def test_permanent_4xx_drops_the_batch_counts_it_and_goes_on(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    sink.answers.append(Answer(400, "out of order sample"))
    destination = _destination(sink.url, session, telemetry, shards=1)
    destination.start()
    destination.enqueue([_sample(1, 1000), _sample(2, 1000)])
    async with asyncio.timeout(5):
        while not sink.attempts:
            await asyncio.sleep(0.01)
    destination.enqueue([_sample(1, 2000)])
    await sink.wait_accepted(1)
    assert await destination.drain(5)
    await destination.stop()
    assert len(sink.attempts) == 2
    assert [ts for _, ts, _ in sink.accepted_samples()] == [2000]
    dropped = _value(
        telemetry, "enrichproxy_forward_samples_dropped_total", destination="sink", reason="400"
    )
    assert dropped == 2


async def test_batches_respect_max_samples_per_send(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    destination = _destination(sink.url, session, telemetry, shards=1, max_samples_per_send=10)
    destination.start()
    destination.enqueue([_sample(n, 1000) for n in range(35)])
    await sink.wait_accepted(35)
    await destination.stop()
    sizes = [sum(len(s) for _, s in received.series) for received in sink.accepted]
    assert max(sizes) <= 10
    assert sum(sizes) == 35


async def test_each_series_stays_in_order_through_failures(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    sink.answers.extend([Answer(500), Answer(503), Answer(429), Answer(502)])
    destination = _destination(sink.url, session, telemetry, shards=3, max_samples_per_send=7)
    destination.start()
    total = 0
    for step in range(1, 11):
        destination.enqueue([_sample(n, step * 1000, float(step)) for n in range(20)])
        total += 20
        await asyncio.sleep(0.005)
    await sink.wait_accepted(total)
    await destination.stop()
    per_series: dict[tuple[tuple[str, str], ...], list[int]] = defaultdict(list)
    for labels, timestamp, _ in sink.accepted_samples():
        per_series[labels].append(timestamp)
    assert len(per_series) == 20
    for timestamps in per_series.values():
        assert timestamps == sorted(timestamps)
        assert len(timestamps) == len(set(timestamps)) == 10


async def test_429_is_dropped_when_retry_on_http_429_is_off(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    """Prometheus' queue_config.retry_on_http_429: false, honoured as Prometheus does."""
    telemetry = Telemetry()
    sink.answers.append(Answer(429, "slow down"))
    destination = _destination(sink.url, session, telemetry, shards=1, retry_on_http_429=False)
    destination.start()
    destination.enqueue([_sample(1, 1000)])
    async with asyncio.timeout(5):
        while not sink.attempts:
            await asyncio.sleep(0.01)
    destination.enqueue([_sample(1, 2000)])
    await sink.wait_accepted(1)
    await destination.stop()
    assert [ts for _, ts, _ in sink.accepted_samples()] == [2000]
    dropped = _value(
        telemetry, "enrichproxy_forward_samples_dropped_total", destination="sink", reason="429"
    )
    assert dropped == 1


async def test_write_relabel_configs_shape_what_the_destination_receives(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    relabel = (
        parse_relabel_config({"source_labels": ["series"], "regex": "2", "action": "drop"}),
        parse_relabel_config({"regex": "view", "action": "labeldrop"}),
        parse_relabel_config({"source_labels": ["series"], "target_label": "copy"}),
    )
    destination = _destination(
        sink.url, session, telemetry, shards=1, write_relabel_configs=relabel
    )
    destination.start()
    destination.enqueue([_sample(1, 1000), _sample(2, 1000), _sample(3, 1000)])
    await sink.wait_accepted(2)
    assert await destination.drain(5)
    await destination.stop()
    assert sorted(labels for labels, _ts, _value in sink.accepted_samples()) == [
        (("__name__", "m_total"), ("copy", "1"), ("series", "1")),
        (("__name__", "m_total"), ("copy", "3"), ("series", "3")),
    ]
    relabel_dropped = _value(
        telemetry, "enrichproxy_forward_relabel_dropped_samples_total", destination="sink"
    )
    assert relabel_dropped == 1


async def test_authorization_type_and_credentials_make_the_header(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    destination = _destination(
        sink.url,
        session,
        Telemetry(),
        bearer_token=Secret("k3y"),
        authorization_type="ApiKey",
    )
    destination.start()
    destination.enqueue([_sample(1, 1000)])
    await sink.wait_accepted(1)
    await destination.stop()
    assert sink.accepted[0].headers["Authorization"] == "ApiKey k3y"


async def test_a_redirect_is_never_followed_but_retried_and_counted(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    """Following a 302 turns the POST into a GET that a page answers 200: counted as written,
    stored nowhere. Never followed, it is a wrong URL, retried until fixed."""
    telemetry = Telemetry()
    sink.answers.append(Answer(302, headers={"Location": MOVED_PATH}))
    destination = _destination(sink.url, session, telemetry, shards=1)
    destination.start()
    destination.enqueue([_sample(1, 1000)])
    await sink.wait_accepted(1)
    assert await destination.drain(5)
    await destination.stop()
    assert sink.moved_requests == 0
    assert len(sink.attempts) == 2
    assert _value(telemetry, "enrichproxy_forward_requests_total", destination="sink", code="302")
    assert _value(telemetry, "enrichproxy_forward_retries_total", destination="sink") == 1
    assert _value(telemetry, "enrichproxy_forward_samples_total", destination="sink") == 1


async def test_a_huge_answer_is_not_read_whole(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    sink.answers.append(Answer(200, stream_bytes=200 * 1024 * 1024))
    destination = _destination(sink.url, session, telemetry, shards=1)
    destination.start()
    destination.enqueue([_sample(1, 1000)])
    async with asyncio.timeout(10):
        while not _value(telemetry, "enrichproxy_forward_samples_total", destination="sink"):
            await asyncio.sleep(0.01)
    await destination.stop()
    # What socket buffers hold at most, far below the answer's 200 MiB.
    assert sink.streamed < 32 * 1024 * 1024


async def test_a_batch_the_disk_refuses_waits_in_memory_in_order_until_it_takes_it(
    sink: RecordingSink,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    telemetry = Telemetry()
    errors: list[tuple[str, str]] = []
    health = DurabilityHealth(on_error=lambda file, op: errors.append((file, op)))
    config = RemoteWriteConfig(
        url=sink.url,
        name="sink",
        min_backoff_ms=10,
        max_backoff_ms=50,
        shards=1,
        queue=QueueConfig(path=str(tmp_path / "queue")),
    )
    destination = Destination(config, session, telemetry, health=health)
    destination.start()
    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    destination.enqueue([_sample(1, 1000)])
    destination.enqueue([_sample(1, 2000)])
    destination.sync()  # the disk still refuses: nothing lost, nothing raised
    assert destination.holds_unqueued
    assert destination.queued == 2
    assert health.impaired and errors[0] == ("queue", "append")
    monkeypatch.setattr(os, "write", real_write)
    destination.sync()  # the disk takes them again, in order
    assert not destination.holds_unqueued
    await sink.wait_accepted(2)
    await destination.stop()
    assert [ts for _, ts, _ in sink.accepted_samples()] == [1000, 2000]
    assert not health.impaired
