"""The cold path every engine shares: what the configuration and the metadata in use say about a
series, before any sample of it is aggregated.

It holds the views (each with its aggregation settings and cardinality cap), the enrichment
rules with the tables in use now, ``on_conflict``, the metric types learnt from metadata, and the
limits. An engine asks it the first time it sees a series, and ``/debug/explain`` asks it again
for one series, so both work the series out the same way. Whatever an engine keeps per series or
per window (caches, aggregation state) is the engine's own.

Pure: values in, values out.
"""

from __future__ import annotations

from dataclasses import dataclass

from enrichproxy.config.schema import Config
from enrichproxy.engine.aggregation import AggregationSettings
from enrichproxy.engine.enrich import Enriched, enrich
from enrichproxy.engine.metric_types import MetricTypes
from enrichproxy.engine.views import View
from enrichproxy.metadata.table import EMPTY_TABLE, Key, MetadataTable, changed_keys
from enrichproxy.model import Labels


@dataclass(frozen=True)
class ViewPlan:
    """One view as configured: what it keeps, how it aggregates, how many series it may have."""

    view: View
    settings: AggregationSettings
    max_series: int
    """Its cardinality cap (0: none). The caller's, not an aggregation setting: changing it
    does not restart the view."""
    max_input_series: int = 0
    """The input series its aggregation may track (0: no limit of its own); as ``max_series``,
    not an aggregation setting."""

    @property
    def name(self) -> str:
        return self.view.name

    def continues(self, previous: ViewPlan) -> bool:
        """A view planned so can take over ``previous``'s aggregation state (at a reload): the
        same output series (name, kept labels, match) aggregated the same way."""
        return self.view == previous.view and self.settings == previous.settings


class Planner:
    """The configuration-derived decisions, and the tables and metric types they depend on."""

    def __init__(self, config: Config) -> None:
        aggregation = config.aggregation
        self.views = tuple(
            ViewPlan(
                View.from_config(view),
                AggregationSettings(
                    interval_ms=config.view_interval_ms(view),
                    lateness_ms=aggregation.lateness_ms,
                    stale_after_ms=aggregation.stale_after_ms,
                    retention_ms=aggregation.retention_ms,
                    idle_flush_ms=aggregation.idle_flush_ms,
                ),
                view.max_series,
                view.max_input_series,
            )
            for view in config.views
        )
        self.rules = config.metadata.enrich_rules
        self.on_conflict = config.metadata.on_conflict
        self.tables: list[MetadataTable] = [EMPTY_TABLE] * len(self.rules)
        """Per rule, the table in use (empty until the metadata store loads it)."""
        self.types = MetricTypes()
        self.limits = config.limits

    def adopt(self, previous: Planner) -> None:
        """Carry over what a reload keeps from ``previous``: the metric types learnt, and the
        tables of the rules that did not change (the others stay empty until the metadata store
        loads them)."""
        self.types = previous.types
        for index, rule in enumerate(self.rules):
            if rule in previous.rules:
                self.tables[index] = previous.tables[previous.rules.index(rule)]

    def set_table(self, table: MetadataTable, rule_index: int) -> set[Key]:
        """Use ``table`` for rule ``rule_index``; the keys whose entries it changed."""
        changed = changed_keys(self.tables[rule_index], table)
        self.tables[rule_index] = table
        return changed

    def enrich(self, labels: Labels) -> Enriched:
        """``labels`` joined with the tables in use, rule by rule."""
        return enrich(labels, self.tables, self.rules, self.on_conflict)
