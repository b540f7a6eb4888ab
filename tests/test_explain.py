"""``explain``: one series' path through the tables, the views and the aggregation state.

Unit tests feed a real Pipeline with requests (Prometheus text with sample times) and read the
explanation of one series; the component test asks the in-process app over HTTP; the
integration test asks a real ``enrichproxy serve`` process fed with a real remote-write request,
with the CLI too.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from engines import EngineUnderTest, new_engine
from promtext import decoded_request, format_output
from realparts import (
    MongoServer,
    PrometheusProcess,
    ProxyProcess,
    build_write_request,
    free_port,
    post_remote_write,
)
from sinks import RecordingSink
from tlsparts import self_signed_certificate

from enrichproxy import cli
from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine.enrich import Lookup
from enrichproxy.engine.explain import EXPLAIN_PATH, Explanation, explain, parse_exact_selector
from enrichproxy.engine.views import Skip
from enrichproxy.metadata.admin import import_documents
from enrichproxy.metadata.table import build_table
from enrichproxy.model import Labels, MetricMetadata, MetricType
from enrichproxy.server.app import create_app
from enrichproxy.server.telemetry import Telemetry
from enrichproxy.server.tls import server_context

PODS = [
    {"pod": "checkout-a", "service": "checkout", "team": "orders", "tier": "gold"},
    {"pod": "checkout-b", "service": "checkout", "team": "orders", "tier": "gold"},
    {"pod": "payment-a", "service": "payment", "team": "payments", "tier": "silver"},
]
VIEWS: list[dict[str, Any]] = [
    {"name": "operational", "keep": ["service", "endpoint"]},
    {"name": "business", "keep": ["service", "tier"], "match": '{__name__=~"order_.*"}'},
]
T0 = 1_000_000


def make_config(**metadata: Any) -> Config:
    return parse_config(
        {
            "metadata": metadata,
            "views": VIEWS,
            "aggregation": {"interval": "10s", "lateness": "0s"},
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        }
    )


def make_pipeline(
    config: Config | None = None, documents: list[dict[str, Any]] = PODS
) -> EngineUnderTest:
    config = config or make_config()
    flow = new_engine(config)
    for index, rule in enumerate(config.metadata.enrich_rules):
        flow.set_table(
            build_table(documents, rule, version=7, loaded_at=1_700_000_000.0).table, index
        )
    return flow


def feed(flow: EngineUnderTest, text: str, metadata: list[MetricMetadata] | None = None) -> None:
    flow.apply(decoded_request(text, metadata), now_ms=T0 + 60_000)


def series(text: str) -> Labels:
    return parse_exact_selector(text)


def why(flow: EngineUnderTest, text: str) -> Explanation:
    return explain(flow, series(text))


def view_of(explanation: Explanation, name: str) -> Any:
    return next(step for step in explanation.views if step.view.name == name)


# --- parse_exact_selector ------------------------------------------------------------------------


def test_exact_selector_gives_the_label_set_sorted() -> None:
    assert parse_exact_selector('order_total{pod="a",endpoint="/x"}') == (
        ("__name__", "order_total"),
        ("endpoint", "/x"),
        ("pod", "a"),
    )
    assert parse_exact_selector('{__name__="up", job="a\\"b"}') == (
        ("__name__", "up"),
        ("job", 'a"b'),
    )
    assert parse_exact_selector('{pod="a",pod="a"}') == (("pod", "a"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('order_total{pod=~"a.*"}', 'pod=~"a.*": give the series\' exact labels'),
        ('order_total{pod!="a"}', "exact labels"),
        ('order_total{pod="a",pod="b"}', "'pod' is given twice"),
        ('order_total{pod=""}', 'pod="": a series has no empty labels'),
        ("{}", "not a valid series selector"),
        ('rate(order_total{pod="a"}[5m])', "column 5: expected the end of the selector"),
        ("order_total{pod=", "not a valid series selector"),
    ],
)
def test_exact_selector_refuses_what_names_no_single_series(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse_exact_selector(text)


# --- enrichment ----------------------------------------------------------------------------------


def test_hit_shows_key_document_table_and_enriched_labels() -> None:
    flow = make_pipeline()
    feed(flow, f'order_total{{pod="checkout-a",endpoint="/orders"}} 5 @{T0}')
    explanation = why(flow, 'order_total{pod="checkout-a",endpoint="/orders"}')

    assert explanation.received
    (step,) = explanation.rules
    assert (step.lookup, step.key) == (Lookup.HIT, ("checkout-a",))
    assert step.document == (("service", "checkout"), ("team", "orders"), ("tier", "gold"))
    assert (step.table.version, step.table.loaded_at) == (7, 1_700_000_000.0)
    assert step.removed_labels == ("pod",)
    assert explanation.enriched == series(
        'order_total{endpoint="/orders",service="checkout",team="orders",tier="gold"}'
    )
    assert explanation.counter is True
    assert explanation.dropped is None

    text = explanation.to_text()
    assert 'series      order_total{endpoint="/orders",pod="checkout-a"}' in text
    assert '1. rule pod_metadata (metrics.pod_metadata): key {pod="checkout-a"} → HIT' in text
    assert 'document  {service="checkout",team="orders",tier="gold"}' in text
    assert "table     version 7, 3 entries, loaded 2023-11-14T22:13:20Z" in text
    assert "removes   pod (drop_key_labels)" in text
    assert (
        'enriched    order_total{endpoint="/orders",service="checkout",team="orders",tier="gold"}'
        in text
    )

    data = explanation.to_dict()
    (rule,) = data["rules"]
    assert rule["result"] == "hit"
    assert rule["key"] == {"pod": "checkout-a"}
    assert rule["document"] == {"service": "checkout", "team": "orders", "tier": "gold"}
    assert rule["table"] == {"version": 7, "entries": 3, "loaded_at": 1_700_000_000.0}
    assert data["enriched"]["service"] == "checkout"
    assert data["type"] == "counter"


def test_miss_keeps_the_series_unenriched_and_says_so() -> None:
    flow = make_pipeline()
    feed(flow, f'order_total{{pod="mystery-1"}} 1 @{T0}')
    explanation = why(flow, 'order_total{pod="mystery-1"}')

    (step,) = explanation.rules
    assert (step.lookup, step.key, step.document, step.dropped) == (
        Lookup.MISS,
        ("mystery-1",),
        (),
        False,
    )
    assert explanation.enriched == series('order_total{pod="mystery-1"}')
    assert view_of(explanation, "operational").output == series('order_total{view="operational"}')
    text = explanation.to_text()
    assert 'key {pod="mystery-1"} → MISS' in text
    assert "on_missing: keep, so the series goes on without this rule's labels" in text
    assert explanation.to_dict()["rules"][0]["document"] is None


def test_miss_with_on_missing_drop_stops_before_the_views() -> None:
    flow = make_pipeline(make_config(on_missing="drop"))
    explanation = why(flow, 'order_total{pod="mystery-1"}')

    assert explanation.rules[0].dropped
    assert explanation.enriched is None
    assert explanation.dropped == "metadata_missing"
    assert explanation.views == ()
    text = explanation.to_text()
    assert "on_missing: drop, so the series is dropped" in text
    assert "enriched    dropped: metadata_missing" in text
    assert "views       not reached" in text
    data = explanation.to_dict()
    assert (data["enriched"], data["dropped"], data["views"]) == (None, "metadata_missing", [])


def test_a_series_without_the_key_label_is_no_key() -> None:
    explanation = why(make_pipeline(), 'up{job="node"}')
    (step,) = explanation.rules
    assert (step.lookup, step.key, step.missing_labels) == (Lookup.NO_KEY, None, ("pod",))
    assert "NO_KEY, the series has no pod label" in explanation.to_text()
    assert explanation.to_dict()["rules"][0]["missing_key_labels"] == ["pod"]


def test_a_conflicting_label_is_shown_with_the_value_that_wins() -> None:
    selector = 'order_total{pod="checkout-a",service="legacy"}'
    overwritten = why(make_pipeline(), selector)
    (conflict,) = overwritten.rules[0].conflicts
    assert (conflict.label, conflict.series_value, conflict.table_value, conflict.kept) == (
        "service",
        "legacy",
        "checkout",
        "table",
    )
    assert dict(overwritten.enriched or ())["service"] == "checkout"
    assert 'conflict  service: series has "legacy", table has "checkout"; the table value' in (
        overwritten.to_text()
    )

    kept = why(make_pipeline(make_config(on_conflict="keep")), selector)
    assert kept.rules[0].conflicts[0].kept == "series"
    assert dict(kept.enriched or ())["service"] == "legacy"


def test_each_rule_sees_what_the_rules_before_it_added() -> None:
    rules = [
        {"name": "pods", "collection": "pods", "key_label": "pod", "fields": ["service"]},
        {
            "name": "owners",
            "collection": "services",
            "key_label": "service",
            "fields": ["owner"],
            "drop_key_label": False,
            "on_missing": "drop",
        },
    ]
    config = make_config(rules=rules)
    flow = new_engine(config)
    pods, owners = config.metadata.enrich_rules
    flow.set_table(build_table([{"pod": "a", "service": "checkout"}], pods, 1, 0.0).table, 0)
    flow.set_table(build_table([{"service": "checkout", "owner": "ann"}], owners, 2, 0.0).table, 1)

    hit = why(flow, 'order_total{pod="a"}')
    assert [(s.rule.name, s.lookup, s.key) for s in hit.rules] == [
        ("pods", Lookup.HIT, ("a",)),
        ("owners", Lookup.HIT, ("checkout",)),
    ]
    assert hit.enriched == series('order_total{owner="ann",service="checkout"}')

    dropped = why(flow, 'order_total{pod="b"}')
    assert [(s.rule.name, s.lookup) for s in dropped.rules] == [
        ("pods", Lookup.MISS),
        ("owners", Lookup.NO_KEY),
    ]
    assert dropped.dropped == "metadata_missing"
    assert "2. rule owners (metrics.services): NO_KEY" in dropped.to_text()


def test_a_rule_after_a_drop_is_not_applied() -> None:
    rules = [
        {"name": "pods", "collection": "pods", "key_label": "pod", "fields": ["service"]},
        {"name": "nodes", "collection": "nodes", "key_label": "node", "fields": ["zone"]},
    ]
    rules[0]["on_missing"] = "drop"
    config = make_config(rules=rules)
    explanation = why(new_engine(config), 'order_total{pod="a",node="n1"}')
    assert [s.lookup for s in explanation.rules] == [Lookup.MISS, None]
    assert "2. rule nodes (metrics.nodes): not applied" in explanation.to_text()
    assert explanation.to_dict()["rules"][1]["result"] == "not_applied"


def test_a_series_without_a_metric_name_feeds_no_view() -> None:
    explanation = why(make_pipeline(), '{pod="checkout-a"}')
    assert explanation.dropped == "no_metric_name"
    assert explanation.counter is None
    assert explanation.views == ()


# --- views and aggregation -----------------------------------------------------------------------


def test_a_series_left_out_by_a_view_match() -> None:
    flow = make_pipeline()
    feed(flow, f'http_requests_total{{pod="payment-a",endpoint="/pay"}} 3 @{T0}')
    explanation = why(flow, 'http_requests_total{pod="payment-a",endpoint="/pay"}')

    business = view_of(explanation, "business")
    assert (business.skip, business.output, business.group, business.is_input) == (
        Skip.NOT_MATCHED,
        None,
        None,
        False,
    )
    operational = view_of(explanation, "operational")
    assert operational.skip is None and operational.is_input
    assert explanation.dropped is None
    text = explanation.to_text()
    assert 'business: left out (not_matched {__name__=~"order_.*"})' in text
    data = explanation.to_dict()["views"][1]
    assert (data["view"], data["matched"], data["skip_reason"], data["match"]) == (
        "business",
        False,
        "not_matched",
        '{__name__=~"order_.*"}',
    )


def test_a_series_in_no_view_is_dropped_in_no_view() -> None:
    config = parse_config(
        {
            "views": [{"name": "orders", "keep": ["service"], "match": '{__name__="order_total"}'}],
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        }
    )
    explanation = why(make_pipeline(config), 'http_requests_total{pod="payment-a"}')
    assert explanation.dropped == "in_no_view"
    assert "dropped     in_no_view" in explanation.to_text()


def test_a_summary_quantile_is_unsummable() -> None:
    flow = make_pipeline()
    explanation = why(flow, 'order_latency_seconds{pod="checkout-a",quantile="0.99"}')
    assert {step.view.name: step.skip for step in explanation.views} == {
        "operational": Skip.UNSUMMABLE,
        "business": Skip.UNSUMMABLE,
    }
    assert explanation.dropped == "unsummable_quantile"
    assert "operational: left out (unsummable_quantile)" in explanation.to_text()
    # Its _sum still aggregates.
    assert (
        view_of(why(flow, 'order_latency_seconds_sum{pod="checkout-a"}'), "business").skip is None
    )


def test_group_value_is_the_sum_of_its_inputs_now() -> None:
    flow = make_pipeline()
    feed(
        flow,
        f"""
        order_total{{pod="checkout-a",endpoint="/orders"}} 5 @{T0}
        order_total{{pod="checkout-a",endpoint="/orders"}} 2 @{T0 + 1000}
        order_total{{pod="checkout-b",endpoint="/orders"}} 10 @{T0}
        """,
    )
    selector = 'order_total{pod="checkout-a",endpoint="/orders"}'
    explanation = why(flow, selector)
    business = view_of(explanation, "business")
    assert business.output == series('order_total{service="checkout",tier="gold",view="business"}')
    assert business.is_input
    assert business.contribution == 7  # 5, a reset, then 2: the reset-safe total
    assert business.group is not None
    assert (business.group.value, business.group.inputs, business.group.live_inputs) == (17, 2, 2)
    text = explanation.to_text()
    assert "group     value 17 now, from 2 inputs (2 live)" in text
    assert "series    an input, contributing 7" in text
    group = explanation.to_dict()["views"][1]["group"]
    assert group == {
        "labels": {
            "__name__": "order_total",
            "service": "checkout",
            "tier": "gold",
            "view": "business",
        },
        "value": 17.0,
        "inputs": 2,
        "live_inputs": 2,
        "retired": 0.0,
    }

    # The value is the group's, whatever was emitted: after the windows close it is the same,
    # and an ended counter input keeps its total.
    outputs = flow.flush(T0 + 60_000, final=True)
    business_out = next(o for o in outputs if o.view == "business")
    assert [format_output(s) for s in business_out.samples][-1].startswith(
        'order_total{service="checkout",tier="gold",view="business"} 17 @'
    )
    feed(flow, f'order_total{{pod="checkout-b",endpoint="/orders"}} stale @{T0 + 20_000}')
    after = view_of(why(flow, selector), "business").group
    assert (after.value, after.inputs, after.live_inputs) == (17, 2, 1)


def test_a_gauge_counts_its_latest_value() -> None:
    flow = make_pipeline()
    metadata = [MetricMetadata("order_queue_depth", MetricType.GAUGE, "", "")]
    feed(
        flow,
        f"""
        order_queue_depth{{pod="checkout-a"}} 5 @{T0}
        order_queue_depth{{pod="checkout-a"}} 2 @{T0 + 1000}
        order_queue_depth{{pod="checkout-b"}} 4 @{T0}
        """,
        metadata,
    )
    explanation = why(flow, 'order_queue_depth{pod="checkout-a"}')
    assert explanation.counter is False
    group = view_of(explanation, "operational").group
    assert group is not None and group.value == 6
    assert "type        gauge" in explanation.to_text()


def test_a_series_never_received_is_answered_hypothetically() -> None:
    flow = make_pipeline()
    explanation = why(flow, 'order_total{pod="checkout-a",endpoint="/new"}')
    assert not explanation.received
    operational = view_of(explanation, "operational")
    assert operational.output == series(
        'order_total{endpoint="/new",service="checkout",view="operational"}'
    )
    assert (operational.group, operational.is_input, operational.feeds) == (None, False, None)
    text = explanation.to_text()
    assert "received    no: the proxy holds no state for exactly these labels" in text
    assert "group     none yet" in text
    assert "not an input: the series was not received" in text


def test_after_a_metadata_change_the_series_still_feeds_its_old_group() -> None:
    flow = make_pipeline()
    feed(flow, f'order_total{{pod="checkout-a",endpoint="/orders"}} 5 @{T0}')
    moved = [dict(PODS[0], tier="silver"), *PODS[1:]]
    rule = flow.planner.rules[0]
    flow.set_table(build_table(moved, rule, version=8, loaded_at=1_700_000_100.0).table)

    business = view_of(why(flow, 'order_total{pod="checkout-a",endpoint="/orders"}'), "business")
    assert business.output == series(
        'order_total{service="checkout",tier="silver",view="business"}'
    )
    assert business.feeds == series('order_total{service="checkout",tier="gold",view="business"}')
    assert not business.is_input
    assert business.contribution == 5
    feed(flow, f'order_total{{pod="checkout-a",endpoint="/orders"}} 6 @{T0 + 1000}')
    business = view_of(why(flow, 'order_total{pod="checkout-a",endpoint="/orders"}'), "business")
    assert business.is_input and business.feeds == business.output


def test_explaining_changes_no_state() -> None:
    text = f"""
        order_total{{pod="checkout-a",endpoint="/orders"}} 5 @{T0}
        order_total{{pod="payment-a",endpoint="/pay"}} 1 @{T0}
        """
    explained, untouched = make_pipeline(), make_pipeline()
    for flow in (explained, untouched):
        feed(flow, text)
    state = explained.export_state()
    cached = explained.cached_series
    for selector in (
        'order_total{pod="checkout-a",endpoint="/orders"}',
        'order_total{pod="checkout-b",endpoint="/new"}',  # never received
        'order_total{pod="nobody"}',
    ):
        why(explained, selector).to_text()
    assert explained.export_state() == state
    assert explained.cached_series == cached
    later = f'order_total{{pod="checkout-a",endpoint="/orders"}} 9 @{T0 + 30_000}'
    for flow in (explained, untouched):
        feed(flow, later)
    assert emitted(explained) == emitted(untouched)


def emitted(flow: EngineUnderTest) -> list[list[str]]:
    """Per view, the output lines of a final flush (in a window, groups come in no set order)."""
    return [sorted(format_output(s) for s in out.samples) for out in flow.flush(T0, final=True)]


def test_the_json_form_has_only_json_values() -> None:
    flow = make_pipeline()
    # A gauge keeps an infinite value (a counter's is left out: infinite_counter).
    feed(flow, f'order_queue_depth{{pod="checkout-a",endpoint="/orders"}} +Inf @{T0}')
    data = why(flow, 'order_queue_depth{pod="checkout-a",endpoint="/orders"}').to_dict()
    json.dumps(data, allow_nan=False)
    assert data["views"][0]["group"]["value"] == "+Inf"
    assert data["views"][0]["series_contribution"] == "+Inf"


# --- over HTTP, in process -----------------------------------------------------------------------


@pytest.mark.integration
async def test_the_endpoint_answers_text_json_and_400(
    mongo: MongoServer, mongo_db_name: str, sink: RecordingSink
) -> None:
    config = parse_config(
        {
            "metadata": {"mongodb_uri": mongo.uri, "database": mongo_db_name, "timeout": "1s"},
            "views": VIEWS,
            "remote_write": [{"url": sink.url}],
            "shutdown_timeout": "2s",
        }
    )
    await import_documents(config.metadata, PODS)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, Telemetry())))
    await client.start_server()
    try:
        async with asyncio.timeout(10):
            while (await client.get("/-/ready")).status != 200:
                await asyncio.sleep(0.05)
        now = int(time.time() * 1000)
        write = await client.post(
            "/api/v1/write",
            data=build_write_request(
                [({"__name__": "order_total", "pod": "checkout-a"}, [(now, 4)])]
            ),
            headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"},
        )
        assert write.status == 204
        query = {"series": 'order_total{pod="checkout-a"}'}

        response = await client.get(EXPLAIN_PATH, params=query)
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert 'order_total{service="checkout",view="operational"}' in await response.text()

        response = await client.get(
            EXPLAIN_PATH, params=query, headers={"Accept": "application/json; q=0.9, */*"}
        )
        assert response.content_type == "application/json"
        data = await response.json()
        assert data["views"][0]["group"]["value"] == 4

        for params, reason in (
            ({}, "give the series' exact labels"),
            ({"series": 'order_total{pod=~"c.*"}'}, "series: pod=~"),
            ({"series": "sum(up)"}, "series: not a valid series selector: column 4"),
        ):
            response = await client.get(EXPLAIN_PATH, params=params)
            assert response.status == 400
            assert reason in await response.text()
    finally:
        await client.close()


# --- a real proxy process, and the CLI -----------------------------------------------------------


@pytest.fixture
def proxy(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    prometheus_receiver: PrometheusProcess,
) -> Iterator[ProxyProcess]:
    config: dict[str, Any] = {
        "metadata": {
            "mongodb_uri": mongo.uri,
            "database": mongo_db_name,
            "refresh_interval": "1s",
        },
        "views": VIEWS,
        "aggregation": {"interval": "1s", "lateness": "1s"},
        "remote_write": [{"url": prometheus_receiver.write_url}],
        "shutdown_timeout": "5s",
    }
    asyncio.run(import_documents(parse_config(config).metadata, PODS))
    process = ProxyProcess(tmp_path / "proxy", config)
    process.start()
    yield process
    process.stop()


def get(url: str, accept: str) -> tuple[int, str]:
    """(status, body) of a GET straight to the proxy (no HTTP proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status), bytes(response.read()).decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read()).decode()


