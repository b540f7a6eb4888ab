"""Plain value types shared by every stage of the pipeline."""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

Labels = tuple[tuple[str, str], ...]
"""A label set: (name, value) pairs sorted by name, no duplicate names, no empty values."""

METRIC_NAME_LABEL = "__name__"
VIEW_LABEL = "view"

# The staleness marker is one specific NaN (spec, "Stale markers"). Any arithmetic turns it into
# an ordinary NaN, so it is recognised and written by its bits, never by value.
STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN_BYTES = struct.pack("<Q", STALE_NAN_BITS)
STALE_NAN: float = struct.unpack("<d", STALE_NAN_BYTES)[0]
_pack_double = struct.Struct("<d").pack


def is_stale_marker(value: float) -> bool:
    """True for the staleness marker; ordinary NaNs are not markers."""
    return value != value and _pack_double(value) == STALE_NAN_BYTES


class MetricType(enum.IntEnum):
    """``MetricMetadata.MetricType`` of remote write 1.0, numbered as on the wire."""

    UNKNOWN = 0
    COUNTER = 1
    GAUGE = 2
    HISTOGRAM = 3
    GAUGEHISTOGRAM = 4
    SUMMARY = 5
    INFO = 6
    STATESET = 7


class MetricMetadata(NamedTuple):
    family: str
    type: MetricType
    help: str
    unit: str


class OutputSample(NamedTuple):
    """One sample leaving enrichproxy: the output series' encoded labels, time and value."""

    label_bytes: bytes
    timestamp_ms: int
    value: float


def labels_to_text(labels: Labels) -> str:
    """Prometheus text form, ``name{a="1",b="2"}``, for logs, errors and tests."""
    name = ""
    pairs = []
    for label_name, value in labels:
        if label_name == METRIC_NAME_LABEL:
            name = value
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            pairs.append(f'{label_name}="{escaped}"')
    return f"{name}{{{','.join(pairs)}}}"
