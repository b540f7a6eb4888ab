"""Why one series comes out of the proxy the way it does: ``GET /debug/explain``.

When a label looks wrong downstream, the answer is spread over the enrichment tables, the views
and the aggregation state. This module reads all of them for one input label set and lays the
path out step by step: each rule's key and lookup (with the table's version), the enriched
labels, and per view whether the series is in it, its output series and that group's current
value.

Pure and read-only, and the same for every engine: the join and the projections are worked
out again by the engine's planner, on the tables in use now, and the aggregation state is only
looked up through the Engine interface (``view_group``, ``view_input``), so explaining a
series, even one never received, changes nothing the proxy forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from enrichproxy.config.schema import EnrichRule
from enrichproxy.config.selector import parse_selector
from enrichproxy.engine.enrich import Lookup, Step, enrich
from enrichproxy.engine.interface import Engine, GroupState
from enrichproxy.engine.pipeline import DROP_IN_NO_VIEW, DROP_METADATA_MISSING, DROP_NO_METRIC_NAME
from enrichproxy.engine.planner import Planner
from enrichproxy.engine.views import Skip, View
from enrichproxy.metadata.table import Key, MetadataTable
from enrichproxy.model import METRIC_NAME_LABEL, Labels, labels_to_text
from enrichproxy.wire.codec import encode_labels

EXPLAIN_PATH = "/debug/explain"
SELECTOR_EXAMPLE = 'order_create_failed_total{pod="checkout-6c8f9",endpoint="/orders"}'

_SKIP_REASONS = {
    Skip.NOT_MATCHED: "the view's match selector does not select it",
    Skip.UNSUMMABLE: "a summary's quantile cannot be summed across series (its _sum and _count"
    " still are)",
}


def parse_exact_selector(text: str) -> Labels:
    """The label set a selector with only ``name="value"`` matchers names.

    Explain answers for one series, so regex and negative matchers, which select many, are
    refused (ValueError, with the reason, as for any selector that does not parse).
    """
    selector = parse_selector(text)
    labels: dict[str, str] = {}
    for matcher in selector.matchers:
        if matcher.op != "=":
            raise ValueError(
                f'{matcher.name}{matcher.op}"{matcher.value}": give the series\' exact labels,'
                f' name="value" only, e.g. {SELECTOR_EXAMPLE}'
            )
        if not matcher.value:
            raise ValueError(
                f'{matcher.name}="": a series has no empty labels; leave {matcher.name} out'
            )
        if labels.setdefault(matcher.name, matcher.value) != matcher.value:
            raise ValueError(f"label {matcher.name!r} is given twice with different values")
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class Conflict:
    """A label the series already had with another value than the table's."""

    label: str
    series_value: str
    table_value: str
    kept: str
    """``table`` or ``series``: which value the series goes on with (``on_conflict``)."""


@dataclass(frozen=True)
class RuleExplanation:
    rule: EnrichRule
    table: MetadataTable
    lookup: Lookup | None
    """None: not applied, because an earlier rule dropped the series."""
    key: Key | None
    missing_labels: tuple[str, ...]
    """Key labels the series lacks (why the lookup is NO_KEY)."""
    document: Labels
    """The labels the table holds for the key: the matching document's fields, as loaded."""
    conflicts: tuple[Conflict, ...]
    removed_labels: tuple[str, ...]
    """Key labels taken off the series (``drop_key_labels``)."""
    dropped: bool
    """This rule dropped the series (a miss with ``on_missing: drop``)."""


@dataclass(frozen=True)
class ViewExplanation:
    view: View
    skip: Skip | None
    output: Labels | None
    """The output series' labels (None when the view leaves the series out)."""
    group: GroupState | None
    """None when the output series has no aggregation state (no input has fed it yet)."""
    is_input: bool
    """The series feeds ``output`` in this view now."""
    contribution: float | None
    """What the series adds to the group it feeds (None when it feeds none in this view)."""
    feeds: Labels | None
    """The group the series feeds now; differs from ``output`` after a metadata change, until
    the series' next sample moves it."""


