"""Projecting enriched series onto views."""

from __future__ import annotations

from enrichproxy.config.schema import ViewConfig
from enrichproxy.config.selector import parse_selector
from enrichproxy.engine.views import Skip, View
from enrichproxy.model import Labels

OPS = View.from_config(ViewConfig(name="ops", keep=("service", "endpoint")))
BUSINESS = View.from_config(
    ViewConfig(name="business", keep=("service",), match=parse_selector('{__name__=~"order_.*"}'))
)
ORDER: Labels = (
    ("__name__", "order_total"),
    ("endpoint", "/orders"),
    ("instance", "10.0.0.1:80"),
    ("service", "checkout"),
    ("team", "web"),
)


def test_keeps_the_name_the_listed_labels_and_adds_the_view() -> None:
    assert OPS.keep == frozenset({"__name__", "le", "service", "endpoint"})
    assert OPS.project(ORDER) == (
        ("__name__", "order_total"),
        ("endpoint", "/orders"),
        ("service", "checkout"),
        ("view", "ops"),
    )


def test_output_is_sorted_by_name() -> None:
    view = View.from_config(ViewConfig(name="v", keep=("zone", "a_first")))
    labels: Labels = (("__name__", "m"), ("a_first", "1"), ("b", "x"), ("zone", "z"))
    projected = view.project(labels)
    assert projected == (("__name__", "m"), ("a_first", "1"), ("view", "v"), ("zone", "z"))


def test_labels_the_series_lacks_are_left_out() -> None:
    assert OPS.project((("__name__", "up"),)) == (("__name__", "up"), ("view", "ops"))


def test_histogram_buckets_keep_le() -> None:
    bucket: Labels = (
        ("__name__", "http_request_duration_seconds_bucket"),
        ("le", "0.25"),
        ("pod", "a"),
        ("service", "checkout"),
    )
    assert BUSINESS.project(bucket) is Skip.NOT_MATCHED
    assert OPS.project(bucket) == (
        ("__name__", "http_request_duration_seconds_bucket"),
        ("le", "0.25"),
        ("service", "checkout"),
        ("view", "ops"),
    )


def test_summary_quantiles_are_unsummable() -> None:
    quantile: Labels = (("__name__", "payment_amount"), ("quantile", "0.99"), ("service", "p"))
    assert OPS.project(quantile) is Skip.UNSUMMABLE
    assert Skip.UNSUMMABLE.value == "unsummable_quantile"
    assert OPS.project((("__name__", "payment_amount_sum"), ("service", "p"))) == (
        ("__name__", "payment_amount_sum"),
        ("service", "p"),
        ("view", "ops"),
    )


def test_match_filters_on_the_enriched_labels() -> None:
    assert BUSINESS.project(ORDER) == (
        ("__name__", "order_total"),
        ("service", "checkout"),
        ("view", "business"),
    )
    assert BUSINESS.project((("__name__", "up"), ("service", "checkout"))) is Skip.NOT_MATCHED
    by_team = View.from_config(
        ViewConfig(name="web", keep=(), match=parse_selector('{team="web"}'))
    )
    assert by_team.project(ORDER) == (("__name__", "order_total"), ("view", "web"))


def test_a_view_label_from_the_input_is_replaced() -> None:
    labels: Labels = (("__name__", "x"), ("service", "s"), ("view", "upstream"))
    assert OPS.project(labels) == (("__name__", "x"), ("service", "s"), ("view", "ops"))
