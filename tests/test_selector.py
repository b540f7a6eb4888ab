"""Series selectors: parsed as PromQL parses them, matched with PromQL's semantics."""

from __future__ import annotations

import re

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
        ("x{", "column 3: expected a label name, found the end"),
        ("rate(x[5m])", "column 5: expected the end of the selector"),
        ("sum(x)", "column 4: expected the end of the selector"),
        ("x[5m]", "column 2: expected the end of the selector"),
        ("1 + 1", "column 1: expected a metric name or {"),
        ("x offset 5m", "column 3: expected the end of the selector"),
        ("x @ 100", "column 3: expected the end of the selector"),
        ('{a="b" or c="d"}', "column 8: expected ',' or '}', found 'o'"),
        ('{a=~"("}', "column 5: invalid regex '(': missing )"),
        ('{a="b" c}', "column 8: expected ',' or '}'"),
        ("{a=b}", "column 4: expected a string after a=, found 'b'"),
        ("{a~b}", "column 3: expected a matcher operator"),
        ('{a="\\q"}', "column 5: unknown escape sequence"),
        ('up{__name__="x"}', "metric name must not be set twice"),
        # Valid for Python's re and RE2, refused by Go's regexp (Prometheus): refused here too.
        ('{a=~"(?<n>x)"}', "invalid regex"),
        # Valid only once wrapped in ^(?:…)$: Prometheus refuses it in a selector.
        ('{a=~"x)|(y"}', "invalid regex"),
    ],
)
def test_refuses_anything_but_a_plain_selector(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as caught:
        parse_selector(text)
    assert str(caught.value).startswith("not a valid series selector: ")


def test_selector_is_frozen() -> None:
    selector = parse_selector('{job=~"check.*"}')
    with pytest.raises(AttributeError):
        selector.text = "other"  # type: ignore[misc]
