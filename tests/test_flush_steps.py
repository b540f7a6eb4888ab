"""Flush in steps (Engine.flush_steps): closing the windows of many series is done a slice at a
time, writes and table changes can come in between, and the outcome is the reference's whole
flush followed by those writes. The randomized version of this is in
test_engine_differential.py (SteppedFlush); these are the cases by name.
"""

from __future__ import annotations

import gc

import pytest
from test_ingest_steps import START_MS, bits, body, config, table

from enrichproxy.engine.interface import ViewOutput, run_steps
from enrichproxy.engine.native import NativeEngine
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request

SERVICES = {f"p{p}": f"s{p % 7}" for p in range(40)}
NEXT_WINDOW_MS = START_MS + 1
"""A sample time in the window after the one ``body`` writes to (windows end on multiples of
10 s, START_MS is one)."""


def body_at(timestamp_ms: int, pods: range, endpoints: int, value: float) -> bytes:
    """As ``body``, at another sample time."""
    series = [
        (
            encode_labels((("__name__", "jobs_total"), ("endpoint", f"/{e}"), ("pod", f"p{p}"))),
            [(timestamp_ms, value)],
        )
        for p in pods
        for e in range(endpoints)
    ]
    return compress(encode_write_request(series))


def engines() -> tuple[NativeEngine, Pipeline]:
    cfg = config()
    native, python = NativeEngine(cfg), Pipeline(cfg)
    for engine in (native, python):
        engine.set_table(table(cfg, SERVICES | {"q1": "small"}, 1), 0)
    return native, python


def test_a_large_flush_takes_many_steps_and_matches_the_reference() -> None:
    native, python = engines()
    wide = body(range(40), 500, 2.0)  # 20,000 series, 3,500 output series in "ops"
    for engine in (native, python):
        engine.ingest(wide, START_MS)
    native.flush_step_inputs = 1_000
    steps = native.flush_steps(START_MS + 60_000, True)
    taken = 0
    while True:
        try:
            next(steps)
            taken += 1
        except StopIteration as done:
            outputs: list[ViewOutput] = done.value
            break
    assert taken > 20, "20,000 inputs at 1,000 a step"
    assert bits(outputs) == bits(python.flush(START_MS + 60_000, True))
    assert sum(len(output.samples) for output in outputs) == 3_500 + 7


def test_writes_between_steps_count_as_after_the_flush() -> None:
    """A sample for a window the flush closes is late as soon as the flush has begun; one for a
    later window waits for the next flush. Both engines agree on every count."""
    native, python = engines()
    for engine in (native, python):
        engine.ingest(body(range(40), 50, 1.0), START_MS)
    late = body_at(START_MS - 1, range(40), 50, 5.0)  # a window this flush closes
    later = body_at(NEXT_WINDOW_MS, range(40), 50, 7.0)
    native.flush_step_inputs = 10
    steps = native.flush_steps(START_MS + 60_000, True)
    next(steps)  # the windows to close are decided here
    next(steps)
    native_late = native.ingest(late, START_MS)
    next(steps)
    native_later = native.ingest(later, NEXT_WINDOW_MS)
    outputs = run_steps(steps)

    expected = python.flush(START_MS + 60_000, True)
    assert python.ingest(late, START_MS) == native_late
    assert python.ingest(later, NEXT_WINDOW_MS) == native_later
    assert native_late.view_dropped["ops", "late"] == 2_000
    assert not native_later.view_dropped
    assert bits(outputs) == bits(expected)
    assert native.stats() == python.stats()
    again = native.flush(NEXT_WINDOW_MS + 60_000, True)
    assert bits(again) == bits(python.flush(NEXT_WINDOW_MS + 60_000, True))
    assert sum(s.value for s in again[0].samples if s.timestamp_ms == START_MS + 10_000) == (
        40 * 50 * 7.0
    )


def test_a_flush_left_unfinished_is_finished_by_the_next_one() -> None:
    """No window is lost when the caller stops stepping (a cancelled flusher): the next flush
    returns the samples of both."""
    native, python = engines()
    for engine in (native, python):
        engine.ingest(body(range(40), 50, 1.0), START_MS)
    native.flush_step_inputs = 10
    steps = native.flush_steps(START_MS + 60_000, True)
    for _ in range(5):
        next(steps)
    del steps
    for engine in (native, python):
        engine.ingest(body_at(NEXT_WINDOW_MS, range(40), 50, 3.0), NEXT_WINDOW_MS)
    outputs = native.flush(NEXT_WINDOW_MS + 60_000, True)

    first = python.flush(START_MS + 60_000, True)
    second = python.flush(NEXT_WINDOW_MS + 60_000, True)
    expected = [
        ViewOutput(a.view, a.samples + b.samples) for a, b in zip(first, second, strict=True)
    ]
    assert bits(outputs) == bits(expected)
    assert {s.timestamp_ms for output in outputs for s in output.samples} == {
        START_MS,
        START_MS + 10_000,
    }


def test_whole_view_work_waits_for_the_flush_under_way() -> None:
    native, _ = engines()
    native.ingest(body(range(40), 50, 1.0), START_MS)
    native.flush_step_inputs = 10
    steps = native.flush_steps(START_MS + 60_000, True)
    next(steps)
    next(steps)
    with pytest.raises(RuntimeError, match="flush of this view is under way"):
        native.export_state()
    with pytest.raises(RuntimeError, match="flush of this view is under way"):
        native.mark_emitted_through({"ops": START_MS + 600_000})
    run_steps(steps)
    assert native.export_state()["ops"]["closed_window"] > 0


def test_output_samples_are_left_out_of_the_cyclic_collector() -> None:
    """Bytes, int and float cannot form a cycle: tracking 100 k of them per flush would only set
    off full collections of the heap."""
    native, _ = engines()
    native.ingest(body(range(40), 10, 1.0), START_MS)
    outputs = native.flush(START_MS + 60_000, True)
    samples = [sample for output in outputs for sample in output.samples]
    assert samples
    assert not any(gc.is_tracked(sample) for sample in samples)
