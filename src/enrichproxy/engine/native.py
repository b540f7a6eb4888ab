"""The native engine: the Python reference engine's behaviour, with its hot path in C.

The C extension (``enrichproxy.engine._native``, sources in ``_native_src/``) holds the series
table, the per-series plans and every view's aggregation state in arrays of structs, and runs
decode → lookup → observe → flush without a Python object per series or per sample. What stays
here is the cold path, shared with the reference through the Planner: the first sight of a
series (label decoding, joins, projection, the counter/gauge decision) and everything that is
rare (metadata and type changes, export/restore of state, reconfiguration, explain).

A plan is registered with the core in three parts: a *kind* (lookup slots, label conflicts, drop
reason, capped views; shared by many series, so registered once), the views it feeds (the
inputs the core attached), and the metadata keys it depends on (as small integers, so that a
table change forgets only the plans that looked up a changed key).

Most first sights never reach Python one by one: the planner's decisions depend only on the
values of a few *signature* labels (the metric name, the join's keys and fields, the labels the
views' selectors test), so the planner works out one series per distinct signature and hands
the core a *template* (plan.h); the core plans every other series of that signature itself,
passing the labels no decision looks at straight into the views that keep them.

The tests run the whole suite against both engines and compare them sample for sample
(tests/test_engine_differential.py); where they could differ, this module copies the reference
line by line and says so.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from enrichproxy.config.schema import Config
from enrichproxy.engine import _native
from enrichproxy.engine.aggregation import EXPIRY_SWEEP_MS
from enrichproxy.engine.aggregation_state import STATE_FORMAT, StateMismatch
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
    run_steps,
)
from enrichproxy.engine.limits import check_labels, check_series_count
from enrichproxy.engine.metric_types import series_metadata
from enrichproxy.engine.pipeline import (
    DROP_CARDINALITY_LIMIT,
    DROP_FUTURE,
    DROP_IN_NO_VIEW,
    DROP_INFINITE_COUNTER,
    DROP_INPUT_SERIES_LIMIT,
    DROP_METADATA_MISSING,
    DROP_NAN,
    DROP_NATIVE_HISTOGRAM,
    DROP_NO_METRIC_NAME,
    MAX_CACHED_SERIES,
    MAX_FUTURE_MS,
    view_definition,
)
from enrichproxy.engine.planner import Planner
from enrichproxy.engine.views import QUANTILE_LABEL, Skip
from enrichproxy.errors import DecodeError
from enrichproxy.metadata.table import Key, MetadataTable
from enrichproxy.model import (
    METRIC_NAME_LABEL,
    VIEW_LABEL,
    Labels,
    MetricMetadata,
    MetricType,
    OutputSample,
)
from enrichproxy.wire.codec import (
    DEFAULT_MAX_DECODED_BYTES,
    DecodedRequest,
    decode_labels,
    decode_metadata,
    decompress_buffer,
    encode_write_request,
)
from enrichproxy.wire.v2 import TypeOf, WireProtocol, encode_v2_samples

# Numbered as the core counts them (core.c's DROP_* constants).
DROP_REASONS = (
    DROP_METADATA_MISSING,
    DROP_NO_METRIC_NAME,
    DROP_IN_NO_VIEW,
    DROP_FUTURE,
    DROP_NAN,
    DROP_NATIVE_HISTOGRAM,
    Skip.UNSUMMABLE.value,
    DROP_CARDINALITY_LIMIT,
    DROP_INFINITE_COUNTER,
    DROP_INPUT_SERIES_LIMIT,
)
_REASON_NUMBER = {reason: number for number, reason in enumerate(DROP_REASONS)}
NO_DEPENDENCY = -1
# core.plan's requests to the planner.
MAKE_TEMPLATES = 1
PLAN_ONE = 2
GO_ON = 3
# The work of one step of ingest_steps (a few milliseconds each).
PLAN_SERIES_PER_STEP = 8_192
APPLY_SERIES_PER_STEP = 8_192
PYTHON_PLANS_PER_STEP = 128
MAX_TEMPLATES = 1_000_000
TEMPLATE_SLACK = 10_000
DEPENDENCY_SLACK = 100_000
"""Numbered metadata keys kept beyond two per cached series and rule before the cache starts
over (which renumbers them): keys numbered for templates of series that were then refused (a
view's ``max_input_series``) belong to no plan, and must not pile up either."""
"""Templates kept beyond twice the cached series before they are all dropped: templates made for
series a view's ``max_input_series`` refused serve no cached series, and must not pile up."""
"""Templates kept before they are all dropped (each is one distinct signature: when there are
this many, signatures are hardly shared and templates only cost memory)."""

# One key per process: nobody outside can predict which label sets collide in the tables.
_native.seed(os.urandom(16))

KindKey = tuple[tuple[int, ...], int, int, int, int]


class Enrichment(NamedTuple):
    """The join's part of a template: what the rules made of the labels they read."""

    labels: Labels | None
    """The joined labels among those the rules read and write; None when dropped."""
    slots: tuple[int, ...]
    conflicts: int
    dependencies: list[int]


class Projection(NamedTuple):
    """The views' part of a template."""

    drop_reason: str
    feeds: int
    is_counter: bool
    fixed: list[bytes]
    """Per view, its encoded signature labels (empty when it is not fed)."""


FLUSH_STEP_INPUTS = 16_384
"""Inputs a flush step settles at most: a few milliseconds of work, however many series."""


@dataclass
class _FlushUnderWay:
    """A flush between its steps: what it has made so far, and how far it got."""

    samples: list[list[OutputSample]]
    """Per view, the samples of the steps done."""
    begun: int = 0
    """Views whose flush has begun (the first ones)."""
    stepped: int = 0
    """Views whose every step is done (the first ones)."""


class NativeEngine:
    """The Engine interface over the C core; see the module docstring."""

    name = "native"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.planner = Planner(config)
        self._core = _native.Core(
            [
                (s.interval_ms, s.lateness_ms, s.stale_after_ms, s.retention_ms, s.idle_flush_ms)
                for s in (view.settings for view in self.planner.views)
            ],
            len(self.planner.rules),
            EXPIRY_SWEEP_MS,
        )
        self._kinds: dict[KindKey, int] = {}
        # (rule index, key) → the small integer the core stores per plan for that lookup.
        self._dependencies: dict[tuple[int, Key], int] = {}
        self._signature = signature_names(self.planner)
        self._enrich_names = frozenset(
            name for rule in self.planner.rules for name in (*rule.key_labels, *rule.fields)
        )
        self._no_views = [b""] * len(self.planner.views)
        self._flush_under_way: _FlushUnderWay | None = None
        self.flush_step_inputs = FLUSH_STEP_INPUTS
        """Inputs a flush step settles at most (tests make it tiny, to step often)."""
        # The two halves of a template, memoised while the templates last (_template).
        self._enrichments: dict[Labels, Enrichment] = {}
        self._projections: dict[Labels, Projection] = {}
        self._configure_templates()

    def _configure_templates(self) -> None:
        """Tell the core the signature labels, what each view keeps, its cap and the limits
        (again whenever the planner's limits are replaced)."""
        planner = self.planner
        limits = self._limits = planner.limits
        # A template per signature: with new join keys (a pod per series) one per series, so
        # they are bounded as the series are.
        self._max_templates = min(MAX_TEMPLATES, limits.max_input_series or MAX_TEMPLATES)
        self._core.configure_templates(
            [name.encode() for name in sorted(self._signature)],
            [sorted(name.encode() for name in view.view.keep) for view in planner.views],
            [view.max_series for view in planner.views],
            limits.max_labels_per_series,
            limits.max_label_name_length,
            limits.max_label_value_length,
        )
        self._core.configure_input_limits(
            limits.max_input_series, [view.max_input_series for view in planner.views]
        )

    # --- inputs to the cached decisions ---------------------------------------------------------

    def set_table(self, table: MetadataTable, rule_index: int = 0) -> bool:
        """As the reference: only the series that looked up a changed key are planned again."""
        changed = self.planner.set_table(table, rule_index)
        if not changed:
            return False
        if len(changed) > self._core.cached_series // 2:
            self._forget_plans()
            return True
        dependencies = self._dependencies
        numbers = [
            number for key in changed if (number := dependencies.get((rule_index, key))) is not None
        ]
        # A changed key can change any template that looked it up, or that missed it.
        self._clear_templates()
        if numbers:
            self._core.forget_plans_with(rule_index, numbers)
        return True

    def _forget_plans(self) -> None:
        self._core.forget_plans()
        self._clear_templates()
        self._dependencies.clear()

    def learn_types(self, metadata: list[MetricMetadata]) -> None:
        if metadata and self.planner.types.update(metadata):
            self._forget_plans()

    # --- the hot path ---------------------------------------------------------------------------

    def ingest(
        self, body: bytes, now_ms: int, protocol: WireProtocol = WireProtocol.V1
    ) -> IngestResult:
        """Apply every sample of the request ``body`` (snappy, as received) to every view.

        As in the reference, every series is planned before any sample is applied, so a
        DecodeError or LimitExceeded leaves no sample of the refused request applied.
        """
        return run_steps(self.ingest_steps(self.prepare(body, protocol), now_ms))

    def encode_output(self, samples: Sequence[OutputSample]) -> bytes:
        """codec.encode_samples, in C."""
        return _native.encode_samples(samples)

    def encode_output_v2(self, samples: Sequence[OutputSample], type_of: TypeOf) -> bytes:
        """wire.v2.encode_v2_samples, in C for label bytes in the plain form (all of the
        engine's output)."""
        encoded = _native.encode_samples_v2(samples, type_of)
        return encode_v2_samples(samples, type_of) if encoded is None else encoded

    def prepare(self, body: bytes, protocol: WireProtocol = WireProtocol.V1) -> _native.Request:
        """Decompressed and scanned into the core's flat arrays (no engine state is read); a
        2.0 request's labels are written out there in 1.0's form (wire.c, wire/v2.py)."""
        return self._scan(decompress_buffer(body, self.config.max_decoded_bytes), protocol)

    def _scan(
        self, data: bytes | memoryview, protocol: WireProtocol = WireProtocol.V1
    ) -> _native.Request:
        try:
            if protocol is WireProtocol.V2:
                return self._core.scan_v2(data, self.config.max_decoded_bytes)
            return self._core.scan(data)
        except _native.WireError as exc:
            raise DecodeError(str(exc)) from None

    def apply(self, request: DecodedRequest, now_ms: int) -> IngestResult:
        """An already decoded request, as the reference's ``Pipeline.apply`` takes it (tests
        and tools): encoded again and ingested."""
        series = [(raw.label_bytes, raw.samples) for raw in request.series]
        data = encode_write_request(
            series, request.metadata + series_metadata(request.series_types)
        )
        result = run_steps(self.ingest_steps(self._scan(data), now_ms))
        # Counted by the decoder only: the encoding above carries no histogram or exemplar.
        if request.histograms:
            result.dropped[DROP_NATIVE_HISTOGRAM] += request.histograms
        result.exemplars_skipped += request.exemplars
        return result

    @property
    def cached_series(self) -> int:
        """Distinct input series whose plan is cached."""
        return self._core.cached_series

    def ingest_steps(self, prepared: object, now_ms: int) -> IngestSteps:
        """Plan, then apply, a few thousand series per step (see Engine.ingest_steps).

        A plan forgotten between two steps (a table or metric type changed) is made again
        before the rest is applied; series already applied are not applied again.
        """
        if not isinstance(prepared, _native.Request):
            raise TypeError("ingest_steps takes what prepare returned")
        request = prepared
        core = self._core
        data = memoryview(request.buffer)
        metadata = [
            decode_metadata(bytes(data[start:stop]), 0, stop - start)
            for start, stop in request.metadata()
        ]
        metadata += series_metadata(
            (name.decode("utf-8", "replace"), MetricType(number))
            for name, number in request.series_types()
        )
        check_series_count(request.series_count, self.planner.limits)
        self.learn_types(metadata)
        if core.cached_series > MAX_CACHED_SERIES or len(self._dependencies) > (
            2 * len(self.planner.rules) * core.cached_series + DEPENDENCY_SLACK
        ):
            self._forget_plans()
        if core.templates > min(self._max_templates, 2 * core.cached_series + TEMPLATE_SLACK):
            self._clear_templates()
        if self.planner.limits is not self._limits:
            self._configure_templates()
        future_limit = now_ms + MAX_FUTURE_MS
        total: list[Any] | None = None
        start = 0
        count = request.series_count
        while True:
            python_plans = 0
            while (step := core.plan(request, PLAN_SERIES_PER_STEP)) is not None:
                what, payload = step
                if what == MAKE_TEMPLATES:
                    for label_bytes in payload:
                        self._template(label_bytes)
                        python_plans += 1
                        if python_plans % PYTHON_PLANS_PER_STEP == 0:
                            yield
                elif what == PLAN_ONE:
                    self._plan(payload, request)
                    python_plans += 1
                    if python_plans % PYTHON_PLANS_PER_STEP == 0:
                        yield
                else:
                    yield
            while True:
                stop = min(count, start + APPLY_SERIES_PER_STEP)
                core.set_watermark_limit(now_ms)  # per slice: other requests set their own
                applied = core.apply(request, future_limit, start, stop)
                if applied is None:
                    break  # plans were forgotten since: plan the rest again
                total = list(applied) if total is None else _add_tallies(total, applied)
                start = stop
                if start >= count:
                    return self._result(total, len(metadata), request)
                yield

    def _result(self, applied: Any, metadata: int, request: Any) -> IngestResult:
        samples, conflicts, lookups, dropped, dropped_seen, capped, capped_seen, late, ooo = (
            applied[:9]
        )
        limited, limited_seen = applied[9:]
        result = IngestResult(
            series=request.series_count,
            samples=samples,
            metadata=metadata,
            label_conflicts=conflicts,
            exemplars_skipped=request.exemplars,
        )
        for number, count in enumerate(dropped):
            if dropped_seen >> number & 1:
                result.dropped[DROP_REASONS[number]] += count
        if request.histograms:
            result.dropped[DROP_NATIVE_HISTOGRAM] += request.histograms
        rules = self.planner.rules
        for slot, count in enumerate(lookups):
            if count:
                result.lookups[rules[slot // 3].name, Lookup(slot % 3)] = count
        views = self.planner.views
        for index, view in enumerate(views):
            if capped_seen >> index & 1:
                result.view_dropped[view.name, DROP_CARDINALITY_LIMIT] += capped[index]
            if limited_seen >> index & 1:
                result.view_dropped[view.name, DROP_INPUT_SERIES_LIMIT] += limited[index]
        for index, view in enumerate(views):
            if late[index]:
                result.view_dropped[view.name, "late"] = late[index]
            if ooo[index]:
                result.view_dropped[view.name, "out_of_order"] = ooo[index]
        return result

    def _plan(self, label_bytes: bytes, request: _native.Request) -> None:
        """The reference's Pipeline._plan, registering the result with the core (or, for a
        series every view it belongs to refused for its ``max_input_series``, telling the core
        to count it for ``request`` without caching it)."""
        planner = self.planner
        core = self._core
        labels = fast_decode_labels(label_bytes)
        if planner.limits.checks_labels:
            check_labels(labels, planner.limits)
        enriched = planner.enrich(labels)
        slots = tuple(index * 3 + step.lookup for index, step in enumerate(enriched.steps))
        if enriched.labels is None:
            kind = self._kind(slots, 0, DROP_METADATA_MISSING, 0)
            core.set_plan(label_bytes, kind, 0, self._dependency_numbers(enriched.steps))
            return
        metric_name = dict(enriched.labels).get(METRIC_NAME_LABEL)
        if not metric_name:
            kind = self._kind(slots, 0, DROP_NO_METRIC_NAME, 0)
            core.set_plan(label_bytes, kind, 0, self._dependency_numbers(enriched.steps))
            return
        is_counter = planner.types.is_counter(metric_name)
        feeds = capped = limited = 0
        unsummable = False
        for index, view in enumerate(planner.views):
            projected = view.view.project(enriched.labels)
            if isinstance(projected, Skip):
                unsummable = unsummable or projected is Skip.UNSUMMABLE
                continue
            if not core.admits_input(index, label_bytes):
                limited |= 1 << index
                continue
            output = fast_encode_labels(projected)
            if not core.admits(index, output, view.max_series):
                capped |= 1 << index
                continue
            core.attach(index, label_bytes, output, is_counter)
            feeds |= 1 << index
        drop_reason = ""
        if not feeds:
            drop_reason = Skip.UNSUMMABLE.value if unsummable else DROP_IN_NO_VIEW
            if capped:
                drop_reason = DROP_CARDINALITY_LIMIT
            if limited:
                drop_reason = DROP_INPUT_SERIES_LIMIT
        kind = self._kind(slots, enriched.conflicts, drop_reason, capped, limited)
        if limited and not feeds:
            # Not cached: nothing of it is kept, its keys' numbers included.
            core.refuse(request, kind)
            return
        core.set_plan(label_bytes, kind, feeds, self._dependency_numbers(enriched.steps))

    def _template(self, label_bytes: bytes) -> None:
        """The decisions for every series with the signature of ``label_bytes`` (which the core
        found in the plain form and within the limits), as ``_plan`` makes them for one series:
        each fed view's labels that are signature labels; the core adds the rest per series.

        Worked out in two memoised halves, since signatures multiply (pods times metric names)
        while each half repeats: the join depends only on the labels the rules read and write
        (``_enrichments``), the views only on the signature labels after the join
        (``_projections``).
        """
        labels = fast_decode_labels(label_bytes)
        joined = self._enrich_names
        join_input = tuple(pair for pair in labels if pair[0] in joined)
        enrichment = self._enrichments.get(join_input)
        if enrichment is None:
            enriched = self.planner.enrich(join_input)
            enrichment = self._enrichments[join_input] = Enrichment(
                enriched.labels,
                tuple(index * 3 + step.lookup for index, step in enumerate(enriched.steps)),
                enriched.conflicts,
                self._dependency_numbers(enriched.steps),
            )
        slots, dependencies = enrichment.slots, enrichment.dependencies
        if enrichment.labels is None:
            kind = self._kind(slots, 0, DROP_METADATA_MISSING, 0)
            self._core.add_template(label_bytes, kind, 0, False, dependencies, self._no_views)
            return
        signature = self._signature
        view_input = tuple(
            sorted(
                [pair for pair in labels if pair[0] in signature and pair[0] not in joined]
                + list(enrichment.labels)
            )
        )
        projection = self._projections.get(view_input)
        if projection is None:
            projection = self._projections[view_input] = self._project(view_input)
        if projection.drop_reason == DROP_NO_METRIC_NAME:
            kind = self._kind(slots, 0, DROP_NO_METRIC_NAME, 0)
        else:
            kind = self._kind(slots, enrichment.conflicts, projection.drop_reason, 0)
        self._core.add_template(
            label_bytes,
            kind,
            projection.feeds,
            projection.is_counter,
            dependencies,
            projection.fixed,
        )

    def _project(self, view_input: Labels) -> Projection:
        """The views' part of a template, for the signature labels ``view_input`` of a joined
        series (as ``_plan`` decides it for the whole label set)."""
        planner = self.planner
        metric_name = dict(view_input).get(METRIC_NAME_LABEL)
        if not metric_name:
            return Projection(DROP_NO_METRIC_NAME, 0, False, self._no_views)
        fixed = []
        feeds = 0
        unsummable = False
        for index, view in enumerate(planner.views):
            projected = view.view.project(view_input)
            if isinstance(projected, Skip):
                unsummable = unsummable or projected is Skip.UNSUMMABLE
                fixed.append(b"")
                continue
            fixed.append(fast_encode_labels(projected))
            feeds |= 1 << index
        drop_reason = ""
        if not feeds:
            drop_reason = Skip.UNSUMMABLE.value if unsummable else DROP_IN_NO_VIEW
        return Projection(drop_reason, feeds, planner.types.is_counter(metric_name), fixed)

    def _clear_templates(self) -> None:
        self._core.clear_templates()
        self._enrichments.clear()
        self._projections.clear()

    def _dependency_numbers(self, steps: Any) -> list[int]:
        dependencies = [NO_DEPENDENCY] * len(self.planner.rules)
        for index, step in enumerate(steps):
            if step.key is not None:
                dependencies[index] = self._dependencies.setdefault(
                    (index, step.key), len(self._dependencies)
                )
        return dependencies

    def _kind(
        self,
        slots: tuple[int, ...],
        conflicts: int,
        drop_reason: str,
        capped: int,
        limited: int = 0,
    ) -> int:
        # A plan that feeds a view has no drop reason; the core never reads it then.
        key = (slots, conflicts, _REASON_NUMBER.get(drop_reason, 0), capped, limited)
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = self._core.add_kind(*key)
        return kind

    # --- output ---------------------------------------------------------------------------------

    def flush(self, now_ms: int, final: bool = False) -> list[ViewOutput]:
        """Close complete windows (all of them with ``final``) and return their samples."""
        return run_steps(self.flush_steps(now_ms, final))

    def flush_steps(self, now_ms: int, final: bool = False) -> FlushSteps:
        """The first step decides, for every view, which windows close (the core's
        flush_begin; it sweeps the inputs too, so plans of forgotten inputs go here, before
        any ingest can use them); each later step settles up to FLUSH_STEP_INPUTS inputs."""
        core = self._core
        views = self.planner.views
        samples = self._finish_flush()
        under_way = self._flush_under_way = _FlushUnderWay(samples)
        forgotten = groups_forgotten = 0
        for index in range(len(views)):
            before = core.view_stats(index)
            core.flush_begin(index, now_ms, final)
            under_way.begun = index + 1
            after = core.view_stats(index)
            forgotten += after[7] - before[7]
            groups_forgotten += after[8] - before[8]
        if forgotten:
            self._forget_plans()
        elif groups_forgotten:
            core.forget_capped()
        for index in range(len(views)):
            while True:
                yield
                done, chunk = core.flush_step(index, self.flush_step_inputs, OutputSample)
                samples[index].extend(chunk)
                if done:
                    break
            under_way.stepped = index + 1
        self._flush_under_way = None
        return [ViewOutput(view.name, samples[index]) for index, view in enumerate(views)]

    def _finish_flush(self) -> list[list[OutputSample]]:
        """The samples of a flush whose steps were left unfinished, its remaining steps done
        now (or, with none, a list per view to start from)."""
        under_way = self._flush_under_way
        if under_way is None:
            return [[] for _ in self.planner.views]
        self._flush_under_way = None
        for index in range(under_way.stepped, under_way.begun):
            _, chunk = self._core.flush_step(index, 0, OutputSample)
            under_way.samples[index].extend(chunk)
        return under_way.samples

    # --- a new configuration (reload) ---------------------------------------------------------

    def reconfigure(self, config: Config, now_ms: int) -> Reconfiguration:
        """As the reference's: unchanged views move over with their whole state."""
        successor = NativeEngine(config)
        successor.planner.adopt(self.planner)
        wanted = {view.name: position for position, view in enumerate(successor.planner.views)}
        result = Reconfiguration(successor)
        for index, view in enumerate(self.planner.views):
            position = wanted.pop(view.name, None)
            if position is None:
                result.removed.append(view.name)
                result.outputs.append(ViewOutput(view.name, self._flush_view(index, now_ms)))
                continue
            if successor.planner.views[position].continues(view):
                successor._core.adopt_view(position, self._core, index)
                result.kept.append(view.name)
                continue
            result.restarted.append(view.name)
            result.outputs.append(ViewOutput(view.name, self._flush_view(index, now_ms)))
            closed_window = self._core.view_stats(index)[4]
            if closed_window > 0:  # windows count from the epoch: real ones are > 0
                successor._core.mark_emitted_through(
                    position, closed_window * view.settings.interval_ms
                )
        result.added.extend(wanted)
        return result

    def _flush_view(self, index: int, now_ms: int) -> list[OutputSample]:
        return self._core.flush(index, now_ms, True, OutputSample)

    # --- state that survives restarts ------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The reference's format (aggregation_state), byte for byte once serialised."""
        states = {}
        for index, view in enumerate(self.planner.views):
            closed_window, max_timestamp_ms, groups = self._core.export_view(index)
            states[view.name] = {
                "format": STATE_FORMAT,
                "interval_ms": view.settings.interval_ms,
                "closed_window": closed_window,
                "max_timestamp_ms": max_timestamp_ms,
                "groups": [
                    {
                        "labels": [list(pair) for pair in fast_decode_labels(label_bytes)],
                        "retired": retired,
                        "emitted_live": emitted_live,
                        "open_windows": open_windows,
                        "inputs": [
                            [base64.b64encode(key).decode(), state] for key, state in inputs
                        ],
                        "departed": departed,
                    }
                    for label_bytes, retired, emitted_live, open_windows, inputs, departed in groups
                ],
                "definition": view_definition(view.view),
            }
        return states

    def emitted_through_ms(self) -> dict[str, int]:
        emitted = {}
        for index, view in enumerate(self.planner.views):
            closed_window = self._core.view_stats(index)[4]
            if closed_window > 0:
                emitted[view.name] = closed_window * view.settings.interval_ms
        return emitted

    def mark_emitted_through(self, emitted: dict[str, int]) -> None:
        for index, view in enumerate(self.planner.views):
            if view.name in emitted:
                self._core.mark_emitted_through(index, emitted[view.name])

    def restore_state(self, states: dict[str, Any]) -> dict[str, str]:
        """As the reference's Pipeline.restore_state; view → why it starts empty."""
        skipped: dict[str, str] = {}
        for index, view in enumerate(self.planner.views):
            state = states.get(view.name)
            if state is None:
                skipped[view.name] = "no saved state"
                continue
            definition = view_definition(view.view)
            if state.get("definition", definition) != definition:
                skipped[view.name] = "its keep labels or match selector changed"
                continue
            try:
                self._restore_view(index, state)
            except StateMismatch as exc:
                skipped[view.name] = str(exc)
        self._forget_plans()
        return skipped

    def _restore_view(self, index: int, state: dict[str, Any]) -> None:
        """The reference's aggregation_state.restore_state, step for step."""
        if state.get("format") != STATE_FORMAT:
            raise StateMismatch(f"unknown aggregation state format {state.get('format')!r}")
        interval_ms = self.planner.views[index].settings.interval_ms
        if state["interval_ms"] != interval_ms:
            raise StateMismatch(
                f"saved with interval {state['interval_ms']} ms, now {interval_ms} ms"
            )
        core = self._core
        core.restore_view(index, int(state["closed_window"]), int(state["max_timestamp_ms"]))
        departed_ids: list[list[int]] = []
        predecessors: list[tuple[int, list[int]]] = []
        for saved in state["groups"]:
            labels = tuple((str(name), str(value)) for name, value in saved["labels"])
            label_bytes = fast_encode_labels(labels)
            group = core.restore_group(
                index,
                label_bytes,
                float(saved["retired"]),
                bool(saved["emitted_live"]),
                [int(window) for window in saved["open_windows"]],
            )
            for key_text, series_state in saved["inputs"]:
                key = base64.b64decode(key_text)
                series = self._restore_input(index, group, key, series_state)
                if series_state["predecessor"] is not None:
                    predecessors.append((series, series_state["predecessor"]))
            departed_ids.append(
                [self._restore_input(index, group, None, s) for s in saved["departed"]]
            )
        for series, (group_index, departed_index) in predecessors:
            core.restore_predecessor(index, series, departed_ids[group_index][departed_index])

    def _restore_input(self, index: int, group: int, key: bytes | None, state: Any) -> int:
        last_value = state["last_value"]
        return int(
            self._core.restore_input(
                index,
                group,
                key,
                bool(state["counter"]),
                int(state["last_seen_ms"]),
                None if last_value is None else float(last_value),
                float(state["offset"]),
                bool(state["live"]),
                [(int(w), float(c), bool(live)) for w, c, live in state["pending"]],
                float(state["closed"][0]),
                bool(state["closed"][1]),
            )
        )

    # --- what the server shows ----------------------------------------------------------------

    def stats(self) -> EngineStats:
        views = []
        for index, view in enumerate(self.planner.views):
            groups, inputs, open_windows, max_timestamp_ms, *_ = self._core.view_stats(index)
            views.append(ViewStats(view.name, groups, inputs, open_windows, max_timestamp_ms))
        return EngineStats(self._core.cached_series, tuple(views))

    def received(self, input_key: bytes) -> bool:
        return bool(self._core.received(input_key))

    def view_group(self, view_index: int, output: Labels) -> GroupState | None:
        found = self._core.group_state(view_index, fast_encode_labels(output))
        if found is None:
            return None
        value, inputs, live_inputs, retired = found
        return GroupState(output, value, inputs, live_inputs, retired)

    def view_input(self, view_index: int, input_key: bytes) -> InputState | None:
        found = self._core.input_state(view_index, input_key)
        if found is None:
            return None
        label_bytes, contribution = found
        return InputState(fast_decode_labels(label_bytes), contribution)


def _add_tallies(total: list[Any], more: tuple[Any, ...]) -> list[Any]:
    """Two of core.apply's tallies as one (counts add up, bit sets join)."""
    total[0] += more[0]  # samples
    total[1] += more[1]  # conflicts
    # lookups, dropped, capped, late, out_of_order, limited
    for index in (2, 3, 5, 7, 8, 9):
        total[index] = [a + b for a, b in zip(total[index], more[index], strict=True)]
    for index in (4, 6, 10):  # the bit sets: dropped_seen, capped_seen, limited_seen
        total[index] |= more[index]
    return total


def fast_decode_labels(label_bytes: bytes) -> Labels:
    """codec.decode_labels, in C for label bytes in the plain form (nearly all)."""
    decoded: Labels | None = _native.decode_labels(label_bytes)
    return decode_labels(label_bytes) if decoded is None else decoded


fast_encode_labels = _native.encode_labels


def signature_names(planner: Planner) -> frozenset[str]:
    """The labels the planner's decisions depend on (see the module docstring): two series
    that agree on these get the same decisions, and differ only in labels passed through."""
    names = {METRIC_NAME_LABEL, QUANTILE_LABEL, VIEW_LABEL}
    for rule in planner.rules:
        names.update(rule.key_labels)
        names.update(rule.fields)
    for view in planner.views:
        if view.view.match is not None:
            names.update(matcher.name for matcher in view.view.match.matchers)
    return frozenset(names)


def decode_write_request_natively(
    buf: bytes,
) -> tuple[list[tuple[bytes, list[tuple[int, float]]]], list[MetricMetadata], int, int]:
    """The C decoder's reading of ``buf`` as Python values, for the fuzzer and the tests:
    (series as (label bytes, samples), metadata, exemplars, histograms)."""
    try:
        request = _DECODER.scan(buf)
    except _native.WireError as exc:
        raise DecodeError(str(exc)) from None
    metadata = [decode_metadata(buf, start, stop) for start, stop in request.metadata()]
    return request.series(), metadata, request.exemplars, request.histograms


# A core with no views: only its decoder is used.
_DECODER = _native.Core((), 0, EXPIRY_SWEEP_MS)


def decode_v2_request_natively(
    buf: bytes, max_label_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> tuple[list[tuple[bytes, list[tuple[int, float]]]], list[tuple[bytes, int]], int, int]:
    """The C 2.0 decoder's reading of ``buf`` as Python values, for the fuzzer and the tests:
    (series as (label bytes, samples), series types as (name bytes, type), exemplars,
    histograms)."""
    try:
        request = _DECODER.scan_v2(buf, max_label_bytes)
    except _native.WireError as exc:
        raise DecodeError(str(exc)) from None
    return request.series(), request.series_types(), request.exemplars, request.histograms
