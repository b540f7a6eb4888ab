"""Streaming sums per output series, in windows of sample time.

A view maps many input series onto one output series (a group). For each group and window the
aggregator emits at most one sample, at the window's end, in increasing time order:

* counters: the reset-safe sum. Each input contributes ``offset + value``; a decrease is a reset,
  which adds the value before the reset to the offset, so the contribution never goes down. An
  input that ends keeps its contribution, so the output never goes down either. One input alone
  gives exactly its own value.
* gauges: the sum of the latest value of each live input.
* The staleness marker never enters a sum: it ends its input. When every input of a group has
  ended, the group emits a staleness marker.

Windows are ``(end - interval, end]`` in sample time. A window closes once the newest sample
time seen (the watermark) passes its end plus the lateness allowance and every input that still
sends has a sample at or past its end, or once no newer sample has arrived for ``idle_flush`` of
wall time. So what a window holds depends on the samples, not on how a sender batched them:
two replicas fed the same stream write the same output. A sample for a closed window is late:
it is counted and left out of that window; newer than its input's last sample, it still moves
the input from the next window on, so a counter loses nothing, also across a reset.

A view may cap its groups (``admits``, the cardinality guard): over the cap no new group is
made, and the input that asked is left out by the caller; existing groups keep every input.

Pure: callers pass ``now_ms`` and receive the output samples; nothing here sends or sleeps.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from enrichproxy.model import STALE_NAN, Labels, OutputSample

_NO_LIMIT = 2**63 - 1
_NEVER = -(1 << 63)
# Looking for inputs that ended or can be forgotten visits every input: do it this often (wall
# time) rather than at every flush. It only delays an end by up to this much.
EXPIRY_SWEEP_MS = 5_000


def exact_sum(parts: list[float]) -> float:
    """The correctly rounded sum (``math.fsum``), so that the order in which inputs are summed
    never shows in an output. Where fsum raises (an intermediate overflow, or +inf and -inf
    together) the output is the plain left-to-right sum instead (inf or NaN): a flush must not
    fail for one group's values. The native engine does exactly the same."""
    try:
        return math.fsum(parts)
    except (OverflowError, ValueError):
        total = 0.0
        for part in parts:
            total += part
        return total


class Observed(enum.IntEnum):
    """What became of one sample; everything but ACCEPTED is a drop reason."""

    ACCEPTED = 0
    LATE = 1
    """Its window was already emitted."""
    OUT_OF_ORDER = 2
    """Not newer than the input series' previous sample (a retried batch, or a bad sender)."""


@dataclass(frozen=True)
class AggregationSettings:
    interval_ms: int
    lateness_ms: int
    stale_after_ms: int
    retention_ms: int
    idle_flush_ms: int


