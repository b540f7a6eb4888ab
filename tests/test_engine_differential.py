"""The native engine against the Python reference: the same request streams, the same outputs.

Hypothesis writes random streams over a small world (a few pods, services and tiers, counters,
gauges and histogram buckets, two views, one of them capped) with everything that makes the
aggregation hard: resets, staleness markers, NaNs, late, reordered, duplicate and far-future
samples, series that appear and vanish, metadata that moves pods between services, metric
types learnt late (from 1.0 metadata requests and from 2.0 requests' per-series types, each
Push in either protocol), flushes at any wall time (also in steps, with pushes between them),
restarts from exported state and reloads; in some runs, input-series limits (total, per view)
small enough for the streams to meet them. Both engines get the same stream; every ingest
result, every output sample (value compared by its
bits) and the exported state must be identical.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine.interface import Engine, ViewOutput, run_steps
from enrichproxy.engine.native import NativeEngine
from enrichproxy.engine.pipeline import Pipeline as PythonEngine
from enrichproxy.metadata.table import MetadataTable, build_table
from enrichproxy.model import STALE_NAN, MetricMetadata, MetricType
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request
from enrichproxy.wire.v2 import WireProtocol, encode_v2_request

PODS = ["a", "b", "c", "d", "e"]
SERVICES = ["s1", "s2", "s3"]
METRICS = ["jobs_total", "temperature", "latency_bucket", "latency_count", "rpc"]
START_MS = 1_700_000_000_000
INTERVAL_MS = 10_000


# (limits.max_input_series, the ops view's max_input_series): none, each alone, both.
INPUT_LIMITS = [(0, 0), (12, 0), (0, 8), (20, 6)]


def make_config(
    business_keep: tuple[str, ...] = ("tier",),
    max_series: int = 3,
    on_missing: str = "keep",
    input_limits: tuple[int, int] = (0, 0),
) -> Config:
    total, ops_inputs = input_limits
    return parse_config(
        {
            "metadata": {"fields": ["service", "tier"], "on_missing": on_missing},
            "limits": {"max_input_series": total},
            "views": [
                {"name": "ops", "keep": ["service", "endpoint"], "max_input_series": ops_inputs},
                {"name": "biz", "keep": list(business_keep), "max_series": max_series},
            ],
            "aggregation": {
                "interval": "10s",
                "lateness": "5s",
                "stale_after": "30s",
                "retention": "60s",
                "idle_flush": "20s",
            },
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        }
    )


@dataclass(frozen=True)
class Push:
    series: list[tuple[str, str, str, list[tuple[int, float]]]]
    """(metric, pod, endpoint, samples as (offset from the clock, value))."""
    metadata: list[tuple[str, int]]
    at: int
    protocol: WireProtocol = WireProtocol.V1
    """In 2.0 the metadata's types go on the series of those metrics instead."""


@dataclass(frozen=True)
class Flush:
    at: int
    final: bool


@dataclass(frozen=True)
class Table:
    services: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class SteppedFlush:
    """A flush in steps (the native engine settles one input a step) with pushes and table
    changes between its steps; the reference flushes whole, then takes them in order."""

    at: int
    final: bool
    between: list[Push | Table]


@dataclass(frozen=True)
class Restart:
    pass


@dataclass(frozen=True)
class Reload:
    business_keep: tuple[str, ...]
    max_series: int


Step = Push | Flush | SteppedFlush | Table | Restart | Reload

