"""Prometheus text lines with sample times: the test-only format of the aggregation tables.

One sample per line, as vmagent's stream-aggregation tests write them::

    order_total{pod="a",service="s"} 10 @1000

A series (metric name, then labels in braces), a value and ``@`` the sample time in
milliseconds. The value ``stale`` is the staleness marker (``enrichproxy.model.STALE_NAN``);
``NaN``, ``+Inf`` and ``-Inf`` are spelled as in the exposition format. Blank lines and lines
starting with ``#`` are ignored.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from enrichproxy.model import (
    METRIC_NAME_LABEL,
    STALE_NAN,
    Labels,
    MetricMetadata,
    OutputSample,
    is_stale_marker,
    labels_to_text,
)
from enrichproxy.wire import codec
from enrichproxy.wire.codec import DecodedRequest

_LINE_RE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)\s+@(?P<ts>-?\d+)$"
)
_PAIR_RE = re.compile(r'\s*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class Sample(NamedTuple):
    labels: Labels
    value: float
    timestamp_ms: int


def parse_labels(text: str) -> dict[str, str]:
    """The ``a="1",b="2"`` part between braces."""
    pairs: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PAIR_RE.match(text, pos)
        if match is None:
            raise ValueError(f"cannot parse labels at {text[pos:]!r}")
        raw = match.group("value")
        value = re.sub(r"\\.", lambda m: _UNESCAPE.get(m.group(0), m.group(0)), raw)
        if match.group("name") in pairs:
            raise ValueError(f"label {match.group('name')!r} given twice")
        pairs[match.group("name")] = value
        pos = match.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"expected ',' at {text[pos:]!r}")
            pos += 1
    return pairs


def parse_value(text: str) -> float:
    if text == "stale":
        return STALE_NAN
    return float(text)


def parse_line(line: str) -> Sample:
    match = _LINE_RE.match(line.strip())
    if match is None:
        raise ValueError(f"not a sample line: {line!r}")
    pairs = parse_labels(match.group("labels") or "")
    if match.group("name"):
        pairs[METRIC_NAME_LABEL] = match.group("name")
    labels = tuple(sorted(pairs.items()))
    return Sample(labels, parse_value(match.group("value")), int(match.group("ts")))


def parse_lines(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            samples.append(parse_line(stripped))
    return samples


def format_value(value: float) -> str:
    if is_stale_marker(value):
        return "stale"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def format_sample(labels: Labels, value: float, timestamp_ms: int) -> str:
    return f"{labels_to_text(labels)} {format_value(value)} @{timestamp_ms}"


def format_output(sample: OutputSample) -> str:
    """An output sample as a text line; its labels are decoded from the wire bytes."""
    labels = codec.decode_labels(sample.label_bytes)
    return format_sample(labels, sample.value, sample.timestamp_ms)


def normalise(text: str) -> list[str]:
    """Expected lines in the canonical spelling ``format_sample`` produces, sorted."""
    return sorted(format_sample(*sample) for sample in parse_lines(text))


def wire_request(text: str, metadata: list[MetricMetadata] | None = None) -> bytes:
    """The snappy-compressed WriteRequest a sender would POST for these lines.

    Lines of one series become one TimeSeries with several samples, in their order.
    """
    by_series: dict[Labels, list[tuple[int, float]]] = {}
    for sample in parse_lines(text):
        by_series.setdefault(sample.labels, []).append((sample.timestamp_ms, sample.value))
    series = [(codec.encode_labels(labels), samples) for labels, samples in by_series.items()]
    return codec.compress(codec.encode_write_request(series, metadata or []))


def decoded_request(text: str, metadata: list[MetricMetadata] | None = None) -> DecodedRequest:
    """``wire_request`` decoded again by the real decoder, as the server would see it."""
    return codec.decode_write_request(codec.decompress(wire_request(text, metadata)))
