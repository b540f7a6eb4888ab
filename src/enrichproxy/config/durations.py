"""Prometheus-style durations (``500ms``, ``15s``, ``1m30s``), as Prometheus' own config accepts."""

from __future__ import annotations

import re

# A year is 365 days, as in Prometheus' model.Duration (it accepts "y" in every duration).
_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}
# Units must appear largest first and at most once, as in Prometheus' model.ParseDuration.
# ASCII digits only, and matched with fullmatch: "$" alone would accept a trailing newline.
_DURATION_RE = re.compile(
    r"(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?"
    r"(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?",
    re.ASCII,
)


def parse_duration_ms(text: str) -> int:
    """Milliseconds in ``text``; ValueError with a readable reason otherwise."""
    match = _DURATION_RE.fullmatch(text)
    if not text or text == "0" or match is None:
        if text == "0":
            return 0
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 15s, 1m, 1h30m)")
    return sum(int(v) * _UNIT_MS[unit] for unit, v in match.groupdict().items() if v)


def format_duration_ms(ms: int) -> str:
    """Shortest Prometheus-style spelling of ``ms``."""
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("y", "w", "d", "h", "m", "s", "ms"):
        size = _UNIT_MS[unit]
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts)
