"""The data path end to end: decoded request → enrich → views → aggregation → output samples."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from engines import EngineUnderTest, new_engine
from promtext import decoded_request, format_output, format_sample, normalise

from enrichproxy.config.schema import Config, load_config, parse_config
from enrichproxy.engine import pipeline
from enrichproxy.engine.aggregation import EXPIRY_SWEEP_MS
from enrichproxy.engine.enrich import Lookup
from enrichproxy.engine.interface import ViewOutput
from enrichproxy.engine.pipeline import MAX_FUTURE_MS, Pipeline
from enrichproxy.errors import DecodeError
from enrichproxy.metadata.table import MetadataTable, build_table
from enrichproxy.model import STALE_NAN, Labels, MetricMetadata, MetricType, is_stale_marker
from enrichproxy.wire import codec
from enrichproxy.wire.codec import DecodedRequest, RawSeries

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent
PODS = [
    {"pod": "checkout-6c8f9", "service": "checkout", "team": "web", "tier": "1"},
    {"pod": "checkout-7d2a1", "service": "checkout", "team": "web", "tier": "1"},
    {"pod": "payment-5b4c3", "service": "payment", "team": "pay", "tier": "2"},
]


def fixture_request(name: str) -> DecodedRequest:
    return codec.decode_write_request(codec.decompress((FIXTURES / name).read_bytes()))


def make_config(views: list[dict[str, Any]], **sections: Any) -> Config:
    return parse_config(
        {"views": views, "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}], **sections}
    )


def table(config: Config, documents: list[dict[str, str]]) -> MetadataTable:
    return build_table(documents, config.metadata.enrich_rules[0], version=1, loaded_at=0.0).table


def lines(outputs: list[ViewOutput]) -> dict[str, list[str]]:
    return {output.view: sorted(format_output(s) for s in output.samples) for output in outputs}


OPS = [{"name": "ops", "keep": ["service"]}]


# --- the captured Prometheus payloads, through the example configuration ------------------------


def test_real_prometheus_payloads_through_the_example_configuration() -> None:
    config = load_config(str(REPO / "conf" / "enrichproxy.yaml"))
    flow = new_engine(config)
    assert flow.set_table(table(config, PODS))
    metadata = fixture_request("metadata-only.snappy")
    first = fixture_request("scrape-74-series.snappy")
    second = fixture_request("scrape-74-series-next.snappy")
    stale = fixture_request("stale-markers.snappy")

    result = flow.apply(metadata, now_ms=1795837384000)
    assert (result.series, result.samples, result.metadata) == (0, 0, 4)
    assert flow.planner.types.is_counter("order_create_failed_total")
    for request in (first, second):
        now = request.series[0].samples[0][0]
        result = flow.apply(request, now_ms=now)
        assert (result.series, result.samples) == (74, 74)
        assert result.lookups == {
            ("pod_metadata", Lookup.HIT): 69,
            ("pod_metadata", Lookup.NO_KEY): 5,
        }
        # The scrape's own series (up, scrape_*): in no view, whose match takes app metrics.
        assert result.dropped == {"in_no_view": 5}
        assert result.label_conflicts == 0
    result = flow.apply(stale, now_ms=stale.series[0].samples[0][0])
    assert result.dropped == {"in_no_view": 5}
    outputs = lines(flow.flush(now_ms=1795837431899, final=True))

    # An independent reference: per view, sum each output group's inputs. Both scrapes fall in
    # one window and no counter went down between them, so the second scrape's values add up.
    first_values = {raw.label_bytes: raw.samples[0][1] for raw in first.series}
    for raw in second.series:
        name = dict(codec.decode_labels(raw.label_bytes))["__name__"]
        if flow.planner.types.is_counter(name):
            assert raw.samples[0][1] >= first_values[raw.label_bytes], name
    window_a = -(-second.series[0].samples[0][0] // 15_000) * 15_000
    window_b = -(-stale.series[0].samples[0][0] // 15_000) * 15_000
    assert window_b > window_a
    for view in config.views:
        keep = {"__name__", "le", *view.keep}
        sums: dict[Labels, float] = defaultdict(float)
        ends: dict[Labels, list[float]] = defaultdict(list)
        for request, into in ((second, sums), (stale, None)):
            for raw in request.series:
                labels = dict(codec.decode_labels(raw.label_bytes))
                doc = next((d for d in PODS if d["pod"] == labels.get("pod")), None)
                if doc is not None:
                    labels.pop("pod")
                    labels.update({k: v for k, v in doc.items() if k != "pod"})
                enriched = tuple(sorted(labels.items()))
                if view.match is not None and not view.match.matches(enriched):
                    continue
                group = tuple(
                    sorted([*((n, v) for n, v in enriched if n in keep), ("view", view.name)])
                )
                if into is not None:
                    into[group] += raw.samples[0][1]
                else:
                    ends[group].append(raw.samples[0][1])
        expected = [format_sample(group, value, window_a) for group, value in sums.items()]
        for group, values in ends.items():
            live = [v for v in values if not is_stale_marker(v)]
            value = math.fsum(live) if live else STALE_NAN
            expected.append(format_sample(group, value, window_b))
        assert outputs[view.name] == sorted(expected)
    # What the reference implies, spelled out for two groups:
    assert (
        'order_create_failed_total{endpoint="/orders",error_type="timeout",service="checkout",'
        'view="operational"} stale @1795837440000' in outputs["operational"]
    )
    stale_groups = [line for line in outputs["operational"] if " stale @" in line]
    assert len(outputs["operational"]) == 2 * 46  # 46 groups, two windows each
    assert len(stale_groups) == 46  # every group ends with its pods' staleness markers
    # The sender's own series (up, scrape_*) are in no view: the views match by metric name.
    for name in ("operational", "business"):
        assert not any(line.startswith(("up{", "scrape_")) for line in outputs[name])


# --- drop reasons and counts --------------------------------------------------------------------


def test_drop_reasons() -> None:
    config = make_config(
        [{"name": "orders", "keep": ["service"], "match": '{__name__=~"order_.*"}'}],
        metadata={"on_missing": "drop", "fields": ["service"]},
    )
    flow = new_engine(config)
    flow.set_table(table(config, [{"pod": "a", "service": "s"}]))
    now = 1_000_000
    request = decoded_request(
        f"""
        order_total{{pod="a"}} 1 @{now}
        order_total{{pod="a"}} 2 @{now + MAX_FUTURE_MS}
        order_total{{pod="a"}} 3 @{now + MAX_FUTURE_MS + 1}
        order_total{{pod="a"}} NaN @{now + 2}
        order_total{{pod="unknown"}} 1 @{now}
        order_total{{job="no_pod"}} 1 @{now}
        up{{pod="a"}} 1 @{now}
        payment_amount{{pod="a",quantile="0.5"}} 1 @{now}
        {{pod="a"}} 1 @{now}
        """
    )
    request.histograms = 3
    request.exemplars = 2
    result = flow.apply(request, now_ms=now)
    assert result.dropped == {
        pipeline.DROP_FUTURE: 1,
        pipeline.DROP_NAN: 1,
        pipeline.DROP_METADATA_MISSING: 2,
        pipeline.DROP_IN_NO_VIEW: 2,  # up and the quantile: not matched by the view
        pipeline.DROP_NO_METRIC_NAME: 1,
        pipeline.DROP_NATIVE_HISTOGRAM: 3,
    }
    assert result.lookups == {
        ("pod_metadata", Lookup.HIT): 4,
        ("pod_metadata", Lookup.MISS): 1,
        ("pod_metadata", Lookup.NO_KEY): 1,
    }
    # The four order_total{pod="a"} lines are one series with four samples.
    assert (result.series, result.samples, result.exemplars_skipped) == (6, 9, 2)
    assert lines(flow.flush(now, final=True)) == {
        "orders": normalise(
            """
            order_total{service="s",view="orders"} 1 @1005000
            order_total{service="s",view="orders"} 2 @1605000
            """
        )
    }


def test_quantiles_are_unsummable_only_when_no_view_takes_the_series() -> None:
    flow = new_engine(make_config(OPS))
    result = flow.apply(
        decoded_request('payment_amount{quantile="0.5",service="s"} 1 @1000'), now_ms=1000
    )
    assert result.dropped == {"unsummable_quantile": 1}


def test_conflicts_are_counted_per_series() -> None:
    config = make_config(OPS)
    flow = new_engine(config)
    flow.set_table(table(config, [{"pod": "a", "service": "s", "team": "t"}]))
    result = flow.apply(
        decoded_request('x{pod="a",service="old",team="t"} 1 @1000\nx{pod="a"} 2 @2000'), 2000
    )
    assert result.label_conflicts == 1  # service differs; team already agrees
    assert lines(flow.flush(2000, final=True)) == {
        "ops": normalise('x{service="s",view="ops"} 3 @15000')  # two inputs, one group
    }


def test_late_and_out_of_order_samples_are_reported_per_view() -> None:
    flow = new_engine(make_config([*OPS, {"name": "all", "keep": []}]))
    flow.apply(
        decoded_request('x_total{service="s"} 1 @1000\nx_total{service="s"} 2 @60000'), 60000
    )
    flow.flush(60000)
    result = flow.apply(
        decoded_request('x_total{service="s"} 3 @2000\nx_total{service="s"} 4 @59000'), 60000
    )
    assert result.view_dropped == {
        ("ops", "late"): 1,
        ("ops", "out_of_order"): 1,
        ("all", "late"): 1,
        ("all", "out_of_order"): 1,
    }


def test_a_series_feeds_every_view_it_belongs_to() -> None:
    flow = new_engine(
        make_config(
            [
                {"name": "fast", "keep": ["service"], "interval": "5s"},
                {"name": "slow", "keep": [], "interval": "1m"},
            ]
        )
    )
    flow.apply(
        decoded_request(
            'x_total{pod="a",service="s"} 1 @1000\n'
            'x_total{pod="b",service="s"} 2 @1000\n'
            'x_total{pod="a",service="s"} 3 @6000\n'
            'x_total{pod="a",service="s"} stale @62000\n'
            'x_total{pod="b",service="s"} stale @63000'
        ),
        now_ms=63000,
    )
    assert lines(flow.flush(63000, final=True)) == {
        "fast": normalise(
            """
            x_total{service="s",view="fast"} 3 @5000
            x_total{service="s",view="fast"} 5 @10000
            x_total{service="s",view="fast"} stale @65000
            """
        ),
        "slow": normalise(
            """
            x_total{view="slow"} 5 @60000
            x_total{view="slow"} stale @120000
            """
        ),
    }


def test_invalid_labels_reject_the_whole_request() -> None:
    flow = new_engine(make_config(OPS))
    good = codec.encode_labels((("__name__", "x_total"), ("service", "s")))
    duplicate = good + codec.encode_labels((("service", "t"),))
    request = DecodedRequest(
        series=[RawSeries(good, [(1000, 1.0)]), RawSeries(duplicate, [(1000, 5.0)])]
    )
    with pytest.raises(DecodeError, match="duplicate label name 'service'"):
        flow.apply(request, now_ms=1000)
    assert flow.flush(1000, final=True) == [ViewOutput("ops", [])]
    flow.apply(DecodedRequest(series=[RawSeries(good, [(2000, 2.0)])]), now_ms=2000)
    assert lines(flow.flush(2000, final=True)) == {
        "ops": normalise('x_total{service="s",view="ops"} 2 @15000')
    }


# --- the series cache ---------------------------------------------------------------------------


def test_table_and_types_changes_rebuild_the_cache() -> None:
    config = make_config(OPS)
    flow = new_engine(config)
    request = decoded_request('x{pod="a"} 1 @1000\ny{pod="b"} 1 @1000')
    flow.apply(request, 1000)
    assert flow.cached_series == 2
    same = table(config, [])
    assert not flow.set_table(same)  # the same (empty) content: the cache stays
    assert flow.cached_series == 2
    assert flow.set_table(table(config, [{"pod": "a", "service": "s"}]))
    assert flow.cached_series == 1  # only the series that looked up pod "a"
    flow.apply(request, 1000)
    assert flow.cached_series == 2
    flow.learn_types([MetricMetadata("x", MetricType.GAUGE, "", "")])
    assert flow.cached_series == 0
    flow.apply(request, 1000)
    flow.learn_types([MetricMetadata("x", MetricType.GAUGE, "", "")])  # nothing new
    assert flow.cached_series == 2


def test_a_full_cache_starts_over_and_keeps_the_aggregation_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_CACHED_SERIES", 1)
    flow = new_engine(make_config(OPS))
    text = 'x_total{{pod="a",service="s"}} {a} @{t}\nx_total{{pod="b",service="s"}} {b} @{t}'
    flow.apply(decoded_request(text.format(a=1, b=2, t=1000)), 1000)
    assert flow.cached_series == 2
    flow.apply(decoded_request(text.format(a=5, b=2, t=16000)), 16000)
    assert flow.cached_series == 2  # cleared, then rebuilt
    assert lines(flow.flush(16000, final=True)) == {
        "ops": normalise(
            """
            x_total{service="s",view="ops"} 3 @15000
            x_total{service="s",view="ops"} 7 @30000
            """
        )
    }


def test_forgotten_inputs_clear_the_cache() -> None:
    flow = new_engine(make_config(OPS, aggregation={"stale_after": "10s", "retention": "20s"}))
    flow.apply(decoded_request('x_total{pod="a",service="s"} 4 @1000'), 1000)
    flow.apply(decoded_request('x_total{pod="b",service="s"} 1 @100000'), 100000)
    flow.flush(100000)  # pod a ends (unseen for 10 s)
    # and, settled, is forgotten at the next sweep: its total stays with the group
    flow.flush(100000 + EXPIRY_SWEEP_MS)
    assert flow.cached_series == 0
    flow.apply(decoded_request('x_total{pod="a",service="s"} 3 @101000'), 101000)
    output = lines(flow.flush(101000, final=True))
    assert output == {"ops": normalise('x_total{service="s",view="ops"} 8 @105000')}


def test_now_limits_only_future_samples() -> None:
    flow = new_engine(make_config(OPS))
    old = decoded_request('x{service="s"} 1 @-5000000')
    assert flow.apply(old, now_ms=10**12).dropped == {}
    assert Counter(flow.apply(decoded_request('x{service="s"} 1 @700001'), 100_000).dropped) == {
        pipeline.DROP_FUTURE: 1
    }


# --- several enrichment rules -------------------------------------------------------------------

CHAINED: dict[str, list[dict[str, Any]]] = {
    "rules": [
        {
            "name": "pods",
            "collection": "pod_metadata",
            "key_labels": ["namespace", "pod"],
            "key_fields": ["ns", "pod"],
            "fields": ["service", "team"],
        },
        {
            "name": "services",
            "collection": "service_owners",
            "key_label": "service",
            "fields": ["owner"],
            "drop_key_label": False,
        },
    ]
}
CHAINED_VIEWS = [
    {"name": "owners", "keep": ["owner", "service"]},
    {"name": "teams", "keep": ["team"]},
]
POD_DOCS = [
    {"_id": 1, "ns": "shop", "pod": "a", "service": "checkout", "team": "web"},
    {"_id": 2, "ns": "shop", "pod": "b", "service": "checkout", "team": "web"},
    {"_id": 3, "ns": "shop", "pod": "c", "service": "checkout", "team": "web"},
]
OWNER_DOCS = [{"service": "checkout", "owner": "alice"}, {"service": "payment", "owner": "bob"}]


def chained_pipeline() -> tuple[Config, EngineUnderTest]:
    config = make_config(CHAINED_VIEWS, metadata=CHAINED)
    flow = new_engine(config)
    prepare_chained(config, flow)
    return config, flow


def chained_reference() -> tuple[Config, Pipeline]:
    """For tests of the reference's plan cache itself."""
    config = make_config(CHAINED_VIEWS, metadata=CHAINED)
    flow = Pipeline(config)
    prepare_chained(config, flow)
    return config, flow


