"""The C WriteRequest decoder against the Python reference: the same readings, byte for byte.

``decode_write_request_natively`` (the C decoder) and ``codec.decode_write_request`` must refuse
exactly the same inputs (DecodeError from both; the messages may differ) and read the same
series (label bytes, timestamps, values by their bits: NaN payloads such as the staleness marker
count), metadata and exemplar and histogram counts.

The inputs: the bodies Prometheus sent (tests/fixtures), WriteRequests that Hypothesis encodes
field by field with everything the wire format allows and a little it does not (fields in any
order, repeated or missing, unknown fields of every wire type, overlong varints and tags,
varints whose 10th byte carries bits past the 64th, lengths that run short or long, field
number 0), and random mutations of both. tests/fuzz/fuzz_decoder.py does the same with
libFuzzer choosing the inputs; tests/test_native_asan.py runs it under AddressSanitizer.
"""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrichproxy.engine.native import decode_write_request_natively
from enrichproxy.errors import DecodeError
from enrichproxy.wire.codec import decode_write_request, decompress

FIXTURES = Path(__file__).parent / "fixtures"
FUZZER = Path(__file__).parent / "fuzz" / "fuzz_decoder.py"
UINT64_MASK = (1 << 64) - 1
STALE_NAN_BITS = 0x7FF0000000000002
# Wire types: VARINT, I64, LEN, SGROUP, EGROUP, I32 and the two that do not exist.
VARINT, I64, LEN, I32 = 0, 1, 2, 5

Reading = tuple[Any, ...] | None
"""A decoder's reading in comparable form; None when it refused the input."""


def fixture_bodies() -> list[bytes]:
    return [decompress(path.read_bytes()) for path in sorted(FIXTURES.glob("*.snappy"))]


# --- the readings -------------------------------------------------------------------------------


def _comparable(
    series: list[tuple[bytes, list[tuple[int, float]]]],
    metadata: list[Any],
    counts: tuple[int, int],
) -> tuple[Any, ...]:
    return (
        [
            (labels, [(type(ts), ts, struct.pack("<d", value)) for ts, value in samples])
            for labels, samples in series
        ],
        [(item.family, int(item.type), item.help, item.unit) for item in metadata],
        counts,
    )


def reference(data: bytes, known_label_bytes: set[bytes] | None = None) -> Reading:
    try:
        request = decode_write_request(data, known_label_bytes)
    except DecodeError:
        return None
    series = [(item.label_bytes, item.samples) for item in request.series]
    return _comparable(series, request.metadata, (request.exemplars, request.histograms))


def native(data: bytes) -> Reading:
    try:
        series, metadata, exemplars, histograms = decode_write_request_natively(data)
    except DecodeError:
        return None
    return _comparable(series, metadata, (exemplars, histograms))


def assert_same_reading(data: bytes) -> None:
    expected = reference(data)
    got = native(data)
    assert got == expected, f"decoders differ on {data.hex()}"
    if expected is not None:
        # The reference's own shortcut for label bytes it has seen must not change its reading.
        known = {labels for labels, _ in expected[0]}
        assert reference(data, known) == expected, f"known-labels path differs on {data.hex()}"


# --- hand-encoded protobuf ----------------------------------------------------------------------


def varint_bytes(value: int, size: int = 0) -> bytes:
    """``value`` (negative: two's complement) in at least ``size`` bytes (overlong if needed)."""
    value &= UINT64_MASK
    out = bytearray()
    while True:
        out.append(value & 0x7F)
        value >>= 7
        if not value and len(out) >= size:
            break
    for index in range(len(out) - 1):
        out[index] |= 0x80
    return bytes(out)


@st.composite
def varints(draw: st.DrawFn, value: int) -> bytes:
    """Mostly the shortest encoding; sometimes overlong (up to 10 bytes, or 11: invalid), or
    10 bytes whose last carries bits past the 64th (protobuf drops them)."""
    # Hypothesis favours the ends of a range: the rare forms sit in the middle of this one.
    minimal = varint_bytes(value)
    form = draw(st.integers(0, 39))
    if not 17 <= form <= 22:
        return minimal
    if form <= 20:
        return varint_bytes(value, draw(st.integers(len(minimal), 10)))
    if form == 21:
        low = bytearray(varint_bytes(value & ((1 << 63) - 1), 10))
        low[9] = ((value >> 63) & 1) | (draw(st.integers(1, 63)) << 1)
        return bytes(low)
    return varint_bytes(value, 11)


def tag(draw: st.DrawFn, number: int, wire_type: int) -> bytes:
    key = (number << 3) | wire_type
    if draw(st.integers(0, 39)) == 20:
        return varint_bytes(key, draw(st.integers(2, 10)))
    return varint_bytes(key)


