"""Counter or not: metadata when the sender sent it, name suffixes until then."""

from __future__ import annotations

from pathlib import Path

import pytest

from enrichproxy.engine.metric_types import MetricTypes
from enrichproxy.model import MetricMetadata, MetricType
from enrichproxy.wire import codec

FIXTURES = Path(__file__).parent / "fixtures"


def meta(family: str, metric_type: MetricType) -> MetricMetadata:
    return MetricMetadata(family, metric_type, "", "")


@pytest.fixture
def learnt() -> MetricTypes:
    """Types from the metadata request a real Prometheus 2.42 sent."""
    request = codec.decode_write_request(
        codec.decompress((FIXTURES / "metadata-only.snappy").read_bytes())
    )
    types = MetricTypes()
    assert types.update(request.metadata)
    return types


@pytest.mark.parametrize(
    ("metric_name", "is_counter"),
    [
        # Without metadata: the suffix heuristic.
        ("order_total", True),
        ("http_request_duration_seconds_bucket", True),
        ("rpc_count", True),
        ("rpc_sum", True),
        ("checkout_inflight_requests", False),
        ("up", False),
        ("requests", False),  # a counter named without a suffix looks like a gauge
        ("total", False),
        ("process_start_time_seconds", False),
    ],
)
def test_suffixes_decide_without_metadata(metric_name: str, is_counter: bool) -> None:
    assert MetricTypes().is_counter(metric_name) is is_counter


@pytest.mark.parametrize(
    ("metric_name", "is_counter"),
    [
        # COUNTER family "order_create_failed": Prometheus sends the name without _total.
        ("order_create_failed_total", True),
        ("checkout_inflight_requests", False),
        ("http_request_duration_seconds_bucket", True),
        ("http_request_duration_seconds_count", True),
        ("http_request_duration_seconds_sum", True),
        ("payment_amount_count", True),
        ("payment_amount_sum", True),
        ("payment_amount", False),  # the summary's quantile series
        ("up", False),
    ],
)
def test_metadata_from_a_real_prometheus(
    learnt: MetricTypes, metric_name: str, is_counter: bool
) -> None:
    assert learnt.is_counter(metric_name) is is_counter


def test_family_type(learnt: MetricTypes) -> None:
    assert learnt.family_type("order_create_failed") == MetricType.COUNTER
    assert learnt.family_type("payment_amount") == MetricType.SUMMARY
    assert learnt.family_type("order_create_failed_total") is None


def test_metadata_overrides_the_suffix() -> None:
    types = MetricTypes()
    assert types.update(
        [
            meta("requests", MetricType.COUNTER),  # suffix-less counter
            meta("queue_total", MetricType.GAUGE),  # a gauge that happens to end in _total
            meta("jobs", MetricType.GAUGE),  # jobs_total is not a counter of a gauge family
            meta("latency", MetricType.GAUGEHISTOGRAM),  # its buckets go up and down
            meta("size", MetricType.HISTOGRAM),
        ]
    )
    assert types.is_counter("requests")
    assert not types.is_counter("queue_total")
    assert not types.is_counter("jobs_total")
    assert not types.is_counter("latency_bucket")
    assert types.is_counter("size_bucket")
    assert not types.is_counter("size_total")  # not a series a histogram has


def test_unknown_type_falls_back_to_the_suffix() -> None:
    types = MetricTypes()
    types.update([meta("x_total", MetricType.UNKNOWN), meta("y", MetricType.UNKNOWN)])
    assert types.is_counter("x_total")
    assert types.is_counter("y_total")
    assert not types.is_counter("y")


def test_update_reports_changes_only() -> None:
    types = MetricTypes()
    assert types.update([meta("requests", MetricType.GAUGE)])
    assert not types.update([meta("requests", MetricType.GAUGE)])
    assert not types.update([])
    assert not types.update([meta("", MetricType.COUNTER)])  # no family name: ignored
    assert types.update([meta("requests", MetricType.COUNTER)])
    assert types.is_counter("requests")