class InputSeries:
    """One input series' part in one group of one view."""

    __slots__ = (
        "_agg",
        "closed_contribution",
        "closed_live",
        "group",
        "is_counter",
        "last_seen_ms",
        "last_value",
        "live",
        "offset",
        "pending",
        "predecessor",
    )

    def __init__(self, agg: ViewAggregator, group: OutputGroup, is_counter: bool) -> None:
        self._agg = agg
        self.group = group
        self.is_counter = is_counter
        self.last_seen_ms = _NEVER
        self.last_value: float | None = None
        self.offset = 0.0
        self.live = False
        # (window, contribution, live) after the last sample of each window not yet emitted.
        self.pending: list[tuple[int, float, bool]] = []
        self.closed_contribution = 0.0
        self.closed_live = False
        # Its state in the group it moved from, until its first sample here (see ``attach``).
        self.predecessor: InputSeries | None = None

    def contribution(self) -> float:
        """What this input adds to its group now (0 for a gauge that has ended)."""
        if self.last_value is None:
            return 0.0
        if self.is_counter:
            return self.offset + self.last_value
        return self.last_value if self.live else 0.0

    def observe(self, timestamp_ms: int, value: float) -> Observed:
        """Apply one sample. The caller has already routed staleness markers to ``end``.

        A late sample (its window was emitted) newer than the input's last one is still
        applied to the input, as of the first window not emitted yet (without making its group
        write that window): a counter reset after it must find the value before the reset, or
        what was counted up to it would be lost for good; and a replica that applies it again
        after a crash, when its window is already out, must go on from the same state as one
        that did not crash."""
        agg = self._agg
        window = -(-timestamp_ms // agg.interval_ms)
        observed = Observed.ACCEPTED
        if window <= agg.closed_window:
            agg.late_samples += 1
            if timestamp_ms <= self.last_seen_ms:
                return Observed.LATE
            window = agg.closed_window + 1
            observed = Observed.LATE
        elif timestamp_ms <= self.last_seen_ms:
            agg.out_of_order_samples += 1
            return Observed.OUT_OF_ORDER
        self.last_seen_ms = timestamp_ms
        if timestamp_ms > agg.max_timestamp_ms:
            agg.max_timestamp_ms = max(
                agg.max_timestamp_ms, min(timestamp_ms, agg.watermark_limit_ms)
            )
        if self.predecessor is not None:
            self._hand_over(window)
        last = self.last_value
        if self.is_counter:
            if last is not None and value < last:
                self.offset += last  # a reset: what was counted before it stays counted
            contribution = self.offset + value
        else:
            contribution = value
        self.last_value = value
        self.live = True
        pending = self.pending
        if observed is Observed.LATE and not pending:
            # Settled at once: it shows in the next window its group writes, and makes none.
            self.closed_contribution = contribution
            self.closed_live = True
            return observed
        # _record, inlined: this line runs for every sample in every view.
        if pending:
            last_window = pending[-1][0]
            if last_window == window:
                pending[-1] = (window, contribution, True)
                return observed
            if last_window > window:
                self._record(window, contribution, True)
                return observed
        pending.append((window, contribution, True))
        groups = agg.open_groups.get(window)
        if groups is None:
            agg.open_groups[window] = {self.group}
        else:
            groups.add(self.group)
        return observed

    def end(self, timestamp_ms: int) -> Observed:
        """The input received a staleness marker at ``timestamp_ms``.

        Admitted by the same rules as ``observe`` (which keeps its copy of them inline: it runs
        for every sample of every view), a late marker ending the input in the first window
        not emitted yet."""
        agg = self._agg
        window = -(-timestamp_ms // agg.interval_ms)
        observed = Observed.ACCEPTED
        if window <= agg.closed_window:
            agg.late_samples += 1
            if timestamp_ms <= self.last_seen_ms:
                return Observed.LATE
            window = agg.closed_window + 1
            observed = Observed.LATE
        elif timestamp_ms <= self.last_seen_ms:
            agg.out_of_order_samples += 1
            return Observed.OUT_OF_ORDER
        self.last_seen_ms = timestamp_ms
        if timestamp_ms > agg.max_timestamp_ms:
            agg.max_timestamp_ms = max(
                agg.max_timestamp_ms, min(timestamp_ms, agg.watermark_limit_ms)
            )
        if self.predecessor is not None:
            self._hand_over(window)
        self.live = False
        self._record(window, self.contribution(), False)
        return observed

    def _hand_over(self, window: int) -> None:
        """The first sample since the input moved: it left its old group in this window, if
        that is earlier than the window its move was first placed in."""
        predecessor = self.predecessor
        self.predecessor = None
        if predecessor is not None and predecessor.pending and window < predecessor.pending[-1][0]:
            predecessor._record(window, predecessor.contribution(), False)

    def _record(self, window: int, contribution: float, live: bool) -> None:
        pending = self.pending
        # Only a state the aggregator set ahead of the input's samples (an end after
        # ``stale_after``, a move at the watermark) can sit in a later window. A sample before
        # that window proves the input still fed this group then: that state no longer holds.
        while pending and pending[-1][0] > window:
            pending.pop()
        if pending and pending[-1][0] == window:
            pending[-1] = (window, contribution, live)
        else:
            pending.append((window, contribution, live))
            self.group.touch(window)

    def settle(self, window: int) -> None:
        """Fold the pending state of every window up to ``window`` into the closed state."""
        pending = self.pending
        settled = 0
        for entry in pending:
            if entry[0] > window:
                break
            settled += 1
            _, self.closed_contribution, self.closed_live = entry
        if settled:
            del pending[:settled]

    def closed_value(self) -> float:
        if self.is_counter or self.closed_live:
            return self.closed_contribution
        return 0.0


class OutputGroup:
    """One output series of a view and the inputs that feed it."""

    __slots__ = ("_agg", "departed", "emitted_live", "inputs", "label_bytes", "labels", "retired")

    def __init__(self, agg: ViewAggregator, labels: Labels, label_bytes: bytes) -> None:
        self._agg = agg
        self.labels = labels
        self.label_bytes = label_bytes
        self.inputs: dict[bytes, InputSeries] = {}
        # Contributions of counter inputs that left the group (forgotten or moved elsewhere).
        self.retired = 0.0
        # Inputs that moved to another group while windows they fed here were still open.
        self.departed: list[InputSeries] = []
        self.emitted_live = False

    def touch(self, window: int) -> None:
        self._agg.touch(window, self)

    def value_at(self, window: int) -> tuple[float, bool]:
        """(sum, any input live) once every input is settled up to ``window``."""
        parts = [self.retired]
        live = False
        for series in self.inputs.values():
            series.settle(window)
            parts.append(series.closed_value())
            live = live or series.closed_live
        if self.departed:
            for series in self.departed:
                series.settle(window)
                parts.append(series.closed_value())
                live = live or series.closed_live
            # Once its last window here is settled, a departed input is only its total.
            still_open = []
            for series in self.departed:
                if series.pending:
                    still_open.append(series)
                elif series.is_counter:
                    self.retired += series.closed_contribution
            self.departed = still_open
        return exact_sum(parts), live


class ViewAggregator:
    """All groups of one view."""

    def __init__(
        self,
        settings: AggregationSettings,
        encode_labels: Callable[[Labels], bytes],
    ) -> None:
        self.settings = settings
        self.interval_ms = settings.interval_ms
        self.encode_labels = encode_labels
        self.groups: dict[Labels, OutputGroup] = {}
        self.inputs: dict[bytes, InputSeries] = {}
        self.open_groups: dict[int, set[OutputGroup]] = {}
        """Window → the groups with samples in it that are not emitted yet."""
        self.closed_window = _NEVER
        """Every window up to this one has been emitted."""
        self.max_timestamp_ms = _NEVER
        """The watermark: the newest sample time accepted, but never past ``watermark_limit_ms``."""
        self.watermark_limit_ms = _NO_LIMIT
        """Set by the engine per request to the proxy's clock: a sample from a sender whose clock
        runs ahead is aggregated in its own window, but cannot close the windows of the others
        before the proxy's clock has passed them."""
        self._watermark_seen_ms = _NEVER
        self._watermark_moved_at_ms = 0
        self._swept_at_ms = _NEVER
        self.late_samples = 0
        self.out_of_order_samples = 0
        self.forgotten_inputs = 0
        """Inputs forgotten after ``retention``: callers holding InputSeries must drop them."""
        self.forgotten_groups = 0
        """Groups forgotten (no input left): room under ``max_series`` for new ones."""

    def admits_input(self, input_key: bytes, max_inputs: int) -> bool:
        """Whether the input ``input_key`` may feed this view: one it tracks always, a new one
        only while it tracks fewer than ``max_inputs`` (0: no limit). Asked before ``attach``,
        so a refused input leaves no state behind."""
        return not max_inputs or len(self.inputs) < max_inputs or input_key in self.inputs

    def admits(self, output_labels: Labels, max_series: int) -> bool:
        """Whether ``attach`` to the group of ``output_labels`` keeps the view within
        ``max_series`` groups (0: no cap).

        The cardinality guard: an existing group always admits (its series keep flowing), a new
        one only while the view has fewer than ``max_series`` groups. A caller that is refused
        leaves the input out of this view; it must ask again once groups were forgotten
        (``forgotten_groups`` moved). The cap is the caller's, not a setting, so changing it
        does not change the aggregation.
        """
        return not max_series or len(self.groups) < max_series or output_labels in self.groups

    def attach(self, input_key: bytes, output_labels: Labels, is_counter: bool) -> InputSeries:
        """The state of input ``input_key`` in the group of ``output_labels``.

        An input that moves to another group (its metadata changed) leaves its counted total
        with the old group and counts only its future increases in the new one, so neither
        output goes down or jumps. The old group keeps the input in every window it fed there,
        emitted or not. The move is placed in the window after the newest sample's (the
        watermark's); when the input's first sample in its new group comes earlier, in that
        sample's window. So a gauge is in exactly one of the two groups in every window.
        """
        series = self.inputs.get(input_key)
        if series is not None and series.group.labels == output_labels:
            series.is_counter = is_counter
            return series
        group = self.groups.get(output_labels)
        if group is None:
            group = OutputGroup(self, output_labels, self.encode_labels(output_labels))
            self.groups[output_labels] = group
        moved = series
        series = InputSeries(self, group, is_counter)
        if moved is not None:
            self._move(input_key, moved, series)
        group.inputs[input_key] = series
        self.inputs[input_key] = series
        return series

    def _move(self, input_key: bytes, moved: InputSeries, series: InputSeries) -> None:
        old_group = moved.group
        del old_group.inputs[input_key]
        del self.inputs[input_key]
        if moved.last_value is not None:
            series.last_value = moved.last_value
            series.last_seen_ms = moved.last_seen_ms
            series.offset = -moved.last_value if series.is_counter else 0.0
        if moved.live:
            window = max(self.closed_window + 1, -(-self.max_timestamp_ms // self.interval_ms) + 1)
            moved.live = False
            moved._record(window, moved.contribution(), False)
            series.live = True
            series._record(window, series.contribution(), True)
            series.predecessor = moved
        if moved.pending:
            old_group.departed.append(moved)
        elif moved.is_counter:
            old_group.retired += moved.contribution()

    def _forget(self, input_key: bytes, series: InputSeries) -> None:
        """Drop an ended, settled input; a counter's total stays with its group."""
        group = series.group
        if series.is_counter:
            group.retired += series.contribution()
        del group.inputs[input_key]
        del self.inputs[input_key]

    def mark_emitted_through(self, timestamp_ms: int) -> None:
        """Every window ending at or before ``timestamp_ms`` was emitted already (before a
        crash or a reload, perhaps with another interval): never emit those again."""
        window = timestamp_ms // self.interval_ms
        if window > self.closed_window:
            self.closed_window = window
            for open_window in [w for w in self.open_groups if w <= window]:
                del self.open_groups[open_window]

    def touch(self, window: int, group: OutputGroup) -> None:
        groups = self.open_groups.get(window)
        if groups is None:
            self.open_groups[window] = {group}
        else:
            groups.add(group)

    @property
    def open_windows(self) -> int:
        return len(self.open_groups)

    def flush(self, now_ms: int, final: bool = False) -> list[OutputSample]:
        """Emit every window that is complete; with ``final``, every open window.

        Also ends inputs not seen for ``stale_after`` and forgets those ended longer than
        ``retention`` ago (a forgotten counter's total stays with its group).
        """
        settings = self.settings
        if self.max_timestamp_ms != self._watermark_seen_ms:
            self._watermark_seen_ms = self.max_timestamp_ms
            self._watermark_moved_at_ms = now_ms
        if final or now_ms - self._swept_at_ms >= EXPIRY_SWEEP_MS:
            self._swept_at_ms = now_ms
            self._expire_inputs()
            self._forget_groups()
        idle = now_ms - self._watermark_moved_at_ms >= settings.idle_flush_ms
        if final or idle:
            close_through = max(self.open_groups, default=self.closed_window)
        else:
            close_through = (self.max_timestamp_ms - settings.lateness_ms) // self.interval_ms
            if close_through > self.closed_window and self.open_groups:
                close_through = min(close_through, self._awaited_through())
        out: list[OutputSample] = []
        for window in sorted(w for w in self.open_groups if w <= close_through):
            timestamp_ms = window * self.interval_ms
            for group in self.open_groups.pop(window):
                value, live = group.value_at(window)
                if live:
                    out.append(OutputSample(group.label_bytes, timestamp_ms, value))
                    group.emitted_live = True
                elif group.emitted_live:
                    out.append(OutputSample(group.label_bytes, timestamp_ms, STALE_NAN))
                    group.emitted_live = False
        self.closed_window = max(self.closed_window, close_through)
        return out

    def _awaited_through(self) -> int:
        """The last window that every awaited input has passed: ``lateness`` alone would let
        the arrival order decide what a window holds.

        A sender keeps each series in time order, not the series among themselves (each
        remote-write shard sends on its own), so a window is complete only once each input
        that still sends has a sample at or past its end. Awaited are the live inputs with a
        sample within ``idle_flush`` of sample time before the watermark: an input silent for
        longer (its sender lost it without a staleness marker) no longer holds the view back.
        """
        awaited_since = self.max_timestamp_ms - self.settings.idle_flush_ms
        lowest = _NO_LIMIT
        for series in self.inputs.values():
            last_seen_ms = series.last_seen_ms
            if series.live and awaited_since <= last_seen_ms < lowest:
                lowest = last_seen_ms
        return lowest // self.interval_ms

    def _expire_inputs(self) -> None:
        settings = self.settings
        stale_before = self.max_timestamp_ms - settings.stale_after_ms
        forget_before = self.max_timestamp_ms - settings.retention_ms
        for input_key, series in list(self.inputs.items()):
            if series.live and series.last_seen_ms < stale_before:
                series.live = False
                window = -(-(series.last_seen_ms + settings.stale_after_ms) // self.interval_ms)
                series._record(max(window, self.closed_window + 1), series.contribution(), False)
            elif not series.live and not series.pending and series.last_seen_ms < forget_before:
                self._forget(input_key, series)
                self.forgotten_inputs += 1

    def _forget_groups(self) -> None:
        for labels, group in list(self.groups.items()):
            if not group.inputs and not group.departed and not group.emitted_live:
                del self.groups[labels]
                self.forgotten_groups += 1
