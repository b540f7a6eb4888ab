"""The enrichment table: metadata documents validated into an immutable key → labels map.

Pure: the metadata store hands documents in and swaps the finished table atomically, so a
lookup never waits on the database and never sees a half-loaded table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from enrichproxy.config import MetadataConfig
from enrichproxy.model import Labels

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
    entries: Mapping[str, Labels]
    """Join key value → the labels it adds (sorted by name, no empty values)."""
    version: int = 0
    loaded_at: float = 0.0
    """Wall-clock seconds of the load that produced it."""

    def lookup(self, key: str) -> Labels | None:
        return self.entries.get(key)


EMPTY_TABLE = MetadataTable(entries={}, version=0, loaded_at=0.0)


@dataclass
class TableBuild:
    table: MetadataTable
    rejections: list[Rejection] = field(default_factory=list)

    def rejection_counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejections)


def _scalar_text(value: object) -> str | None:
    """Label value for a document field; None when the value is not a scalar we accept."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return None


def build_table(
    documents: Iterable[Mapping[str, object]],
    spec: MetadataConfig,
    version: int,
    loaded_at: float,
) -> TableBuild:
    """Validate ``documents`` into a table.

    A document without the key field, or with a key that is not a scalar, is skipped. A field
    that is missing, null or empty adds no label; a non-string scalar is stringified; any other
    value (list, object) is skipped while the rest of the document is used. Every skip is
    returned as a Rejection for the caller to log and count. When two documents share a key,
    the later one wins.
    """
    entries: dict[str, Labels] = {}
    rejections: list[Rejection] = []
    for document in documents:
        doc_id = document.get("_id", "?")
        if spec.key_field not in document or document[spec.key_field] is None:
            rejections.append(Rejection(MISSING_KEY, f"document {doc_id}: no {spec.key_field!r}"))
            continue
        key = _scalar_text(document[spec.key_field])
        if not key:
            rejections.append(
                Rejection(INVALID_KEY, f"document {doc_id}: {spec.key_field!r} is not a scalar")
            )
            continue
        labels: list[tuple[str, str]] = []
        for name in spec.fields:
            raw = document.get(name)
            if raw is None:
                continue
            text = _scalar_text(raw)
            if text is None:
                rejections.append(
                    Rejection(INVALID_VALUE, f"document {doc_id}: field {name!r} is not a scalar")
                )
            elif text:
                labels.append((name, text))
        if key in entries:
            rejections.append(Rejection(DUPLICATE_KEY, f"key {key!r} appears more than once"))
        entries[key] = tuple(sorted(labels))
    return TableBuild(MetadataTable(entries, version, loaded_at), rejections)
