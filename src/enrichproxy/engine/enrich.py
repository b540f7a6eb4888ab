"""Joining one series with the metadata tables, rule by rule."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple

from enrichproxy.config.schema import EnrichRule
from enrichproxy.metadata.table import Key, MetadataTable
from enrichproxy.model import Labels


class Lookup(enum.IntEnum):
    """How one rule's join went; exported as ``enrichproxy_lookups_total{rule, result}``."""

    HIT = 0
    MISS = 1
    """The series has the key labels, the table has no document for them."""
    NO_KEY = 2
    """The series lacks at least one of the key labels."""


class Step(NamedTuple):
    """One rule applied to one series, for counting and for ``explain``."""

    rule: EnrichRule
    lookup: Lookup
    key: Key | None
    added: Labels
    """The table's labels for the key (empty unless HIT)."""


class Enriched(NamedTuple):
    labels: Labels | None
    """None when a rule with ``on_missing: drop`` dropped the series."""
    steps: tuple[Step, ...]
    """One per rule applied (rules after a drop are not)."""
    conflicts: int
    """Enrichment labels the series already had with another value (resolved by
    ``on_conflict``); a label that already has the table's value is no conflict."""


def enrich(
    labels: Labels,
    tables: Sequence[MetadataTable],
    rules: Sequence[EnrichRule],
    on_conflict: str = "overwrite",
) -> Enriched:
    """Apply ``rules`` in order, each looking up its key labels in its table.

    Each rule sees the labels added by the rules before it, so a second rule can join on a label
    the first one added (pod → service, then service → owner). On a hit the rule's key labels
    are removed when ``drop_key_labels`` is set. When the series already carries a label the
    table provides with another value, ``on_conflict`` decides: ``overwrite`` (default; the table
    is the source of truth) or ``keep`` the series' own value; either way it is counted. On a
    miss, ``on_missing`` decides: keep the series as it is so far, or drop it.
    """
    current = dict(labels)
    steps: list[Step] = []
    conflicts = 0
    changed = False
    for rule, table in zip(rules, tables, strict=True):
        values = [current.get(name) for name in rule.key_labels]
        key: Key | None = None
        extra: Labels | None = None
        if all(values):
            key = tuple(v for v in values if v)
            extra = table.lookup(key)
            result = Lookup.HIT if extra is not None else Lookup.MISS
        else:
            result = Lookup.NO_KEY
        steps.append(Step(rule, result, key, extra or ()))
        if extra is None:
            if rule.on_missing == "drop":
                return Enriched(None, tuple(steps), conflicts)
            continue
        changed = True
        for name, value in extra:
            existing = current.get(name)
            if existing is not None and existing != value:
                conflicts += 1
                if on_conflict == "keep":
                    continue
            current[name] = value
        if rule.drop_key_labels:
            for name in rule.key_labels:
                if name not in rule.fields:
                    current.pop(name, None)
    enriched = tuple(sorted(current.items())) if changed else labels
    return Enriched(enriched, tuple(steps), conflicts)
