"""Sending remote write 2.0: headers, one symbols table per request, a type on every series,
the fallback to 1.0 on 415, and queued batches of the other protocol.

The receiver is the in-process RecordingSink, which decodes by Content-Type with the codec's
own 2.0 decoder (cross-checked against the official schema in tests/test_codec_v2.py) and can
play a 1.x receiver that answers 415 to 2.0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sinks import RecordingSink

from enrichproxy.config.schema import QueueConfig, RemoteWriteConfig
from enrichproxy.forward.forwarder import REMOTE_WRITE_HEADERS, Destination
from enrichproxy.model import MetricType, OutputSample
from enrichproxy.server.telemetry import Telemetry
from enrichproxy.wire.codec import encode_labels
from enrichproxy.wire.v2 import CONTENT_TYPE_V2, MESSAGE_V1, MESSAGE_V2

TYPES = {"jobs_total": MetricType.COUNTER, "load": MetricType.GAUGE}


def type_of(metric_name: str) -> MetricType:
    return TYPES.get(metric_name, MetricType.UNKNOWN)


def sample(metric: str, series: int, timestamp: int, value: float = 1.0) -> OutputSample:
    labels = (("__name__", metric), ("series", str(series)), ("view", "v"))
    return OutputSample(encode_labels(labels), timestamp, value)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def destination(
    url: str, session: aiohttp.ClientSession, telemetry: Telemetry, **overrides: object
) -> Destination:
    settings: dict[str, object] = {
        "url": url,
        "name": "sink",
        "min_backoff_ms": 10,
        "max_backoff_ms": 50,
        "shards": 1,
        "protobuf_message": MESSAGE_V2,
    }
    settings.update(overrides)
    config = RemoteWriteConfig(**settings)  # type: ignore[arg-type]
    return Destination(config, session, telemetry, types=type_of)


def fallbacks(telemetry: Telemetry) -> float:
    value = telemetry.registry.get_sample_value(
        "enrichproxy_forward_protocol_fallbacks_total", {"destination": "sink"}
    )
    return value or 0.0


async def test_a_2_0_destination_gets_2_0_with_a_type_on_every_series(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    telemetry = Telemetry()
    sender = destination(sink.url, session, telemetry)
    sender.start()
    sender.enqueue([sample("jobs_total", 1, 1000, 3.0), sample("load", 1, 1000, 0.5)])
    await sink.wait_accepted(2)
    await sender.stop()
    received = sink.accepted[0]
    assert received.headers["Content-Type"] == CONTENT_TYPE_V2
    assert received.headers["X-Prometheus-Remote-Write-Version"] == "2.0.0"
    assert received.headers["Content-Encoding"] == "snappy"
    assert received.types == {"jobs_total": MetricType.COUNTER, "load": MetricType.GAUGE}
    assert sorted((dict(labels)["__name__"], v) for labels, _, v in sink.accepted_samples()) == [
        ("jobs_total", 3.0),
        ("load", 0.5),
    ]
    assert fallbacks(telemetry) == 0


async def test_the_default_stays_1_0(sink: RecordingSink, session: aiohttp.ClientSession) -> None:
    sender = destination(sink.url, session, Telemetry(), protobuf_message=MESSAGE_V1)
    sender.start()
    sender.enqueue([sample("jobs_total", 1, 1000)])
    await sink.wait_accepted(1)
    await sender.stop()
    assert sink.accepted[0].headers["Content-Type"] == REMOTE_WRITE_HEADERS["Content-Type"]
    assert sink.accepted[0].types == {}


async def test_a_415_makes_the_destination_fall_back_to_1_0_once(
    sink: RecordingSink, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    sink.speaks_v2 = False
    telemetry = Telemetry()
    sender = destination(sink.url, session, telemetry)
    sender.start()
    sender.enqueue([sample("jobs_total", 1, 1000, 1.0)])
    await sink.wait_accepted(1)
    sender.enqueue([sample("jobs_total", 1, 2000, 2.0)])
    await sink.wait_accepted(2)
    await sender.stop()
    # One 415, then the refused batch again and the next one, both as 1.0: nothing lost.
    assert [r.headers["Content-Type"] for r in sink.attempts] == [
        CONTENT_TYPE_V2,
        REMOTE_WRITE_HEADERS["Content-Type"],
        REMOTE_WRITE_HEADERS["Content-Type"],
    ]
    assert [(ts, v) for _, ts, v in sink.accepted_samples()] == [(1000, 1.0), (2000, 2.0)]
    assert fallbacks(telemetry) == 1
    assert [r.message for r in caplog.records if "2.0" in r.message] == [
        "destination=sink does not take remote write 2.0: sending 1.0 from now on"
        " answer='remote write 2.0 is not supported'"
    ]


async def test_a_2xx_without_written_counts_is_a_receiver_that_read_nothing(
    sink: RecordingSink, session: aiohttp.ClientSession
) -> None:
    """A receiver older than 2.0 reads a 2.0 body as an empty 1.0 request and answers 204;
    the missing counts give it away, and the batch goes again as 1.0."""
    sink.ignores_content_type = True
    telemetry = Telemetry()
    sender = destination(sink.url, session, telemetry)
    sender.start()
    sender.enqueue([sample("jobs_total", 1, 1000, 1.0)])
    await sink.wait_accepted(1)
    await sender.stop()
    assert [len(r.series) for r in sink.accepted] == [0, 1]  # the 2.0 body read as empty
    assert sink.accepted[1].headers["Content-Type"] == REMOTE_WRITE_HEADERS["Content-Type"]
    assert fallbacks(telemetry) == 1


async def test_batches_queued_on_disk_in_the_other_protocol_are_sent_in_this_one(
    sink: RecordingSink, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    queue = QueueConfig(path=str(tmp_path / "queue"))
    hold = Telemetry()
    first = destination(sink.url, session, hold, protobuf_message=MESSAGE_V1, queue=queue)
    first.enqueue([sample("jobs_total", 1, 1000, 1.0), sample("load", 2, 1000, 4.0)])
    first.sync()
    await first.stop()  # never started: the batch stays on disk, encoded as 1.0
    second = destination(sink.url, session, Telemetry(), queue=queue)
    second.start()
    await sink.wait_accepted(2)
    await second.stop()
    received = sink.accepted[0]
    assert received.headers["Content-Type"] == CONTENT_TYPE_V2
    assert received.types == {"jobs_total": MetricType.COUNTER, "load": MetricType.GAUGE}
    assert sorted(v for _, _, v in sink.accepted_samples()) == [1.0, 4.0]
