"""Remote write 2.0 on the wire: the hand-written codec (wire/v2.py) and the C scanner
(wire.c's wire_decode_v2) against the official schema and against each other.

The generated classes of proto/write_v2.proto (``enrichproxy.wire.proto.write_v2_pb2``, upb
underneath) are the reference: requests they build must decode to their labels, samples and
types, and requests our encoder builds must parse there to what was encoded. Both decoders run
in every test, whatever engine the suite runs for: they must read and refuse alike.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enrichproxy.engine import _native
from enrichproxy.engine.metric_types import MetricTypes, series_metadata
from enrichproxy.engine.native import decode_v2_request_natively
from enrichproxy.errors import DecodeError
from enrichproxy.model import STALE_NAN, Labels, MetricMetadata, MetricType, OutputSample
from enrichproxy.wire import v2
from enrichproxy.wire.codec import (
    compress,
    decode_labels,
    decompress,
    encode_labels,
    encode_samples,
)
from enrichproxy.wire.proto import write_v2_pb2 as pb

FUZZER = Path(__file__).parent / "fuzz" / "fuzz_decoder_v2.py"
Reading = tuple[list[tuple[Labels, list[tuple[int, int]]]], list[tuple[str, int]], int, int]
"""(series as (labels, [(timestamp, value bits)]), (metric name, type), exemplars, histograms)."""


def bits(value: float) -> int:
    result: int = struct.unpack("<Q", struct.pack("<d", value))[0]
    return result


def read_python(data: bytes) -> Reading:
    request = v2.decode_v2_request(data)
    return (
        [
            (decode_labels(raw.label_bytes), [(ts, bits(value)) for ts, value in raw.samples])
            for raw in request.series
        ],
        [(name, int(metric_type)) for name, metric_type in request.series_types],
        request.exemplars,
        request.histograms,
    )


def read_native(data: bytes) -> Reading:
    series, types, exemplars, histograms = decode_v2_request_natively(data)
    return (
        [
            (decode_labels(label_bytes), [(ts, bits(value)) for ts, value in samples])
            for label_bytes, samples in series
        ],
        [(name.decode(), number) for name, number in types],
        exemplars,
        histograms,
    )


def read_both(data: bytes) -> Reading:
    """The one reading both decoders agree on (raw label bytes compared too)."""
    python, native = v2.decode_v2_request(data), decode_v2_request_natively(data)
    assert [raw.label_bytes for raw in python.series] == [item[0] for item in native[0]]
    reading = read_python(data)
    assert read_native(data) == reading
    return reading


def refused_by_both(data: bytes) -> str:
    """The reason both decoders give (the same words: the C scanner copies the reference)."""
    with pytest.raises(DecodeError) as python:
        v2.decode_v2_request(data)
    with pytest.raises(DecodeError) as native:
        decode_v2_request_natively(data)
    assert str(native.value) == str(python.value)
    return str(python.value)


def official(symbols: list[str], series: list[dict[str, object]]) -> bytes:
    """A Request built and serialised by the official schema's classes."""
    message = pb.Request(symbols=symbols)
    for item in series:
        message.timeseries.append(pb.TimeSeries(**item))  # type: ignore[arg-type]
    return message.SerializeToString()


SYMBOLS = ["", "__name__", "jobs_total", "pod", "a", "help text", "seconds", "le", "0.5"]


# --- reading what the official classes write ----------------------------------------------------


def test_a_request_of_the_official_schema_reads_as_its_labels_samples_and_types() -> None:
    data = official(
        SYMBOLS,
        [
            {
                "labels_refs": [1, 2, 3, 4],
                "samples": [
                    pb.Sample(value=1.5, timestamp=1000),
                    pb.Sample(value=2, timestamp=2000),
                ],
                "metadata": pb.Metadata(
                    type=pb.Metadata.METRIC_TYPE_COUNTER, help_ref=5, unit_ref=6
                ),
                "exemplars": [pb.Exemplar(labels_refs=[3, 4], value=1, timestamp=1000)],
                "created_timestamp": 500,
            },
            {
                "labels_refs": [1, 2, 3, 0],  # an empty value: the label is absent
                "histograms": [pb.Histogram(count_int=3, sum=1.0, schema=0, timestamp=1000)],
            },
        ],
    )
    series, types, exemplars, histograms = read_both(data)
    assert series == [
        ((("__name__", "jobs_total"), ("pod", "a")), [(1000, bits(1.5)), (2000, bits(2.0))]),
        ((("__name__", "jobs_total"),), []),
    ]
    assert types == [("jobs_total", int(MetricType.COUNTER))]
    assert (exemplars, histograms) == (1, 1)


