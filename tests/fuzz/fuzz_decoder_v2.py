#!/usr/bin/env python3
"""Fuzz the C remote write 2.0 decoder against the Python reference: any difference is a bug.

    python tests/fuzz/fuzz_decoder_v2.py [libFuzzer flags] [corpus dir ...]

As tests/fuzz/fuzz_decoder.py does for 1.0: both decoders (enrichproxy.wire.v2 and wire.c's
wire_decode_v2) read every input, must refuse the same inputs (with DecodeError) and must read
the same series (labels written out in 1.0's form, samples compared by their bits), per-series
types and exemplar and histogram counts. The seeds are the captured 1.0 payloads of
tests/fixtures, each encoded again as a 2.0 request with metric types.

``check`` is also what tests/test_native_asan.py runs under AddressSanitizer.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FunctionType
from typing import Any

from enrichproxy.engine import native
from enrichproxy.engine.native import decode_v2_request_natively
from enrichproxy.errors import DecodeError
from enrichproxy.model import MetricType
from enrichproxy.wire import codec, v2
from enrichproxy.wire.codec import decode_labels, decode_write_request, decompress
from enrichproxy.wire.v2 import decode_v2_request, encode_v2_request

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

Reading = tuple[Any, ...]


class Mismatch(AssertionError):
    """The two decoders read one input differently."""


def _type_for(label_bytes: bytes) -> MetricType:
    name = dict(decode_labels(label_bytes)).get("__name__", "")
    if name.endswith("_bucket"):
        return MetricType.HISTOGRAM
    return MetricType.COUNTER if name.endswith("_total") else MetricType.GAUGE


def seed_bodies() -> list[bytes]:
    """The captured 1.0 payloads, as 2.0 requests (labels, samples, a type per series)."""
    bodies = []
    for path in sorted(FIXTURES.glob("*.snappy")):
        request = decode_write_request(decompress(path.read_bytes()))
        bodies.append(
            encode_v2_request(
                (raw.label_bytes, raw.samples, _type_for(raw.label_bytes)) for raw in request.series
            )
        )
    return bodies


def _series(series: list[tuple[bytes, list[tuple[int, float]]]]) -> list[Reading]:
    return [
        (label_bytes, [(timestamp, struct.pack("<d", value)) for timestamp, value in samples])
        for label_bytes, samples in series
    ]


def reference_reading(data: bytes) -> Reading | None:
    """The Python decoder's reading, in comparable form; None when it refuses ``data``."""
    try:
        request = decode_v2_request(data)
    except DecodeError:
        return None
    series = [(item.label_bytes, item.samples) for item in request.series]
    types = [(name, int(metric_type)) for name, metric_type in request.series_types]
    return (_series(series), types, request.exemplars, request.histograms)


def native_reading(data: bytes) -> Reading | None:
    """The C decoder's reading, in comparable form; None when it refuses ``data``."""
    try:
        series, types, exemplars, histograms = decode_v2_request_natively(data)
    except DecodeError:
        return None
    named = [(name.decode("utf-8", "replace"), number) for name, number in types]
    return (_series(series), named, exemplars, histograms)


def check(data: bytes) -> None:
    """Mismatch when the decoders read ``data`` differently."""
    expected = reference_reading(data)
    got = native_reading(data)
    if got != expected:
        raise Mismatch(
            f"decoders differ on {len(data)} bytes: {data.hex()}\n"
            f"python: {'refused' if expected is None else expected}\n"
            f"native: {'refused' if got is None else got}"
        )


def test_one_input(data: bytes) -> None:
    check(data)


def main(argv: list[str]) -> int:
    if all(arg.startswith("-") for arg in argv[1:]):
        # No corpus: seed one in a temporary directory and fuzz in a child process, because
        # libFuzzer ends the process without unwinding and would leave the directory behind.
        with tempfile.TemporaryDirectory(prefix="fuzz_decoder_v2-") as corpus:
            for index, body in enumerate(seed_bodies()):
                (Path(corpus) / f"fixture-{index}").write_bytes(body)
            return subprocess.call([sys.executable, *argv, corpus])

    import atheris  # type: ignore[import-untyped]

    for module in (codec, v2, native):
        for function in vars(module).values():
            if isinstance(function, FunctionType) and function.__module__ == module.__name__:
                atheris.instrument_func(function)
    atheris.instrument_func(v2._SeriesReader.read)
    atheris.instrument_func(v2._SeriesReader.metadata)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()  # does not return
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
