"""The Python reference engine: request bytes → decode → enrich → views → aggregation → output.

The same series come back with every scrape, so everything that depends only on a series'
labels (decoding them, the join, each view's projection, the counter/gauge decision, the
aggregation state it feeds) is worked out once per distinct label set and cached under the
series' raw label bytes. A cached series costs one dict lookup plus one update per view.

When a metadata table changes, only the cached series that looked up a changed key are worked
out again; new metric types or inputs forgotten by the aggregator start the cache over.

Pure: nothing here does I/O or reads a clock; results are returned, never written to metrics.
``Pipeline`` implements ``engine.interface.Engine``; ``apply`` is its entry for a request
already decoded (the tests' and benchmarks' way in).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from enrichproxy.config.schema import Config
from enrichproxy.engine.aggregation import InputSeries, OutputGroup, ViewAggregator, exact_sum
from enrichproxy.engine.aggregation_state import StateMismatch, export_state, restore_state
from enrichproxy.engine.enrich import Lookup
from enrichproxy.engine.interface import (
    EngineStats,
    FlushSteps,
    GroupState,
    IngestResult,
    IngestSteps,
    InputState,
    Reconfiguration,
    ViewOutput,
    ViewStats,
    one_step,
    run_steps,
)
from enrichproxy.engine.limits import check_labels, check_series_count
from enrichproxy.engine.metric_types import series_metadata
from enrichproxy.engine.planner import Planner, ViewPlan
from enrichproxy.engine.views import Skip, View
from enrichproxy.metadata.table import Key, MetadataTable
from enrichproxy.model import (
    METRIC_NAME_LABEL,
    Labels,
    MetricMetadata,
    OutputSample,
    is_stale_marker,
)
from enrichproxy.wire.codec import (
    DecodedRequest,
    decode_labels,
    decode_write_request,
    decompress,
    encode_labels,
    encode_samples,
)
from enrichproxy.wire.v2 import TypeOf, WireProtocol, decode_v2_request, encode_v2_samples

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
INFINITY = float("inf")
DROP_NAN = "nan_value"
# A counter cannot be infinite: one +Inf would make every later window of its view +Inf (the
# reset offset would absorb it), and -Inf would read as a reset. Such samples are left out.
DROP_INFINITE_COUNTER = "infinite_counter"
DROP_NATIVE_HISTOGRAM = "native_histogram"
# Also a per-view reason (enrichproxy_view_samples_dropped_total): a view's max_series refused
# the new output series this input would have made.
DROP_CARDINALITY_LIMIT = "cardinality_limit"
# Whole samples and per view: the series would have been a new input over
# limits.max_input_series (total) or the view's max_input_series.
DROP_INPUT_SERIES_LIMIT = "input_series_limit"


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
    limited_views: tuple[int, ...] = ()
    """Indices of the views whose ``max_input_series`` left the series out."""


# A new series over limits.max_input_series: not enriched, not cached, its samples dropped.
REFUSED_PLAN = SeriesPlan((), (), DROP_INPUT_SERIES_LIMIT, 0)


@dataclass(frozen=True)
class AggregatedView:
    """One view of the pipeline: its plan and its aggregation state."""

    plan: ViewPlan
    aggregator: ViewAggregator

    @property
    def name(self) -> str:
        return self.plan.name


class Pipeline:
    """The Python engine: owns the series cache and every view's aggregation state; the
    tables in use and everything else the configuration decides are its ``planner``'s."""

    name = "python"

    def __init__(self, config: Config) -> None:
        self.planner = Planner(config)
        self.max_decoded_bytes = config.max_decoded_bytes
        self.views = tuple(
            AggregatedView(plan, ViewAggregator(plan.settings, encode_labels))
            for plan in self.planner.views
        )
        self._plans: dict[bytes, SeriesPlan] = {}
        # (rule index, key) → the cached series whose plan depends on that key's entry.
        self._dependents: dict[tuple[int, Key], set[bytes]] = {}
        # Cached series some view's cap left out: worked out again when that view has room.
        self._capped: set[bytes] = set()

    # --- inputs to the cached decisions ---------------------------------------------------------

    def set_table(self, table: MetadataTable, rule_index: int = 0) -> bool:
        """Use ``table`` for rule ``rule_index`` from now on; True when its content changed.

        Only the cached series that looked up a changed key are worked out again.
        """
        changed = self.planner.set_table(table, rule_index)
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
        # Planned again, it may fit now: only plans cached as capped are worked out again when
        # a view has room (as the native engine keeps it, by the plan's kind).
        self._capped.discard(label_bytes)
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
        for label_bytes in list(self._capped):
            self._forget_plan(label_bytes)
        self._capped.clear()

    def learn_types(self, metadata: list[MetricMetadata]) -> None:
        if metadata and self.planner.types.update(metadata):
            self._forget_plans()

    @property
    def known_label_bytes(self) -> Container[bytes]:
        """Label bytes already decoded and planned (see codec.decode_write_request)."""
        return self._plans

    @property
    def cached_series(self) -> int:
        return len(self._plans)

    # --- the hot path ---------------------------------------------------------------------------

    def ingest(
        self, body: bytes, now_ms: int, protocol: WireProtocol = WireProtocol.V1
    ) -> IngestResult:
        """Apply the request ``body`` (snappy, as received); see ``apply``.

        The labels of 1.0 series already planned are not decoded again
        (codec.decode_write_request).
        """
        return run_steps(self.ingest_steps(self.prepare(body, protocol), now_ms))

    def encode_output(self, samples: Sequence[OutputSample]) -> bytes:
        return encode_samples(samples)

    def encode_output_v2(self, samples: Sequence[OutputSample], type_of: TypeOf) -> bytes:
        return encode_v2_samples(samples, type_of)

    def prepare(
        self, body: bytes, protocol: WireProtocol = WireProtocol.V1
    ) -> bytes | DecodedRequest:
        """1.0: decompressed only, since decoding reads the plans (the labels of known series
        are not decoded again). 2.0: decoded too; its labels are written out per request
        (wire/v2.py), with no plan to read."""
        data = decompress(body, self.max_decoded_bytes)
        if protocol is WireProtocol.V2:
            return decode_v2_request(data, self.max_decoded_bytes)
        return data

    def ingest_steps(self, prepared: object, now_ms: int) -> IngestSteps:
        """One step: the reference plans and applies a request as a whole."""
        if isinstance(prepared, DecodedRequest):
            request = prepared
            return one_step(lambda: self.apply(request, now_ms))
        if not isinstance(prepared, bytes):
            raise TypeError("ingest_steps takes what prepare returned")
        return one_step(
            lambda: self.apply(decode_write_request(prepared, self.known_label_bytes), now_ms)
        )

    def apply(self, request: DecodedRequest, now_ms: int) -> IngestResult:
        """Apply every sample of ``request`` to every view it belongs to.

        Every series is resolved before any sample is applied, so a DecodeError for invalid
        labels, or a LimitExceeded, leaves no sample of the rejected request applied.
        """
        series_list = request.series
        check_series_count(len(series_list), self.planner.limits)
        metadata = request.metadata + series_metadata(request.series_types)
        result = IngestResult(metadata=len(metadata))
        self.learn_types(metadata)
        plans = self._plans
        if len(plans) > MAX_CACHED_SERIES:
            self._forget_plans()
        resolved = []
        max_inputs = self.planner.limits.max_input_series
        for raw in series_list:
            plan = plans.get(raw.label_bytes)
            if plan is None:
                if max_inputs and len(plans) >= max_inputs and not self._held(raw.label_bytes):
                    # Checked before anything else, so an explosion over the limit costs one
                    # lookup per series: its labels are not even decoded.
                    plan = REFUSED_PLAN
                else:
                    plan = self._plan(raw.label_bytes)
            resolved.append(plan)
        aggregators = [view.aggregator for view in self.views]
        before = [(a.late_samples, a.out_of_order_samples) for a in aggregators]
        for aggregator in aggregators:
            aggregator.watermark_limit_ms = now_ms
        rules = self.planner.rules
        lookups = [0] * (3 * len(rules))
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
            if plan.limited_views:
                for index in plan.limited_views:
                    result.view_dropped[self.views[index].name, DROP_INPUT_SERIES_LIMIT] += len(
                        raw_samples
                    )
            inputs = plan.inputs
            if not inputs:
                dropped[plan.drop_reason] += len(raw_samples)
                continue
            counter = inputs[0].is_counter
            for timestamp_ms, value in raw_samples:
                if timestamp_ms > future_limit:
                    dropped[DROP_FUTURE] += 1
                elif value == value:
                    if counter and abs(value) == INFINITY:
                        dropped[DROP_INFINITE_COUNTER] += 1
                        continue
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
                result.lookups[rules[slot // 3].name, Lookup(slot % 3)] = count
        for view, aggregator, (late, out_of_order) in zip(
            self.views, aggregators, before, strict=True
        ):
            if aggregator.late_samples != late:
                result.view_dropped[view.name, "late"] = aggregator.late_samples - late
            if aggregator.out_of_order_samples != out_of_order:
                result.view_dropped[view.name, "out_of_order"] = (
                    aggregator.out_of_order_samples - out_of_order
                )
        return result

    def _held(self, label_bytes: bytes) -> bool:
        """Some view tracks this series already (its plan was forgotten, its input was not):
        planning it again makes nothing new, so no input limit refuses it."""
        return any(label_bytes in view.aggregator.inputs for view in self.views)

    def _plan(self, label_bytes: bytes) -> SeriesPlan:
        """Work out what the series' samples do, and cache it; a series every view it belongs
        to refused for its ``max_input_series`` is not cached (the cache must not grow with an
        explosion), so it is worked out again when it comes back."""
        planner = self.planner
        labels = decode_labels(label_bytes)
        if planner.limits.checks_labels:
            # Before anything is cached: a refused series is checked again when it comes back.
            check_labels(labels, planner.limits)
        enriched = planner.enrich(labels)
        slots = tuple(index * 3 + step.lookup for index, step in enumerate(enriched.steps))
        keys = tuple(
            (index, step.key) for index, step in enumerate(enriched.steps) if step.key is not None
        )
        if enriched.labels is None:
            plan = SeriesPlan(slots, (), DROP_METADATA_MISSING, 0, keys)
            return self._remember(label_bytes, plan)
        metric_name = dict(enriched.labels).get(METRIC_NAME_LABEL)
        if not metric_name:
            return self._remember(label_bytes, SeriesPlan(slots, (), DROP_NO_METRIC_NAME, 0, keys))
        is_counter = planner.types.is_counter(metric_name)
        inputs: list[InputSeries] = []
        skips: list[Skip] = []
        capped: list[int] = []
        limited: list[int] = []
        for index, view in enumerate(self.views):
            projected = view.plan.view.project(enriched.labels)
            aggregator = view.aggregator
            if isinstance(projected, Skip):
                skips.append(projected)
            elif not aggregator.admits_input(label_bytes, view.plan.max_input_series):
                limited.append(index)
            elif not aggregator.admits(projected, view.plan.max_series):
                capped.append(index)
            else:
                inputs.append(aggregator.attach(label_bytes, projected, is_counter))
        drop_reason = ""
        if not inputs:
            unsummable = Skip.UNSUMMABLE in skips
            drop_reason = Skip.UNSUMMABLE.value if unsummable else DROP_IN_NO_VIEW
            if capped:
                drop_reason = DROP_CARDINALITY_LIMIT
            if limited:
                drop_reason = DROP_INPUT_SERIES_LIMIT
        plan = SeriesPlan(
            slots,
            tuple(inputs),
            drop_reason,
            enriched.conflicts,
            keys,
            tuple(capped),
            tuple(limited),
        )
        if limited and not inputs:
            return plan
        if capped:
            self._capped.add(label_bytes)
        return self._remember(label_bytes, plan)

    def _remember(self, label_bytes: bytes, plan: SeriesPlan) -> SeriesPlan:
        for dependency in plan.dependencies:
            self._dependents.setdefault(dependency, set()).add(label_bytes)
        self._plans[label_bytes] = plan
        return plan

    # --- output ---------------------------------------------------------------------------------

    def flush_steps(self, now_ms: int, final: bool = False) -> FlushSteps:
        """The reference flushes in one step."""
        return one_step(lambda: self.flush(now_ms, final))

    def flush(self, now_ms: int, final: bool = False) -> list[ViewOutput]:
        """Close complete windows (all of them with ``final``) and return their samples."""
        outputs = []
        forgotten = groups_forgotten = 0
        for view in self.views:
            aggregator = view.aggregator
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
        rules that are unchanged (Planner.adopt); the series cache starts over, since what it
        decided may no longer hold.

        The views moved over are shared: this pipeline must not be used afterwards.
        """
        successor = Pipeline(config)
        successor.planner.adopt(self.planner)
        wanted = {view.name: position for position, view in enumerate(successor.views)}
        views = list(successor.views)
        result = Reconfiguration(successor)
        for view in self.views:
            aggregator = view.aggregator
            position = wanted.pop(view.name, None)
            if position is None:
                result.removed.append(view.name)
                result.outputs.append(ViewOutput(view.name, aggregator.flush(now_ms, final=True)))
                continue
            fresh = views[position]
            if fresh.plan.continues(view.plan):
                views[position] = AggregatedView(fresh.plan, aggregator)
                result.kept.append(view.name)
                continue
            result.restarted.append(view.name)
            result.outputs.append(ViewOutput(view.name, aggregator.flush(now_ms, final=True)))
            # Windows count from the epoch, so a real one is positive; before its first
            # emission closed_window is a large negative sentinel with nothing to protect.
            if aggregator.closed_window > 0:
                fresh.aggregator.mark_emitted_through(
                    aggregator.closed_window * aggregator.interval_ms
                )
        result.added.extend(wanted)
        successor.views = tuple(views)
        return result

    # --- state that survives restarts ------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """Every view's aggregation state, keyed by view name (see aggregation_state), with
        the view's definition: a view whose labels or selector changed must not continue."""
        return {
            view.name: {
                **export_state(view.aggregator),
                "definition": view_definition(view.plan.view),
            }
            for view in self.views
        }

    def emitted_through_ms(self) -> dict[str, int]:
        """Per view that emitted anything, the end (ms) of the last window it emitted: in
        milliseconds, so it stays right when the view's interval changes."""
        return {
            view.name: view.aggregator.closed_window * view.aggregator.interval_ms
            for view in self.views
            if view.aggregator.closed_window > 0  # windows count from the epoch: real ones are > 0
        }

    def mark_emitted_through(self, emitted: dict[str, int]) -> None:
        for view in self.views:
            if view.name in emitted:
                view.aggregator.mark_emitted_through(emitted[view.name])

    def restore_state(self, states: dict[str, Any]) -> dict[str, str]:
        """Load saved view states into this fresh pipeline; returns view → why it was not.

        A view that is new, or whose interval changed, starts empty; the others continue.
        """
        skipped: dict[str, str] = {}
        for view in self.views:
            state = states.get(view.name)
            if state is None:
                skipped[view.name] = "no saved state"
                continue
            definition = view_definition(view.plan.view)
            if state.get("definition", definition) != definition:
                skipped[view.name] = "its keep labels or match selector changed"
                continue
            try:
                restore_state(view.aggregator, state)
            except StateMismatch as exc:
                skipped[view.name] = str(exc)
        self._forget_plans()
        return skipped

    # --- what the server shows ------------------------------------------------------------------

    def stats(self) -> EngineStats:
        return EngineStats(
            cached_series=self.cached_series,
            views=tuple(
                ViewStats(
                    name=view.name,
                    output_series=len(view.aggregator.groups),
                    inputs=len(view.aggregator.inputs),
                    open_windows=view.aggregator.open_windows,
                    max_timestamp_ms=view.aggregator.max_timestamp_ms,
                )
                for view in self.views
            ),
        )

    def received(self, input_key: bytes) -> bool:
        # The plan cache knows every series received since it last started over (after a type
        # change, say); an input the aggregators still hold was received before that.
        return input_key in self._plans or any(
            input_key in view.aggregator.inputs for view in self.views
        )

    def view_group(self, view_index: int, output_labels: Labels) -> GroupState | None:
        group = self.views[view_index].aggregator.groups.get(output_labels)
        return None if group is None else _group_state(group)

    def view_input(self, view_index: int, input_key: bytes) -> InputState | None:
        series = self.views[view_index].aggregator.inputs.get(input_key)
        if series is None:
            return None
        return InputState(feeds=series.group.labels, contribution=series.contribution())


def view_definition(view: View) -> dict[str, Any]:
    """What a view's output series depend on, besides the aggregation settings."""
    return {
        "keep": sorted(view.keep),
        "match": view.match.text if view.match is not None else None,
    }


def _group_state(group: OutputGroup) -> GroupState:
    inputs = list(group.inputs.values())
    # An input that moved away keeps its counted total here until its last window is emitted.
    parts = [group.retired, *(s.contribution() for s in inputs)]
    parts.extend(s.contribution() for s in group.departed)
    return GroupState(
        labels=group.labels,
        value=exact_sum(parts),
        inputs=len(inputs),
        live_inputs=sum(1 for s in inputs if s.live),
        retired=group.retired,
    )