def test_labels_come_out_in_1_0_form_so_a_series_is_one_input_in_both_protocols() -> None:
    labels = (("__name__", "jobs_total"), ("pod", "a"))
    data = official(SYMBOLS, [{"labels_refs": [1, 2, 3, 4], "samples": [pb.Sample(value=1)]}])
    assert v2.decode_v2_request(data).series[0].label_bytes == encode_labels(labels)
    assert decode_v2_request_natively(data)[0][0][0] == encode_labels(labels)


def test_unpacked_labels_refs_and_symbols_after_the_series_are_read_too() -> None:
    # Each ref as its own varint field (tag 0x08), and the symbols last: both legal protobuf.
    series = (
        b"\x08\x01\x08\x02\x08\x03\x08\x04" + b"\x12\x0b\x09" + struct.pack("<d", 7.0) + b"\x10\x05"
    )
    symbols = b"".join(b"\x22" + bytes((len(s),)) + s.encode() for s in SYMBOLS)
    data = b"\x2a" + bytes((len(series),)) + series + symbols
    assert pb.Request.FromString(data).timeseries[0].labels_refs == [1, 2, 3, 4]
    assert read_both(data)[0] == [((("__name__", "jobs_total"), ("pod", "a")), [(5, bits(7.0))])]


def test_types_are_listed_once_per_name_until_they_change() -> None:
    counter = pb.Metadata(type=pb.Metadata.METRIC_TYPE_COUNTER)
    gauge = pb.Metadata(type=pb.Metadata.METRIC_TYPE_GAUGE)
    data = official(
        SYMBOLS,
        [
            {"labels_refs": [1, 2, 3, 4], "metadata": counter},
            {"labels_refs": [1, 2], "metadata": counter},
            {"labels_refs": [1, 2], "metadata": gauge},
            {"labels_refs": [3, 4], "metadata": gauge},  # no metric name: no type to hand on
            {"labels_refs": [1, 2]},  # unspecified
        ],
    )
    assert read_both(data)[1] == [("jobs_total", 1), ("jobs_total", 2)]


def test_an_empty_request_is_valid() -> None:
    assert read_both(b"") == ([], [], 0, 0)
    assert read_both(official([""], [])) == ([], [], 0, 0)


# --- what the specification makes a receiver refuse ---------------------------------------------

