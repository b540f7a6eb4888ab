"""Remote write 2.0 on the wire: ``io.prometheus.write.v2.Request``, decoded and encoded.

A 2.0 request names every string once, in its ``symbols`` table, and each series lists its
labels as pairs of indices into that table (``labels_refs``). The indices mean nothing outside
their own request (a sender builds a new table per request), so they cannot key anything that
outlives the request. The decoder therefore writes each series' labels out as the remote write
1.0 Label fields (``codec.encode_labels``' form, empty values left out as protobuf leaves them
out): every later stage, and every cache keyed on label bytes, sees one form for both
protocols, and a series keeps its aggregation state when its sender moves from 1.0 to 2.0.

The per-series metadata type is what makes 2.0 worth decoding fully: it is handed on as
``(metric name, type)`` pairs (``DecodedRequest.series_types``), which the engine turns into
family types (``engine.metric_types``), so no separate metadata request is needed.

Field numbers (proto/write_v2.proto): Request{symbols=4, timeseries=5},
TimeSeries{labels_refs=1 (packed uint32), samples=2, histograms=3, exemplars=4, metadata=5,
created_timestamp=6}, Sample{value=1, timestamp=2}, Metadata{type=1, help_ref=3, unit_ref=4}.

What the decoder refuses (DecodeError, 400), as the specification requires of a receiver:
a symbols table whose entry 0 is not the empty string, a reference past the end of the table,
an odd number of ``labels_refs``, and a label name that is the empty string. Native histograms
and exemplars are counted and skipped, as in 1.0; created timestamps are read past.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from enrichproxy.errors import DecodeError
from enrichproxy.model import MetricType, OutputSample
from enrichproxy.wire.codec import (
    DEFAULT_MAX_DECODED_BYTES,
    TAG_SAMPLE,
    DecodedRequest,
    RawSample,
    RawSeries,
    _decode_sample,
    _read_tag,
    _skip_field,
    _varint,
    compress,
    decode_labels,
    decode_write_request,
    decompress,
    encode_sample,
    encode_varint,
    encode_write_request,
)

CONTENT_TYPE_V1 = "application/x-protobuf"
CONTENT_TYPE_V2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request"
VERSION_HEADER_V1 = "0.1.0"
VERSION_HEADER_V2 = "2.0.0"
MESSAGE_V1 = "prometheus.WriteRequest"
MESSAGE_V2 = "io.prometheus.write.v2.Request"
# The response headers a 2.0 receiver must send (spec, "Required Written Response Headers").
SAMPLES_WRITTEN_HEADER = "X-Prometheus-Remote-Write-Samples-Written"
HISTOGRAMS_WRITTEN_HEADER = "X-Prometheus-Remote-Write-Histograms-Written"
EXEMPLARS_WRITTEN_HEADER = "X-Prometheus-Remote-Write-Exemplars-Written"


class WireProtocol(enum.Enum):
    """The remote-write message a body holds, as its Content-Type says."""

    V1 = MESSAGE_V1
    V2 = MESSAGE_V2


_TAG_SYMBOL = 0x22  # Request field 4, LEN
_TAG_TIMESERIES = 0x2A  # Request field 5, LEN
_TAG_REFS_PACKED = 0x0A  # TimeSeries field 1, LEN
_TAG_REFS_SINGLE = 0x08  # TimeSeries field 1, VARINT (an unpacked repeated field)
_TAG_SAMPLE = 0x12  # TimeSeries field 2, LEN
_TAG_HISTOGRAM = 0x1A  # TimeSeries field 3, LEN
_TAG_EXEMPLAR = 0x22  # TimeSeries field 4, LEN
_TAG_METADATA = 0x2A  # TimeSeries field 5, LEN
_TAG_TYPE = 0x08  # Metadata field 1, VARINT
_TAG_HELP_REF = 0x18  # Metadata field 3, VARINT
_TAG_UNIT_REF = 0x20  # Metadata field 4, VARINT
_UINT64_MASK = (1 << 64) - 1
_NAME = b"__name__"
# The native scanner counts a series' labels in 32 bits; the reference refuses what it refuses.
_MAX_SERIES_BYTES = (1 << 32) - 1


def _length(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """A LEN field's payload bounds: (start, stop)."""
    length, pos = _varint(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise DecodeError(f"protobuf: {what} runs past the end of its message")
    return pos, stop


def decode_v2_request(
    buf: bytes, max_label_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> DecodedRequest:
    """Walk an ``io.prometheus.write.v2.Request``; DecodeError on anything that is not one,
    or that breaks the specification's rules on references (see the module docstring).

    References let a small request name a long string many times, so the labels written out
    may take ``max_label_bytes`` at most (a 1.0 request's limit, max_decoded_bytes): past it,
    DecodeError, before the series that would cross it is written out.

    The symbols may come after the series that use them (protobuf fixes no field order), so
    the request is walked twice: once for the table and the series' bounds, once per series.
    """
    symbols: list[bytes] = []
    spans: list[tuple[int, int]] = []
    end = len(buf)
    pos = 0
    try:
        while pos < end:
            tag, pos = _read_tag(buf, pos, end)
            if tag == _TAG_SYMBOL:
                start, pos = _length(buf, pos, end, "symbol")
                symbols.append(buf[start:pos])
            elif tag == _TAG_TIMESERIES:
                start, pos = _length(buf, pos, end, "timeseries")
                spans.append((start, pos))
            else:
                if tag >> 3 == 0:
                    raise DecodeError("protobuf: field number 0")
                pos = _skip_field(buf, pos, end, tag)
        if symbols and symbols[0]:
            raise DecodeError("remote write 2.0: symbols[0] must be the empty string")
        if not symbols and spans:
            raise DecodeError(
                "remote write 2.0: the request has timeseries but no symbols"
                " (symbols[0] must be the empty string)"
            )
        request = DecodedRequest()
        reader = _SeriesReader(buf, symbols, request, min(max_label_bytes, _MAX_SERIES_BYTES))
        for index, (start, stop) in enumerate(spans):
            reader.read(index, start, stop)
    except IndexError:
        raise DecodeError("protobuf: truncated message") from None
    return request


class _SeriesReader:
    """Reads the series of one request against its symbols table."""

    def __init__(
        self, buf: bytes, symbols: list[bytes], request: DecodedRequest, max_label_bytes: int
    ) -> None:
        self.buf = buf
        self.limit = max_label_bytes
        self.label_bytes_left = max_label_bytes
        self.symbols = symbols
        self.request = request
        self.pairs: dict[int, bytes] = {}
        """(name ref << 32 | value ref) → that label's encoded Label field."""
        self.last_type: dict[int, int] = {}
        """Name symbol → the type last handed on for it (series_types lists each change)."""

    def out_of_range(self, where: str, ref: int) -> DecodeError:
        return DecodeError(
            f"remote write 2.0: {where} = {ref & _UINT64_MASK} is out of range:"
            f" the request has {len(self.symbols)} symbols"
        )

    def read(self, index: int, pos: int, end: int) -> None:
        buf = self.buf
        refs: list[int] = []
        samples: list[RawSample] = []
        metric_type = help_ref = unit_ref = 0
        request = self.request
        while pos < end:
            tag, pos = _read_tag(buf, pos, end)
            if tag == _TAG_SAMPLE:
                start, pos = _length(buf, pos, end, "sample")
                samples.append(_decode_sample(buf, start, pos))
            elif tag == _TAG_REFS_PACKED:
                start, pos = _length(buf, pos, end, "labels_refs")
                chunk = buf[start:pos]
                if max(chunk, default=0) < 0x80:  # every ref below 128: one byte each
                    refs.extend(chunk)
                else:
                    while start < pos:
                        ref, start = _varint(buf, start, pos)
                        refs.append(ref)
            elif tag == _TAG_REFS_SINGLE:
                ref, pos = _varint(buf, pos, end)
                refs.append(ref)
            elif tag == _TAG_METADATA:
                start, pos = _length(buf, pos, end, "metadata")
                # Several metadata fields merge, as protobuf merges a repeated message field.
                metric_type, help_ref, unit_ref = self.metadata(
                    start, pos, (metric_type, help_ref, unit_ref)
                )
            else:
                if tag == _TAG_HISTOGRAM:
                    request.histograms += 1
                elif tag == _TAG_EXEMPLAR:
                    request.exemplars += 1
                pos = _skip_field(buf, pos, end, tag)
        symbols = self.symbols
        count = len(symbols)
        where = f"timeseries[{index}]"
        if help_ref >= count:
            raise self.out_of_range(f"{where}.metadata.help_ref", help_ref)
        if unit_ref >= count:
            raise self.out_of_range(f"{where}.metadata.unit_ref", unit_ref)
        if len(refs) % 2:
            raise DecodeError(
                f"remote write 2.0: {where} has {len(refs)} labels_refs: they must come in pairs"
            )
        pairs = self.pairs
        parts = []
        size = 0
        name_ref = -1
        for at in range(0, len(refs), 2):
            name, value = refs[at], refs[at + 1]
            if name >= count:
                raise self.out_of_range(f"{where}.labels_refs[{at}]", name)
            if value >= count:
                raise self.out_of_range(f"{where}.labels_refs[{at + 1}]", value)
            key = name << 32 | value
            field = pairs.get(key)
            if field is None:
                name_bytes = symbols[name]
                if not name_bytes:
                    raise DecodeError(
                        f"remote write 2.0: {where}.labels_refs[{at}] names a label with the"
                        " empty string"
                    )
                field = pairs[key] = _label_field(name_bytes, symbols[value])
            parts.append(field)
            size += len(field)
            if name_ref < 0 and symbols[name] == _NAME:
                name_ref = value
        if size > self.label_bytes_left:
            raise DecodeError(
                "remote write 2.0: written out, the request's labels take more than"
                f" {self.limit} bytes (max_decoded_bytes)"
            )
        self.label_bytes_left -= size
        request.series.append(RawSeries(b"".join(parts), samples))
        if metric_type and name_ref >= 0 and self.last_type.get(name_ref) != metric_type:
            self.last_type[name_ref] = metric_type
            request.series_types.append(
                (symbols[name_ref].decode("utf-8", "replace"), MetricType(metric_type))
            )

    def metadata(self, pos: int, end: int, merged: tuple[int, int, int]) -> tuple[int, int, int]:
        """(type, help_ref, unit_ref) of the Metadata in ``buf[pos:end]``, merged onto what
        earlier metadata fields of the series said."""
        buf = self.buf
        metric_type, help_ref, unit_ref = merged
        while pos < end:
            tag, pos = _read_tag(buf, pos, end)
            if tag == _TAG_TYPE:
                metric_type, pos = _varint(buf, pos, end)
            elif tag == _TAG_HELP_REF:
                help_ref, pos = _varint(buf, pos, end)
            elif tag == _TAG_UNIT_REF:
                unit_ref, pos = _varint(buf, pos, end)
            else:
                pos = _skip_field(buf, pos, end, tag)
        # A type this version of the specification does not name reads as unspecified.
        return (metric_type if metric_type <= max(MetricType) else 0), help_ref, unit_ref


def _label_field(name: bytes, value: bytes) -> bytes:
    """One remote write 1.0 Label field (tag, length, name, value); an empty value is left
    out, as protobuf leaves out an empty string."""
    inner = b"\x0a" + encode_varint(len(name)) + name
    if value:
        inner += b"\x12" + encode_varint(len(value)) + value
    return b"\x0a" + encode_varint(len(inner)) + inner


# --- encoding -----------------------------------------------------------------------------------

TypeOf = Callable[[str], MetricType]
"""Metric name → the type its series are sent with."""


def _unspecified(_name: str) -> MetricType:
    return MetricType.UNKNOWN


def encode_v2_samples(samples: Iterable[OutputSample], type_of: TypeOf = _unspecified) -> bytes:
    """A 2.0 Request of output samples: one symbols table for the request, each series' samples
    grouped under it in order of first appearance (as ``codec.encode_samples`` groups them),
    each series with the metadata type ``type_of`` gives its metric name."""
    by_series: dict[bytes, list[RawSample]] = {}
    for sample in samples:
        by_series.setdefault(sample.label_bytes, []).append((sample.timestamp_ms, sample.value))
    return _encode(((label_bytes, s, None) for label_bytes, s in by_series.items()), type_of)


def encode_v2_request(series: Iterable[tuple[bytes, Iterable[RawSample], MetricType]]) -> bytes:
    """A 2.0 Request from (1.0-encoded label fields, samples, type) triples."""
    return _encode(series, _unspecified)


def _encode(
    series: Iterable[tuple[bytes, Iterable[RawSample], MetricType | None]], type_of: TypeOf
) -> bytes:
    """The Request; a series whose type is None gets ``type_of`` of its metric name."""
    index: dict[str, int] = {"": 0}
    named: dict[str, MetricType] = {}
    parts: list[bytes] = []
    for label_bytes, series_samples, given_type in series:
        refs = bytearray()
        metric_name = ""
        for pair in decode_labels(label_bytes):
            if pair[0] == "__name__":
                metric_name = pair[1]
            for text in pair:
                ref = index.get(text)
                if ref is None:
                    ref = index[text] = len(index)
                refs += encode_varint(ref)
        body = [b"\x0a" + encode_varint(len(refs)) + bytes(refs)]
        for timestamp_ms, value in series_samples:
            sample = encode_sample(timestamp_ms, value)
            body.append(bytes((TAG_SAMPLE,)) + encode_varint(len(sample)) + sample)
        metric_type = given_type
        if metric_type is None:
            metric_type = named.get(metric_name)
            if metric_type is None:
                metric_type = named[metric_name] = type_of(metric_name)
        if metric_type:
            metadata = b"\x08" + encode_varint(int(metric_type))
            body.append(b"\x2a" + encode_varint(len(metadata)) + metadata)
        payload = b"".join(body)
        parts.append(b"\x2a" + encode_varint(len(payload)) + payload)
    symbols = []
    for text in index:
        encoded = text.encode()
        symbols.append(b"\x22" + encode_varint(len(encoded)) + encoded)
    return b"".join(symbols) + b"".join(parts)


# --- a queued batch in the other protocol --------------------------------------------------------


def body_protocol(body: bytes) -> WireProtocol:
    """The message a snappy-compressed request body of ours holds, from its first byte: a 1.0
    WriteRequest starts with a timeseries or metadata field (0x0A, 0x1A), a 2.0 Request with a
    symbol or timeseries field (0x22, 0x2A). Snappy's first element is always a literal, so
    the byte is read without decompressing; an empty request reads as 1.0 (it is both)."""
    length, pos = _varint(body, 0, min(len(body), 10))
    if length == 0 or pos >= len(body):
        return WireProtocol.V1
    tag = body[pos]
    if tag & 3 == 0:
        size = tag >> 2
        first = pos + 1 + (size - 59 if size >= 60 else 0)
        if first < len(body):
            return WireProtocol.V2 if body[first] in (0x22, 0x2A) else WireProtocol.V1
    data = decompress(body)
    return WireProtocol.V2 if data and data[0] in (0x22, 0x2A) else WireProtocol.V1


def transcode(body: bytes, to: WireProtocol, type_of: TypeOf = _unspecified) -> bytes:
    """A queued request body (snappy) in protocol ``to``: the same series and samples; types go
    as 2.0 metadata, and are left out in 1.0 (which carries them in separate requests)."""
    data = decompress(body)
    if to is WireProtocol.V1:
        request = decode_v2_request(data)
        return compress(
            encode_write_request((raw.label_bytes, raw.samples) for raw in request.series)
        )
    request = decode_write_request(data)
    return compress(
        _encode(((raw.label_bytes, raw.samples, None) for raw in request.series), type_of)
    )