def length_field(draw: st.DrawFn, number: int, payload: bytes) -> bytes:
    """A LEN field; now and then its length is off by a little (or a lot)."""
    length = len(payload)
    if draw(st.integers(0, 39)) == 20:
        length = max(0, length + draw(st.integers(-3, 3) | st.sampled_from([1 << 31, 1 << 63])))
    return tag(draw, number, LEN) + draw(varints(length)) + payload


int64s = st.one_of(
    st.sampled_from([0, 1, -1, 1795837384898, 1795837385898, (1 << 63) - 1, -(1 << 63), 1 << 35]),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.integers(0, UINT64_MASK),
)
double_bytes = st.one_of(
    st.sampled_from(
        [STALE_NAN_BITS, 0x7FF8000000000000, 0xFFF8000000000001, 0x7FF0000000000000, 0, 1 << 63]
    ).map(lambda bits: struct.pack("<Q", bits)),
    st.floats().map(lambda value: struct.pack("<d", value)),
    st.binary(min_size=8, max_size=8),
)
strings = st.one_of(
    st.sampled_from([b"", b"__name__", b"up", b"job", b"http_requests_total", b"seconds"]),
    st.text(max_size=8).map(str.encode),
    st.binary(max_size=8),  # often not UTF-8
)


@st.composite
def unknown_field(draw: st.DrawFn, numbers: st.SearchStrategy[int] | None = None) -> bytes:
    """A field the decoder skips (or must refuse: groups, wire types 6 and 7, field 0)."""
    number = draw(
        numbers
        if numbers is not None
        else st.one_of(st.integers(1, 40), st.sampled_from([0, (1 << 29) - 1, 1 << 29, 1 << 40]))
    )
    wire_type = draw(st.sampled_from([VARINT, I64, LEN, I32] * 4 + [3, 4, 6, 7]))
    if wire_type == VARINT:
        return tag(draw, number, wire_type) + draw(varints(draw(int64s)))
    if wire_type == LEN:
        return length_field(draw, number, draw(st.binary(max_size=12)))
    size = {I64: 8, I32: 4}.get(wire_type)
    payload = draw(st.binary(min_size=size or 0, max_size=size or 4))
    return tag(draw, number, wire_type) + payload


@st.composite
def label_field(draw: st.DrawFn) -> bytes:
    parts = draw(
        st.lists(
            st.one_of(
                st.builds(lambda name: (1, name), strings),
                st.builds(lambda value: (2, value), strings),
            ),
            max_size=3,
        )
    )
    if draw(st.integers(0, 9)) == 5:
        payload = draw(st.binary(max_size=10))
    else:
        payload = b"".join(length_field(draw, number, text) for number, text in parts)
    return length_field(draw, 1, payload)


@st.composite
def sample_payload(draw: st.DrawFn) -> bytes:
    value = b"\x09" + draw(double_bytes)
    timestamp = tag(draw, 2, VARINT) + draw(varints(draw(int64s)))
    if draw(st.booleans()):
        return value + timestamp  # as every sender writes it
    fields = draw(
        st.lists(
            st.one_of(
                st.just(value),
                st.just(timestamp),
                double_bytes.map(lambda bits: b"\x09" + bits),
                int64s.map(lambda ts: b"\x10" + varint_bytes(ts)),
                unknown_field(st.sampled_from([1, 2, 3, 1000])),
            ),
            max_size=4,
        )
    )
    return b"".join(fields)


@st.composite
def sample_field(draw: st.DrawFn) -> bytes:
    return length_field(draw, 2, draw(sample_payload()))


@st.composite
def exemplar_or_histogram(draw: st.DrawFn) -> bytes:
    number = draw(st.sampled_from([3, 4]))
    if draw(st.booleans()):
        payload = draw(label_field()) + draw(sample_payload())
    else:
        payload = draw(st.binary(max_size=12))
    return length_field(draw, number, payload)


@st.composite
def timeseries_field(draw: st.DrawFn) -> bytes:
    labels = draw(st.lists(label_field(), max_size=4))
    rest = draw(
        st.lists(
            st.one_of(
                sample_field(),
                sample_field(),
                exemplar_or_histogram(),
                label_field(),  # after other fields: legal
                unknown_field(st.sampled_from([1, 2, 3, 4, 5, 15, 16, 100])),
            ),
            max_size=4,
        )
    )
    return length_field(draw, 1, b"".join(labels + rest))


@st.composite
def metadata_field(draw: st.DrawFn) -> bytes:
    fields = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            type_number = draw(st.integers(0, 9) | int64s)
            fields.append(tag(draw, 1, VARINT) + draw(varints(type_number)))
        elif kind <= 3:
            number = draw(st.sampled_from([2, 4, 5]))
            fields.append(length_field(draw, number, draw(strings)))
        else:
            fields.append(draw(unknown_field(st.sampled_from([1, 2, 3, 4, 5, 6, 7]))))
    return length_field(draw, 3, b"".join(fields))


