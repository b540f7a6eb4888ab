"""The hand-written wire codec, against bytes a real Prometheus sent and against upb.

The generated protobuf classes (``enrichproxy.wire.proto.remote_pb2``, upb underneath) are the
reference: whatever one side encodes, the other must decode to the same labels and the same
sample bits. Values are compared by their bits, so a staleness marker that turned into an
ordinary NaN on the way would fail.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from pathlib import Path

import cramjam
import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError

from enrichproxy.errors import DecodeError, PayloadTooLarge, RequestError
from enrichproxy.model import (
    STALE_NAN,
    STALE_NAN_BITS,
    Labels,
    MetricMetadata,
    MetricType,
    is_stale_marker,
    labels_to_text,
)
from enrichproxy.wire import codec
from enrichproxy.wire.proto import remote_pb2 as pb

FIXTURES = Path(__file__).parent / "fixtures"
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

Samples = list[tuple[int, int]]
"""(timestamp, bits of the value): comparable even for NaNs."""
Normalised = tuple[list[tuple[Labels, Samples]], list[MetricMetadata]]


def bits(value: float) -> int:
    result: int = struct.unpack("<Q", struct.pack("<d", value))[0]
    return result


def from_bits(pattern: int) -> float:
    result: float = struct.unpack("<d", struct.pack("<Q", pattern))[0]
    return result


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- both decoders, normalised to one shape -----------------------------------------------------


def decode_ours(data: bytes) -> Normalised:
    request = codec.decode_write_request(data)
    series = [
        (codec.decode_labels(raw.label_bytes), [(ts, bits(value)) for ts, value in raw.samples])
        for raw in request.series
    ]
    return series, request.metadata


_KNOWN_TYPES = {int(t) for t in MetricType}


def decode_upb(data: bytes) -> Normalised:
    message = pb.WriteRequest()
    message.ParseFromString(data)
    series = []
    for item in message.timeseries:
        labels = tuple(sorted((label.name, label.value) for label in item.labels if label.value))
        series.append((labels, [(s.timestamp, bits(s.value)) for s in item.samples]))
    metadata = [
        MetricMetadata(
            m.metric_family_name,
            MetricType(m.type) if m.type in _KNOWN_TYPES else MetricType.UNKNOWN,
            m.help,
            m.unit,
        )
        for m in message.metadata
    ]
    return series, metadata


def upb_request(
    series: list[tuple[list[tuple[str, str]], list[tuple[int, float]]]],
    metadata: list[MetricMetadata] | None = None,
) -> bytes:
    message = pb.WriteRequest()
    for labels, samples in series:
        item = message.timeseries.add()
        for name, label_value in labels:
            item.labels.add(name=name, value=label_value)
        for timestamp, sample_value in samples:
            item.samples.add(timestamp=timestamp, value=sample_value)
    for meta in metadata or []:
        message.metadata.add(
            type=int(meta.type),
            metric_family_name=meta.family,
            help=meta.help,
            unit=meta.unit,
        )
    return message.SerializeToString()


# --- random requests (fixed seeds) --------------------------------------------------------------

_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_REST = _NAME_START + "0123456789"
_VALUE_ALPHABETS = [
    "abcxyz0123456789-_./:",
    "é日本語ßü",  # two- and three-byte UTF-8
    "🙂🚀",  # four-byte UTF-8
    ' "\\\n\t{}=,',  # what the text format must escape
]


def random_name(rng: random.Random) -> str:
    length = rng.choice([1, 3, 10, 40, 130])  # 130 bytes: a two-byte length varint
    return rng.choice(_NAME_START) + "".join(rng.choices(_NAME_REST, k=length - 1))


def random_value(rng: random.Random) -> str:
    length = rng.choice([1, 5, 20, 64, 130, 300, 20_000])  # 20 000: three-byte varints
    return "".join(rng.choices(rng.choice(_VALUE_ALPHABETS), k=length))


def random_labels(rng: random.Random) -> list[tuple[str, str]]:
    pairs = {"__name__": random_name(rng)}
    for _ in range(rng.randrange(0, 8)):
        pairs[random_name(rng)] = random_value(rng)
    return sorted(pairs.items())


def random_float(rng: random.Random) -> float:
    kind = rng.randrange(10)
    if kind == 0:
        return STALE_NAN
    if kind == 1:
        return rng.choice([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 5e-324])
    if kind == 2:
        return from_bits(rng.getrandbits(64))  # any bit pattern, NaN payloads included
    if kind == 3:
        return float(rng.randrange(-(10**6), 10**6))
    return rng.uniform(-1e12, 1e12)


def random_timestamp(rng: random.Random) -> int:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice([0, -1, 1, INT64_MIN, INT64_MAX, 127, 128, -128])
    if kind == 1:
        return rng.randrange(INT64_MIN, INT64_MAX)
    if kind == 2:
        return -rng.randrange(1, 10**13)  # before 1970
    return 1_795_837_384_898 + rng.randrange(-(10**6), 10**6)


def random_series(
    rng: random.Random, count: int
) -> list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]:
    series = []
    for _ in range(count):
        samples = [
            (random_timestamp(rng), random_float(rng)) for _ in range(rng.choice([0, 1, 1, 1, 3]))
        ]
        series.append((random_labels(rng), samples))
    return series


def random_metadata(rng: random.Random) -> list[MetricMetadata]:
    return [
        MetricMetadata(
            random_name(rng),
            rng.choice(list(MetricType)),
            rng.choice(["", random_value(rng)]),
            rng.choice(["", "seconds", "bytes"]),
        )
        for _ in range(rng.randrange(0, 3))
    ]


def expected(
    series: list[tuple[list[tuple[str, str]], list[tuple[int, float]]]],
    metadata: list[MetricMetadata],
) -> Normalised:
    return (
        [
            (tuple(sorted((n, v) for n, v in labels if v)), [(t, bits(v)) for t, v in samples])
            for labels, samples in series
        ],
        metadata,
    )


# --- the captured Prometheus payloads -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "decoded_bytes", "series", "metadata"),
    [
        ("metadata-only.snappy", 190, 0, 4),
        ("scrape-74-series.snappy", 14309, 74, 0),
        ("scrape-74-series-next.snappy", 14290, 74, 0),
        ("stale-markers.snappy", 14298, 74, 0),
    ],
)
def test_fixture_sizes_and_counts(
    name: str, decoded_bytes: int, series: int, metadata: int
) -> None:
    body = fixture(name)
    assert codec.declared_length(body) == decoded_bytes
    data = codec.decompress(body)
    assert len(data) == decoded_bytes
    request = codec.decode_write_request(data)
    assert len(request.series) == series
    assert len(request.metadata) == metadata
    assert all(len(raw.samples) == 1 for raw in request.series)
    assert (request.exemplars, request.histograms) == (0, 0)


def test_fixture_first_series_of_two_scrapes() -> None:
    first_labels = (
        'order_create_failed_total{cluster="demo-eu1",endpoint="/orders",error_type="timeout",'
        'instance="127.0.0.1:19105",job="checkout",pod="checkout-6c8f9",replica="a"}'
    )
    for name, value, timestamp in [
        ("scrape-74-series.snappy", 15.0, 1795837384898),
        ("scrape-74-series-next.snappy", 16.0, 1795837385898),
    ]:
        request = codec.decode_write_request(codec.decompress(fixture(name)))
        first = request.series[0]
        assert labels_to_text(codec.decode_labels(first.label_bytes)) == first_labels
        assert first.samples == [(timestamp, value)]


def test_fixture_series_by_metric_name() -> None:
    request = codec.decode_write_request(codec.decompress(fixture("scrape-74-series.snappy")))
    names = Counter(
        dict(codec.decode_labels(raw.label_bytes))["__name__"] for raw in request.series
    )
    assert names == {
        "order_create_failed_total": 12,
        "checkout_inflight_requests": 3,
        "http_request_duration_seconds_bucket": 36,
        "http_request_duration_seconds_count": 6,
        "http_request_duration_seconds_sum": 6,
        "payment_amount_count": 3,
        "payment_amount_sum": 3,
        "up": 1,
        "scrape_duration_seconds": 1,
        "scrape_samples_scraped": 1,
        "scrape_samples_post_metric_relabeling": 1,
        "scrape_series_added": 1,
    }
    pods = {dict(codec.decode_labels(raw.label_bytes)).get("pod") for raw in request.series}
    assert pods == {"checkout-6c8f9", "checkout-7d2a1", "payment-5b4c3", None}


def test_fixture_stale_markers_are_bit_exact() -> None:
    request = codec.decode_write_request(codec.decompress(fixture("stale-markers.snappy")))
    stale = [raw for raw in request.series if is_stale_marker(raw.samples[0][1])]
    assert len(stale) == 69
    assert all(bits(raw.samples[0][1]) == STALE_NAN_BITS for raw in stale)
    plain = {
        dict(codec.decode_labels(raw.label_bytes))["__name__"]: raw.samples[0][1]
        for raw in request.series
        if not is_stale_marker(raw.samples[0][1])
    }
    assert len(plain) == 5
    assert plain["up"] == 0.0
    assert all(value == value for value in plain.values())  # plain values, not NaN


def test_fixture_metadata_types() -> None:
    request = codec.decode_write_request(codec.decompress(fixture("metadata-only.snappy")))
    types = {item.family: item.type for item in request.metadata}
    assert types == {
        "order_create_failed": MetricType.COUNTER,
        "checkout_inflight_requests": MetricType.GAUGE,
        "http_request_duration_seconds": MetricType.HISTOGRAM,
        "payment_amount": MetricType.SUMMARY,
    }
    assert all(item.help for item in request.metadata)


@pytest.mark.parametrize(
    "name",
    [
        "metadata-only.snappy",
        "scrape-74-series.snappy",
        "scrape-74-series-next.snappy",
        "stale-markers.snappy",
    ],
)
def test_fixtures_decode_as_upb_decodes_them(name: str) -> None:
    data = codec.decompress(fixture(name))
    assert decode_ours(data) == decode_upb(data)


@pytest.mark.parametrize("name", ["scrape-74-series.snappy", "stale-markers.snappy"])
def test_fixtures_survive_our_encoder(name: str) -> None:
    data = codec.decompress(fixture(name))
    request = codec.decode_write_request(data)
    again = codec.encode_write_request(
        [(raw.label_bytes, raw.samples) for raw in request.series], request.metadata
    )
    body = codec.compress(again)
    assert decode_upb(codec.decompress(body)) == decode_upb(data)


# --- cross-checks with upb, both ways -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_random_requests_from_upb_decode_identically(seed: int) -> None:
    rng = random.Random(seed)
    series = random_series(rng, rng.randrange(0, 12))
    metadata = random_metadata(rng)
    data = upb_request(series, metadata)
    assert decode_ours(data) == expected(series, metadata)
    assert decode_upb(data) == expected(series, metadata)


@pytest.mark.parametrize("seed", range(40))
def test_random_requests_we_encode_decode_identically_in_upb(seed: int) -> None:
    rng = random.Random(1000 + seed)
    series = random_series(rng, rng.randrange(0, 12))
    metadata = random_metadata(rng)
    data = codec.encode_write_request(
        [(codec.encode_labels(tuple(labels)), samples) for labels, samples in series], metadata
    )
    body = codec.compress(data)
    assert codec.decompress(body) == data
    assert decode_upb(data) == expected(series, metadata)
    assert decode_ours(data) == expected(series, metadata)


@pytest.mark.parametrize(
    ("timestamp", "value"),
    [
        (0, 1.5),  # proto3 leaves a zero timestamp out: the sample is only its value
        (1795837384898, 0.0),  # a zero value is left out: only the timestamp
        (0, 0.0),  # an empty Sample message
        (-1, 2.0),
        (INT64_MIN, 3.0),
        (INT64_MAX, -0.0),
    ],
)
@pytest.mark.parametrize("position", ["only", "first", "last"])
def test_samples_with_default_fields_left_out(timestamp: int, value: float, position: str) -> None:
    other = ([("__name__", "other")], [(1000, 7.0)])
    target = ([("__name__", "target"), ("pod", "a")], [(timestamp, value)])
    series = {"only": [target], "first": [target, other], "last": [other, target]}[position]
    data = upb_request(series)
    assert decode_ours(data) == expected(series, [])


def test_negative_timestamps_both_ways() -> None:
    samples = [(-1, 1.0), (-1_000_000_000_000, 2.0), (INT64_MIN, 3.0), (-128, 4.0)]
    labels = (("__name__", "before_epoch"),)
    ours = codec.encode_write_request([(codec.encode_labels(labels), samples)])
    assert decode_upb(ours)[0] == [(labels, [(t, bits(v)) for t, v in samples])]
    theirs = upb_request([(list(labels), samples)])
    assert codec.decode_write_request(theirs).series[0].samples == samples


def test_long_labels_use_multi_byte_lengths() -> None:
    labels = [
        ("__name__", "m" * 127),  # the longest one-byte length
        ("a" * 128, "v" * 128),  # two-byte lengths for name, value, label and series
        ("b", "日" * 6000),  # 18 000 bytes: three-byte lengths
    ]
    series = [(labels, [(1, 1.0)]), ([("__name__", "short")], [(2, 2.0)])]
    data = upb_request(series)
    assert decode_ours(data) == expected(series, [])
    ours = codec.encode_write_request([(codec.encode_labels(tuple(labels)), [(1, 1.0)])])
    assert decode_upb(ours) == expected(series[:1], [])


def _label_field(name: str, value: str) -> bytes:
    return pb.Label(name=name, value=value).SerializeToString()


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + codec.encode_varint(len(payload)) + payload


def test_labels_after_samples_are_found() -> None:
    sample = pb.Sample(value=5.0, timestamp=1000).SerializeToString()
    later = pb.Sample(value=6.0, timestamp=2000).SerializeToString()
    body = b"".join(
        [
            _field(0x0A, _label_field("job", "x")),
            _field(0x12, sample),
            _field(0x0A, _label_field("__name__", "late_labels")),
            _field(0x12, later),
            _field(0x0A, _label_field("pod", "a")),
        ]
    )
    data = _field(0x0A, body)
    ours = codec.decode_write_request(data)
    assert codec.decode_labels(ours.series[0].label_bytes) == (
        ("__name__", "late_labels"),
        ("job", "x"),
        ("pod", "a"),
    )
    assert ours.series[0].samples == [(1000, 5.0), (2000, 6.0)]
    assert decode_ours(data) == decode_upb(data)


def test_labels_not_first_at_all() -> None:
    sample = pb.Sample(value=5.0, timestamp=1000).SerializeToString()
    body = _field(0x12, sample) + _field(0x0A, _label_field("__name__", "x"))
    data = _field(0x0A, body)
    assert (
        decode_ours(data) == decode_upb(data) == ([((("__name__", "x"),), [(1000, bits(5.0))])], [])
    )


def test_unknown_fields_are_skipped_at_every_level() -> None:
    varint_field = b"\x78\x05"  # field 15, varint
    fixed64_field = b"\x79" + b"\x00" * 8  # field 15, I64
    fixed32_field = b"\x7d" + b"\x00" * 4  # field 15, I32
    len_field = b"\x7a\x03abc"  # field 15, LEN
    long_tag_field = b"\xf8\x07\x01"  # field 127: a two-byte tag
    unknown = varint_field + fixed64_field + fixed32_field + len_field + long_tag_field
    label = b"\x0a\x08__name__" + unknown + b"\x12\x01x"
    sample = b"\x09" + struct.pack("<d", 2.5) + b"\x10\xe8\x07" + unknown  # after the timestamp
    sample_first = unknown + b"\x09" + struct.pack("<d", 3.5) + b"\x10\xd0\x0f"
    series = _field(0x0A, label) + unknown + _field(0x12, sample) + _field(0x12, sample_first)
    metadata = b"\x08\x01" + unknown + b"\x12\x03fam" + b"\x1a\x02xx"  # 3 is not a field
    data = unknown + _field(0x0A, series) + unknown + _field(0x1A, metadata) + b"\x10\x01"
    ours = decode_ours(data)
    assert ours == decode_upb(data)
    assert ours == (
        [((("__name__", "x"),), [(1000, bits(2.5)), (2000, bits(3.5))])],
        [MetricMetadata("fam", MetricType.COUNTER, "", "")],
    )


def test_exemplars_and_native_histograms_are_counted_and_skipped() -> None:
    exemplar = pb.Exemplar(
        labels=[pb.Label(name="trace_id", value="abc")], value=1.0, timestamp=5
    ).SerializeToString()
    histogram = b"\x08\x01"  # any message body: field 4 is only counted
    series = b"".join(
        [
            _field(0x0A, _label_field("__name__", "h")),
            _field(0x1A, exemplar),
            _field(0x1A, exemplar),
            _field(0x22, histogram),
            _field(0x12, pb.Sample(value=1.0, timestamp=5).SerializeToString()),
        ]
    )
    request = codec.decode_write_request(_field(0x0A, series) + _field(0x0A, series))
    assert (request.exemplars, request.histograms) == (4, 2)
    assert [raw.samples for raw in request.series] == [[(5, 1.0)], [(5, 1.0)]]
    assert codec.decode_labels(request.series[0].label_bytes) == (("__name__", "h"),)


def test_stale_marker_bits_survive_every_round_trip() -> None:
    labels = (("__name__", "x"),)
    samples = [(1000, STALE_NAN), (2000, float("nan")), (3000, 1.0)]
    body = codec.compress(codec.encode_write_request([(codec.encode_labels(labels), samples)]))
    data = codec.decompress(body)
    decoded = codec.decode_write_request(data).series[0].samples
    assert [bits(v) for _, v in decoded] == [STALE_NAN_BITS, bits(float("nan")), bits(1.0)]
    assert [is_stale_marker(v) for _, v in decoded] == [True, False, False]
    message = pb.WriteRequest()
    message.ParseFromString(data)
    assert bits(message.timeseries[0].samples[0].value) == STALE_NAN_BITS
    back = codec.decode_write_request(message.SerializeToString()).series[0].samples
    assert bits(back[0][1]) == STALE_NAN_BITS
    assert not is_stale_marker(back[1][1])


def test_encode_sample_keeps_bits() -> None:
    encoded = codec.encode_sample(-5, STALE_NAN)
    assert (
        encoded
        == b"\x09" + struct.pack("<Q", STALE_NAN_BITS) + b"\x10" + b"\xfb" + b"\xff" * 8 + b"\x01"
    )
    parsed = pb.Sample()
    parsed.ParseFromString(encoded)
    assert parsed.timestamp == -5
    assert bits(parsed.value) == STALE_NAN_BITS


def test_metadata_round_trip_and_unknown_type() -> None:
    items = [
        MetricMetadata("a", MetricType.COUNTER, "help é", "seconds"),
        MetricMetadata("b", MetricType.UNKNOWN, "", ""),
        MetricMetadata("c", MetricType.STATESET, "", ""),
    ]
    data = codec.encode_write_request([], items)
    assert codec.decode_write_request(data).metadata == items
    assert decode_upb(data)[1] == items
    future_type = _field(0x1A, b"\x08\x63\x12\x01d")  # type 99, from a newer sender
    assert codec.decode_write_request(future_type).metadata == [
        MetricMetadata("d", MetricType.UNKNOWN, "", "")
    ]


# --- labels -------------------------------------------------------------------------------------


def test_decode_labels_sorts_and_drops_empty_values() -> None:
    raw = b"".join(
        _field(0x0A, _label_field(name, value))
        for name, value in [("zone", "z"), ("__name__", "m"), ("empty", ""), ("a", "1")]
    )
    assert codec.decode_labels(raw) == (("__name__", "m"), ("a", "1"), ("zone", "z"))


@pytest.mark.parametrize("seed", range(20))
def test_encode_labels_is_the_inverse_of_decode_labels(seed: int) -> None:
    rng = random.Random(2000 + seed)
    labels = tuple(random_labels(rng))
    encoded = codec.encode_labels(labels)
    assert codec.decode_labels(encoded) == labels
    message = pb.TimeSeries()
    message.ParseFromString(encoded)
    assert [(label.name, label.value) for label in message.labels] == list(labels)


@pytest.mark.parametrize(
    ("label_bytes", "reason"),
    [
        (_field(0x0A, _label_field("a", "1")) * 2, "duplicate label name 'a'"),
        (
            _field(0x0A, _label_field("a", "1")) + _field(0x0A, _label_field("a", "")),
            "duplicate label name 'a'",
        ),
        (_field(0x0A, _label_field("", "1")), "empty name"),
        (_field(0x0A, b"\x12\x01v"), "empty name"),  # no name field at all
        (_field(0x0A, b"\x0a\x02\xc3\x28\x12\x01v"), "not valid UTF-8"),  # in a name
        (_field(0x0A, b"\x0a\x01a\x12\x01\xff"), "not valid UTF-8"),  # in a value
        (_field(0x0A, b"\x0a\x01a\x12\x03\xed\xa0\x80"), "not valid UTF-8"),  # a surrogate
        (b"\x12\x00", "expected a label"),
        (b"\x0a\x05\x0a\x01a", "runs past"),
        (b"\x0a", "truncated"),
    ],
)
def test_invalid_label_sets_raise_decode_error(label_bytes: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        codec.decode_labels(label_bytes)


def test_invalid_utf8_label_from_a_whole_request() -> None:
    label = b"\x0a\x08__name__\x12\x02\xc3\x28"
    data = _field(0x0A, _field(0x0A, label) + _field(0x12, codec.encode_sample(1, 1.0)))
    with pytest.raises(ProtobufDecodeError):
        pb.WriteRequest().ParseFromString(data)  # upb refuses it too (proto3 strings)
    (raw,) = codec.decode_write_request(data).series  # labels are decoded lazily ...
    with pytest.raises(DecodeError, match="UTF-8"):
        codec.decode_labels(raw.label_bytes)  # ... and refused when they are


def test_invalid_utf8_metadata_is_refused() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        codec.decode_write_request(_field(0x1A, b"\x12\x01\xff"))


# --- malformed protobuf -------------------------------------------------------------------------


def _top_level_boundaries(data: bytes) -> set[int]:
    boundaries = {0}
    pos = 0
    while pos < len(data):
        pos += 1
        length, pos = codec._varint(data, pos, len(data))
        pos += length
        boundaries.add(pos)
    return boundaries


@pytest.mark.parametrize("seed", range(3))
def test_every_truncation_fails_or_is_a_shorter_valid_request(seed: int) -> None:
    rng = random.Random(3000 + seed)
    series = [
        (random_labels(rng)[:3], [(random_timestamp(rng), random_float(rng))]) for _ in range(6)
    ]
    # Short values keep the request small enough to cut at every byte.
    series = [([(n, v[:40]) for n, v in labels], samples) for labels, samples in series]
    data = upb_request(series, random_metadata(rng))
    boundaries = _top_level_boundaries(data)
    for cut in range(len(data)):
        prefix = data[:cut]
        if cut in boundaries:
            assert decode_ours(prefix) == decode_upb(prefix), cut
        else:
            with pytest.raises(DecodeError):
                decode_ours(prefix)
            with pytest.raises(ProtobufDecodeError):
                pb.WriteRequest().ParseFromString(prefix)


def test_truncated_fixture_is_refused() -> None:
    data = codec.decompress(fixture("scrape-74-series.snappy"))
    boundaries = _top_level_boundaries(data)
    rng = random.Random(4)
    cuts = [cut for cut in rng.sample(range(1, len(data)), 400) if cut not in boundaries]
    for cut in [*cuts, len(data) - 1, 1]:
        with pytest.raises(DecodeError):
            decode_ours(data[:cut])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x0a\x05\x0a\x03", "runs past|truncated"),
        (b"\x0a\x80", "truncated"),  # a length varint cut short
        (b"\x0a" + b"\xff" * 11, "overlong|truncated"),
        (b"\x1a\x05\x08", "runs past"),
        (b"\x02\x00", "field number 0"),
        (b"\x0b\x0c", "wire type"),  # a group: no remote-write sender uses them
        (b"\x0f", "wire type"),
        (b"\x11\x00\x00", "runs past"),  # a fixed64 with 2 of its 8 bytes
        (b"\x0a\x04\x12\x02\x09\x00", "truncated"),  # a sample value cut short
        (_field(0x0A, _field(0x12, b"\x09" + b"\x00" * 8 + b"\x10")), "truncated|overlong"),
    ],
)
def test_malformed_protobuf_raises_decode_error(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_ours(data)


def _assert_decodes_or_refuses(data: bytes) -> None:
    """Our decoder returns or raises DecodeError (never IndexError, struct.error, ...), and
    when both it and upb accept the bytes they agree."""
    try:
        ours = decode_ours(data)
    except DecodeError:
        return
    try:
        reference = decode_upb(data)
    except ProtobufDecodeError:
        return
    assert ours == reference


def test_garbage_raises_only_decode_error() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        _assert_decodes_or_refuses(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 48))))


def test_mutated_requests_raise_only_decode_error() -> None:
    rng = random.Random(6)
    valid = upb_request(
        [([(n, v[:30]) for n, v in labels], s) for labels, s in random_series(rng, 5)],
        random_metadata(rng),
    )
    for _ in range(3000):
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
        _assert_decodes_or_refuses(bytes(mutated))


# --- snappy -------------------------------------------------------------------------------------


def test_compress_and_decompress() -> None:
    data = codec.decompress(fixture("scrape-74-series.snappy"))
    assert codec.decompress(codec.compress(data)) == data
    assert bytes(cramjam.snappy.decompress_raw(codec.compress(data))) == data


def test_empty_body_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="empty body"):
        codec.decompress(b"")


@pytest.mark.parametrize(
    "body",
    [
        b"garbage that is not snappy",
        b"\x05garbage",
        b"\x0a\x00\x01",  # declares 10 bytes, holds 1
        b"\x03\x08ab",  # a literal longer than the body
        b"\xff\xff\xff\xff\xff",  # a length header that never ends
        b"\x80",
        bytes(cramjam.snappy.compress(b"framed format is forbidden")),
    ],
)
def test_bad_snappy_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="snappy"):
        codec.decompress(body)


def test_snappy_declaring_more_than_the_limit_is_refused_before_decompressing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(_body: bytes) -> bytes:
        raise AssertionError("decompressed an oversized body")

    monkeypatch.setattr(cramjam.snappy, "decompress_raw", never)
    over_default = codec.encode_varint(codec.DEFAULT_MAX_DECODED_BYTES + 1) + b"\x00" * 10
    with pytest.raises(PayloadTooLarge, match=str(codec.DEFAULT_MAX_DECODED_BYTES + 1)):
        codec.decompress(over_default)
    with pytest.raises(PayloadTooLarge):
        codec.decompress(b"\xff\xff\xff\xff\x0f garbage", max_decoded_bytes=1 << 20)


def test_limit_is_inclusive() -> None:
    body = fixture("scrape-74-series.snappy")
    assert len(codec.decompress(body, max_decoded_bytes=14309)) == 14309
    with pytest.raises(PayloadTooLarge):
        codec.decompress(body, max_decoded_bytes=14308)


def test_error_statuses() -> None:
    assert issubclass(DecodeError, RequestError)
    assert issubclass(PayloadTooLarge, RequestError)
    assert DecodeError("x").status == 400
    assert PayloadTooLarge("x").status == 413


def test_declared_length_reads_only_the_header() -> None:
    assert codec.declared_length(b"\x00") == 0
    assert codec.declared_length(b"\x7f...") == 127
    assert codec.declared_length(b"\x80\x01") == 128
    assert codec.declared_length(b"\xff\xff\xff\xff\x0f") == (1 << 32) - 1
    with pytest.raises(DecodeError):
        codec.declared_length(b"\x80\x80")


def test_known_label_bytes_give_the_same_result_as_the_walk() -> None:
    """The shortcut for label bytes seen before decodes exactly what the full walk does."""
    rng = random.Random(11)
    now = 1_795_837_384_898
    series = []
    for index in range(300):
        labels = tuple(
            sorted(
                {
                    ("__name__", f"m{index % 7}"),
                    ("pod", f"p{index}"),
                    ("x", "y" * rng.randrange(0, 200)),
                }
            )
        )
        samples = [(now + step, float(step)) for step in range(rng.choice([1, 1, 1, 2, 3]))]
        if rng.random() < 0.1:
            samples = [(rng.choice([0, 5, -3]), 0.0)]  # short or zero timestamps
        series.append((codec.encode_labels(labels), samples))
    body = codec.encode_write_request(series)
    walked = codec.decode_write_request(body)
    known = {raw.label_bytes for raw in walked.series}
    shortcut = codec.decode_write_request(body, known)
    assert shortcut.series == walked.series
    # Only label bytes from a real walk may be "known"; a series with two samples never matches
    # because its tail guess takes the first sample into the label bytes.
    two = codec.decode_write_request(
        codec.encode_write_request([(series[0][0], [(now, 1.0), (now + 1, 2.0)])]), known
    )
    assert two.series[0].samples == [(now, 1.0), (now + 1, 2.0)]
    assert two.series[0].label_bytes == series[0][0]