def prepare_chained(config: Config, flow: EngineUnderTest) -> None:
    pods_rule, owners_rule = config.metadata.enrich_rules
    assert flow.set_table(build_table(POD_DOCS, pods_rule, 1, 0.0).table, 0)
    assert flow.set_table(build_table(OWNER_DOCS, owners_rule, 1, 0.0).table, 1)


def label_bytes_of(request: DecodedRequest) -> dict[str, bytes]:
    """Each series' label bytes, by its ``pod`` label (or ``-`` without one)."""
    return {
        dict(codec.decode_labels(raw.label_bytes)).get("pod", "-"): raw.label_bytes
        for raw in request.series
    }


def test_two_chained_rules_through_the_views() -> None:
    _config, flow = chained_pipeline()
    result = flow.apply(
        decoded_request(
            """
            x_total{namespace="shop",pod="a"} 1 @1000
            x_total{namespace="shop",pod="b"} 2 @1000
            x_total{namespace="dev",pod="a"} 4 @1000
            x_total{job="no_pod"} 8 @1000
            x_total{job="no_pod",service="payment"} 16 @1000
            """
        ),
        now_ms=1000,
    )
    assert result.lookups == {
        ("pods", Lookup.HIT): 2,
        ("pods", Lookup.MISS): 1,  # dev/a: the pod name alone is not the key
        ("pods", Lookup.NO_KEY): 2,
        ("services", Lookup.HIT): 3,  # the two found pods' service, and the series' own
        ("services", Lookup.NO_KEY): 2,
    }
    assert result.dropped == {}
    assert lines(flow.flush(1000, final=True)) == {
        "owners": normalise(
            """
            x_total{owner="alice",service="checkout",view="owners"} 3 @15000
            x_total{owner="bob",service="payment",view="owners"} 16 @15000
            x_total{view="owners"} 12 @15000
            """
        ),
        "teams": normalise(
            """
            x_total{team="web",view="teams"} 3 @15000
            x_total{view="teams"} 28 @15000
            """
        ),
    }


