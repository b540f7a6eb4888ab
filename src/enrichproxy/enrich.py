"""Joining one series with the metadata table."""

from __future__ import annotations

import enum
from typing import NamedTuple

from enrichproxy.config import MetadataConfig
from enrichproxy.metadata_table import MetadataTable
from enrichproxy.model import Labels


class Lookup(enum.IntEnum):
    """How the join went; exported as ``enrichproxy_lookups_total{result}``."""

    HIT = 0
    MISS = 1
    """The series has the key label, the table has no document for it."""
    NO_KEY = 2
    """The series has no key label at all."""


class Enriched(NamedTuple):
    labels: Labels | None
    """None when ``on_missing: drop`` dropped the series."""
    lookup: Lookup
    conflicts: int
    """Enrichment labels the series already had with another value (resolved by
    ``on_conflict``); a label that already has the table's value is no conflict."""


def enrich(labels: Labels, table: MetadataTable, spec: MetadataConfig) -> Enriched:
    """Add the table's labels for the series' key label.

    On a hit the key label is removed when ``drop_key_label`` is set. When the series already
    carries a label the table also provides with another value, ``on_conflict`` decides:
    ``overwrite`` (default; the table is the source of truth) or ``keep`` the series' own value.
    Either way it is counted.
    """
    current = dict(labels)
    key = current.get(spec.key_label)
    if key is None:
        result = Lookup.NO_KEY
        extra = None
    else:
        extra = table.lookup(key)
        result = Lookup.HIT if extra is not None else Lookup.MISS
    if extra is None:
        return Enriched(None if spec.on_missing == "drop" else labels, result, 0)
    conflicts = 0
    for name, value in extra:
        existing = current.get(name)
        if existing is not None and existing != value:
            conflicts += 1
            if spec.on_conflict == "keep":
                continue
        current[name] = value
    if spec.drop_key_label:
        del current[spec.key_label]
    return Enriched(tuple(sorted(current.items())), result, conflicts)