@dataclass(frozen=True)
class Explanation:
    series: Labels
    received: bool
    """The proxy holds state for exactly this label set (it has received the series)."""
    on_conflict: str
    rules: tuple[RuleExplanation, ...]
    enriched: Labels | None
    """None when a rule dropped the series."""
    counter: bool | None
    """How the views sum it: True reset-safe (counter), False latest value (gauge); None when
    the series has no metric name."""
    dropped: str | None
    """Why its samples feed no view, as in ``enrichproxy_samples_dropped_total{reason}``."""
    views: tuple[ViewExplanation, ...]
    """One per view, in order; empty when the series is dropped before the views."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite values as Prometheus spells them: ``+Inf``, ``NaN``)."""
        return {
            "series": dict(self.series),
            "series_text": labels_to_text(self.series),
            "received": self.received,
            "on_conflict": self.on_conflict,
            "rules": [_rule_dict(step) for step in self.rules],
            "enriched": None if self.enriched is None else dict(self.enriched),
            "enriched_text": None if self.enriched is None else labels_to_text(self.enriched),
            "type": None if self.counter is None else ("counter" if self.counter else "gauge"),
            "dropped": self.dropped,
            "views": [_view_dict(step) for step in self.views],
        }

    def to_text(self) -> str:
        """The same, for a person at a terminal."""
        out = [f"series      {labels_to_text(self.series)}"]
        if self.received:
            out.append("received    yes: the proxy holds state for exactly these labels")
        else:
            out.append(
                "received    no: the proxy holds no state for exactly these labels (give every"
                " label as sent, job and instance too); below is what would happen"
            )
        out.append("")
        out.append(f"enrichment  (on_conflict: {self.on_conflict})")
        for number, rule_step in enumerate(self.rules, 1):
            out.extend(_rule_lines(number, rule_step))
        if self.enriched is None:
            out.append(f"enriched    dropped: {DROP_METADATA_MISSING}")
        else:
            out.append(f"enriched    {labels_to_text(self.enriched)}")
        if self.counter is not None:
            kind = "counter (summed reset-safe)" if self.counter else "gauge (latest values summed)"
            out.append(f"type        {kind}")
        if self.dropped is not None:
            out.append(f"dropped     {self.dropped}: {_drop_text(self.dropped)}")
        out.append("")
        if not self.views:
            out.append("views       not reached: the series is dropped before the views")
        else:
            out.append("views")
            for view_step in self.views:
                out.extend(_view_lines(view_step, self.received))
        return "\n".join(out) + "\n"


def explain(engine: Engine, labels: Labels) -> Explanation:
    """What ``engine`` does with the series ``labels`` (sorted by name), read-only.

    The series is found in the aggregation state by its encoded labels, which is how a sender
    that sends labels sorted (Prometheus does) has them cached.
    """
    planner = engine.planner
    input_key = encode_labels(labels)
    received = engine.received(input_key)
    enriched = planner.enrich(labels)
    rules = tuple(
        _explain_rule(planner, labels, index, enriched.steps[index])
        if index < len(enriched.steps)
        else RuleExplanation(rule, planner.tables[index], None, None, (), (), (), (), False)
        for index, rule in enumerate(planner.rules)
    )

    def answer(
        enriched_labels: Labels | None,
        counter: bool | None,
        dropped: str | None,
        views: tuple[ViewExplanation, ...] = (),
    ) -> Explanation:
        return Explanation(
            labels, received, planner.on_conflict, rules, enriched_labels, counter, dropped, views
        )

    if enriched.labels is None:
        return answer(None, None, DROP_METADATA_MISSING)
    metric_name = dict(enriched.labels).get(METRIC_NAME_LABEL)
    if not metric_name:
        return answer(enriched.labels, None, DROP_NO_METRIC_NAME)
    views = []
    for index, plan in enumerate(planner.views):
        projected = plan.view.project(enriched.labels)
        output = None if isinstance(projected, Skip) else projected
        series = engine.view_input(index, input_key)
        feeds = None if series is None else series.feeds
        views.append(
            ViewExplanation(
                view=plan.view,
                skip=projected if isinstance(projected, Skip) else None,
                output=output,
                group=None if output is None else engine.view_group(index, output),
                is_input=output is not None and feeds == output,
                contribution=None if series is None else series.contribution,
                feeds=feeds,
            )
        )
    dropped = None
    if all(step.skip is not None for step in views):  # the pipeline's drop reasons, in its order
        unsummable = any(step.skip is Skip.UNSUMMABLE for step in views)
        dropped = Skip.UNSUMMABLE.value if unsummable else DROP_IN_NO_VIEW
    return answer(enriched.labels, planner.types.is_counter(metric_name), dropped, tuple(views))