values = st.one_of(
    st.sampled_from(
        [0.0, 1.0, 2.0, 5.0, 10.0, 0.5, -1.0, STALE_NAN, float("nan"), 1e300, math.inf, -math.inf]
    ),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.integers(min_value=0, max_value=1000).map(float),
)
offsets = st.integers(min_value=-40_000, max_value=40_000) | st.sampled_from([0, 700_000])
series_strategy = st.tuples(
    st.sampled_from(METRICS),
    st.sampled_from(PODS),
    st.sampled_from(["/x", "/y"]),
    st.lists(st.tuples(offsets, values), min_size=0, max_size=3),
)
pushes = st.builds(
    Push,
    st.lists(series_strategy, min_size=0, max_size=8),
    st.lists(
        st.tuples(st.sampled_from(["rpc", "temperature"]), st.sampled_from([1, 2])), max_size=1
    ),
    st.integers(min_value=0, max_value=25_000),
    st.sampled_from(list(WireProtocol)),
)
tables = st.builds(
    Table,
    st.dictionaries(
        st.sampled_from(PODS),
        st.tuples(st.sampled_from(SERVICES), st.sampled_from(["gold", "bronze"])),
    ),
)
steps = st.one_of(
    pushes,
    st.builds(Flush, st.integers(min_value=0, max_value=30_000), st.booleans()),
    st.builds(
        SteppedFlush,
        st.integers(min_value=0, max_value=30_000),
        st.booleans(),
        st.lists(pushes | tables, max_size=6),
    ),
    tables,
    st.just(Restart()),
    st.builds(
        Reload,
        st.sampled_from([("tier",), ("service",), ("tier", "endpoint")]),
        st.sampled_from([0, 2, 3]),
    ),
)


def body_of(push: Push, clock: int) -> bytes:
    series = []
    for metric, pod, endpoint, samples in push.series:
        labels: tuple[tuple[str, str], ...] = (
            ("__name__", metric),
            ("endpoint", endpoint),
            ("pod", pod),
        )
        if metric == "latency_bucket":
            labels = (*labels[:2], ("le", "0.5"), labels[2])
        series.append(
            (encode_labels(labels), [(clock + offset, value) for offset, value in samples])
        )
    if push.protocol is WireProtocol.V2:
        kinds = dict(push.metadata)
        return compress(
            encode_v2_request(
                (labels, samples, MetricType(kinds.get(metric, 0)))
                for (labels, samples), (metric, *_) in zip(series, push.series, strict=True)
            )
        )
    metadata = [MetricMetadata(family, MetricType(kind), "", "") for family, kind in push.metadata]
    return compress(encode_write_request(series, metadata))


def bits(outputs: list[ViewOutput]) -> list[tuple[str, list[tuple[bytes, int, bytes]]]]:
    """Outputs in a comparable form: per view, samples sorted, values by their bits."""
    return [
        (
            output.view,
            sorted(
                (s.label_bytes, s.timestamp_ms, struct.pack("<d", s.value)) for s in output.samples
            ),
        )
        for output in outputs
    ]


def state_text(engine: Engine) -> str:
    return json.dumps(engine.export_state(), sort_keys=True)


def outcome(call: Any) -> Any:
    """What a call returned, or the class and message of what it raised."""
    try:
        return ("ok", call())
    except Exception as exc:
        return ("raised", type(exc).__name__)


