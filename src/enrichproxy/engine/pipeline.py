"""The data path, stage by stage: decoded request → enrich → views → aggregation → output.

The same series come back with every scrape, so everything that depends only on a series'
labels (decoding them, the join, each view's projection, the counter/gauge decision, the
aggregation state it feeds) is worked out once per distinct label set and cached under the
series' raw label bytes. A cached series costs one dict lookup plus one update per view.

When a metadata table changes, only the cached series that looked up a changed key are worked
out again; new metric types or inputs forgotten by the aggregator start the cache over.

Pure: nothing here does I/O or reads a clock; results are returned, never written to metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from enrichproxy.config.schema import Config
from enrichproxy.engine.aggregation import AggregationSettings, InputSeries, ViewAggregator
from enrichproxy.engine.aggregation_state import StateMismatch, export_state, restore_state
from enrichproxy.engine.enrich import Lookup, enrich
from enrichproxy.engine.limits import check_labels, check_series_count
from enrichproxy.engine.metric_types import MetricTypes
from enrichproxy.engine.views import Skip, View
from enrichproxy.metadata.table import EMPTY_TABLE, Key, MetadataTable, changed_keys
from enrichproxy.model import METRIC_NAME_LABEL, MetricMetadata, OutputSample, is_stale_marker
from enrichproxy.wire.codec import DecodedRequest, decode_labels, encode_labels

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
# Also a per-view reason (enrichproxy_view_samples_dropped_total): a view's max_series refused
# the new output series this input would have made.
DROP_CARDINALITY_LIMIT = "cardinality_limit"


class SeriesPlan(NamedTuple):
    """What to do with every sample of one input series."""

    lookup_slots: tuple[int, ...]
    """Per rule applied: ``rule index * 3 + Lookup``, an index into the lookup counts."""
    inputs: tuple[InputSeries, ...]
    """One aggregation input per view the series feeds."""
    drop_reason: str
    """Why it feeds no view at all (empty when ``inputs`` is not)."""
    conflicts: int
    dependencies: tuple[tuple[int, Key], ...] = ()
    """(rule index, key) of every lookup the plan depends on: when the plan is dropped for one
    of them it is taken out of the others' dependents too, so a later change to a key the series
    no longer looks up does not work it out again."""
    capped_views: tuple[int, ...] = ()
    """Indices of the views whose ``max_series`` left the series out (cardinality guard)."""


@dataclass
class IngestResult:
    series: int = 0
    samples: int = 0
    lookups: Counter[tuple[str, Lookup]] = field(default_factory=Counter)
    """(rule name, result) → series looked up."""
    dropped: Counter[str] = field(default_factory=Counter)
    label_conflicts: int = 0
    metadata: int = 0
    exemplars_skipped: int = 0
    view_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(view, reason) → samples a view left out: late, out_of_order or cardinality_limit."""


@dataclass
class ViewOutput:
    view: str
    samples: list[OutputSample]


