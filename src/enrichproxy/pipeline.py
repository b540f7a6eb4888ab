"""The data path, stage by stage: decoded request → enrich → views → aggregation → output.

The same series come back with every scrape, so everything that depends only on a series'
labels (decoding them, the join, each view's projection, the counter/gauge decision, the
aggregation state it feeds) is worked out once per distinct label set and cached under the
series' raw label bytes. A cached series costs one dict lookup plus one update per view.

The cache is rebuilt from scratch whenever an input to those decisions changes: a new metadata
table, new metric types, or inputs forgotten by the aggregator.

Pure: nothing here does I/O or reads a clock; results are returned, never written to metrics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from enrichproxy.aggregation import AggregationSettings, InputSeries, ViewAggregator
from enrichproxy.codec import DecodedRequest, decode_labels, encode_labels
from enrichproxy.config import Config
from enrichproxy.enrich import Lookup, enrich
from enrichproxy.metadata_table import EMPTY_TABLE, MetadataTable
from enrichproxy.metric_types import MetricTypes
from enrichproxy.model import METRIC_NAME_LABEL, MetricMetadata, OutputSample, is_stale_marker
from enrichproxy.views import Skip, View

# Samples further ahead of our clock than this are refused by Prometheus (its TSDB limit); they
# would also drag the aggregation watermark forward and make every real sample late.
MAX_FUTURE_MS = 10 * 60 * 1000
# A sender with unbounded label churn must not grow the cache without end; past this many
# distinct series the cache starts over (the aggregation state itself is kept).
MAX_CACHED_SERIES = 2_000_000

# Drop reasons for whole input samples (enrichproxy_samples_dropped_total{reason}).
DROP_METADATA_MISSING = "metadata_missing"
DROP_NO_METRIC_NAME = "no_metric_name"
DROP_IN_NO_VIEW = "in_no_view"
DROP_FUTURE = "too_far_in_future"
DROP_NAN = "nan_value"
DROP_NATIVE_HISTOGRAM = "native_histogram"


class SeriesPlan(NamedTuple):
    """What to do with every sample of one input series."""

    lookup: Lookup
    inputs: tuple[InputSeries, ...]
    """One aggregation input per view the series feeds."""
    drop_reason: str
    """Why it feeds no view at all (empty when ``inputs`` is not)."""
    conflicts: int


@dataclass
class IngestResult:
    series: int = 0
    samples: int = 0
    lookups: Counter[Lookup] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    label_conflicts: int = 0
    metadata: int = 0
    exemplars_skipped: int = 0
    view_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(view, reason) → samples a view left out: late or out_of_order."""


@dataclass
class ViewOutput:
    view: str
    samples: list[OutputSample]


