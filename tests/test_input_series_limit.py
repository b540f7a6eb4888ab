"""The bound on input series: ``limits.max_input_series`` (every series held) and a view's
``max_input_series`` (the inputs its aggregation tracks), in the pure core of either engine.

A new series over a limit is refused before the series cache or the aggregation state grows: it
is not cached, its samples are counted as dropped (``input_series_limit``), the series already
held keep flowing, and inputs forgotten after ``retention`` make room again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from engines import engine_kind, new_engine
from promtext import decoded_request, format_output, normalise

from enrichproxy.cli import main
from enrichproxy.config.schema import DEFAULT_MAX_INPUT_SERIES, Config, parse_config
from enrichproxy.engine import native
from enrichproxy.engine.interface import ViewOutput
from enrichproxy.engine.pipeline import DROP_INPUT_SERIES_LIMIT
from enrichproxy.errors import ConfigError
from enrichproxy.model import MetricMetadata, MetricType

LIMIT = DROP_INPUT_SERIES_LIMIT


def make_config(
    views: list[dict[str, Any]] | None = None,
    total: int | None = None,
    metadata: dict[str, Any] | None = None,
    **aggregation: str,
) -> Config:
    data: dict[str, Any] = {
        "views": views or [{"name": "ops", "keep": ["service"]}],
        "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        "aggregation": {"interval": "1s", "lateness": "0s", **aggregation},
    }
    if total is not None:
        data["limits"] = {"max_input_series": total}
    if metadata is not None:
        data["metadata"] = metadata
    return parse_config(data)


def lines(outputs: list[ViewOutput]) -> dict[str, list[str]]:
    return {output.view: sorted(format_output(s) for s in output.samples) for output in outputs}


def scrape(pods: range | list[int], timestamp_ms: int, value: float = 1.0) -> str:
    return "\n".join(f'x_total{{pod="{pod}",service="s"}} {value} @{timestamp_ms}' for pod in pods)


# --- configuration ------------------------------------------------------------------------------


def test_the_total_is_on_by_default_and_the_per_view_limit_off() -> None:
    config = make_config()
    assert config.limits.max_input_series == DEFAULT_MAX_INPUT_SERIES == 2_000_000
    assert config.views[0].max_input_series == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"limits": {"max_input_series": -1}}, "limits.max_input_series: must be an integer"),
        ({"limits": {"max_input_series": "1M"}}, "limits.max_input_series: must be an integer"),
        (
            {"views": [{"name": "ops", "keep": ["service"], "max_input_series": 1.5}]},
            "views[0].max_input_series: must be an integer",
        ),
    ],
)
def test_a_bad_limit_names_its_key(data: dict[str, Any], message: str) -> None:
    document = {
        "views": [{"name": "ops", "keep": ["service"]}],
        "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        **data,
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    assert any(problem.startswith(message) for problem in raised.value.problems), raised.value


# --- the total ----------------------------------------------------------------------------------


def test_over_the_total_new_series_are_dropped_not_cached_and_held_ones_keep_flowing() -> None:
    flow = new_engine(make_config(total=3))
    result = flow.apply(decoded_request(scrape(range(5), 1000)), now_ms=1000)
    assert result.dropped == {LIMIT: 2}
    assert result.view_dropped == {}
    assert flow.stats().cached_series == 3
    assert flow.stats().views[0].inputs == 3
    # The same explosion again, and more: nothing new is held, the three keep counting.
    for timestamp in (2000, 3000):
        result = flow.apply(decoded_request(scrape(range(50), timestamp, 2.0)), timestamp)
        assert result.dropped == {LIMIT: 47}
        assert flow.stats().cached_series == 3
        assert flow.stats().views[0].inputs == 3
    output = lines(flow.flush(3000, final=True))
    assert output["ops"] == normalise(
        """
        x_total{service="s",view="ops"} 3 @1000
        x_total{service="s",view="ops"} 6 @2000
        x_total{service="s",view="ops"} 6 @3000
        """
    )


def test_series_that_feed_no_view_count_towards_the_total() -> None:
    """The total bounds the cache, and every cached series costs memory, routed or not."""
    flow = new_engine(make_config([{"name": "ops", "keep": ["service"], "match": "x_total"}], 2))
    result = flow.apply(
        decoded_request('other{pod="1"} 1 @1000\nother{pod="2"} 1 @1000\n' + scrape([1], 1000)),
        now_ms=1000,
    )
    assert result.dropped == {"in_no_view": 2, LIMIT: 1}


def test_forgotten_inputs_make_room() -> None:
    flow = new_engine(make_config(total=2, stale_after="2s", retention="2s"))
    assert flow.apply(decoded_request(scrape([1, 2], 1000)), 1000).dropped == {}
    assert flow.apply(decoded_request(scrape([3], 1000)), 1000).dropped == {LIMIT: 1}
    # Pod 2 goes silent: stale 2 s after its last sample, forgotten 2 s later, at a flush;
    # pod 3 keeps knocking and gets in then.
    now = 1000
    while True:
        now += 1000
        assert now < 60_000, "pod 3 never got in"
        held = flow.stats().views[0].inputs
        result = flow.apply(decoded_request(scrape([1, 3], now)), now)
        if not result.dropped:
            break
        assert result.dropped == {LIMIT: 1}
        flow.flush(now)
    assert held == 1  # pod 2 was forgotten first
    assert flow.stats().cached_series == 2


def test_a_series_a_view_still_tracks_is_planned_again_over_the_total() -> None:
    """New metric types start the series cache over while the views keep their inputs: those
    series come back at once, whatever the limit, since they make nothing new."""
    flow = new_engine(make_config(total=2))
    flow.apply(decoded_request(scrape([1, 2], 1000)), 1000)
    flow.learn_types([MetricMetadata("x", MetricType.COUNTER, "", "")])
    assert flow.stats().cached_series == 0
    result = flow.apply(decoded_request(scrape([3, 1, 2], 2000)), 2000)
    # Pod 3 came first and took the room the cache had; 1 and 2 are held by the view.
    assert result.dropped == {}
    assert flow.stats().cached_series == 3
    result = flow.apply(decoded_request(scrape([4], 2000)), 2000)
    assert result.dropped == {LIMIT: 1}


def test_zero_is_no_limit() -> None:
    flow = new_engine(make_config(total=0))
    assert flow.apply(decoded_request(scrape(range(100), 1000)), 1000).dropped == {}
    assert flow.stats().cached_series == 100


# --- per view -----------------------------------------------------------------------------------


def test_a_view_over_its_limit_leaves_new_inputs_out_and_the_other_views_take_them() -> None:
    flow = new_engine(
        make_config(
            [
                {"name": "small", "keep": ["service"], "max_input_series": 2},
                {"name": "all", "keep": ["service"]},
            ]
        )
    )
    result = flow.apply(decoded_request(scrape(range(4), 1000)), 1000)
    assert result.view_dropped == {("small", LIMIT): 2}
    assert result.dropped == {}
    assert [view.inputs for view in flow.stats().views] == [2, 4]
    assert flow.stats().cached_series == 4  # they feed "all"
    output = lines(flow.flush(1000, final=True))
    assert output == {
        "small": ['x_total{service="s",view="small"} 2 @1000'],
        "all": ['x_total{service="s",view="all"} 4 @1000'],
    }


def test_a_series_every_view_refuses_is_dropped_and_not_cached() -> None:
    flow = new_engine(make_config([{"name": "ops", "keep": ["service"], "max_input_series": 2}]))
    for timestamp in (1000, 2000):
        result = flow.apply(decoded_request(scrape(range(10), timestamp)), timestamp)
        assert result.dropped == {LIMIT: 8}
        assert result.view_dropped == {("ops", LIMIT): 8}
        assert flow.stats().cached_series == 2
        assert flow.stats().views[0].inputs == 2


def test_the_input_limit_counts_inputs_and_max_series_output_series() -> None:
    """Many inputs of one output series: max_series lets them all in, max_input_series not;
    the input limit is asked first (it is the one that bounds memory)."""
    flow = new_engine(
        make_config([{"name": "ops", "keep": ["service"], "max_series": 1, "max_input_series": 3}])
    )
    result = flow.apply(decoded_request(scrape(range(5), 1000)), 1000)
    assert result.view_dropped == {("ops", LIMIT): 2}
    result = flow.apply(decoded_request('x_total{pod="9",service="t"} 1 @2000'), 2000)
    assert result.view_dropped == {("ops", LIMIT): 1}


def test_check_prints_the_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "enrichproxy.yaml"
    path.write_text(
        "views: [{name: ops, keep: [service], max_input_series: 5000}, {name: all, keep: []}]\n"
        "remote_write: [{url: 'http://127.0.0.1:1/api/v1/write'}]\n"
        "limits: {max_input_series: 100000}\n"
    )
    assert main(["check", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "input series: at most 100000 (limits.max_input_series); per view: ops 5000" in printed


def test_series_a_view_refuses_leave_no_planner_state_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The native engine makes a template (and numbers the series' metadata keys) before the
    views' limits refuse a series; neither may pile up while refused series keep coming."""
    if engine_kind() != "native":
        pytest.skip("the reference has no templates: a refused series leaves nothing there")
    monkeypatch.setattr(native, "TEMPLATE_SLACK", 100)
    monkeypatch.setattr(native, "DEPENDENCY_SLACK", 300)
    flow = new_engine(
        make_config(
            [{"name": "ops", "keep": ["service"], "max_input_series": 10}],
            metadata={"fields": ["tier"]},
        )
    )
    assert isinstance(flow, native.NativeEngine)
    for number in range(40):
        timestamp = 1000 + number
        first = number * 100
        result = flow.apply(
            decoded_request(scrape(range(first, first + 100), timestamp)), timestamp
        )
        if number:
            assert result.dropped == {LIMIT: 100}
        assert flow._core.templates <= 2 * flow.cached_series + 100 + 100  # one request's worth
        assert len(flow._dependencies) <= 2 * flow.cached_series + 300 + 100
    assert flow.stats().views[0].inputs == 10
