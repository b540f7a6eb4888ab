"""Remote write 2.0 receiver conformance, as a table built from the specification.

Each row is a request to the real app (in-process, MongoDB a real wire-protocol server, the
downstream the recording sink): its Content-Type and body, the status the specification asks
for, the written counts (``X-Prometheus-Remote-Write-*-Written``, on every 2.0 answer, errors
included), a fragment of the reason, and what the downstream holds once the proxy has shut
down (every open window emitted and sent). 2.0 bodies are built with the official schema's
classes (proto/write_v2.proto), not with enrichproxy's encoder.

No row writes part of a request: enrichproxy applies a request whole or not at all, so an
error answer says 0 written, and the valid series of a refused request never arrive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from inprocess import config_for, seed, start_app, wait_until
from realparts import MongoServer, free_port
from sinks import RecordingSink

from enrichproxy.model import labels_to_text
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request
from enrichproxy.wire.proto import write_v2_pb2 as pb
from enrichproxy.wire.v2 import (
    EXEMPLARS_WRITTEN_HEADER,
    HISTOGRAMS_WRITTEN_HEADER,
    SAMPLES_WRITTEN_HEADER,
)

V1 = "application/x-protobuf"
V1_NAMED = "application/x-protobuf;proto=prometheus.WriteRequest"
V2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request"
SYMBOLS = ["", "__name__", "jobs_total", "pod", "a", "b", "trace_id", "abc"]
NOW = int(time.time() * 1000)
JOBS = 'jobs_total{service="checkout",view="ops"}'


def v2_body(series: list[dict[str, Any]], symbols: list[str] = SYMBOLS) -> bytes:
    message = pb.Request(symbols=symbols)
    for item in series:
        message.timeseries.append(pb.TimeSeries(**item))
    return message.SerializeToString()


def counter(refs: list[int], value: float, **more: Any) -> dict[str, Any]:
    """A series with one sample two seconds ago, typed as a counter."""
    return {
        "labels_refs": refs,
        "samples": [pb.Sample(value=value, timestamp=NOW - 2000)],
        "metadata": pb.Metadata(type=pb.Metadata.METRIC_TYPE_COUNTER),
        **more,
    }


POD_A, POD_B = [1, 2, 3, 4], [1, 2, 3, 5]
V1_BODY = encode_write_request(
    [(encode_labels((("__name__", "jobs_total"), ("pod", "a"))), [(NOW - 2000, 3.0)])]
)
VALID_V2 = v2_body([counter(POD_A, 3.0), counter(POD_B, 4.0)])


@dataclass(frozen=True)
class Row:
    content_type: str
    body: bytes
    status: int
    written: tuple[int, int, int] | None
    """(samples, histograms, exemplars) the answer must report; None: a 1.0 answer, without."""
    reason: str = ""
    downstream: dict[str, float] = field(default_factory=dict)
    compressed: bool = True
    encoding: str = "snappy"


TABLE = {
    "2.0 valid": Row(V2, VALID_V2, 204, (2, 0, 0), downstream={JOBS: 7.0}),
    "2.0 histograms and exemplars are counted and skipped": Row(
        V2,
        v2_body(
            [
                counter(POD_A, 3.0, exemplars=[pb.Exemplar(labels_refs=[6, 7], value=1.0)]),
                {
                    "labels_refs": POD_B,
                    "histograms": [pb.Histogram(count_int=2, sum=1.0, timestamp=NOW - 2000)],
                },
            ]
        ),
        204,
        (1, 0, 0),
        downstream={JOBS: 3.0},
    ),
    "2.0 empty request": Row(V2, v2_body([]), 204, (0, 0, 0)),
    "1.0 without proto": Row(V1, V1_BODY, 204, None, downstream={JOBS: 3.0}),
    "1.0 named": Row(V1_NAMED, V1_BODY, 204, None, downstream={JOBS: 3.0}),
    # The reserved fields 1-3 make a body of the other protocol read as an empty request.
    "1.0 body sent as 2.0": Row(V2, V1_BODY, 204, (0, 0, 0)),
    "2.0 body sent as 1.0": Row(V1, VALID_V2, 204, None),
    "unknown proto": Row(
        "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        VALID_V2,
        415,
        None,
        "accepts proto=prometheus.WriteRequest (remote write 1.0) and"
        " proto=io.prometheus.write.v2.Request (remote write 2.0)",
    ),
    "not protobuf": Row("application/json", b"{}", 415, None, "expected application/x-protobuf"),
    "symbols[0] not empty": Row(
        V2,
        v2_body([counter(POD_A, 1.0)], ["x", *SYMBOLS[1:]]),
        400,
        (0, 0, 0),
        "symbols[0] must be the empty string",
    ),
    "name ref out of range": Row(
        V2,
        v2_body([counter([1, 2, 30, 4], 1.0)]),
        400,
        (0, 0, 0),
        "timeseries[0].labels_refs[2] = 30 is out of range: the request has 8 symbols",
    ),
    "value ref out of range": Row(
        V2,
        v2_body([counter([1, 8], 1.0)]),
        400,
        (0, 0, 0),
        "timeseries[0].labels_refs[1] = 8 is out of range",
    ),
    "help_ref out of range": Row(
        V2,
        v2_body(
            [
                {
                    **counter(POD_A, 1.0),
                    "metadata": pb.Metadata(type=pb.Metadata.METRIC_TYPE_COUNTER, help_ref=99),
                }
            ]
        ),
        400,
        (0, 0, 0),
        "timeseries[0].metadata.help_ref = 99 is out of range",
    ),
    "odd labels_refs": Row(
        V2, v2_body([counter([1, 2, 3], 1.0)]), 400, (0, 0, 0), "they must come in pairs"
    ),
    "empty label name": Row(
        V2,
        v2_body([counter([1, 2, 0, 4], 1.0)]),
        400,
        (0, 0, 0),
        "names a label with the empty string",
    ),
    # One good series, one bad: nothing of the request is written, and the answer says so.
    "partly invalid": Row(
        V2,
        v2_body([counter(POD_A, 3.0), counter([1, 2, 3, 40], 4.0)]),
        400,
        (0, 0, 0),
        "timeseries[1].labels_refs[3] = 40 is out of range",
    ),
    "not snappy": Row(V2, b"not snappy at all", 400, (0, 0, 0), "snappy", compressed=False),
    "2.0 gzip": Row(V2, VALID_V2, 415, (0, 0, 0), "remote write needs snappy", encoding="gzip"),
}


@pytest.mark.parametrize("name", list(TABLE))
async def test_conformance(
    name: str,
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    clients: list[TestClient[Any, Any]],
) -> None:
    row = TABLE[name]
    await seed(
        mongo.uri,
        mongo_db_name,
        [{"pod": "a", "service": "checkout"}, {"pod": "b", "service": "checkout"}],
    )
    client = await start_app(config_for(mongo.uri, mongo_db_name, sink.url), clients)
    await wait_until(lambda: _ready(client))
    body = compress(row.body) if row.compressed else row.body
    response = await client.post(
        "/api/v1/write",
        data=body,
        headers={"Content-Type": row.content_type, "Content-Encoding": row.encoding},
    )
    assert response.status == row.status, await response.text()
    assert row.reason in await response.text()
    written_headers = (SAMPLES_WRITTEN_HEADER, HISTOGRAMS_WRITTEN_HEADER, EXEMPLARS_WRITTEN_HEADER)
    if row.written is None:
        assert not any(header in response.headers for header in written_headers)
    else:
        assert tuple(int(response.headers[header]) for header in written_headers) == row.written
    await client.close()  # shutdown: open windows emitted, the queue drained
    arrived = {labels_to_text(labels): value for labels, _, value in sink.accepted_samples()}
    assert arrived == row.downstream


async def test_a_503_of_ours_says_nothing_was_written(
    sink: RecordingSink, clients: list[TestClient[Any, Any]]
) -> None:
    dead_mongo = f"mongodb://127.0.0.1:{free_port()}/"
    client = await start_app(config_for(dead_mongo, "metrics", sink.url), clients)
    response = await client.post(
        "/api/v1/write",
        data=compress(VALID_V2),
        headers={"Content-Type": V2, "Content-Encoding": "snappy"},
    )
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert response.headers[SAMPLES_WRITTEN_HEADER] == "0"
    assert response.headers[HISTOGRAMS_WRITTEN_HEADER] == "0"
    assert response.headers[EXEMPLARS_WRITTEN_HEADER] == "0"


async def _ready(client: TestClient[Any, Any]) -> bool:
    response = await client.get("/-/ready")
    return bool(response.status == 200)