class Pipeline:
    """Owns the metadata table in use, the series cache and every view's aggregation state."""

    def __init__(self, config: Config) -> None:
        self.spec = config.metadata
        self.views = tuple(View.from_config(v) for v in config.views)
        agg = config.aggregation
        self.aggregators = tuple(
            ViewAggregator(
                AggregationSettings(
                    interval_ms=config.view_interval_ms(v),
                    lateness_ms=agg.lateness_ms,
                    stale_after_ms=agg.stale_after_ms,
                    retention_ms=agg.retention_ms,
                    idle_flush_ms=agg.idle_flush_ms,
                ),
                encode_labels,
            )
            for v in config.views
        )
        self.table: MetadataTable = EMPTY_TABLE
        self.types = MetricTypes()
        self._plans: dict[bytes, SeriesPlan] = {}

    # --- inputs to the cached decisions ---------------------------------------------------------

    def set_table(self, table: MetadataTable) -> bool:
        """Use ``table`` from now on; True when its content differs from the current one."""
        changed = table.entries != self.table.entries
        self.table = table
        if changed:
            self._plans.clear()
        return changed

    def learn_types(self, metadata: list[MetricMetadata]) -> None:
        if metadata and self.types.update(metadata):
            self._plans.clear()

    @property
    def cached_series(self) -> int:
        return len(self._plans)

    # --- the hot path ---------------------------------------------------------------------------

    def ingest(self, request: DecodedRequest, now_ms: int) -> IngestResult:
        """Apply every sample of ``request`` to every view it belongs to.

        Every series is resolved before any sample is applied, so a DecodeError for invalid
        labels leaves no sample of the rejected request applied.
        """
        result = IngestResult(metadata=len(request.metadata))
        self.learn_types(request.metadata)
        series_list = request.series
        plans = self._plans
        if len(plans) > MAX_CACHED_SERIES:
            plans.clear()
        resolved = []
        for raw in series_list:
            plan = plans.get(raw.label_bytes)
            if plan is None:
                plan = self._plan(raw.label_bytes)
            resolved.append(plan)
        before = [(a.late_samples, a.out_of_order_samples) for a in self.aggregators]
        lookups = [0, 0, 0]
        dropped = result.dropped
        conflicts = samples = 0
        future_limit = now_ms + MAX_FUTURE_MS
        for raw, plan in zip(series_list, resolved, strict=True):
            lookups[plan.lookup] += 1
            conflicts += plan.conflicts
            raw_samples = raw.samples
            samples += len(raw_samples)
            inputs = plan.inputs
            if not inputs:
                dropped[plan.drop_reason] += len(raw_samples)
                continue
            for timestamp_ms, value in raw_samples:
                if timestamp_ms > future_limit:
                    dropped[DROP_FUTURE] += 1
                elif value == value:
                    for series in inputs:
                        series.observe(timestamp_ms, value)
                elif is_stale_marker(value):
                    for series in inputs:
                        series.end(timestamp_ms)
                else:
                    dropped[DROP_NAN] += 1
        if request.histograms:
            dropped[DROP_NATIVE_HISTOGRAM] += request.histograms
        result.series = len(series_list)
        result.samples = samples
        result.label_conflicts = conflicts
        result.exemplars_skipped = request.exemplars
        for lookup in Lookup:
            if lookups[lookup]:
                result.lookups[lookup] = lookups[lookup]
        for view, aggregator, (late, out_of_order) in zip(
            self.views, self.aggregators, before, strict=True
        ):
            if aggregator.late_samples != late:
                result.view_dropped[view.name, "late"] = aggregator.late_samples - late
            if aggregator.out_of_order_samples != out_of_order:
                result.view_dropped[view.name, "out_of_order"] = (
                    aggregator.out_of_order_samples - out_of_order
                )
        return result

    def _plan(self, label_bytes: bytes) -> SeriesPlan:
        labels = decode_labels(label_bytes)
        enriched = enrich(labels, self.table, self.spec)
        if enriched.labels is None:
            return self._remember(
                label_bytes, SeriesPlan(enriched.lookup, (), DROP_METADATA_MISSING, 0)
            )
        metric_name = dict(enriched.labels).get(METRIC_NAME_LABEL)
        if not metric_name:
            return self._remember(
                label_bytes, SeriesPlan(enriched.lookup, (), DROP_NO_METRIC_NAME, 0)
            )
        is_counter = self.types.is_counter(metric_name)
        inputs: list[InputSeries] = []
        skips: list[Skip] = []
        for view, aggregator in zip(self.views, self.aggregators, strict=True):
            projected = view.project(enriched.labels)
            if isinstance(projected, Skip):
                skips.append(projected)
            else:
                inputs.append(aggregator.attach(label_bytes, projected, is_counter))
        drop_reason = ""
        if not inputs:
            unsummable = Skip.UNSUMMABLE in skips
            drop_reason = Skip.UNSUMMABLE.value if unsummable else DROP_IN_NO_VIEW
        plan = SeriesPlan(enriched.lookup, tuple(inputs), drop_reason, enriched.conflicts)
        return self._remember(label_bytes, plan)

    def _remember(self, label_bytes: bytes, plan: SeriesPlan) -> SeriesPlan:
        self._plans[label_bytes] = plan
        return plan

    # --- output ---------------------------------------------------------------------------------

    def flush(self, now_ms: int, final: bool = False) -> list[ViewOutput]:
        """Close complete windows (all of them with ``final``) and return their samples."""
        outputs = []
        forgotten = 0
        for view, aggregator in zip(self.views, self.aggregators, strict=True):
            before = aggregator.forgotten_inputs
            outputs.append(ViewOutput(view.name, aggregator.flush(now_ms, final)))
            forgotten += aggregator.forgotten_inputs - before
        if forgotten:
            self._plans.clear()
        return outputs