def test_on_missing_drop_in_the_second_rule_drops_what_it_does_not_find() -> None:
    metadata = {"rules": [CHAINED["rules"][0], {**CHAINED["rules"][1], "on_missing": "drop"}]}
    config = make_config(CHAINED_VIEWS, metadata=metadata)
    flow = new_engine(config)
    pods_rule, owners_rule = config.metadata.enrich_rules
    flow.set_table(build_table(POD_DOCS, pods_rule, 1, 0.0).table, 0)
    flow.set_table(build_table(OWNER_DOCS[1:], owners_rule, 1, 0.0).table, 1)  # no checkout
    result = flow.apply(
        decoded_request(
            'x_total{namespace="shop",pod="a"} 1 @1000\nx_total{service="payment"} 2 @1000'
        ),
        now_ms=1000,
    )
    assert result.dropped == {pipeline.DROP_METADATA_MISSING: 1}
    assert lines(flow.flush(1000, final=True))["owners"] == normalise(
        'x_total{owner="bob",service="payment",view="owners"} 2 @15000'
    )


def test_a_table_change_re_plans_only_the_series_whose_key_changed() -> None:
    config, flow = chained_reference()
    pods_rule, owners_rule = config.metadata.enrich_rules
    text = """
        x_total{{namespace="shop",pod="a"}} {a} @{t}
        x_total{{namespace="shop",pod="b"}} {b} @{t}
        x_total{{namespace="shop",pod="c"}} {c} @{t}
        x_total{{job="no_pod"}} 1 @{t}
    """
    first = decoded_request(text.format(a=10, b=20, c=30, t=1000))
    flow.apply(first, 1000)
    series = label_bytes_of(first)
    plans = dict(flow._plans)
    assert set(plans) == set(series.values())

    # Pod b moves to another service: only its plan is worked out again.
    moved = [{**doc, "service": "payment"} if doc["pod"] == "b" else doc for doc in POD_DOCS]
    assert flow.set_table(build_table(moved, pods_rule, 2, 0.0).table, 0)
    assert series["b"] not in flow._plans
    for pod in ("a", "c", "-"):
        assert flow._plans[series[pod]] is plans[series[pod]], pod
    assert not flow.set_table(build_table(moved, pods_rule, 3, 0.0).table, 0)  # same content
    assert flow.cached_series == 3

    second = decoded_request(text.format(a=11, b=21, c=31, t=16000))
    result = flow.apply(second, 16000)
    assert result.lookups[("services", Lookup.HIT)] == 3
    assert flow._plans[series["a"]] is plans[series["a"]]
    assert flow._plans[series["b"]] is not plans[series["b"]]

    # The second rule's table: only the series that looked up checkout are worked out again.
    replanned_b = flow._plans[series["b"]]
    owners = [
        {**doc, "owner": "carol"} if doc["service"] == "checkout" else doc for doc in OWNER_DOCS
    ]
    assert flow.set_table(build_table(owners, owners_rule, 2, 0.0).table, 1)
    assert flow._plans[series["b"]] is replanned_b  # it looks up payment now
    assert flow._plans[series["-"]] is plans[series["-"]]
    assert series["a"] not in flow._plans
    assert series["c"] not in flow._plans

    output = lines(flow.flush(16000, final=True))
    # b's total stays with checkout and only its increase since the move counts for payment:
    # no output counter goes down.
    assert output["owners"] == normalise(
        """
        x_total{owner="alice",service="checkout",view="owners"} 60 @15000
        x_total{owner="alice",service="checkout",view="owners"} 62 @30000
        x_total{owner="bob",service="payment",view="owners"} 1 @30000
        x_total{view="owners"} 1 @15000
        x_total{view="owners"} 1 @30000
        """
    )
    assert output["teams"] == normalise(
        """
        x_total{team="web",view="teams"} 60 @15000
        x_total{team="web",view="teams"} 63 @30000
        x_total{view="teams"} 1 @15000
        x_total{view="teams"} 1 @30000
        """
    )


def test_a_change_to_most_keys_starts_the_cache_over() -> None:
    config, flow = chained_reference()
    request = decoded_request('x_total{namespace="shop",pod="a"} 1 @1000\nx_total{job="j"} 1 @1000')
    flow.apply(request, 1000)
    assert flow.cached_series == 2
    unchanged = flow._plans[label_bytes_of(request)["-"]]
    owners = [{"service": "checkout", "owner": "zed"}, {"service": "x", "owner": "y"}]
    assert flow.set_table(build_table(owners, config.metadata.enrich_rules[1], 2, 0.0).table, 1)
    assert flow.cached_series == 0  # 3 changed keys, more than half of the 2 cached series
    flow.apply(request, 1000)
    assert flow._plans[label_bytes_of(request)["-"]] is not unchanged