class Twins:
    """Both engines, fed alike, compared after every step."""

    def __init__(self, on_missing: str = "keep", input_limits: tuple[int, int] = (0, 0)) -> None:
        self.on_missing = on_missing
        self.input_limits = input_limits
        self.config = make_config(on_missing=on_missing, input_limits=input_limits)
        self.python: Engine = PythonEngine(self.config)
        self.native: Engine = NativeEngine(self.config)
        self.clock = START_MS
        self.table_version = 0

    def step(self, step: Step) -> None:
        if isinstance(step, Push):
            self.push(step)
        elif isinstance(step, Flush):
            self.clock += step.at
            expected = bits(self.python.flush(self.clock, step.final))
            assert bits(self.native.flush(self.clock, step.final)) == expected
        elif isinstance(step, SteppedFlush):
            self.stepped_flush(step)
        elif isinstance(step, Table):
            table = self.table(step)
            assert self.native.set_table(table, 0) == self.python.set_table(table, 0)
        elif isinstance(step, Restart):
            saved = json.loads(state_text(self.python))
            emitted = self.python.emitted_through_ms()
            assert json.loads(state_text(self.native)) == saved
            assert self.native.emitted_through_ms() == emitted
            tables = [self.python.planner.tables[0]]
            self.python = PythonEngine(self.config)
            self.native = NativeEngine(self.config)
            for engine in (self.python, self.native):
                engine.set_table(tables[0], 0)
            assert self.native.restore_state(saved) == self.python.restore_state(saved)
            self.python.mark_emitted_through(emitted)
            self.native.mark_emitted_through(emitted)
        else:
            self.config = make_config(
                step.business_keep, step.max_series, self.on_missing, self.input_limits
            )
            reference = self.python.reconfigure(self.config, self.clock)
            got = self.native.reconfigure(self.config, self.clock)
            assert bits(got.outputs) == bits(reference.outputs)
            assert (got.kept, got.restarted, got.removed, got.added) == (
                reference.kept,
                reference.restarted,
                reference.removed,
                reference.added,
            )
            self.python, self.native = reference.engine, got.engine
        assert state_text(self.native) == state_text(self.python)
        assert self.native.stats() == self.python.stats()

    def push(self, step: Push) -> None:
        self.clock += step.at
        body = body_of(step, self.clock)
        protocol = step.protocol
        expected = outcome(lambda: self.python.ingest(body, self.clock, protocol))
        assert outcome(lambda: self.native.ingest(body, self.clock, protocol)) == expected

    def table(self, step: Table) -> MetadataTable:
        self.table_version += 1
        documents = [
            {"pod": pod, "service": service, "tier": tier}
            for pod, (service, tier) in step.services.items()
        ]
        rule = self.config.metadata.enrich_rules[0]
        return build_table(documents, rule, self.table_version, 0.0).table

    def stepped_flush(self, step: SteppedFlush) -> None:
        """The native flush's steps alternate with the pushes and table changes."""
        self.clock += step.at
        expected_flush = bits(self.python.flush(self.clock, step.final))
        assert isinstance(self.native, NativeEngine)
        self.native.flush_step_inputs = 1
        flush = self.native.flush_steps(self.clock, step.final)
        next(flush)  # decides which windows close; the rest may interleave
        flushed: list[ViewOutput] | None = None
        for between in step.between:
            if flushed is None:
                try:
                    next(flush)
                except StopIteration as done:
                    flushed = done.value
            if isinstance(between, Push):
                self.push(between)
            else:
                table = self.table(between)
                assert self.native.set_table(table, 0) == self.python.set_table(table, 0)
        if flushed is None:
            flushed = run_steps(flush)
        assert bits(flushed) == expected_flush


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(steps, min_size=1, max_size=30),
    st.sampled_from(["keep", "drop"]),
    st.sampled_from(INPUT_LIMITS),
)
def test_native_engine_matches_the_reference(
    stream: list[Step], on_missing: str, input_limits: tuple[int, int]
) -> None:
    twins = Twins(on_missing, input_limits)
    for step in stream:
        twins.step(step)
    twins.step(Flush(100_000, True))


@pytest.mark.parametrize("seed", range(5))
def test_long_streams_match(seed: int) -> None:
    """Thousands of steps: state that only builds up over time (forgetting, caps, moves,
    input-series limits reached and freed)."""
    import random

    rng = random.Random(seed)
    twins = Twins("drop" if seed % 2 else "keep", INPUT_LIMITS[seed % len(INPUT_LIMITS)])

    def push(number: int) -> Push:
        series = [
            (
                rng.choice(METRICS),
                rng.choice(PODS),
                rng.choice(["/x", "/y"]),
                [
                    (
                        rng.randint(-20_000, 5_000),
                        rng.choice([1.0, 2.0, 3.0, 0.0, STALE_NAN, float(number)]),
                    )
                ],
            )
            for _ in range(rng.randint(1, 10))
        ]
        protocol = WireProtocol.V2 if rng.random() < 0.3 else WireProtocol.V1
        return Push(series, [], rng.randint(0, 3_000), protocol)

    for number in range(1500):
        roll = rng.random()
        if roll < 0.75:
            twins.step(push(number))
        elif roll < 0.9:
            at, final = rng.randint(0, 6_000), rng.random() < 0.05
            if rng.random() < 0.5:
                twins.step(Flush(at, final))
            else:
                between = [push(number) for _ in range(rng.randint(0, 3))]
                twins.step(SteppedFlush(at, final, list[Push | Table](between)))
        elif roll < 0.96:
            services = {
                pod: (rng.choice(SERVICES), rng.choice(["gold", "bronze"]))
                for pod in rng.sample(PODS, rng.randint(0, 5))
            }
            twins.step(Table(services))
        elif roll < 0.98:
            twins.step(Restart())
        else:
            twins.step(Reload(rng.choice([("tier",), ("service",)]), rng.choice([0, 2, 3])))
