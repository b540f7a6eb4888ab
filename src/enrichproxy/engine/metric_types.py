"""Which series are counters: metric metadata when the sender sent it, name suffixes otherwise.

Remote write 1.0 carries types in separate metadata requests, keyed by metric family name and
sent about once a minute, so a series may arrive before its family's type is known. Remote
write 2.0 carries the type on every series; ``series_metadata`` turns a series' (metric name,
type) into its family's entry, so both feed one table.
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


# The series of a family that carry a suffix, by family type (what 2.0 metadata names them).
_FAMILY_SUFFIXES = {
    MetricType.HISTOGRAM: ("_bucket", "_count", "_sum"),
    MetricType.GAUGEHISTOGRAM: ("_bucket", "_gcount", "_gsum"),
    MetricType.SUMMARY: ("_count", "_sum"),
}


def series_metadata(series_types: Iterable[tuple[str, MetricType]]) -> list[MetricMetadata]:
    """Family entries for (metric name, type) pairs of remote write 2.0 series.

    A 2.0 sender puts the family's type on each of its series: ``http_seconds_bucket`` comes
    as HISTOGRAM, so the family is ``http_seconds``, as a 1.0 metadata request would name it
    (and ``is_counter`` then finds ``_bucket`` cumulative). Other types name their family
    after the series itself.
    """
    entries = []
    for name, metric_type in series_types:
        family = name
        for suffix in _FAMILY_SUFFIXES.get(metric_type, ()):
            if name.endswith(suffix) and len(name) > len(suffix):
                family = name[: -len(suffix)]
                break
        entries.append(MetricMetadata(family, metric_type, "", ""))
    return entries


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

    def series_type(self, metric_name: str) -> MetricType:
        """The type an output series of ``metric_name`` is sent with (remote write 2.0
        metadata): its own or its family's type when known, else what the aggregation made of
        it (COUNTER when summed reset-safely, GAUGE otherwise). A view's output of a counter
        is a counter."""
        own_type = self._families.get(metric_name)
        if own_type is not None and own_type != MetricType.UNKNOWN:
            return own_type
        for suffix in _COUNTER_SUFFIXES:
            if metric_name.endswith(suffix):
                family_type = self._families.get(metric_name[: -len(suffix)])
                if family_type is not None and family_type != MetricType.UNKNOWN:
                    return family_type
                break
        return MetricType.COUNTER if self.is_counter(metric_name) else MetricType.GAUGE
