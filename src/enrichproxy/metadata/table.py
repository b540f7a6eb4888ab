"""Enrichment tables: metadata documents validated into immutable key → labels maps.

Pure: the metadata store feeds documents (a full read, or one change at a time) into a
``TableBuilder`` and swaps each finished table in whole, so a lookup never waits on the
database and never sees a half-applied change.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from enrichproxy.config.schema import EnrichRule
from enrichproxy.model import Labels

Key = tuple[str, ...]
"""The values of a rule's key labels, in the rule's order."""

# Reasons a document, or one of its fields, was not used. Exported as metric label values.
MISSING_KEY = "missing_key"
INVALID_KEY = "invalid_key"
INVALID_VALUE = "invalid_value"
DUPLICATE_KEY = "duplicate_key"


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


@dataclass(frozen=True)
class MetadataTable:
    entries: Mapping[Key, Labels]
    """Key → the labels it adds (sorted by name, no empty values)."""
    version: int = 0
    loaded_at: float = 0.0
    """Wall-clock seconds of the data it holds (a load, or the last change applied)."""

    def lookup(self, key: Key) -> Labels | None:
        return self.entries.get(key)


EMPTY_TABLE = MetadataTable(entries={}, version=0, loaded_at=0.0)


@dataclass
class TableBuild:
    table: MetadataTable
    rejections: list[Rejection] = field(default_factory=list)

    def rejection_counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejections)


def scalar_text(value: object) -> str | None:
    """Label value for a document field; None when the value is not a scalar we accept."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return None


class _Tag(enum.Enum):
    """Markers no BSON value decodes to, so a converted ``_id`` equals no other ``_id``."""

    DOCUMENT = "document"
    ARRAY = "array"
    UNHASHABLE = "unhashable"


def id_slot(doc_id: object) -> Hashable:
    """``doc_id`` as a dict key: an embedded document or array becomes a tagged tuple.

    MongoDB allows an embedded document as ``_id`` (``{_id: {namespace: ..., pod: ...}}`` is a
    common way to give a composite key), which pymongo decodes to an unhashable dict. Field order
    is kept: MongoDB compares embedded documents field by field, in order.
    """
    if isinstance(doc_id, Mapping):
        return (_Tag.DOCUMENT, *((name, id_slot(value)) for name, value in doc_id.items()))
    if isinstance(doc_id, list | tuple):
        return (_Tag.ARRAY, *(id_slot(value) for value in doc_id))
    if isinstance(doc_id, Hashable):
        return doc_id
    return (_Tag.UNHASHABLE, repr(doc_id))


class TableBuilder:
    """The documents of one rule's collection, by ``_id``; ``build`` makes a table of them.

    A document without a key field, or with a key that is not a scalar, is skipped. A field that
    is missing, null or empty adds no label; a non-string scalar is stringified; any other value
    (list, object) is skipped while the rest of the document is used. Every skip is returned as a
    Rejection for the caller to log and count. When two documents share a key, the one written
    last wins.
    """

    def __init__(self, rule: EnrichRule) -> None:
        self.rule = rule
        self._by_id: dict[Hashable, tuple[Key, Labels]] = {}
        self._anonymous = itertools.count()

    def __len__(self) -> int:
        return len(self._by_id)

    def replace_all(self, documents: Iterable[Mapping[str, object]]) -> list[Rejection]:
        self._by_id.clear()
        rejections: list[Rejection] = []
        for document in documents:
            rejections.extend(self.upsert(document))
        return rejections

    def upsert(self, document: Mapping[str, object]) -> list[Rejection]:
        """Add or replace one document (by its ``_id``)."""
        doc_id = document.get("_id")
        slot: Hashable
        if doc_id is None:
            slot = doc_id = ("anonymous", next(self._anonymous))  # no converted _id is a str pair
        else:
            slot = id_slot(doc_id)
            self._by_id.pop(slot, None)  # re-inserted last: the newest write wins
        key, rejections = self._key(document, doc_id)
        if key is None:
            return rejections
        labels: list[tuple[str, str]] = []
        for name in self.rule.fields:
            raw = document.get(name)
            if raw is None:
                continue
            text = scalar_text(raw)
            if text is None:
                rejections.append(
                    Rejection(INVALID_VALUE, f"document {doc_id}: field {name!r} is not a scalar")
                )
            elif text:
                labels.append((name, text))
        self._by_id[slot] = (key, tuple(sorted(labels)))
        return rejections

    def delete(self, doc_id: object) -> bool:
        """Remove the document with ``_id`` ``doc_id``; False when it was not there."""
        return self._by_id.pop(id_slot(doc_id), None) is not None

    def _key(
        self, document: Mapping[str, object], doc_id: object
    ) -> tuple[Key | None, list[Rejection]]:
        values = []
        for name in self.rule.key_fields:
            raw = document.get(name)
            if raw is None:
                return None, [Rejection(MISSING_KEY, f"document {doc_id}: no {name!r}")]
            text = scalar_text(raw)
            if not text:
                detail = f"document {doc_id}: {name!r} is not a non-empty scalar"
                return None, [Rejection(INVALID_KEY, detail)]
            values.append(text)
        return tuple(values), []

    def build(self, version: int, loaded_at: float) -> TableBuild:
        entries: dict[Key, Labels] = {}
        rejections = []
        for key, labels in self._by_id.values():
            if key in entries:
                rejections.append(Rejection(DUPLICATE_KEY, f"key {key!r} appears more than once"))
            entries[key] = labels
        return TableBuild(MetadataTable(entries, version, loaded_at), rejections)


def build_table(
    documents: Iterable[Mapping[str, object]],
    rule: EnrichRule,
    version: int,
    loaded_at: float,
) -> TableBuild:
    """A table of ``documents`` in one go (see TableBuilder for the rules)."""
    builder = TableBuilder(rule)
    rejections = builder.replace_all(documents)
    build = builder.build(version, loaded_at)
    build.rejections[:0] = rejections
    return build


def changed_keys(old: MetadataTable, new: MetadataTable) -> set[Key]:
    """Keys whose labels differ between two tables (added, removed or changed)."""
    old_entries, new_entries = old.entries, new.entries
    changed = {key for key, labels in new_entries.items() if old_entries.get(key) != labels}
    changed.update(key for key in old_entries if key not in new_entries)
    return changed