@dataclass
class Reconfiguration:
    """What ``Pipeline.reconfigure`` did: the pipeline to use now, and what to forward first."""

    pipeline: Pipeline
    outputs: list[ViewOutput] = field(default_factory=list)
    """The last windows of every view that changed or went away."""
    kept: list[str] = field(default_factory=list)
    """Views that continue with their aggregation state."""
    restarted: list[str] = field(default_factory=list)
    """Views whose definition changed: flushed, then started empty."""
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


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
        self.rules = config.metadata.enrich_rules
        self.on_conflict = config.metadata.on_conflict
        self.tables: list[MetadataTable] = [EMPTY_TABLE] * len(self.rules)
        self.types = MetricTypes()
        self._plans: dict[bytes, SeriesPlan] = {}
        # (rule index, key) → the cached series whose plan depends on that key's entry.
        self._dependents: dict[tuple[int, Key], set[bytes]] = {}
        self.limits = config.limits
        self.max_series = tuple(v.max_series for v in config.views)
        """Per view, its cardinality cap (0: none)."""
        # Cached series some view's cap left out: worked out again when that view has room.
        self._capped: set[bytes] = set()

    # --- inputs to the cached decisions ---------------------------------------------------------

    def set_table(self, table: MetadataTable, rule_index: int = 0) -> bool:
        """Use ``table`` for rule ``rule_index`` from now on; True when its content changed.

        Only the cached series that looked up a changed key are worked out again.
        """
        changed = changed_keys(self.tables[rule_index], table)
        self.tables[rule_index] = table
        if not changed:
            return False
        if len(changed) > len(self._plans) // 2:
            self._forget_plans()
            return True
        for key in changed:
            for label_bytes in self._dependents.pop((rule_index, key), ()):
                self._forget_plan(label_bytes)
        return True

    def _forget_plan(self, label_bytes: bytes) -> None:
        """Drop one cached plan and its entries in the key index."""
        plan = self._plans.pop(label_bytes, None)
        if plan is None:
            return
        dependents = self._dependents
        for dependency in plan.dependencies:
            users = dependents.get(dependency)
            if users is not None:
                users.discard(label_bytes)
                if not users:
                    del dependents[dependency]

    def _forget_plans(self) -> None:
        self._plans.clear()
        self._dependents.clear()
        self._capped.clear()

    def _forget_capped_plans(self) -> None:
        """Work the series some view's cap left out again: that view has room now."""
        for label_bytes in self._capped:
            self._forget_plan(label_bytes)
        self._capped.clear()

    def learn_types(self, metadata: list[MetricMetadata]) -> None:
        if metadata and self.types.update(metadata):
            self._forget_plans()

    @property
    def known_label_bytes(self) -> Container[bytes]:
        """Label bytes already decoded and planned (see codec.decode_write_request)."""
        return self._plans

    @property
    def cached_series(self) -> int:
        return len(self._plans)

    # --- the hot path ---------------------------------------------------------------------------

    def ingest(self, request: DecodedRequest, now_ms: int) -> IngestResult:
        """Apply every sample of ``request`` to every view it belongs to.

        Every series is resolved before any sample is applied, so a DecodeError for invalid
        labels, or a LimitExceeded, leaves no sample of the rejected request applied.
        """
        series_list = request.series
        check_series_count(len(series_list), self.limits)
        result = IngestResult(metadata=len(request.metadata))
        self.learn_types(request.metadata)
        plans = self._plans
        if len(plans) > MAX_CACHED_SERIES:
            self._forget_plans()
        resolved = []
        for raw in series_list:
            plan = plans.get(raw.label_bytes)
            if plan is None:
                plan = self._plan(raw.label_bytes)
            resolved.append(plan)
        before = [(a.late_samples, a.out_of_order_samples) for a in self.aggregators]
        lookups = [0] * (3 * len(self.rules))
        dropped = result.dropped
        conflicts = samples = 0
        future_limit = now_ms + MAX_FUTURE_MS
        for raw, plan in zip(series_list, resolved, strict=True):
            for slot in plan.lookup_slots:
                lookups[slot] += 1
            conflicts += plan.conflicts
            raw_samples = raw.samples
            samples += len(raw_samples)
            if plan.capped_views:
                for index in plan.capped_views:
                    result.view_dropped[self.views[index].name, DROP_CARDINALITY_LIMIT] += len(
                        raw_samples
                    )
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
        for slot, count in enumerate(lookups):
            if count:
                result.lookups[self.rules[slot // 3].name, Lookup(slot % 3)] = count
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
        if self.limits.checks_labels:
            # Before anything is cached: a refused series is checked again when it comes back.
            check_labels(labels, self.limits)
        enriched = enrich(labels, self.tables, self.rules, self.on_conflict)
        slots = tuple(index * 3 + step.lookup for index, step in enumerate(enriched.steps))
        keys = tuple(
            (index, step.key) for index, step in enumerate(enriched.steps) if step.key is not None
        )
        for dependency in keys:
            self._dependents.setdefault(dependency, set()).add(label_bytes)
        if enriched.labels is None:
            plan = SeriesPlan(slots, (), DROP_METADATA_MISSING, 0, keys)
            return self._remember(label_bytes, plan)
        metric_name = dict(enriched.labels).get(METRIC_NAME_LABEL)
        if not metric_name:
            return self._remember(label_bytes, SeriesPlan(slots, (), DROP_NO_METRIC_NAME, 0, keys))
        is_counter = self.types.is_counter(metric_name)
        inputs: list[InputSeries] = []
        skips: list[Skip] = []
        capped: list[int] = []
        for index, (view, aggregator) in enumerate(zip(self.views, self.aggregators, strict=True)):
            projected = view.project(enriched.labels)
            if isinstance(projected, Skip):
                skips.append(projected)
            elif not aggregator.admits(projected, self.max_series[index]):
                capped.append(index)
            else:
                inputs.append(aggregator.attach(label_bytes, projected, is_counter))
        drop_reason = ""
        if not inputs:
            unsummable = Skip.UNSUMMABLE in skips
            drop_reason = Skip.UNSUMMABLE.value if unsummable else DROP_IN_NO_VIEW
            if capped:
                drop_reason = DROP_CARDINALITY_LIMIT
        if capped:
            self._capped.add(label_bytes)
        plan = SeriesPlan(
            slots, tuple(inputs), drop_reason, enriched.conflicts, keys, tuple(capped)
        )
        return self._remember(label_bytes, plan)

    def _remember(self, label_bytes: bytes, plan: SeriesPlan) -> SeriesPlan:
        self._plans[label_bytes] = plan
        return plan

    # --- output ---------------------------------------------------------------------------------

    def flush(self, now_ms: int, final: bool = False) -> list[ViewOutput]:
        """Close complete windows (all of them with ``final``) and return their samples."""
        outputs = []
        forgotten = groups_forgotten = 0
        for view, aggregator in zip(self.views, self.aggregators, strict=True):
            before = aggregator.forgotten_inputs
            groups_before = aggregator.forgotten_groups
            outputs.append(ViewOutput(view.name, aggregator.flush(now_ms, final)))
            forgotten += aggregator.forgotten_inputs - before
            groups_forgotten += aggregator.forgotten_groups - groups_before
        if forgotten:
            self._forget_plans()
        elif groups_forgotten and self._capped:
            self._forget_capped_plans()
        return outputs

    # --- a new configuration (reload) ---------------------------------------------------------

    def reconfigure(self, config: Config, now_ms: int) -> Reconfiguration:
        """A pipeline for ``config`` that continues this one wherever the definitions allow.

        A view whose definition (name, kept labels, match, effective interval) and aggregation
        settings are unchanged moves over with its aggregation state, so its sums continue with
        no reset downstream. A view that changed or went away emits every open window now; the
        caller forwards those outputs before it switches. A changed view then starts empty (a
        counter view starts again from the inputs' current values, as after a restart without
        ``state_path``) and never emits a window its predecessor already emitted, which the
        downstream would refuse. The metric types learnt carry over, and so do the tables of
        rules that are unchanged (the others stay empty until the metadata store loads them);
        the series cache starts over, since what it decided may no longer hold.

        The views moved over are shared: this pipeline must not be used afterwards.
        """
        successor = Pipeline(config)
        successor.types = self.types
        for index, rule in enumerate(successor.rules):
            if rule in self.rules:
                successor.tables[index] = self.tables[self.rules.index(rule)]
        wanted = {view.name: position for position, view in enumerate(successor.views)}
        aggregators = list(successor.aggregators)
        result = Reconfiguration(successor)
        for view, aggregator in zip(self.views, self.aggregators, strict=True):
            position = wanted.pop(view.name, None)
            if position is None:
                result.removed.append(view.name)
                result.outputs.append(ViewOutput(view.name, aggregator.flush(now_ms, final=True)))
                continue
            fresh = aggregators[position]
            if successor.views[position] == view and fresh.settings == aggregator.settings:
                aggregators[position] = aggregator
                result.kept.append(view.name)
                continue
            result.restarted.append(view.name)
            result.outputs.append(ViewOutput(view.name, aggregator.flush(now_ms, final=True)))
            # Windows count from the epoch, so a real one is positive; before its first
            # emission closed_window is a large negative sentinel with nothing to protect.
            if aggregator.closed_window > 0:
                fresh.mark_emitted_through(aggregator.closed_window * aggregator.interval_ms)
        result.added.extend(wanted)
        successor.aggregators = tuple(aggregators)
        return result

    # --- state that survives restarts ------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """Every view's aggregation state, keyed by view name (see aggregation_state), with
        the view's definition: a view whose labels or selector changed must not continue."""
        return {
            view.name: {**export_state(aggregator), "definition": _definition(view)}
            for view, aggregator in zip(self.views, self.aggregators, strict=True)
        }

    def emitted_through_ms(self) -> dict[str, int]:
        """Per view that emitted anything, the end (ms) of the last window it emitted: in
        milliseconds, so it stays right when the view's interval changes."""
        return {
            view.name: aggregator.closed_window * aggregator.interval_ms
            for view, aggregator in zip(self.views, self.aggregators, strict=True)
            if aggregator.closed_window > 0  # windows count from the epoch: real ones are > 0
        }

    def restore_state(self, states: dict[str, Any]) -> dict[str, str]:
        """Load saved view states into this fresh pipeline; returns view → why it was not.

        A view that is new, or whose interval changed, starts empty; the others continue.
        """
        skipped: dict[str, str] = {}
        for view, aggregator in zip(self.views, self.aggregators, strict=True):
            state = states.get(view.name)
            if state is None:
                skipped[view.name] = "no saved state"
                continue
            if state.get("definition", _definition(view)) != _definition(view):
                skipped[view.name] = "its keep labels or match selector changed"
                continue
            try:
                restore_state(aggregator, state)
            except StateMismatch as exc:
                skipped[view.name] = str(exc)
        self._forget_plans()
        return skipped


def _definition(view: View) -> dict[str, Any]:
    """What a view's output series depend on, besides the aggregation settings."""
    return {
        "keep": sorted(view.keep),
        "match": view.match.text if view.match is not None else None,
    }
