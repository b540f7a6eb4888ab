"""Prometheus-style durations, spelled as Prometheus' own configuration spells them."""

from __future__ import annotations

import random

import pytest

from enrichproxy.config.durations import format_duration_ms, parse_duration_ms

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
YEAR = 365 * DAY


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("0", 0),
        ("0s", 0),
        ("1ms", 1),
        ("500ms", 500),
        ("15s", 15 * SECOND),
        ("1m", MINUTE),
        ("1m30s", 90 * SECOND),
        ("1h30m", 90 * MINUTE),
        ("2d", 2 * DAY),
        ("1w", WEEK),
        ("1y", YEAR),
        ("1y2w3d4h5m6s7ms", YEAR + 2 * WEEK + 3 * DAY + 4 * HOUR + 5 * MINUTE + 6 * SECOND + 7),
        ("90s", 90 * SECOND),  # a unit may exceed the next one, as in Prometheus
        ("1s500ms", 1500),
    ],
)
def test_parses_prometheus_durations(text: str, expected_ms: int) -> None:
    assert parse_duration_ms(text) == expected_ms


@pytest.mark.parametrize(
    "text",
    [
        "",
        "15",  # no unit
        "1.5s",  # Prometheus durations are integers
        "-1s",
        "30s1m",  # units out of order
        "1m1m",  # a unit twice
        "1 m",
        " 1m",
        "1M",
        "1sec",
        "s",
        "ms",
        "0x10s",
        "15s\n",  # a YAML block scalar keeps its newline
        "\u0661\u0665s",  # digits other than 0-9
    ],
)
def test_refuses_what_prometheus_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration_ms(text)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (1500, "1s500ms"),
        (15 * SECOND, "15s"),
        (90 * SECOND, "1m30s"),
        (HOUR, "1h"),
        (DAY + HOUR, "1d1h"),
        (WEEK, "1w"),
        (YEAR + 1, "1y1ms"),
    ],
)
def test_formats_the_shortest_spelling(ms: int, text: str) -> None:
    assert format_duration_ms(ms) == text


def test_format_and_parse_are_inverse() -> None:
    rng = random.Random(20240501)
    for _ in range(2000):
        ms = rng.choice([rng.randrange(1000), rng.randrange(10**7), rng.randrange(10**12)])
        assert parse_duration_ms(format_duration_ms(ms)) == ms
