"""Limits on the shape of writes, and each view's cardinality cap, in the pure core.

A request over a limit raises LimitExceeded (400, naming the limit) before any of its samples is
applied. Over a view's ``max_series`` a new output series is not made: the input is left out of
that view and counted; the output series that exist keep flowing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from engines import new_engine
from promtext import decoded_request, format_output, normalise

from enrichproxy.config.schema import Config, LimitsConfig, parse_config
from enrichproxy.engine import limits
from enrichproxy.engine.aggregation import EXPIRY_SWEEP_MS, AggregationSettings, ViewAggregator
from enrichproxy.engine.interface import ViewOutput
from enrichproxy.engine.pipeline import DROP_CARDINALITY_LIMIT, Pipeline
from enrichproxy.errors import LimitExceeded
from enrichproxy.metadata.table import build_table
from enrichproxy.model import Labels
from enrichproxy.wire.codec import DecodedRequest, encode_labels

SERIES: Labels = (("__name__", "jobs_total"), ("pod", "p-1"), ("service", "s"))


def make_config(views: list[dict[str, Any]] | None = None, **sections: Any) -> Config:
    return parse_config(
        {
            "views": views or [{"name": "ops", "keep": ["service"]}],
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
            "aggregation": {"interval": "1s", "lateness": "0s"},
            **sections,
        }
    )


def lines(outputs: list[ViewOutput]) -> dict[str, list[str]]:
    return {output.view: sorted(format_output(s) for s in output.samples) for output in outputs}


# --- the checks on their own --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "labels", "limit", "message"),
    [
        (
            LimitsConfig(max_labels_per_series=2),
            SERIES,
            limits.LABELS_PER_SERIES,
            "limits.max_labels_per_series exceeded: series 'jobs_total' has 3 labels,"
            " at most 2 are accepted",
        ),
        (
            LimitsConfig(max_label_name_length=6),
            SERIES,
            limits.LABEL_NAME_LENGTH,
            "limits.max_label_name_length exceeded: series 'jobs_total' has a label name of"
            " 8 bytes ('__name__'), at most 6 are accepted",
        ),
        (
            LimitsConfig(max_label_value_length=5),
            (("__name__", "m"), ("city", "Zürich")),
            limits.LABEL_VALUE_LENGTH,
            "limits.max_label_value_length exceeded: series 'm' has a 7-byte value of label"
            " 'city', at most 5 are accepted",
        ),
        (
            LimitsConfig(max_label_name_length=70),
            (("__name__", "m"), ("n" * 80, "v")),
            limits.LABEL_NAME_LENGTH,
            f"limits.max_label_name_length exceeded: series 'm' has a label name of 80 bytes"
            f" ({'n' * 64!r}...), at most 70 are accepted",
        ),
    ],
)
def test_label_limits(settings: LimitsConfig, labels: Labels, limit: str, message: str) -> None:
    with pytest.raises(LimitExceeded) as caught:
        limits.check_labels(labels, settings)
    assert caught.value.limit == limit
    assert caught.value.status == 400
    assert str(caught.value) == message


def test_lengths_are_bytes_and_limits_are_inclusive() -> None:
    at_limit = LimitsConfig(
        max_labels_per_series=3, max_label_name_length=8, max_label_value_length=10
    )
    limits.check_labels(SERIES, at_limit)  # nothing raised
    limits.check_labels((("ü", "ü" * 5),), LimitsConfig(2, 2, 2, 10))  # 2 and 10 bytes
    with pytest.raises(LimitExceeded, match="11-byte value"):
        limits.check_labels((("v", "ü" * 5 + "x"),), LimitsConfig(max_label_value_length=10))
    limits.check_labels(SERIES, LimitsConfig())  # 0: no limit


def test_series_per_request() -> None:
    limits.check_series_count(3, LimitsConfig(max_series_per_request=3))
    limits.check_series_count(10**6, LimitsConfig())
    with pytest.raises(LimitExceeded) as caught:
        limits.check_series_count(4, LimitsConfig(max_series_per_request=3))
    assert caught.value.limit == limits.SERIES_PER_REQUEST
    assert str(caught.value) == (
        "limits.max_series_per_request exceeded: the request has 4 series, at most 3 are accepted"
    )


# --- in the pipeline: nothing of a refused request is applied -----------------------------------


def test_too_many_series_refuse_the_whole_request() -> None:
    flow = new_engine(make_config(limits={"max_series_per_request": 1}))
    request = decoded_request('x_total{service="a"} 1 @1000\nx_total{service="b"} 1 @1000')
    with pytest.raises(LimitExceeded, match="max_series_per_request"):
        flow.apply(request, now_ms=1000)
    assert flow.cached_series == 0
    assert flow.flush(1000, final=True) == [ViewOutput("ops", [])]


@pytest.mark.parametrize(
    ("settings", "bad_series"),
    [
        ({"max_labels_per_series": 2}, 'x_total{pod="p",service="b"}'),
        ({"max_label_name_length": 10}, 'x_total{a_very_long_name="1",service="b"}'),
        ({"max_label_value_length": 8}, 'x_total{service="b-too-long"}'),
    ],
)
def test_a_series_over_a_label_limit_refuses_the_whole_request(
    settings: dict[str, int], bad_series: str
) -> None:
    flow = new_engine(make_config(limits=settings))
    good = 'x_total{service="a"} 1 @1000'
    with pytest.raises(LimitExceeded, match=next(iter(settings))):
        flow.apply(decoded_request(f"{good}\n{bad_series} 1 @1000"), now_ms=1000)
    # The refused series is not cached: it is checked, and refused, again.
    assert flow.cached_series == 1
    with pytest.raises(LimitExceeded):
        flow.apply(decoded_request(f"{bad_series} 2 @2000"), now_ms=2000)
    flow.apply(decoded_request('x_total{service="a"} 2 @2000'), now_ms=2000)
    # Only the sample of the accepted request reached the view.
    assert lines(flow.flush(2000, final=True)) == {
        "ops": normalise('x_total{service="a",view="ops"} 2 @2000')
    }


def test_label_limits_are_checked_once_per_series() -> None:
    """A cached series is not checked again: the check costs nothing on the hot path."""
    flow = new_engine(make_config(limits={"max_labels_per_series": 5}))
    request = decoded_request('x_total{pod="p",service="a"} 1 @1000')
    flow.apply(request, now_ms=1000)
    flow.planner.limits = LimitsConfig(max_labels_per_series=1)
    flow.apply(decoded_request('x_total{pod="p",service="a"} 2 @2000'), now_ms=2000)
    with pytest.raises(LimitExceeded):
        flow.apply(decoded_request('x_total{pod="q",service="a"} 1 @2000'), now_ms=2000)


# --- the cardinality guard ----------------------------------------------------------------------


def test_admits_existing_groups_and_new_ones_only_under_the_cap() -> None:
    aggregator = ViewAggregator(AggregationSettings(1000, 0, 10_000, 20_000, 60_000), encode_labels)
    first = (("__name__", "x"), ("service", "a"), ("view", "ops"))
    second = (("__name__", "x"), ("service", "b"), ("view", "ops"))
    assert aggregator.admits(first, 1)
    aggregator.attach(b"input-1", first, is_counter=False)
    assert aggregator.admits(first, 1)  # an existing group: always
    assert not aggregator.admits(second, 1)
    assert aggregator.admits(second, 2)
    assert aggregator.admits(second, 0)  # 0: no cap


def test_over_the_cap_new_output_series_are_dropped_and_existing_ones_keep_flowing() -> None:
    flow = new_engine(
        make_config(
            [
                {"name": "capped", "keep": ["service"], "max_series": 2},
                {"name": "all", "keep": ["service"]},
            ]
        )
    )
    result = flow.apply(
        decoded_request(
            """
            x_total{pod="1",service="a"} 1 @1000
            x_total{pod="2",service="b"} 1 @1000
            x_total{pod="3",service="c"} 1 @1000
            x_total{pod="3",service="c"} 2 @1500
            """
        ),
        now_ms=1500,
    )
    assert result.view_dropped == {("capped", DROP_CARDINALITY_LIMIT): 2}
    assert result.dropped == {}  # the series still fed the other view
    # Existing output series keep flowing, also from input series that are new.
    result = flow.apply(
        decoded_request(
            """
            x_total{pod="1",service="a"} 2 @2000
            x_total{pod="4",service="a"} 5 @2000
            x_total{pod="3",service="c"} 3 @2000
            x_total{pod="5",service="d"} 1 @2000
            """
        ),
        now_ms=2000,
    )
    assert result.view_dropped == {("capped", DROP_CARDINALITY_LIMIT): 2}
    output = lines(flow.flush(2000, final=True))
    assert output["capped"] == normalise(
        """
        x_total{service="a",view="capped"} 1 @1000
        x_total{service="b",view="capped"} 1 @1000
        x_total{service="a",view="capped"} 7 @2000
        """
    )
    assert len(output["all"]) == 6  # a, b, c at 1000; a, c, d at 2000 (b sent nothing new)


def test_a_series_no_view_admits_is_dropped_as_cardinality_limit() -> None:
    flow = new_engine(make_config([{"name": "ops", "keep": ["service"], "max_series": 1}]))
    result = flow.apply(
        decoded_request('x_total{service="a"} 1 @1000\nx_total{service="b"} 1 @1000'), 1000
    )
    assert result.dropped == {DROP_CARDINALITY_LIMIT: 1}
    assert result.view_dropped == {("ops", DROP_CARDINALITY_LIMIT): 1}


def test_a_capped_series_gets_in_once_an_output_series_is_forgotten() -> None:
    """A group emptied by a move (metadata changed) is forgotten; the room goes to the series
    the cap kept out, which are worked out again, not to the whole cache."""
    config = make_config(
        [{"name": "ops", "keep": ["service"], "max_series": 2}],
        metadata={"fields": ["service"]},
    )
    rule = config.metadata.enrich_rules[0]

    def set_services(services: dict[str, str], version: int) -> None:
        documents = [{"pod": pod, "service": service} for pod, service in services.items()]
        flow.set_table(build_table(documents, rule, version=version, loaded_at=0.0).table)

    flow = Pipeline(config)
    set_services({"p1": "a", "p2": "b", "p3": "c"}, 1)
    scrape = 'x{{pod="p1"}} 1 @{t}\nx{{pod="p2"}} 1 @{t}\nx{{pod="p3"}} 1 @{t}'

    def ingest(timestamp_ms: int) -> Counter[tuple[str, str]]:
        result = flow.apply(decoded_request(scrape.format(t=timestamp_ms)), timestamp_ms)
        flow.flush(timestamp_ms)
        return result.view_dropped

    assert ingest(1000) == {("ops", DROP_CARDINALITY_LIMIT): 1}  # p3 → c: no room
    set_services({"p1": "b", "p2": "b", "p3": "c"}, 2)  # p1 moves to b: group a empties
    assert ingest(2000) == {("ops", DROP_CARDINALITY_LIMIT): 1}
    plans = dict(flow._plans)
    # Group a emits its stale marker, then is forgotten at the next sweep.
    timestamp = 3000
    while ("ops", DROP_CARDINALITY_LIMIT) in ingest(timestamp):
        timestamp += 1000
        assert timestamp < 3000 + 2 * EXPIRY_SWEEP_MS, "group a was never forgotten"
    # p3 was worked out again; p1 and p2 kept their cached plans.
    unchanged = [key for key, plan in flow._plans.items() if plans.get(key) is plan]
    assert len(unchanged) == 2
    assert len(flow._plans) == 3
    groups = {dict(labels)["service"] for labels in flow.views[0].aggregator.groups}
    assert groups == {"b", "c"}


def test_an_empty_request_passes_every_limit() -> None:
    flow = new_engine(make_config(limits={"max_series_per_request": 1, "max_labels_per_series": 1}))
    assert flow.apply(DecodedRequest(), now_ms=1000).series == 0
