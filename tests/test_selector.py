"""Series selectors: parsed by promql-parser, matched with PromQL's semantics."""

from __future__ import annotations

import pytest

from enrichproxy.config.selector import Matcher, parse_selector
from enrichproxy.model import Labels


def labels(**pairs: str) -> Labels:
    names = {"name": "__name__"}
    return tuple(sorted((names.get(key, key), value) for key, value in pairs.items()))


ORDER_A = labels(name="order_total", job="checkout", pod="a")
PAYMENT = labels(name="payment_amount_sum", job="payment")
UP = labels(name="up", job="checkout")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("up", (Matcher("__name__", "=", "up"),)),
        ('up{job="a"}', (Matcher("__name__", "=", "up"), Matcher("job", "=", "a"))),
        (
            '{__name__=~"order_.*", job!="x"}',
            (Matcher("__name__", "=~", "order_.*"), Matcher("job", "!=", "x")),
        ),
        ('x{job!~"a|b"}', (Matcher("__name__", "=", "x"), Matcher("job", "!~", "a|b"))),
        ('{job="a", job="a"}', (Matcher("job", "=", "a"),)),  # an exact repeat is kept once
        ('{"utf8.name"}', (Matcher("__name__", "=", "utf8.name"),)),
    ],
)
def test_parses_matchers(text: str, expected: tuple[Matcher, ...]) -> None:
    selector = parse_selector(text)
    assert selector.text == text
    assert selector.matchers == expected


@pytest.mark.parametrize(
    ("text", "matching", "not_matching"),
    [
        ("order_total", [ORDER_A], [PAYMENT, UP]),
        ('{__name__=~"order_.*|payment_.*"}', [ORDER_A, PAYMENT], [UP]),
        ('{__name__=~".+", job!="checkout"}', [PAYMENT], [ORDER_A, UP]),
        # Regexes are anchored at both ends.
        ('{job=~"check"}', [], [ORDER_A, PAYMENT, UP]),
        ('{__name__=~"order"}', [], [ORDER_A]),
        ('{job=~"check.*"}', [ORDER_A, UP], [PAYMENT]),
        ('{__name__=~".+", job!~"check.*"}', [PAYMENT], [ORDER_A, UP]),
        # A missing label matches as the empty string.
        ('{__name__=~".+", pod=""}', [PAYMENT, UP], [ORDER_A]),
        ('{pod!=""}', [ORDER_A], [PAYMENT, UP]),
        ('{__name__=~".+", pod=~"a?"}', [ORDER_A, PAYMENT, UP], []),
        ('{__name__=~".+", pod!~".+"}', [PAYMENT, UP], [ORDER_A]),
        ('up{job="checkout"}', [UP], [ORDER_A, PAYMENT]),
    ],
)
def test_matches_like_promql(text: str, matching: list[Labels], not_matching: list[Labels]) -> None:
    selector = parse_selector(text)
    for series in matching:
        assert selector.matches(series), series
    for series in not_matching:
        assert not selector.matches(series), series


def test_regex_dot_matches_newline_as_in_prometheus_3() -> None:
    # Prometheus 3 compiles matchers as ^(?s:re)$ (prometheus/prometheus#14505).
    multiline = labels(name="build_info", version="1.0\nrc1")
    assert parse_selector('{version=~"1.0.*"}').matches(multiline)
    assert not parse_selector('build_info{version!~".*rc1"}').matches(multiline)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{}", "at least one non-empty matcher"),
        # PromQL refuses selectors that would match every series.
        ('{job!="a"}', "at least one non-empty matcher"),
        ("x{", "not a valid series selector"),
        ("rate(x[5m])", "not an expression"),
        ("sum(x)", "not an expression"),
        ("x[5m]", "not an expression"),
        ("1 + 1", "not an expression"),
        ("x offset 5m", "offset and @"),
        ("x @ 100", "offset and @"),
        ('{a="b" or c="d"}', "'or' inside a selector"),
        ('{a=~"("}', "regex"),
        ('up{__name__="x"}', "metric name must not be set twice"),
        # Valid for the Rust parser, not for Python's re: refused rather than mis-matched.
        ('{a=~"(?<n>x)"}', "bad regex"),
    ],
)
def test_refuses_anything_but_a_plain_selector(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace("+", r"\+")):
        parse_selector(text)


def test_selector_is_frozen() -> None:
    selector = parse_selector('{job=~"check.*"}')
    with pytest.raises(AttributeError):
        selector.text = "other"  # type: ignore[misc]
