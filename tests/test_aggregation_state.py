"""Aggregation state written out and read back: a restart changes nothing downstream."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence

import pytest
from engines import EngineUnderTest, new_engine
from promtext import decoded_request, format_output

from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine.aggregation import EXPIRY_SWEEP_MS
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.metadata.table import build_table

DOCUMENTS: list[dict[str, object]] = [
    {"pod": "a", "service": "s1", "tier": "gold"},
    {"pod": "b", "service": "s1", "tier": "gold"},
    {"pod": "c", "service": "s2", "tier": "silver"},
]


def make_config(interval: str = "10s") -> Config:
    return parse_config(
        {
            "metadata": {"fields": ["service", "tier"]},
            "views": [
                {"name": "ops", "keep": ["service", "endpoint"]},
                {"name": "biz", "keep": ["tier"]},
            ],
            "aggregation": {
                "interval": interval,
                "lateness": "5s",
                "stale_after": "30s",
                "retention": "90s",
            },
            "remote_write": [{"url": "http://127.0.0.1:9/api/v1/write"}],
        }
    )


def make_pipeline(config: Config, documents: Sequence[Mapping[str, object]]) -> Pipeline:
    flow = Pipeline(config)
    flow.set_table(build_table(documents, config.metadata.enrich_rules[0], 1, 0.0).table)
    return flow


def random_stream(seed: int) -> list[str]:
    """Requests of a few pods with resets, churn, stale markers, gauges and late samples."""
    rng = random.Random(seed)
    values = {pod: 0.0 for pod in "abcd"}
    requests = []
    for step in range(120):
        now = step * 2000 + rng.randrange(0, 500)
        lines = []
        for pod in "abcd":
            if rng.random() < 0.15:
                continue  # a missed scrape
            if rng.random() < 0.03:
                lines.append(f'x_total{{pod="{pod}",endpoint="/e"}} stale @{now}')
                continue
            values[pod] = 0.0 if rng.random() < 0.05 else values[pod] + rng.randrange(0, 5)
            timestamp = now - (rng.randrange(0, 12_000) if rng.random() < 0.05 else 0)
            lines.append(f'x_total{{pod="{pod}",endpoint="/e"}} {values[pod]:g} @{timestamp}')
            lines.append(f'inflight{{pod="{pod}"}} {rng.randrange(0, 9)} @{now}')
        requests.append("\n".join(lines))
    return requests


@pytest.mark.parametrize("seed", range(8))
def test_a_restart_at_any_point_changes_no_output(seed: int) -> None:
    config = make_config()
    requests = random_stream(seed)
    cut = random.Random(seed).randrange(1, len(requests))

    def run(flow: Pipeline, part: list[str], start: int) -> list[str]:
        out: list[str] = []
        for index, text in enumerate(part, start):
            now = index * 2000 + 1000
            flow.apply(decoded_request(text), now)
            for output in flow.flush(now + index * EXPIRY_SWEEP_MS):
                out.extend(f"{output.view} {format_output(s)}" for s in output.samples)
        return out

    uninterrupted = run(make_pipeline(config, DOCUMENTS), requests, 0)
    before = make_pipeline(config, DOCUMENTS)
    first = run(before, requests[:cut], 0)
    saved = json.loads(json.dumps(before.export_state()))
    after = make_pipeline(config, DOCUMENTS)
    assert after.restore_state(saved) == {}
    second = run(after, requests[cut:], cut)
    # The same samples; within one window the order of output series is not defined.
    assert sorted(first + second) == sorted(uninterrupted)
    assert len(uninterrupted) > 50


def test_a_view_whose_interval_changed_starts_empty() -> None:
    flow = make_pipeline(make_config("10s"), DOCUMENTS)
    flow.apply(decoded_request('x_total{pod="a",endpoint="/e"} 5 @1000'), 1000)
    saved = flow.export_state()
    changed = make_pipeline(make_config("20s"), DOCUMENTS)
    skipped = changed.restore_state(saved)
    assert set(skipped) == {"ops", "biz"}
    assert "interval" in skipped["ops"]
    assert all(not view.aggregator.groups for view in changed.views)


def test_a_moved_pod_survives_a_restart_mid_move() -> None:
    config = make_config()
    flow = make_pipeline(config, DOCUMENTS)
    flow.apply(decoded_request('x_total{pod="a",endpoint="/e"} 5 @1000'), 1000)
    flow.apply(decoded_request('x_total{pod="b",endpoint="/e"} 1 @1000'), 1000)
    moved = [dict(d) for d in DOCUMENTS]
    moved[0]["service"] = "s2"
    flow.set_table(build_table(moved, config.metadata.enrich_rules[0], 2, 0.0).table)
    flow.apply(decoded_request('x_total{pod="a",endpoint="/e"} 7 @3000'), 3000)
    saved = json.loads(json.dumps(flow.export_state()))
    reference = [format_output(s) for o in flow.flush(60_000, final=True) for s in o.samples]
    restored = make_pipeline(config, moved)
    restored.restore_state(saved)
    again = [format_output(s) for o in restored.flush(60_000, final=True) for s in o.samples]
    assert sorted(again) == sorted(reference)


def test_the_emitted_marker_survives_an_interval_change() -> None:
    """The marker is kept in milliseconds: a view restarted with a longer interval skips only
    the time it already wrote, not everything (window numbers would be 15 times too far)."""
    one_second = make_pipeline(make_config("1s"), DOCUMENTS)
    one_second.apply(decoded_request('x_total{pod="a",endpoint="/e"} 5 @99500'), 99_500)
    one_second.flush(200_000, final=True)
    marker = one_second.emitted_through_ms()
    assert marker == {"ops": 100_000, "biz": 100_000}
    longer = make_pipeline(make_config("15s"), DOCUMENTS)
    longer.mark_emitted_through(marker)
    longer.apply(decoded_request('x_total{pod="a",endpoint="/e"} 6 @101000'), 101_000)
    emitted = [format_output(s) for o in longer.flush(200_000, final=True) for s in o.samples]
    assert 'x_total{endpoint="/e",service="s1",view="ops"} 6 @105000' in emitted
    late = longer.apply(decoded_request('x_total{pod="a",endpoint="/e"} 7 @89000'), 101_000)
    assert late.view_dropped == {("ops", "late"): 1, ("biz", "late"): 1}


def test_a_view_whose_labels_changed_starts_empty() -> None:
    flow = make_pipeline(make_config(), DOCUMENTS)
    flow.apply(decoded_request('x_total{pod="a",endpoint="/e"} 5 @1000'), 1000)
    saved = json.loads(json.dumps(flow.export_state()))
    changed = parse_config(
        {
            "metadata": {"fields": ["service", "tier"]},
            "views": [
                {"name": "ops", "keep": ["service"]},  # endpoint no longer kept
                {"name": "biz", "keep": ["tier"]},
            ],
            "aggregation": {"interval": "10s"},
            "remote_write": [{"url": "http://127.0.0.1:9/api/v1/write"}],
        }
    )
    restored = make_pipeline(changed, DOCUMENTS)
    assert restored.restore_state(saved) == {"ops": "its keep labels or match selector changed"}
    assert not restored.views[0].aggregator.groups
    assert restored.views[1].aggregator.groups


@pytest.mark.parametrize("seed", range(8))
def test_a_crash_after_a_checkpoint_changes_no_output(seed: int) -> None:
    """A crash, as the server recovers from it: the state of the last checkpoint, the emitted
    marker (windows written after that checkpoint are not written again) and the input log
    (the requests since the checkpoint, applied again at once). The output goes on exactly as
    without the crash, counters across resets included: the replayed samples of windows
    already written are late, and a late sample that did not move its input would lose, at a
    reset after it, what the input had counted since the checkpoint (issue 13: a replica of an
    HA pair then writes values that conflict with its twin's)."""
    config = make_config()
    requests = random_stream(seed)
    rng = random.Random(seed)
    checkpoint = rng.randrange(1, len(requests) - 20)
    crash = checkpoint + rng.randrange(3, 20)

    def new_flow() -> EngineUnderTest:
        flow = new_engine(config)
        flow.set_table(build_table(DOCUMENTS, config.metadata.enrich_rules[0], 1, 0.0).table)
        return flow

    def run(flow: EngineUnderTest, part: list[str], start: int) -> list[tuple[str, int, str]]:
        out: list[tuple[str, int, str]] = []
        for index, text in enumerate(part, start):
            now = index * 2000 + 1000
            flow.apply(decoded_request(text), now)
            for output in flow.flush(now + index * EXPIRY_SWEEP_MS):
                out.extend((output.view, s.timestamp_ms, format_output(s)) for s in output.samples)
        return out

    uninterrupted = run(new_flow(), requests, 0)
    before = new_flow()
    first = run(before, requests[:checkpoint], 0)
    saved = json.loads(json.dumps(before.export_state()))
    first += run(before, requests[checkpoint:crash], checkpoint)
    marker: dict[str, int] = {}
    for view, timestamp_ms, _ in first:
        marker[view] = max(marker.get(view, timestamp_ms), timestamp_ms)

    after = new_flow()
    assert after.restore_state(saved) == {}
    after.mark_emitted_through(marker)
    for text in requests[checkpoint:crash]:  # the input log, before anything else
        after.apply(decoded_request(text), crash * 2000)
    second = run(after, requests[crash:], crash)
    assert sorted(first + second) == sorted(uninterrupted)
    assert len(uninterrupted) > 50
