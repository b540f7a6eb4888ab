"""Which series are counters: metric metadata when the sender sent it, name suffixes otherwise.

Remote write 1.0 carries types in separate metadata requests, keyed by metric family name and
sent about once a minute, so a series may arrive before its family's type is known.
"""

from __future__ import annotations

from collections.abc import Iterable

from enrichproxy.model import MetricMetadata, MetricType

_COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
# Series of a family that count up, by family type (OpenMetrics naming).
_CUMULATIVE_SUFFIXES = {
    MetricType.COUNTER: ("_total", ""),
    MetricType.HISTOGRAM: ("_bucket", "_count", "_sum"),
    MetricType.SUMMARY: ("_count", "_sum"),
}


class MetricTypes:
    """Family types learnt from metadata requests."""

    def __init__(self) -> None:
        self._families: dict[str, MetricType] = {}

    def update(self, metadata: Iterable[MetricMetadata]) -> bool:
        """Remember the types; True when something changed (cached decisions are then stale)."""
        changed = False
        for item in metadata:
            if item.family and self._families.get(item.family) != item.type:
                self._families[item.family] = item.type
                changed = True
        return changed

    def family_type(self, family: str) -> MetricType | None:
        return self._families.get(family)

    def is_counter(self, metric_name: str) -> bool:
        """True when samples of ``metric_name`` only go up between resets."""
        own_type = self._families.get(metric_name)
        if own_type is not None and own_type != MetricType.UNKNOWN:
            return own_type == MetricType.COUNTER
        for suffix in _COUNTER_SUFFIXES:
            if metric_name.endswith(suffix):
                family_type = self._families.get(metric_name[: -len(suffix)])
                if family_type is not None and family_type != MetricType.UNKNOWN:
                    return suffix in _CUMULATIVE_SUFFIXES.get(family_type, ())
                return True
        return False
