"""Remote write 1.0 on the wire: snappy block format around a ``prometheus.WriteRequest``.

The decoder walks the protobuf bytes itself instead of building message objects: building a
Python object per label costs more than everything else on the hot path together (measured:
about 55,000 series/s per core that way, against 2 million for protobuf's own parser). Each
series comes out as the raw bytes of its label fields, which callers use as a cache key, plus
its samples; labels are decoded only for series not seen before.

Field numbers (proto/remote.proto): WriteRequest{timeseries=1, metadata=3},
TimeSeries{labels=1, samples=2, exemplars=3, histograms=4}, Label{name=1, value=2},
Sample{value=1 (double), timestamp=2 (int64)},
MetricMetadata{type=1, metric_family_name=2, help=4, unit=5}.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

import cramjam

from enrichproxy.errors import DecodeError, PayloadTooLarge
from enrichproxy.model import Labels, MetricMetadata, MetricType, OutputSample

# Prometheus' own receiver refuses snappy bodies that declare more than 32 MiB decoded.
DEFAULT_MAX_DECODED_BYTES = 32 * 1024 * 1024

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
TAG_TIMESERIES = 0x0A  # field 1, LEN
_TAG_METADATA = 0x1A  # field 3, LEN
_TAG_LABEL = 0x0A  # field 1, LEN
TAG_SAMPLE = 0x12  # field 2, LEN
_TAG_EXEMPLAR = 0x1A  # field 3, LEN
_TAG_HISTOGRAM = 0x22  # field 4, LEN
TAG_SAMPLE_VALUE = 0x09  # field 1, I64
TAG_SAMPLE_TIMESTAMP = 0x10  # field 2, VARINT
# Sample field bytes (tag, length) + value (tag, 8 bytes) + timestamp tag + one varint byte.
_MIN_FAST_SAMPLE_FIELD = 13
# The same with a 6-byte timestamp varint: every millisecond time from 2004 to 2109.
_KNOWN_SAMPLE_FIELD = 18
_UINT64_MASK = (1 << 64) - 1

_unpack_double = struct.Struct("<d").unpack_from
_pack_double = struct.Struct("<d").pack

RawSample = tuple[int, float]
"""(timestamp in ms, value)."""


@dataclass(slots=True)
class RawSeries:
    label_bytes: bytes
    """The series' Label fields exactly as on the wire: stable for one label set and sender."""
    samples: list[RawSample]


@dataclass(slots=True)
class DecodedRequest:
    series: list[RawSeries] = field(default_factory=list)
    metadata: list[MetricMetadata] = field(default_factory=list)
    exemplars: int = 0
    """Exemplars seen and skipped: they do not survive aggregation."""
    histograms: int = 0
    """Native histogram samples seen and skipped (not supported yet)."""
    series_types: list[tuple[str, MetricType]] = field(default_factory=list)
    """(metric name, type) from remote write 2.0's per-series metadata, in series order, each
    name listed again only when its type changes within the request (wire/v2.py)."""


# --- snappy -------------------------------------------------------------------------------------


