"""Ingest in steps (Engine.ingest_steps): a huge request does its work a slice at a time, other
requests and table changes can come in between, and the outcome is the reference's.
"""

from __future__ import annotations

import struct

import pytest
from engines import new_engine

from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine.interface import IngestResult, ViewOutput, run_steps
from enrichproxy.engine.native import NativeEngine
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.errors import LimitExceeded
from enrichproxy.metadata.table import MetadataTable, build_table
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request

START_MS = 1_700_000_000_000


def config(**limits: int) -> Config:
    return parse_config(
        {
            "views": [
                {"name": "ops", "keep": ["service", "endpoint"]},
                {"name": "biz", "keep": ["tier"]},
            ],
            "aggregation": {"interval": "10s", "lateness": "5s"},
            "limits": dict(limits),
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        }
    )


def table(cfg: Config, services: dict[str, str], version: int) -> MetadataTable:
    documents = [{"pod": pod, "service": s, "tier": "t-" + s} for pod, s in services.items()]
    return build_table(documents, cfg.metadata.enrich_rules[0], version, 0.0).table


def body(pods: range, endpoints: int, value: float, prefix: str = "p") -> bytes:
    series = [
        (
            encode_labels(
                (("__name__", "jobs_total"), ("endpoint", f"/{e}"), ("pod", f"{prefix}{p}"))
            ),
            [(START_MS, value)],
        )
        for p in pods
        for e in range(endpoints)
    ]
    return compress(encode_write_request(series))


def bits(outputs: list[ViewOutput]) -> list[tuple[str, list[tuple[bytes, int, bytes]]]]:
    return [
        (
            o.view,
            sorted((s.label_bytes, s.timestamp_ms, struct.pack("<d", s.value)) for s in o.samples),
        )
        for o in outputs
    ]


def test_a_huge_request_is_applied_in_many_steps_with_others_in_between() -> None:
    cfg = config()
    before = {f"p{p}": f"s{p % 7}" for p in range(100)}
    after = {**before, **{f"p{p}": "moved" for p in range(0, 100, 3)}}
    native, python = NativeEngine(cfg), Pipeline(cfg)
    for engine in (native, python):
        engine.set_table(table(cfg, before | {"q1": "small"}, 1), 0)
    huge = body(range(100), 1_000, 3.0)  # 100,000 series
    small = body(range(1, 2), 5, 2.0, prefix="q")

    steps = native.ingest_steps(native.prepare(huge), START_MS)
    next(steps)  # the first slice of the plan
    native.ingest(small, START_MS)
    native.set_table(table(cfg, after | {"q1": "small"}, 2), 0)  # forgets plans made so far
    taken = 1
    while True:
        try:
            next(steps)
            taken += 1
            if taken == 20:
                native.ingest(small, START_MS)  # again, between two slices of the apply
        except StopIteration as done:
            result: IngestResult = done.value
            break
    assert taken > 20, "a 100,000-series request takes many steps"

    python.set_table(table(cfg, after | {"q1": "small"}, 2), 0)
    python.ingest(small, START_MS)
    expected = python.ingest(huge, START_MS)
    python.ingest(small, START_MS)
    assert result == expected
    assert bits(native.flush(START_MS + 60_000, True)) == bits(
        python.flush(START_MS + 60_000, True)
    )
    assert native.stats() == python.stats()


def test_errors_come_from_the_first_step_and_apply_nothing() -> None:
    engine = new_engine(config(max_series_per_request=10))
    engine.set_table(table(config(), {"p0": "s"}, 1), 0)
    steps = engine.ingest_steps(engine.prepare(body(range(1), 20, 1.0)), START_MS)
    with pytest.raises(LimitExceeded):
        next(steps)
    assert engine.stats().views[0].inputs == 0


def test_run_steps_is_ingest() -> None:
    engine = new_engine(config())
    engine.set_table(table(config(), {"p0": "s"}, 1), 0)
    result = run_steps(engine.ingest_steps(engine.prepare(body(range(1), 3, 1.0)), START_MS))
    assert (result.series, result.samples) == (3, 3)