def _explain_rule(planner: Planner, labels: Labels, index: int, step: Step) -> RuleExplanation:
    """Rule ``index`` as ``enrich`` applied it (``step``). Conflicts and missing key labels need
    the labels the rule saw: those the rules before it left."""
    rule = step.rule
    before = enrich(labels, planner.tables[:index], planner.rules[:index], planner.on_conflict)
    seen = dict(before.labels or ())
    kept = "series" if planner.on_conflict == "keep" else "table"
    conflicts = tuple(
        Conflict(name, seen[name], value, kept)
        for name, value in step.added
        if name in seen and seen[name] != value
    )
    removed: tuple[str, ...] = ()
    if step.lookup is Lookup.HIT and rule.drop_key_labels:
        removed = tuple(name for name in rule.key_labels if name not in rule.fields)
    return RuleExplanation(
        rule=rule,
        table=planner.tables[index],
        lookup=step.lookup,
        key=step.key,
        missing_labels=tuple(name for name in rule.key_labels if not seen.get(name)),
        document=step.added,
        conflicts=conflicts,
        removed_labels=removed,
        dropped=step.lookup is not Lookup.HIT and rule.on_missing == "drop",
    )


# --- presentation ------------------------------------------------------------------------------


def _number(value: float) -> float | str:
    """A JSON number, or Prometheus' spelling where JSON has none."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def _number_text(value: float) -> str:
    shown = _number(value)
    if isinstance(shown, float) and shown.is_integer() and abs(shown) < 2**53:
        return str(int(shown))
    return str(shown)


def _loaded_at_text(loaded_at: float) -> str:
    if loaded_at <= 0:
        return "never"
    return datetime.fromtimestamp(loaded_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pairs_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{name}="{value}"' for name, value in zip(names, values, strict=True))


def _rule_dict(step: RuleExplanation) -> dict[str, Any]:
    rule, table = step.rule, step.table
    return {
        "rule": rule.name,
        "database": rule.database,
        "collection": rule.collection,
        "key_labels": list(rule.key_labels),
        "key_fields": list(rule.key_fields),
        "key": None if step.key is None else dict(zip(rule.key_labels, step.key, strict=True)),
        "missing_key_labels": list(step.missing_labels),
        "result": "not_applied" if step.lookup is None else step.lookup.name.lower(),
        "document": dict(step.document) if step.lookup is Lookup.HIT else None,
        "table": {
            "version": table.version,
            "entries": len(table.entries),
            "loaded_at": table.loaded_at or None,
        },
        "on_missing": rule.on_missing,
        "dropped_series": step.dropped,
        "removed_labels": list(step.removed_labels),
        "conflicts": [
            {
                "label": c.label,
                "series_value": c.series_value,
                "table_value": c.table_value,
                "kept": c.kept,
            }
            for c in step.conflicts
        ],
    }


def _rule_lines(number: int, step: RuleExplanation) -> list[str]:
    rule, table = step.rule, step.table
    where = f"{rule.database}.{rule.collection}"
    head = f"  {number}. rule {rule.name} ({where})"
    if step.lookup is None:
        return [f"{head}: not applied, an earlier rule dropped the series"]
    if step.lookup is Lookup.NO_KEY:
        missing = ", ".join(step.missing_labels)
        lines = [f"{head}: NO_KEY, the series has no {missing} label"]
    else:
        key = _pairs_text(rule.key_labels, step.key or ())
        lines = [f"{head}: key {{{key}}} → {step.lookup.name}"]
    if step.lookup is Lookup.HIT:
        document = ",".join(f'{name}="{value}"' for name, value in step.document)
        lines.append(f"       document  {{{document}}}")
    elif step.dropped:
        lines.append("       on_missing: drop, so the series is dropped")
    else:
        lines.append("       on_missing: keep, so the series goes on without this rule's labels")
    lines.append(
        f"       table     version {table.version}, {len(table.entries)} entries,"
        f" loaded {_loaded_at_text(table.loaded_at)}"
    )
    if step.removed_labels:
        lines.append(f"       removes   {', '.join(step.removed_labels)} (drop_key_labels)")
    for conflict in step.conflicts:
        lines.append(
            f'       conflict  {conflict.label}: series has "{conflict.series_value}", table has'
            f' "{conflict.table_value}"; the {conflict.kept} value is kept'
        )
    return lines


def _drop_text(reason: str) -> str:
    return {
        DROP_METADATA_MISSING: "a rule with on_missing: drop found no document",
        DROP_NO_METRIC_NAME: "a series without __name__ feeds no view",
        DROP_IN_NO_VIEW: "no view takes it, so its samples are dropped",
        Skip.UNSUMMABLE.value: "no view can sum a summary's quantile, so its samples are dropped",
    }.get(reason, reason)


def _group_dict(group: GroupState | None) -> dict[str, Any] | None:
    if group is None:
        return None
    return {
        "labels": dict(group.labels),
        "value": _number(group.value),
        "inputs": group.inputs,
        "live_inputs": group.live_inputs,
        "retired": _number(group.retired),
    }


def _view_dict(step: ViewExplanation) -> dict[str, Any]:
    view = step.view
    return {
        "view": view.name,
        "match": None if view.match is None else view.match.text,
        "matched": step.skip is None,
        "skip_reason": None if step.skip is None else step.skip.value,
        "output": None if step.output is None else dict(step.output),
        "output_text": None if step.output is None else labels_to_text(step.output),
        "group": _group_dict(step.group),
        "series_is_input": step.is_input,
        "series_contribution": None if step.contribution is None else _number(step.contribution),
        "series_feeds": None if step.feeds is None else dict(step.feeds),
    }


def _view_lines(step: ViewExplanation, received: bool) -> list[str]:
    view = step.view
    if step.skip is not None:
        how = f" {view.match.text}" if step.skip is Skip.NOT_MATCHED and view.match else ""
        lines = [f"  {view.name}: left out ({step.skip.value}{how}): {_SKIP_REASONS[step.skip]}"]
    else:
        lines = [f"  {view.name}: in the view"]
        lines.append(f"       output    {labels_to_text(step.output or ())}")
        group = step.group
        if group is None:
            lines.append("       group     none yet: no input has fed this output series")
        else:
            inputs = "1 input" if group.inputs == 1 else f"{group.inputs} inputs"
            text = (
                f"value {_number_text(group.value)} now, from {inputs} ({group.live_inputs} live)"
            )
            if group.retired:
                text += f"; {_number_text(group.retired)} of it from inputs that ended or moved"
            lines.append(f"       group     {text}")
    contribution = _number_text(step.contribution or 0.0)
    if step.is_input:
        lines.append(f"       series    an input, contributing {contribution}")
    elif step.feeds is not None and step.skip is None:
        lines.append(
            f"       series    feeds {labels_to_text(step.feeds)} (contributing {contribution});"
            " it moves to this output with its next sample"
        )
    elif step.feeds is not None:
        lines.append(
            f"       series    its earlier input still counts in {labels_to_text(step.feeds)}"
            f" (contributing {contribution}) until it ends"
        )
    elif step.skip is None:
        why = "it joins with its next sample" if received else "the series was not received"
        lines.append(f"       series    not an input: {why}")
    return lines