INVALID = {
    "symbols[0] not empty": (
        official(["x", "__name__"], [{"labels_refs": [1, 1]}]),
        "symbols[0] must be the empty string",
    ),
    "name ref out of range": (
        official(SYMBOLS, [{"labels_refs": [1, 2]}, {"labels_refs": [1, 2, 42, 4]}]),
        "timeseries[1].labels_refs[2] = 42 is out of range: the request has 9 symbols",
    ),
    "value ref out of range": (
        official(SYMBOLS, [{"labels_refs": [1, 9]}]),
        "timeseries[0].labels_refs[1] = 9 is out of range: the request has 9 symbols",
    ),
    "help_ref out of range": (
        official(SYMBOLS, [{"labels_refs": [1, 2], "metadata": pb.Metadata(help_ref=100)}]),
        "timeseries[0].metadata.help_ref = 100 is out of range",
    ),
    "unit_ref out of range": (
        official(SYMBOLS, [{"labels_refs": [1, 2], "metadata": pb.Metadata(unit_ref=9)}]),
        "timeseries[0].metadata.unit_ref = 9 is out of range",
    ),
    "odd labels_refs": (
        official(SYMBOLS, [{"labels_refs": [1, 2, 3]}]),
        "timeseries[0] has 3 labels_refs: they must come in pairs",
    ),
    "empty label name": (
        official(SYMBOLS, [{"labels_refs": [1, 2, 0, 4]}]),
        "timeseries[0].labels_refs[2] names a label with the empty string",
    ),
    "series without symbols": (
        official([], [{"samples": [pb.Sample(value=1)]}]),
        "the request has timeseries but no symbols",
    ),
    "huge ref": (
        # A ref past 64 bits is out of range whatever its low bits say.
        b"\x22\x00\x22\x01x\x2a\x0d\x0a\x0b" + b"\x80" * 9 + b"\x02\x01",
        "timeseries[0].labels_refs[0] = 0 is out of range",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_what_the_specification_forbids_is_refused_with_a_reason_naming_it(case: str) -> None:
    data, reason = INVALID[case]
    assert reason in refused_by_both(data)


@pytest.mark.parametrize("cut", [1, 3, 7, 12])
def test_a_truncated_request_is_refused(cut: int) -> None:
    data = official(SYMBOLS, [{"labels_refs": [1, 2, 3, 4], "samples": [pb.Sample(value=1)]}])
    refused_by_both(data[:-cut])


# --- the encoder against the official classes and the decoders ----------------------------------

label_values = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)
label_sets = st.dictionaries(
    st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), label_values, min_size=1, max_size=5
)
sample_lists = st.lists(
    st.tuples(
        st.integers(-(1 << 63), (1 << 63) - 1),
        st.one_of(st.floats(allow_nan=False), st.just(STALE_NAN)),
    ),
    max_size=3,
)
metric_types = st.sampled_from(list(MetricType))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(label_sets, sample_lists, metric_types), max_size=6))
def test_encoder_and_decoders_and_the_official_parser_agree(
    series: list[tuple[dict[str, str], list[tuple[int, float]], MetricType]],
) -> None:
    encoded = [
        (encode_labels(tuple(sorted(labels.items()))), samples, metric_type)
        for labels, samples, metric_type in series
    ]
    data = v2.encode_v2_request(encoded)
    message = pb.Request.FromString(data)
    assert message.symbols[0] == ""
    assert len(set(message.symbols)) == len(message.symbols)  # one table, each string once
    reading = read_both(data)
    for (labels, samples, metric_type), item, (got_labels, got_samples) in zip(
        series, message.timeseries, reading[0], strict=True
    ):
        refs = list(item.labels_refs)
        assert dict(zip(refs[::2], refs[1::2], strict=True)).keys()  # pairs
        official_labels = {
            message.symbols[n]: message.symbols[v]
            for n, v in zip(refs[::2], refs[1::2], strict=True)
        }
        assert official_labels == labels
        assert got_labels == tuple(sorted(labels.items()))
        assert [(s.timestamp, bits(s.value)) for s in item.samples] == [
            (ts, bits(value)) for ts, value in samples
        ]
        assert got_samples == [(ts, bits(value)) for ts, value in samples]
        assert item.metadata.type == int(metric_type)


def test_encoded_output_carries_each_series_type_and_groups_its_samples() -> None:
    jobs = encode_labels((("__name__", "jobs_total"), ("view", "ops")))
    load = encode_labels((("__name__", "load"), ("view", "ops")))
    samples = [
        OutputSample(jobs, 1000, 1.0),
        OutputSample(load, 1000, 0.5),
        OutputSample(jobs, 2000, 2.0),
    ]
    kinds = {"jobs_total": MetricType.COUNTER, "load": MetricType.GAUGE}
    message = pb.Request.FromString(v2.encode_v2_samples(samples, kinds.__getitem__))
    assert [item.metadata.type for item in message.timeseries] == [1, 2]
    assert [[s.value for s in item.samples] for item in message.timeseries] == [[1.0, 2.0], [0.5]]


# --- types, and a queued batch in the other protocol --------------------------------------------


def test_a_series_type_names_its_family_as_1_0_metadata_would() -> None:
    entries = series_metadata(
        [
            ("http_seconds_bucket", MetricType.HISTOGRAM),
            ("rpc_seconds_sum", MetricType.SUMMARY),
            ("queue_gcount", MetricType.GAUGEHISTOGRAM),
            ("jobs_total", MetricType.COUNTER),
        ]
    )
    assert [(e.family, e.type) for e in entries] == [
        ("http_seconds", MetricType.HISTOGRAM),
        ("rpc_seconds", MetricType.SUMMARY),
        ("queue", MetricType.GAUGEHISTOGRAM),
        ("jobs_total", MetricType.COUNTER),
    ]
    types = MetricTypes()
    types.update(entries)
    assert types.is_counter("http_seconds_bucket")
    assert types.is_counter("rpc_seconds_sum")
    assert not types.is_counter("queue_bucket")
    types.update([MetricMetadata("temperature_total", MetricType.GAUGE, "", "")])
    assert not types.is_counter("temperature_total")  # the type wins over the name