@pytest.mark.integration
def test_explain_on_a_running_proxy(proxy: ProxyProcess, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    body = build_write_request(
        [
            ({"__name__": "order_total", "pod": "checkout-a", "endpoint": "/orders"}, [(now, 5)]),
            ({"__name__": "order_total", "pod": "checkout-b", "endpoint": "/orders"}, [(now, 8)]),
            ({"__name__": "http_requests_total", "pod": "payment-a"}, [(now, 1)]),
            ({"__name__": "order_total", "pod": "mystery-1"}, [(now, 2)]),
        ]
    )
    assert post_remote_write(proxy.write_url, body)[0] == 204
    selector = 'order_total{pod="checkout-a",endpoint="/orders"}'
    url = f"{proxy.url}{EXPLAIN_PATH}?{urllib.parse.urlencode({'series': selector})}"

    status, text = get(url, "text/plain")
    assert status == 200
    assert "received    yes" in text
    assert 'key {pod="checkout-a"} → HIT' in text
    assert 'document  {service="checkout",team="orders",tier="gold"}' in text
    assert "group     value 13 now, from 2 inputs (2 live)" in text

    status, answer = get(url, "application/json")
    assert status == 200
    data = json.loads(answer)
    (rule,) = data["rules"]
    assert rule["result"] == "hit"
    assert rule["table"]["version"] >= 1
    assert rule["table"]["loaded_at"] == pytest.approx(time.time(), abs=120)
    assert data["enriched"] == {
        "__name__": "order_total",
        "endpoint": "/orders",
        "service": "checkout",
        "team": "orders",
        "tier": "gold",
    }
    business = data["views"][1]
    assert business["output"] == {
        "__name__": "order_total",
        "service": "checkout",
        "tier": "gold",
        "view": "business",
    }
    assert (business["group"]["value"], business["series_contribution"]) == (13, 5)

    miss = json.loads(
        get(proxy_explain_url(proxy, 'order_total{pod="mystery-1"}'), "application/json")[1]
    )
    assert (miss["rules"][0]["result"], miss["enriched"]["pod"]) == ("miss", "mystery-1")
    skipped = json.loads(
        get(proxy_explain_url(proxy, 'http_requests_total{pod="payment-a"}'), "application/json")[1]
    )
    assert [v["skip_reason"] for v in skipped["views"]] == [None, "not_matched"]

    # The CLI asks the same endpoint.
    completed = run_cli("explain", "--url", proxy.url, "--json", selector)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["views"][1]["group"]["value"] == 13
    completed = run_cli("explain", "--url", proxy.url, selector)
    assert completed.returncode == 0
    assert "group     value 13 now" in completed.stdout
    completed = run_cli("explain", "--url", proxy.url, 'order_total{pod=~"x"}')
    assert completed.returncode == 1
    assert "answered 400: series: pod=~" in completed.stderr


def proxy_explain_url(proxy: ProxyProcess, selector: str) -> str:
    return f"{proxy.url}{EXPLAIN_PATH}?{urllib.parse.urlencode({'series': selector})}"


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enrichproxy", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_says_when_the_proxy_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["explain", "--url", url, "--timeout", "2", 'up{job="x"}']) == 1
    error = capsys.readouterr().err
    assert f"enrichproxy: cannot reach {url}:" in error
    assert "Traceback" not in error


@pytest.mark.integration
async def test_the_cli_speaks_https_and_basic_auth(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    sink: RecordingSink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    certificate = self_signed_certificate(tmp_path, "proxy")
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n", encoding="utf-8")
    config = parse_config(
        {
            "metadata": {"mongodb_uri": mongo.uri, "database": mongo_db_name},
            "views": VIEWS,
            "remote_write": [{"url": sink.url}],
            "auth": {"basic_auth": {"username": "ops", "password_file": str(password_file)}},
            "tls": {
                "cert_file": str(certificate.cert_file),
                "key_file": str(certificate.key_file),
            },
            "shutdown_timeout": "2s",
        }
    )
    assert config.tls is not None
    runner = web.AppRunner(create_app(config, Telemetry()))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(config.tls)).start()
    url = f"https://127.0.0.1:{port}"
    selector = 'order_total{pod="checkout-a"}'
    trusted = ["explain", "--url", url, "--ca-file", str(certificate.cert_file)]
    try:
        credentials = ["--username", "ops", "--password-file", str(password_file)]
        assert await asyncio.to_thread(cli.main, [*trusted, *credentials, selector]) == 0
        assert "enrichment  (on_conflict: overwrite)" in capsys.readouterr().out

        assert await asyncio.to_thread(cli.main, [*trusted, selector]) == 1
        assert f"enrichproxy: {url} answered 401" in capsys.readouterr().err

        untrusted = ["explain", "--url", url, *credentials, selector]
        assert await asyncio.to_thread(cli.main, untrusted) == 1
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
    finally:
        await runner.cleanup()
