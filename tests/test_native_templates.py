"""Plan templates (native engine): series planned in C from a template decide exactly as the
Python reference decides for each series on its own.

The world here is built to stress what a template must get right: chained joins that add and
drop labels, labels the series already has (conflicts, both ``on_conflict`` modes), selectors
on labels the join does not touch, ``le`` and ``quantile``, labels kept by one view only, empty
values, labels sent out of order, label bytes that are not in the plain form (unknown fields,
repeated names, invalid UTF-8, empty or duplicate names), label limits and a view's cap.
Both engines get the same requests; results (errors by class and message), outputs (values by
their bits), exported state and stats must be identical.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine.interface import ViewOutput
from enrichproxy.engine.native import NativeEngine, fast_decode_labels, signature_names
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.metadata.table import build_table
from enrichproxy.wire.codec import compress, decode_labels, encode_labels, encode_write_request

START_MS = 1_700_000_000_000

LABEL_VALUES = {
    "__name__": ["x_total", "x_bucket", "y", "x_sum", ""],
    "pod": ["a", "b", "c", "zz", ""],
    "endpoint": ["/1", "/2", ""],
    "le": ["0.1", "+Inf", ""],
    "quantile": ["", "", "", "0.5"],
    "env": ["dev", "prod", ""],
    "service": ["", "", "s1", "s9"],
    "owner": ["", "o1"],
    "zone": ["", "z1", "z2"],
    "extra": ["", "e1", "é"],
    "junk": ["", "j", "k"],
}


def make_config(
    on_conflict: str, drop_key_labels: bool, on_missing: str, limit_labels: int
) -> Config:
    return parse_config(
        {
            "metadata": {
                "on_conflict": on_conflict,
                "rules": [
                    {
                        "name": "pods",
                        "collection": "pods",
                        "key_label": "pod",
                        "fields": ["service", "tier"],
                        "drop_key_labels": drop_key_labels,
                    },
                    {
                        "name": "owners",
                        "collection": "services",
                        "key_label": "service",
                        "fields": ["owner"],
                        "drop_key_labels": False,
                        "on_missing": on_missing,
                    },
                ],
            },
            "views": [
                {"name": "ops", "keep": ["service", "endpoint", "owner"]},
                {"name": "biz", "keep": ["tier", "zone"], "match": '{env=~"prod|qa"}'},
                {
                    "name": "odd",
                    "keep": ["extra", "junk"],
                    "match": '{__name__=~"x_.*"}',
                    "max_series": 6,
                },
            ],
            "aggregation": {"interval": "10s", "lateness": "5s"},
            "limits": {"max_labels_per_series": limit_labels},
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        }
    )


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


# How one label's bytes are written: plainly, or in one of the forms only Python plans.
ODD_FORMS = ("unknown_field", "value_first", "repeated_name", "bad_utf8", "empty_name")


def label_field(name: str, value: str, form: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    if form == "unknown_field":
        inner = field(0x0A, name_bytes) + field(0x12, value_bytes) + b"\x18\x01"
    elif form == "value_first":
        inner = field(0x12, value_bytes) + field(0x0A, name_bytes)
    elif form == "repeated_name":
        inner = field(0x0A, b"other") + field(0x0A, name_bytes) + field(0x12, value_bytes)
    elif form == "bad_utf8":
        inner = field(0x0A, name_bytes) + field(0x12, value_bytes + b"\xff")
    elif form == "empty_name":
        inner = field(0x0A, b"") + field(0x12, value_bytes)
    else:
        inner = field(0x0A, name_bytes) + field(0x12, value_bytes)
    return field(0x0A, inner)


series_labels = st.fixed_dictionaries(
    {name: st.sampled_from(values) for name, values in LABEL_VALUES.items()}
)


@st.composite
def series_bytes(draw: st.DrawFn) -> bytes:
    labels = [
        (name, value) for name, value in draw(series_labels).items() if value or draw(st.booleans())
    ]
    if draw(st.integers(0, 4)) == 0:
        labels = draw(st.permutations(labels))
    forms = ["plain"] * len(labels)
    if labels and draw(st.integers(0, 9)) == 0:
        forms[draw(st.integers(0, len(labels) - 1))] = draw(st.sampled_from(ODD_FORMS))
    raw = b"".join(label_field(n, v, f) for (n, v), f in zip(labels, forms, strict=True))
    if labels and draw(st.integers(0, 19)) == 0:  # a duplicate name
        name, value = labels[0]
        raw += label_field(name, value + "2", "plain")
    return raw


requests = st.lists(
    st.lists(st.tuples(series_bytes(), st.sampled_from([1.0, 2.0, 5.0, 0.0])), max_size=12),
    min_size=1,
    max_size=6,
)
tables = st.tuples(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.tuples(st.sampled_from(["s1", "s2", "s9"]), st.sampled_from(["gold", "", "tin"])),
    ),
    st.dictionaries(st.sampled_from(["s1", "s2"]), st.sampled_from(["o1", "o2"])),
)


def bits(outputs: list[ViewOutput]) -> list[tuple[str, list[tuple[bytes, int, bytes]]]]:
    return [
        (
            o.view,
            sorted((s.label_bytes, s.timestamp_ms, struct.pack("<d", s.value)) for s in o.samples),
        )
        for o in outputs
    ]


def outcome(engine: Pipeline | NativeEngine, body: bytes, now_ms: int) -> object:
    try:
        return ("ok", engine.ingest(body, now_ms))
    except Exception as exc:  # compared between the engines, class and message
        return ("raised", type(exc).__name__, str(exc))


Tables = tuple[dict[str, tuple[str, str]], dict[str, str]]
"""(pod → (service, tier), service → owner)"""


def set_tables(engine: Pipeline | NativeEngine, config: Config, docs: Tables, version: int) -> None:
    pods, services = docs
    pod_rule, service_rule = config.metadata.enrich_rules
    pod_docs = [{"pod": pod, "service": s, "tier": t} for pod, (s, t) in pods.items()]
    service_docs = [{"service": s, "owner": o} for s, o in services.items()]
    engine.set_table(build_table(pod_docs, pod_rule, version, 0.0).table, 0)
    engine.set_table(build_table(service_docs, service_rule, version, 0.0).table, 1)


def compare(
    config: Config, first_tables: Tables, batches: list[list[tuple[bytes, float]]], later: Tables
) -> None:
    python, native = Pipeline(config), NativeEngine(config)
    for engine in (python, native):
        set_tables(engine, config, first_tables, 1)
    clock = START_MS
    for number, batch in enumerate(batches):
        clock += 4_000
        body = compress(encode_write_request([(raw, [(clock, value)]) for raw, value in batch]))
        assert outcome(native, body, clock) == outcome(python, body, clock)
        if number == len(batches) // 2:
            for engine in (python, native):
                set_tables(engine, config, later, 2)
        assert bits(native.flush(clock)) == bits(python.flush(clock))
        assert native.stats() == python.stats()
    assert bits(native.flush(clock + 60_000, True)) == bits(python.flush(clock + 60_000, True))
    assert json.dumps(native.export_state(), sort_keys=True) == json.dumps(
        python.export_state(), sort_keys=True
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests,
    tables,
    tables,
    st.sampled_from(["overwrite", "keep"]),
    st.booleans(),
    st.sampled_from(["keep", "drop"]),
    st.sampled_from([0, 0, 7]),
)
def test_templated_plans_match_the_reference(
    batches: list[list[tuple[bytes, float]]],
    first_tables: Tables,
    later_tables: Tables,
    on_conflict: str,
    drop_key_labels: bool,
    on_missing: str,
    limit_labels: int,
) -> None:
    config = make_config(on_conflict, drop_key_labels, on_missing, limit_labels)
    compare(config, first_tables, batches, later_tables)


def test_series_of_one_signature_share_one_template() -> None:
    """Series that differ only in labels no decision reads (here ``endpoint``, ``extra``) are
    planned from one template; another metric name or pod makes another one."""
    config = make_config("overwrite", True, "keep", 0)
    python, native = Pipeline(config), NativeEngine(config)
    first = [
        (("__name__", "x_total"), ("endpoint", f"/{n}"), ("extra", str(n % 7)), ("pod", "a"))
        for n in range(300)
    ]
    more = [
        (("__name__", name), ("endpoint", "/1"), ("pod", pod))
        for name in ("x_total", "y")
        for pod in ("a", "b")
    ]
    for engine in (python, native):
        set_tables(engine, config, ({"a": ("s1", "gold"), "b": ("s2", "tin")}, {}), 1)
        for batch in (first, more):
            series = [(encode_labels(labels), [(START_MS, 1.0)]) for labels in batch]
            engine.ingest(compress(encode_write_request(series)), START_MS)
            if batch is first and engine is native:
                assert native.cached_series == 300
                assert native._core.templates == 1
    assert native._core.templates == 4
    outputs = bits(native.flush(START_MS + 60_000, True))
    assert outputs == bits(python.flush(START_MS + 60_000, True))
    ops = outputs[0][1]
    assert len(ops) == 303  # 300 endpoints of s1's x_total; x_total on s2, y on s1 and s2


def test_signature_names_cover_every_decision() -> None:
    config = make_config("overwrite", True, "keep", 0)
    names = signature_names(NativeEngine(config).planner)
    assert names == {"__name__", "quantile", "view", "pod", "service", "tier", "owner", "env"}


@given(series_bytes())
@settings(max_examples=300, deadline=None)
def test_c_label_decoding_matches_the_codec(raw: bytes) -> None:
    try:
        expected: object = decode_labels(raw)
    except Exception as exc:
        expected = type(exc)
    try:
        got: object = fast_decode_labels(raw)
    except Exception as exc:
        got = type(exc)
    assert got == expected
    if isinstance(expected, tuple):
        from enrichproxy.engine import _native

        assert _native.encode_labels(expected) == encode_labels(expected)


@pytest.mark.parametrize("text", ["", "a", "é", "\u00ff" * 70, "z" * 200])
def test_c_label_encoding_matches_the_codec(text: str) -> None:
    from enrichproxy.engine import _native

    labels = (("__name__", "m"), ("k", text or "v"))
    assert _native.encode_labels(labels) == encode_labels(labels)
