"""Aggregation state as plain JSON-able values, so a restart continues every sum.

vmagent's aggregation totals start over on every restart (VictoriaMetrics#3775, #4810): a
counter view then drops and ``rate()`` shows a spike. Writing the per-input last values, offsets,
pending windows and per-group totals out, and reading them back at start, makes a restart
invisible downstream: no counter goes down, no window is emitted twice.

Pure: values in, values out; the caller chooses the file and when to write it.
"""

from __future__ import annotations

import base64
from typing import Any

from enrichproxy.engine.aggregation import InputSeries, OutputGroup, ViewAggregator

STATE_FORMAT = 1


def _series_state(series: InputSeries, departed_ids: dict[int, list[int]]) -> dict[str, Any]:
    predecessor = series.predecessor
    return {
        "counter": series.is_counter,
        "last_seen_ms": series.last_seen_ms,
        "last_value": series.last_value,
        "offset": series.offset,
        "live": series.live,
        "pending": [list(entry) for entry in series.pending],
        "closed": [series.closed_contribution, series.closed_live],
        "predecessor": departed_ids.get(id(predecessor)) if predecessor is not None else None,
    }


def export_state(aggregator: ViewAggregator) -> dict[str, Any]:
    """Everything ``restore_state`` needs to continue where ``aggregator`` is now.

    Groups outside ``aggregator.groups`` cannot hold pending state: a group is only forgotten
    once it has no inputs, nothing departed and nothing open.
    """
    groups = list(aggregator.groups.values())
    open_windows: dict[int, list[int]] = {}
    for window, touched in aggregator.open_groups.items():
        for group in touched:
            open_windows.setdefault(id(group), []).append(window)
    departed_ids = {
        id(series): [group_index, departed_index]
        for group_index, group in enumerate(groups)
        for departed_index, series in enumerate(group.departed)
    }
    return {
        "format": STATE_FORMAT,
        "interval_ms": aggregator.interval_ms,
        "closed_window": aggregator.closed_window,
        "max_timestamp_ms": aggregator.max_timestamp_ms,
        "groups": [
            {
                "labels": [list(pair) for pair in group.labels],
                "retired": group.retired,
                "emitted_live": group.emitted_live,
                "open_windows": sorted(open_windows.get(id(group), [])),
                "inputs": [
                    [base64.b64encode(key).decode(), _series_state(series, departed_ids)]
                    for key, series in group.inputs.items()
                ],
                "departed": [_series_state(s, departed_ids) for s in group.departed],
            }
            for group in groups
        ],
    }


def _restore_series(
    aggregator: ViewAggregator, group: OutputGroup, state: dict[str, Any]
) -> InputSeries:
    series = InputSeries(aggregator, group, bool(state["counter"]))
    series.last_seen_ms = int(state["last_seen_ms"])
    series.last_value = None if state["last_value"] is None else float(state["last_value"])
    series.offset = float(state["offset"])
    series.live = bool(state["live"])
    series.pending = [(int(w), float(c), bool(live)) for w, c, live in state["pending"]]
    series.closed_contribution = float(state["closed"][0])
    series.closed_live = bool(state["closed"][1])
    return series


class StateMismatch(ValueError):
    """The saved state was written for another aggregation (its interval changed)."""


def restore_state(aggregator: ViewAggregator, state: dict[str, Any]) -> None:
    """Load ``state`` (from ``export_state``) into a fresh ``aggregator``."""
    if state.get("format") != STATE_FORMAT:
        raise StateMismatch(f"unknown aggregation state format {state.get('format')!r}")
    if state["interval_ms"] != aggregator.interval_ms:
        raise StateMismatch(
            f"saved with interval {state['interval_ms']} ms, now {aggregator.interval_ms} ms"
        )
    if aggregator.groups or aggregator.inputs:
        raise ValueError("restore_state needs an aggregator that has seen nothing yet")
    aggregator.closed_window = int(state["closed_window"])
    aggregator.max_timestamp_ms = int(state["max_timestamp_ms"])
    restored_groups: list[OutputGroup] = []
    predecessors: list[tuple[InputSeries, list[int]]] = []
    for saved in state["groups"]:
        labels = tuple((str(name), str(value)) for name, value in saved["labels"])
        group = OutputGroup(aggregator, labels, aggregator.encode_labels(labels))
        group.retired = float(saved["retired"])
        group.emitted_live = bool(saved["emitted_live"])
        aggregator.groups[labels] = group
        restored_groups.append(group)
        for window in saved["open_windows"]:
            aggregator.touch(int(window), group)
        for key_text, series_state in saved["inputs"]:
            key = base64.b64decode(key_text)
            series = _restore_series(aggregator, group, series_state)
            group.inputs[key] = series
            aggregator.inputs[key] = series
            if series_state["predecessor"] is not None:
                predecessors.append((series, series_state["predecessor"]))
        group.departed = [_restore_series(aggregator, group, s) for s in saved["departed"]]
    for series, (group_index, departed_index) in predecessors:
        series.predecessor = restored_groups[group_index].departed[departed_index]
