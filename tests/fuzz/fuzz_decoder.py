#!/usr/bin/env python3
"""Fuzz the C WriteRequest decoder against the Python reference: any difference is a bug.

    python tests/fuzz/fuzz_decoder.py [libFuzzer flags] [corpus dir ...]

Both decoders read every input. They must refuse the same inputs (with DecodeError; the
messages may differ) and read the same series (float values compared by their bits, so NaN
payloads such as the staleness marker count), metadata, exemplar and histogram counts. Any
other exception from either is a bug too. Without a corpus directory the decoded bodies of the
captured payloads in tests/fixtures are the seeds (in a temporary directory, which libFuzzer
also grows). Coverage comes from the Python decoder (the C one is not instrumented).

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
from enrichproxy.engine.native import decode_write_request_natively
from enrichproxy.errors import DecodeError
from enrichproxy.wire import codec
from enrichproxy.wire.codec import decode_write_request, decompress

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

Reading = tuple[Any, ...]


class Mismatch(AssertionError):
    """The two decoders read one input differently."""


def seed_bodies() -> list[bytes]:
    """The decoded (protobuf) bodies of the captured payloads."""
    return [decompress(path.read_bytes()) for path in sorted(FIXTURES.glob("*.snappy"))]


def _series(series: list[tuple[bytes, list[tuple[int, float]]]]) -> list[Reading]:
    return [
        (label_bytes, [(timestamp, struct.pack("<d", value)) for timestamp, value in samples])
        for label_bytes, samples in series
    ]


def _metadata(metadata: list[Any]) -> list[Reading]:
    return [(item.family, int(item.type), item.help, item.unit) for item in metadata]


def reference_reading(data: bytes) -> Reading | None:
    """The Python decoder's reading, in comparable form; None when it refuses ``data``."""
    try:
        request = decode_write_request(data)
    except DecodeError:
        return None
    series = [(item.label_bytes, item.samples) for item in request.series]
    return (_series(series), _metadata(request.metadata), request.exemplars, request.histograms)


def native_reading(data: bytes) -> Reading | None:
    """The C decoder's reading, in comparable form; None when it refuses ``data``."""
    try:
        series, metadata, exemplars, histograms = decode_write_request_natively(data)
    except DecodeError:
        return None
    return (_series(series), _metadata(metadata), exemplars, histograms)


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
        with tempfile.TemporaryDirectory(prefix="fuzz_decoder-") as corpus:
            for index, body in enumerate(seed_bodies()):
                (Path(corpus) / f"fixture-{index}").write_bytes(body)
            return subprocess.call([sys.executable, *argv, corpus])

    import atheris  # type: ignore[import-untyped]

    # Instrument the decoders' Python code so libFuzzer sees which branches an input takes
    # (instrument_all would take a minute to instrument everything loaded).
    for module in (codec, native):
        for function in vars(module).values():
            if isinstance(function, FunctionType) and function.__module__ == module.__name__:
                atheris.instrument_func(function)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()  # does not return
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
