"""``enrichproxy metadata import|export``: manage a rule's collection from files.

The table is usually fed from a CMDB export or edited by hand. Importing through here checks
every document with the rules the proxy itself applies (``TableBuilder``), so a row the proxy
would skip, or only half use, is refused here with its position instead of turning up later as
a missing label downstream. Documents are matched by the rule's key fields, under a unique index
created first, so importing the same file twice changes nothing and two documents can never
compete for one key.

A shell: pymongo's asyncio client is used here and in the metadata store only; its errors become
``MetadataUnavailable`` at this module's edge.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from pymongo import ASCENDING, AsyncMongoClient, ReplaceOne
from pymongo.errors import PyMongoError

from enrichproxy.config.schema import EnrichRule, MetadataConfig
from enrichproxy.errors import ConfigError, EnrichproxyError
from enrichproxy.metadata.store import MetadataUnavailable
from enrichproxy.metadata.table import Key, TableBuilder, scalar_text

FORMATS = ("yaml", "json", "csv")
_FORMAT_BY_SUFFIX = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".csv": "csv"}
_ID = "_id"


class MetadataFileError(EnrichproxyError):
    """A documents file that cannot be used; the message names the file and the row."""


@dataclass
class ImportReport:
    rule: EnrichRule
    index: str = ""
    """Name of the unique index on the key fields."""
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[str] = field(default_factory=list)
    """One line per refused document: its position and what is wrong with it."""

    def summary(self) -> str:
        rule = self.rule
        return (
            f"{rule.database}.{rule.collection} (rule {rule.name}): {self.inserted} inserted,"
            f" {self.updated} updated, {self.unchanged} unchanged, {len(self.rejected)} rejected;"
            f" unique index {self.index}"
        )


def select_rule(spec: MetadataConfig, rule_name: str | None = None) -> EnrichRule:
    """The rule named ``rule_name``; the first rule when None (the only one, usually)."""
    rules = spec.enrich_rules
    if rule_name is None:
        return rules[0]
    for rule in rules:
        if rule.name == rule_name:
            return rule
    names = ", ".join(rule.name for rule in rules)
    raise ConfigError([f"--rule: no rule named {rule_name!r} (rules: {names})"])


# --- files -------------------------------------------------------------------------------------


def read_documents(path: str | Path) -> list[dict[str, Any]]:
    """The documents in a YAML list, a JSON list or a CSV file with a header row.

    The format comes from the extension. In a CSV file every value is a string and an empty
    cell means the field is absent (as a missing field adds no label). MetadataFileError names
    the file and the document or line at fault.
    """
    path = Path(path)
    file_format = _FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if file_format is None:
        raise MetadataFileError(
            f"{path}: unknown format {path.suffix or '(no extension)'!r}:"
            " name the file .yaml, .yml, .json or .csv"
        )
    try:
        # utf-8-sig: spreadsheet programs start their CSV exports with a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise MetadataFileError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise MetadataFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if file_format == "csv":
        return _parse_csv(path, text)
    if file_format == "yaml":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MetadataFileError(f"{path}: not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataFileError(
                f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
    return _as_documents(path, data)


def _as_documents(path: Path, data: object) -> list[dict[str, Any]]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise MetadataFileError(
            f"{path}: must be a list of documents (mappings), got {type(data).__name__}"
        )
    documents = []
    for number, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise MetadataFileError(
                f"{path}: document {number}: must be a mapping of field names to values,"
                f" got {type(item).__name__}"
            )
        documents.append(item)
    return documents


def _parse_csv(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        columns = [name.strip() for name in header]
        for position, name in enumerate(columns, 1):
            if not name:
                raise MetadataFileError(f"{path}: line 1: column {position} has no name")
            if columns.index(name) != position - 1:
                raise MetadataFileError(f"{path}: line 1: column {name!r} appears twice")
        documents = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                raise MetadataFileError(
                    f"{path}: line {reader.line_num}: {len(row)} cells for"
                    f" {len(columns)} columns ({', '.join(columns)})"
                )
            documents.append({name: cell for name, cell in zip(columns, row, strict=True) if cell})
        return documents
    except csv.Error as exc:
        raise MetadataFileError(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from None


def format_documents(documents: Sequence[Mapping[str, Any]], file_format: str) -> str:
    """``documents`` as a file ``read_documents`` reads back to the same documents.

    CSV holds only scalars: a list or mapping value is a MetadataFileError (use yaml or json).
    """
    if file_format == "yaml":
        if not documents:
            return "[]\n"
        return yaml.safe_dump(
            [dict(d) for d in documents], sort_keys=False, allow_unicode=True, width=100
        )
    if file_format == "json":
        return json.dumps(list(documents), indent=2, ensure_ascii=False) + "\n"
    if file_format != "csv":
        raise ValueError(f"unknown format {file_format!r} (known: {', '.join(FORMATS)})")
    columns: dict[str, None] = {}
    for document in documents:
        columns.update(dict.fromkeys(document))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for number, document in enumerate(documents, 1):
        row = []
        for name in columns:
            value = document.get(name)
            text = "" if value is None else scalar_text(value)
            if text is None:
                raise MetadataFileError(
                    f"document {number}: field {name!r} is a {type(value).__name__}:"
                    " CSV holds only scalars, export as yaml or json"
                )
            row.append(text)
        writer.writerow(row)
    return out.getvalue()


# --- validation (pure) -------------------------------------------------------------------------


def validate_documents(
    rule: EnrichRule, documents: Sequence[object]
) -> tuple[list[tuple[Key, dict[str, Any]]], list[str]]:
    """The documents the proxy would use whole, by key, and one line per document it would not.

    A document is refused when the proxy would skip it (no key, a key that is not a non-empty
    scalar) or would skip one of its fields (a value that is not a scalar), when a field name
    or value is something MongoDB or the export formats cannot hold, and when its key repeats
    an earlier document's. ``_id`` is ignored: documents are matched by their key.
    """
    accepted: list[tuple[Key, dict[str, Any]]] = []
    rejected: list[str] = []
    first_with_key: dict[Key, int] = {}
    for number, item in enumerate(documents, 1):
        if not isinstance(item, Mapping):
            rejected.append(f"document {number}: must be a mapping, got {type(item).__name__}")
            continue
        document = {name: value for name, value in item.items() if name != _ID}
        problem = _storage_problem(document)
        if problem is not None:
            rejected.append(f"document {number}: {problem}")
            continue
        builder = TableBuilder(rule)
        rejections = builder.upsert({**document, _ID: number})
        if rejections:
            rejected.extend(rejection.detail for rejection in rejections)
            continue
        key = document_key(rule, document)
        if key is None:  # unreachable: TableBuilder refused it above
            continue
        earlier = first_with_key.setdefault(key, number)
        if earlier != number:
            rejected.append(
                f"document {number}: key {_key_text(rule, key)} repeats document {earlier}"
            )
            continue
        accepted.append((key, document))
    return accepted, rejected


def document_key(rule: EnrichRule, document: Mapping[str, object]) -> Key | None:
    """The key the proxy looks ``document`` up by (values as label text), None without one."""
    values = []
    for name in rule.key_fields:
        text = scalar_text(document.get(name))
        if not text:
            return None
        values.append(text)
    return tuple(values)


def _key_text(rule: EnrichRule, key: Key) -> str:
    return ",".join(f"{name}={value!r}" for name, value in zip(rule.key_fields, key, strict=True))


def _storage_problem(value: object, where: str = "") -> str | None:
    """Why ``value`` cannot be stored and exported as it is, or None.

    Only what JSON can spell: a YAML date, for one, would come back from MongoDB as a datetime
    and from a JSON export not at all.
    """
    if isinstance(value, Mapping):
        for name, item in value.items():
            if not isinstance(name, str) or not name:
                return f"field name {name!r} is not a non-empty string"
            if name.startswith("$") or "." in name:
                return (
                    f"field name {name!r}: MongoDB field names here may not start with $ or hold ."
                )
            problem = _storage_problem(item, f"{where}.{name}" if where else name)
            if problem is not None:
                return problem
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = _storage_problem(item, f"{where}[{index}]")
            if problem is not None:
                return problem
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return None
    kind = "a date" if isinstance(value, date | datetime) else f"a {type(value).__name__}"
    return f"field {where!r} is {kind}: write it as a string"


# --- MongoDB -----------------------------------------------------------------------------------


def _client(spec: MetadataConfig) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(
        spec.mongodb_uri,
        serverSelectionTimeoutMS=spec.timeout_ms,
        connectTimeoutMS=spec.timeout_ms,
        socketTimeoutMS=spec.timeout_ms,
    )


def _reason(exc: PyMongoError) -> str:
    # The driver appends its topology description or the whole server reply; the first part
    # says why.
    text = str(exc).split(", Topology Description:")[0]
    return text.split(", full error:")[0]


async def import_documents(
    spec: MetadataConfig, documents: Sequence[object], rule_name: str | None = None
) -> ImportReport:
    """Upsert ``documents`` into the collection of rule ``rule_name`` (default: the first).

    Refused documents (see ``validate_documents``) are reported and not written. The others
    replace the stored document with the same key whole, so a field removed from the file is
    removed from MongoDB too; a document equal to the stored one is not written. Existing
    documents are matched by the key as the proxy reads it, so a stored ``tier: 1`` and a
    file's ``"1"`` are the same key. MetadataUnavailable when MongoDB cannot be used.
    """
    rule = select_rule(spec, rule_name)
    accepted, rejected = validate_documents(rule, documents)
    report = ImportReport(rule, rejected=rejected)
    client = _client(spec)
    where = f"{rule.database}.{rule.collection}"
    try:
        collection = client[rule.database][rule.collection]
        # First: with the index in place no write below can give one key two documents.
        report.index = await collection.create_index(
            [(name, ASCENDING) for name in rule.key_fields], unique=True
        )
        stored: dict[Key, dict[str, Any]] = {}
        # The whole collection: tables are small, and the proxy reads all of it on every reload.
        async for document in collection.find({}):
            key = document_key(rule, document)
            if key is not None:
                stored.setdefault(key, document)
        writes: list[ReplaceOne[dict[str, Any]]] = []
        for key, document in accepted:
            current = stored.get(key)
            if current is None:
                key_filter = {name: document[name] for name in rule.key_fields}
                writes.append(ReplaceOne(key_filter, document, upsert=True))
                report.inserted += 1
            elif {k: v for k, v in current.items() if k != _ID} == document:
                report.unchanged += 1
            else:
                writes.append(ReplaceOne({_ID: current[_ID]}, document))
                report.updated += 1
        if writes:
            await collection.bulk_write(writes, ordered=True)
    except PyMongoError as exc:
        raise MetadataUnavailable(f"importing into {where}: {_reason(exc)}") from None
    finally:
        await client.close()
    return report


async def export_documents(
    spec: MetadataConfig, rule_name: str | None = None
) -> list[dict[str, Any]]:
    """Every document of the rule's collection without ``_id``, ordered by key."""
    rule = select_rule(spec, rule_name)
    client = _client(spec)
    try:
        cursor = client[rule.database][rule.collection].find({}, {_ID: 0})
        documents = [dict(document) async for document in cursor]
    except PyMongoError as exc:
        raise MetadataUnavailable(
            f"exporting {rule.database}.{rule.collection}: {_reason(exc)}"
        ) from None
    finally:
        await client.close()
    documents.sort(key=lambda document: document_key(rule, document) or ())
    return [_plain(document) for document in documents]


def _plain(value: Any) -> Any:
    """``value`` with what only BSON can spell (ObjectId, datetime, …) as text, so any export
    format can write it."""
    if isinstance(value, Mapping):
        return {str(name): _plain(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