def test_an_output_series_is_sent_with_the_type_it_was_aggregated_as() -> None:
    types = MetricTypes()
    types.update([MetricMetadata("http_seconds", MetricType.HISTOGRAM, "", "")])
    assert types.series_type("http_seconds_bucket") == MetricType.HISTOGRAM
    assert types.series_type("jobs_total") == MetricType.COUNTER  # by its suffix
    assert types.series_type("load") == MetricType.GAUGE


def test_a_queued_body_is_recognised_and_transcoded_either_way() -> None:
    labels = encode_labels((("__name__", "jobs_total"), ("pod", "p" * 200)))
    samples = [OutputSample(labels, 1000 * i, float(i)) for i in range(50)]
    v1_body = compress(encode_samples(samples))
    v2_body = compress(v2.encode_v2_samples(samples, lambda _name: MetricType.COUNTER))
    assert v2.body_protocol(v1_body) is v2.WireProtocol.V1
    assert v2.body_protocol(v2_body) is v2.WireProtocol.V2
    assert v2.body_protocol(compress(b"")) is v2.WireProtocol.V1
    assert decompress(v2.transcode(v2_body, v2.WireProtocol.V1)) == decompress(v1_body)
    again = v2.transcode(v1_body, v2.WireProtocol.V2, lambda _name: MetricType.COUNTER)
    assert decompress(again) == decompress(v2_body)


def test_a_series_without_labels_reads_the_same_in_both_decoders() -> None:
    """Found by the fuzzer: symbols [""] and one empty TimeSeries. The native reading gave
    None for the labels that were never written out, the reference b""."""
    data = bytes.fromhex("22002a00")
    reference = v2.decode_v2_request(data)
    series, _, _, _ = decode_v2_request_natively(data)
    assert [(item.label_bytes, item.samples) for item in reference.series] == series
    assert series == [(b"", [])]


def test_fuzzer_finds_no_difference(tmp_path: Path) -> None:
    """A short libFuzzer run of tests/fuzz/fuzz_decoder_v2.py from its seeds (``make fuzz``
    runs longer); a failing input is left as crash-* in the working directory."""
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, str(FUZZER), "-runs=30000", "-max_total_time=20", "-print_final_stats=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert "Done" in result.stderr, result.stderr[-3000:]


@settings(max_examples=120, deadline=None)
@given(
    st.lists(label_sets, min_size=1, max_size=4),
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(-(1 << 63), (1 << 63) - 1),
            st.one_of(st.floats(), st.just(STALE_NAN)),
        ),
        max_size=10,
    ),
)
def test_the_native_2_0_encoder_writes_what_the_reference_writes(
    label_choices: list[dict[str, str]], picks: list[tuple[int, int, float]]
) -> None:
    """_native.encode_samples_v2 (the native engine's encode_output_v2) against
    wire.v2.encode_v2_samples: the same bytes, and type_of asked the same names in order."""
    keys = [encode_labels(tuple(sorted(labels.items()))) for labels in label_choices]
    samples = [
        OutputSample(keys[pick % len(keys)], timestamp, value) for pick, timestamp, value in picks
    ]
    asked: list[list[str]] = [[], []]

    def typing(into: list[str]) -> v2.TypeOf:
        def type_of(name: str) -> MetricType:
            into.append(name)
            return MetricType(len(name) % len(MetricType))

        return type_of

    expected = v2.encode_v2_samples(samples, typing(asked[0]))
    assert _native.encode_samples_v2(samples, typing(asked[1])) == expected
    assert asked[0] == asked[1]


def test_labels_that_references_blow_up_are_refused_before_they_are_written_out() -> None:
    """A reference may name a long string any number of times: written out, a request's
    labels may take no more than max_decoded_bytes, in both decoders."""
    long_value = "v" * 1000
    symbols = ["", "__name__", "m", *(f"l{i}" for i in range(50)), long_value]
    refs = [1, 2]
    for i in range(50):
        refs += [3 + i, 53]  # fifty labels of the same 1,000-byte value
    data = official(symbols, [{"labels_refs": refs}] * 4)
    limit = 120_000  # one series writes out to ~50 KB: the third crosses it
    with pytest.raises(DecodeError, match="take more than 120000 bytes"):
        v2.decode_v2_request(data, limit)
    with pytest.raises(DecodeError, match="take more than 120000 bytes"):
        decode_v2_request_natively(data, limit)
    assert len(v2.decode_v2_request(data, 4 * limit).series) == 4
    assert len(decode_v2_request_natively(data, 4 * limit)[0]) == 4