@st.composite
def write_requests(draw: st.DrawFn) -> bytes:
    fields = draw(
        st.lists(
            st.one_of(
                timeseries_field(),
                timeseries_field(),
                metadata_field(),
                unknown_field(st.sampled_from([1, 2, 3, 4, 5, 9, 1 << 20] * 3 + [0])),
            ),
            max_size=6,
        )
    )
    data = b"".join(fields)
    if data and draw(st.integers(0, 19)) == 10:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few random byte flips, truncations, insertions and deletions."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.45 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif roll < 0.55 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif roll < 0.7:
            del buf[rng.randrange(len(buf) + 1) :]
        elif roll < 0.85:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        elif buf:
            at = rng.randrange(len(buf))
            del buf[at : at + rng.randint(1, 12)]
    return bytes(buf)


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", fixture_bodies(), ids=lambda body: f"{len(body)}B")
def test_fixture_bodies(body: bytes) -> None:
    reading = native(body)
    assert reading is not None
    assert_same_reading(body)


def test_fixtures_hold_stale_markers() -> None:
    """The staleness marker survives as its exact NaN (the comparison would see it, too)."""
    values = {
        value
        for body in fixture_bodies()
        for _, samples in decode_write_request_natively(body)[0]
        for value in samples
    }
    assert struct.pack("<Q", STALE_NAN_BITS) in {struct.pack("<d", v) for _, v in values}


# Inputs in hex: each once read differently by some decoder, or near a boundary of one.
EDGE_CASES = [
    "",
    "00",  # field number 0
    "0a",  # a tag and nothing else
    "0a00",  # an empty timeseries
    "0a80808080808080808000",  # a 10-byte length
    "0a8080808080808080808000",  # an 11-byte length
    "0a8080808080808080807e",  # a 10-byte length with bits past the 64th
    # {up="x"} 1 @1795837384898 with an overlong timeseries tag (8a00), which the reference
    # skips as an unknown field
    "8a001b0a070a027570120178121009000000000000f03f10c2b1ff81a234",
    # the same series with an overlong sample length (9000)
    "0a1c0a070a02757012017812900009000000000000f03f10c2b1ff81a234",
    # ... with a second label after the sample, its tag overlong
    "0a220a070a027570120178121009000000000000f03f10c2b1ff81a2348a00040a027570",
    # ... with its only label after the sample
    "0a1b121009000000000000f03f10c2b1ff81a2340a070a027570120178",
    # a staleness marker with a timestamp whose 10th byte carries bits past the 64th
    "0a1f0a070a027570120178121409020000000000f07f10ffffffffffffffffff7f",
    "0a160a070a027570120178120b100509000000000000f87f",  # timestamp before value
    "0a190a070a027570120178120e0900000000000000401085808000",  # an overlong timestamp
    "0a03120100",  # a sample holding a field 0
    "0a061a0022001200",  # an exemplar, a histogram and an empty sample
    "0a02087f",  # field 1 as a varint in a timeseries
    "1a00",  # empty metadata
    "1a0608ff0112017a",  # metadata: type 255, family "z"
    "1a03120180",  # metadata: a family that is not UTF-8
    "0b0c",  # a group
    "0e",  # wire type 6
    "0f",  # wire type 7
    "0d00000000",  # field 1 as I32
    "0a0412000a00",  # an empty sample, then a label: no label before the first other field
]


@pytest.mark.parametrize("data", EDGE_CASES)
def test_edge_cases(data: str) -> None:
    assert_same_reading(bytes.fromhex(data))


def test_random_mutations_of_fixtures() -> None:
    rng = random.Random(20240611)
    bodies = fixture_bodies()
    # Short bodies decode fast and reach every error path, so most mutations are cut short.
    for _ in range(20000):
        body = mutate(rng.choice(bodies), rng)
        if rng.random() < 0.7:
            start = rng.randrange(len(body) + 1)
            body = body[start : start + rng.randint(0, 400)]
        assert_same_reading(body)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=False,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(write_requests(), st.randoms(use_true_random=False))
def test_generated_requests(data: bytes, rng: random.Random) -> None:
    assert_same_reading(data)
    # Generating a request costs far more than decoding it: mutate each one many times.
    for _ in range(40):
        assert_same_reading(mutate(data, rng))


def run_fuzzer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FUZZER), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fuzzer_finds_no_difference(tmp_path: Path) -> None:
    """A short libFuzzer run from the fixture seeds: ``make test`` fuzzes a little every time.
    ``make fuzz`` runs longer; a failing input is left as crash-* in the working directory."""
    pytest.importorskip("atheris")
    result = run_fuzzer("-runs=30000", "-max_total_time=20", "-print_final_stats=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "Done" in result.stderr, result.stderr[-3000:]