def declared_length(body: bytes) -> int:
    """The decoded length a snappy block declares in its header, read without decompressing."""
    result = shift = 0
    for index in range(min(len(body), 5)):
        byte = body[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result
        shift += 7
    raise DecodeError("snappy: corrupt input (bad length header)")


def decompress(body: bytes, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> bytes:
    """Snappy block-format body → protobuf bytes, refusing oversized payloads before the work."""
    return bytes(decompress_buffer(body, max_decoded_bytes))


def decompress_buffer(
    body: bytes, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> memoryview:
    """As ``decompress``, into the decompressor's own buffer: no copy of a large request (a
    copy of 100 MB holds the interpreter for tens of milliseconds; the decompression itself
    runs without it)."""
    if not body:
        raise DecodeError("empty body: expected a snappy-compressed WriteRequest")
    length = declared_length(body)
    if length > max_decoded_bytes:
        raise PayloadTooLarge(
            f"snappy body declares {length} decoded bytes, over the limit of {max_decoded_bytes}"
        )
    try:
        data = memoryview(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise DecodeError(f"malformed snappy body: {exc}") from None
    if data.nbytes != length:
        raise DecodeError("snappy: corrupt input (length does not match header)")
    return data


def compress(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


# --- protobuf decoding --------------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            break
    raise DecodeError("protobuf: truncated or overlong varint")


def _skip_field(buf: bytes, pos: int, end: int, tag: int) -> int:
    """Position after the value of a field we do not read (unknown fields are allowed)."""
    wire_type = tag & 7
    if wire_type == _WIRE_VARINT:
        return _varint(buf, pos, end)[1]
    if wire_type == _WIRE_I64:
        pos += 8
    elif wire_type == _WIRE_LEN:
        length, pos = _varint(buf, pos, end)
        pos += length
    elif wire_type == _WIRE_I32:
        pos += 4
    else:
        raise DecodeError(f"protobuf: unsupported wire type {wire_type}")
    if pos > end:
        raise DecodeError("protobuf: field runs past the end of its message")
    return pos


def _read_tag(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    tag = buf[pos]
    if tag < 0x80:
        return tag, pos + 1
    return _varint(buf, pos, end)


def decode_write_request(
    buf: bytes, known_label_bytes: Container[bytes] | None = None
) -> DecodedRequest:
    """Walk a ``WriteRequest``; DecodeError on anything that is not one.

    The loop handles the shape every known sender produces inline (labels first, then one
    sample holding a value and a timestamp) and hands anything else to the general decoder.
    Timestamps repeat across a request (one scrape, one time), so their varints are decoded
    once per distinct byte string.

    ``known_label_bytes`` holds label fields seen (and decoded) before. A series whose bytes
    end in one sample with a current-era timestamp is then checked by a single lookup instead
    of a walk over its labels: if everything before that sample is a known sequence of label
    fields, the walk would have stopped exactly there, because a walk over the same bytes
    reads the same fields and the sample's tag is not a label's.
    """
    request = DecodedRequest()
    append = request.series.append
    timestamps: dict[bytes, int] = {}
    end = len(buf)
    pos = 0
    try:
        while pos < end:
            tag = buf[pos]
            if tag != TAG_TIMESERIES:
                pos = _decode_other_field(buf, pos, end, request)
                continue
            length = buf[pos + 1]
            if length < 0x80:
                pos += 2
            elif buf[pos + 2] < 0x80:
                length = (length & 0x7F) | (buf[pos + 2] << 7)
                pos += 3
            else:
                length, pos = _varint(buf, pos + 1, end)
            stop = pos + length
            if stop > end:
                raise DecodeError("protobuf: timeseries runs past the end of the request")
            label_bytes = None
            tail = stop - _KNOWN_SAMPLE_FIELD
            if (
                known_label_bytes is not None
                and tail > pos
                and buf[tail] == TAG_SAMPLE
                and buf[tail + 1] == _KNOWN_SAMPLE_FIELD - 2
            ):
                label_bytes = buf[pos:tail]
                if label_bytes in known_label_bytes:
                    labels_end = tail
                else:
                    label_bytes = None
            if label_bytes is None:
                labels_end = pos
                while labels_end < stop and buf[labels_end] == _TAG_LABEL:
                    size = buf[labels_end + 1]
                    if size < 0x80:
                        labels_end += 2 + size
                    else:
                        size, labels_end = _varint(buf, labels_end + 1, stop)
                        labels_end += size
            # The sample must hold at least its value field, the timestamp tag and one varint
            # byte: proto3 senders leave out a zero timestamp or value.
            if (
                labels_end < stop
                and buf[labels_end] == TAG_SAMPLE
                and labels_end + 2 + buf[labels_end + 1] == stop
                and stop - labels_end >= _MIN_FAST_SAMPLE_FIELD
                and buf[labels_end + 2] == TAG_SAMPLE_VALUE
                and buf[labels_end + 11] == TAG_SAMPLE_TIMESTAMP
            ):
                timestamp_bytes = buf[labels_end + 12 : stop]
                timestamp = timestamps.get(timestamp_bytes)
                if timestamp is None:
                    timestamp = _timestamp(timestamp_bytes)
                    if timestamp is not None:
                        timestamps[timestamp_bytes] = timestamp
                if timestamp is not None:
                    value = _unpack_double(buf, labels_end + 3)[0]
                    if label_bytes is None:
                        label_bytes = buf[pos:labels_end]
                    append(RawSeries(label_bytes, [(timestamp, value)]))
                    pos = stop
                    continue
            append(_decode_series(buf, pos, stop, request))
            pos = stop
    except IndexError:
        raise DecodeError("protobuf: truncated message") from None
    return request


def _timestamp(varint: bytes) -> int | None:
    """The int64 when ``varint`` is exactly one varint; None when it is not (more fields follow
    the timestamp, or it is cut short), and the general decoder reads the sample instead."""
    try:
        value, used = _varint(varint, 0, len(varint))
    except DecodeError:
        return None
    return _int64(value) if used == len(varint) else None


def _int64(value: int) -> int:
    """A varint as int64, as protobuf reads it: bits past the 64th are dropped."""
    value &= _UINT64_MASK
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_other_field(buf: bytes, pos: int, end: int, request: DecodedRequest) -> int:
    tag, pos = _read_tag(buf, pos, end)
    if tag == _TAG_METADATA:
        length, pos = _varint(buf, pos, end)
        stop = pos + length
        if stop > end:
            raise DecodeError("protobuf: metadata runs past the end of the request")
        request.metadata.append(decode_metadata(buf, pos, stop))
        return stop
    if tag >> 3 == 0:
        raise DecodeError("protobuf: field number 0")
    return _skip_field(buf, pos, end, tag)


def _decode_series(buf: bytes, pos: int, end: int, request: DecodedRequest) -> RawSeries:
    # Senders put all labels first (Prometheus does), so the common case is one slice.
    start = pos
    while pos < end and buf[pos] == _TAG_LABEL:
        length = buf[pos + 1]
        if length < 0x80:
            pos += 2 + length
        else:
            length, pos = _varint(buf, pos + 1, end)
            pos += length
    if pos > end:
        raise DecodeError("protobuf: label runs past the end of its timeseries")
    label_bytes = buf[start:pos]
    extra_labels: list[bytes] = []
    samples: list[RawSample] = []
    while pos < end:
        tag, pos = _read_tag(buf, pos, end)
        if tag == TAG_SAMPLE:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            else:
                length, pos = _varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise DecodeError("protobuf: sample runs past the end of its timeseries")
            samples.append(_decode_sample(buf, pos, stop))
            pos = stop
        elif tag == _TAG_LABEL:  # a label after other fields: legal, rare
            field_start = pos - 1
            pos = _skip_field(buf, pos, end, tag)
            extra_labels.append(buf[field_start:pos])
        else:
            if tag == _TAG_EXEMPLAR:
                request.exemplars += 1
            elif tag == _TAG_HISTOGRAM:
                request.histograms += 1
            pos = _skip_field(buf, pos, end, tag)
    if extra_labels:
        label_bytes = b"".join([label_bytes, *extra_labels])
    return RawSeries(label_bytes, samples)


def _decode_sample(buf: bytes, pos: int, end: int) -> RawSample:
    # Fast path: value then timestamp, as every known sender writes them.
    if end - pos >= 10 and buf[pos] == TAG_SAMPLE_VALUE and buf[pos + 9] == TAG_SAMPLE_TIMESTAMP:
        value = _unpack_double(buf, pos + 1)[0]
        timestamp, after = _varint(buf, pos + 10, end)
        if after == end:
            return _int64(timestamp), value
    value = 0.0
    timestamp = 0
    while pos < end:
        tag, pos = _read_tag(buf, pos, end)
        if tag == TAG_SAMPLE_VALUE:
            if pos + 8 > end:
                raise DecodeError("protobuf: truncated sample value")
            value = _unpack_double(buf, pos)[0]
            pos += 8
        elif tag == TAG_SAMPLE_TIMESTAMP:
            timestamp, pos = _varint(buf, pos, end)
        else:
            pos = _skip_field(buf, pos, end, tag)
    return _int64(timestamp), value


def _decode_string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    length, pos = _varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise DecodeError("protobuf: string runs past the end of its message")
    try:
        return buf[pos:stop].decode("utf-8"), stop
    except UnicodeDecodeError:
        raise DecodeError("protobuf: string is not valid UTF-8") from None


def decode_labels(label_bytes: bytes) -> Labels:
    """The label set encoded in ``label_bytes``, sorted by name, empty values dropped.

    DecodeError for what the spec forbids: an empty or duplicate label name.
    """
    pairs: dict[str, str] = {}
    end = len(label_bytes)
    pos = 0
    while pos < end:
        tag, pos = _read_tag(label_bytes, pos, end)
        if tag != _TAG_LABEL:
            raise DecodeError("protobuf: expected a label")
        length, pos = _varint(label_bytes, pos, end)
        stop = pos + length
        if stop > end:
            raise DecodeError("protobuf: label runs past the end of its timeseries")
        name = value = ""
        while pos < stop:
            inner, pos = _read_tag(label_bytes, pos, stop)
            if inner == 0x0A:
                name, pos = _decode_string(label_bytes, pos, stop)
            elif inner == 0x12:
                value, pos = _decode_string(label_bytes, pos, stop)
            else:
                pos = _skip_field(label_bytes, pos, stop, inner)
        if not name:
            raise DecodeError("invalid series: a label has an empty name")
        if name in pairs:
            raise DecodeError(f"invalid series: duplicate label name {name!r}")
        pairs[name] = value
    # An empty value means "label absent" in Prometheus' data model.
    return tuple(sorted((n, v) for n, v in pairs.items() if v))


def decode_metadata(buf: bytes, pos: int, end: int) -> MetricMetadata:
    """The MetricMetadata message in ``buf[pos:end]``."""
    type_number = 0
    family = help_text = unit = ""
    while pos < end:
        tag, pos = _read_tag(buf, pos, end)
        if tag == 0x08:
            type_number, pos = _varint(buf, pos, end)
        elif tag == 0x12:
            family, pos = _decode_string(buf, pos, end)
        elif tag == 0x22:
            help_text, pos = _decode_string(buf, pos, end)
        elif tag == 0x2A:
            unit, pos = _decode_string(buf, pos, end)
        else:
            pos = _skip_field(buf, pos, end, tag)
    try:
        metric_type = MetricType(type_number)
    except ValueError:
        metric_type = MetricType.UNKNOWN
    return MetricMetadata(family, metric_type, help_text, unit)


# --- protobuf encoding --------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_len_field(tag: int, payload: bytes) -> bytes:
    return b"".join((bytes((tag,)), encode_varint(len(payload)), payload))


def encode_labels(labels: Labels) -> bytes:
    """The Label fields of a TimeSeries; the inverse of ``decode_labels`` for a valid set."""
    parts = []
    for name, value in labels:
        name_bytes = name.encode()
        value_bytes = value.encode()
        label = _encode_len_field(0x0A, name_bytes) + _encode_len_field(0x12, value_bytes)
        parts.append(_encode_len_field(_TAG_LABEL, label))
    return b"".join(parts)


def encode_sample(timestamp_ms: int, value: float) -> bytes:
    """One Sample message (without its tag); the value's bits are kept, stale markers included."""
    return b"".join(
        (
            bytes((TAG_SAMPLE_VALUE,)),
            _pack_double(value),
            bytes((TAG_SAMPLE_TIMESTAMP,)),
            encode_varint(timestamp_ms),
        )
    )


def encode_samples(samples: Iterable[OutputSample]) -> bytes:
    """A WriteRequest of output samples: the samples of one series grouped under it, series in
    order of first appearance, samples in order (the forwarder's batches)."""
    by_series: dict[bytes, list[tuple[int, float]]] = {}
    for sample in samples:
        by_series.setdefault(sample.label_bytes, []).append((sample.timestamp_ms, sample.value))
    return encode_write_request(by_series.items())


def encode_write_request(
    series: Iterable[tuple[bytes, Iterable[RawSample]]],
    metadata: Iterable[MetricMetadata] = (),
) -> bytes:
    """A WriteRequest from (encoded labels, samples) pairs; compress with ``compress``."""
    parts = []
    for label_bytes, samples in series:
        body = [label_bytes]
        for timestamp_ms, value in samples:
            body.append(_encode_len_field(TAG_SAMPLE, encode_sample(timestamp_ms, value)))
        parts.append(_encode_len_field(TAG_TIMESERIES, b"".join(body)))
    for item in metadata:
        fields = [b"\x08" + encode_varint(int(item.type))] if item.type else []
        fields.append(_encode_len_field(0x12, item.family.encode()))
        if item.help:
            fields.append(_encode_len_field(0x22, item.help.encode()))
        if item.unit:
            fields.append(_encode_len_field(0x2A, item.unit.encode()))
        parts.append(_encode_len_field(_TAG_METADATA, b"".join(fields)))
    return b"".join(parts)
