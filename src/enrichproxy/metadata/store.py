"""Keeps the enrichment tables current from MongoDB: the only module that imports the driver.

It uses pymongo's asyncio API (``AsyncMongoClient``), the official successor of the deprecated
motor. Per rule, one task owns that rule's table and is the only writer of it:

1. It opens a change stream (``watch`` with ``full_document="updateLookup"``) *before* reading
   the whole collection, so no change made during the read is missed; then it applies changes
   as they come, batched, and hands each new table over whole. The resume token of the last
   applied change is kept: after an error or a server restart the stream resumes right after
   it, so no change is lost or applied twice.
2. Every ``refresh_interval`` it reads the whole collection again (a safety net). Changes and
   reloads happen in the same task, in order, so the two never race.
3. Where change streams are not available (a standalone server: error 40573) it says so once
   and polls with full reads every ``refresh_interval``.

A failed read keeps the last good table. With ``snapshot_path`` the tables are written
atomically after changes (at most every few seconds) and read back at start, so enrichproxy can
serve when MongoDB is down at start; such a table is marked stale until MongoDB answers. The
file starts with the header line of every durable file (durability/state_store.py: format,
CRC32 and length of the JSON after it): a snapshot that is changed, cut or not JSON is reported
once (``DurabilityHealth.corrupted``: a log line and a counter), moved aside, and the start goes
on with MongoDB's data, never with wrong enrichment. A snapshot of the format before (the JSON
alone) is still read.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, PyMongoError

from enrichproxy.config.schema import EnrichRule, MetadataConfig
from enrichproxy.durability.files import move_aside, mtime_text, write_atomically
from enrichproxy.durability.health import Damage, DurabilityHealth
from enrichproxy.durability.state_store import CorruptFile, frame, unframe
from enrichproxy.errors import EnrichproxyError
from enrichproxy.metadata.table import (
    DUPLICATE_KEY,
    MetadataTable,
    Rejection,
    TableBuild,
    TableBuilder,
)

log = logging.getLogger(__name__)

# Before the first table is loaded writes are refused (503), so retry quickly until then.
INITIAL_RETRY_SECONDS = 1.0
# After a failure once a table is loaded: retry at this pace (capped by refresh_interval).
RETRY_SECONDS = 2.0
# How long one wait for changes lasts on the server; a change is applied at most this late.
CHANGE_WAIT_MS = 100
# Changes applied together at most, so a burst does not hold one table for long.
MAX_CHANGES_PER_BATCH = 1000
# Snapshots are written at most this often (a burst of changes writes one file).
SNAPSHOT_INTERVAL_SECONDS = 2.0
# Rejections logged per load; the rest are only counted.
MAX_LOGGED_REJECTIONS = 10
# MongoDB error codes: change streams unavailable (standalone server), resume point gone.
CHANGE_STREAMS_UNSUPPORTED = 40573
CHANGE_STREAM_HISTORY_LOST = (136, 280, 286)
SNAPSHOT_FORMAT = "enrichproxy-metadata-snapshot/1"
# The kind in the snapshot's header line, and the ``file`` label of its damage reports.
SNAPSHOT_KIND = "metadata-snapshot"
SNAPSHOT_FILE = "metadata_snapshot"


class MetadataUnavailable(EnrichproxyError):
    """MongoDB could not be read; the message says why."""


class _ChangeStreamsUnsupported(EnrichproxyError):
    pass


class FollowState(enum.Enum):
    """How a rule's table is kept current; exported as ``enrichproxy_metadata_follow_state``."""

    STARTING = "starting"
    FOLLOWING = "following"
    """A change stream is open: changes arrive as they happen."""
    POLLING = "polling"
    """No change streams on this server: full reads every refresh_interval."""
    DOWN = "down"
    """The last attempt to reach MongoDB failed; the last good table stays in use."""


class Source(enum.Enum):
    SNAPSHOT = "snapshot"
    MONGODB = "mongodb"


@dataclass
class TableUpdate:
    """A new table for one rule, and how it came about (for logs and metrics)."""

    rule_index: int
    rule: EnrichRule
    build: TableBuild
    source: Source
    changes: Counter[str] = field(default_factory=Counter)
    """Change-stream events applied, by operation type (empty for a full read)."""
    full_read: bool = False


def _reason(exc: PyMongoError) -> str:
    # The driver appends its whole topology description; the first part says why.
    return str(exc).split(", Topology Description:")[0]


class RuleFollower:
    """Keeps one rule's table current (see the module docstring)."""

    def __init__(self, store: MetadataStore, index: int, rule: EnrichRule) -> None:
        self.store = store
        self.index = index
        self.rule = rule
        self.builder = TableBuilder(rule)
        self.table: MetadataTable | None = None
        self.source: Source | None = None
        self.state = FollowState.STARTING
        self.confirmed_at = 0.0
        """Wall-clock seconds when the table was last known to match MongoDB."""
        self.resume_token: Mapping[str, Any] | None = None
        self._version = 0
        self._polling = not store.spec.watch

    @property
    def collection(self) -> Any:
        return self.store.client[self.rule.database][self.rule.collection]

    def _set_state(self, state: FollowState) -> None:
        if state != self.state:
            self.state = state
            self.store.on_state(self)

    def restore(self, table: MetadataTable) -> None:
        self.table = table
        self.source = Source.SNAPSHOT
        self.confirmed_at = table.loaded_at
        self.store.on_update(TableUpdate(self.index, self.rule, TableBuild(table), Source.SNAPSHOT))

    async def run(self) -> None:
        while True:
            try:
                if self._polling:
                    await self._reload()
                    self._set_state(FollowState.POLLING)
                    await asyncio.sleep(self.store.spec.refresh_interval_ms / 1000)
                else:
                    await self._follow()
            except _ChangeStreamsUnsupported:
                log.warning(
                    "rule=%s: this MongoDB server has no change streams (a standalone server?);"
                    " polling every %.0fs instead",
                    self.rule.name,
                    self.store.spec.refresh_interval_ms / 1000,
                )
                self._polling = True
            except MetadataUnavailable as exc:
                self._set_state(FollowState.DOWN)
                self.store.on_failure(self, exc)
                delay = INITIAL_RETRY_SECONDS if self.table is None else RETRY_SECONDS
                await asyncio.sleep(min(delay, self.store.spec.refresh_interval_ms / 1000))

    async def _open_stream(self) -> Any:
        options: dict[str, Any] = {
            "full_document": "updateLookup",
            "max_await_time_ms": CHANGE_WAIT_MS,
        }
        if self.resume_token is not None:
            options["resume_after"] = self.resume_token
        try:
            return await self.collection.watch(**options)
        except OperationFailure as exc:
            if exc.code == CHANGE_STREAMS_UNSUPPORTED:
                raise _ChangeStreamsUnsupported(str(exc)) from None
            if exc.code in CHANGE_STREAM_HISTORY_LOST and self.resume_token is not None:
                log.warning(
                    "rule=%s: resume point gone (%s); reading everything", self.rule.name, exc.code
                )
                self.resume_token = None
                return await self._open_stream()
            raise MetadataUnavailable(f"watching {self.rule.collection}: {_reason(exc)}") from None
        except PyMongoError as exc:
            raise MetadataUnavailable(f"watching {self.rule.collection}: {_reason(exc)}") from None

    async def _follow(self) -> None:
        stream = await self._open_stream()
        try:
            needs_read = self.resume_token is None or self.source is not Source.MONGODB
            # A point to resume from even before the first change arrives.
            self.resume_token = stream.resume_token or self.resume_token
            if needs_read:
                # Opened first, so every change made during this read is also in the stream.
                await self._reload()
            self._set_state(FollowState.FOLLOWING)
            refresh = self.store.spec.refresh_interval_ms / 1000
            next_reload = time.monotonic() + refresh
            while True:
                batch = await self._next_batch(stream)
                if batch and self._apply(batch):
                    # The collection was dropped or renamed: this stream has ended for good.
                    self.resume_token = None
                    return
                self.resume_token = stream.resume_token
                self.confirmed_at = time.time()
                if time.monotonic() >= next_reload:
                    await self._reload()
                    next_reload = time.monotonic() + refresh
        except PyMongoError as exc:
            raise MetadataUnavailable(f"following {self.rule.collection}: {_reason(exc)}") from None
        finally:
            with contextlib.suppress(PyMongoError):
                await stream.close()

    async def _next_batch(self, stream: Any) -> list[Mapping[str, Any]]:
        batch: list[Mapping[str, Any]] = []
        change = await stream.try_next()
        while change is not None:
            batch.append(change)
            if len(batch) >= MAX_CHANGES_PER_BATCH:
                break
            change = await stream.try_next()
        return batch

    def _apply(self, changes: list[Mapping[str, Any]]) -> bool:
        """Apply a batch of change events; True when the stream was invalidated."""
        applied: Counter[str] = Counter()
        invalidated = False
        rejections: list[Rejection] = []
        for change in changes:
            operation = change.get("operationType", "")
            if operation in ("insert", "update", "replace"):
                document = change.get("fullDocument")
                if document is None:  # deleted before the lookup: a later event says so
                    self.builder.delete(change["documentKey"]["_id"])
                else:
                    rejections.extend(self.builder.upsert(document))
            elif operation == "delete":
                self.builder.delete(change["documentKey"]["_id"])
            elif operation in ("drop", "rename", "dropDatabase", "invalidate"):
                self.builder.replace_all(())
                invalidated = True
            applied[operation] += 1
        self._publish(rejections, applied, full_read=False)
        return invalidated

    async def _reload(self) -> None:
        projection = dict.fromkeys((*self.rule.key_fields, *self.rule.fields), 1)
        try:
            documents = await self.collection.find({}, projection).to_list(None)
        except PyMongoError as exc:
            raise MetadataUnavailable(f"reading {self.rule.collection}: {_reason(exc)}") from None
        self.confirmed_at = time.time()
        rejections = self.builder.replace_all(documents)
        self._publish(rejections, Counter(), full_read=True)

    def _publish(
        self, rejections: list[Rejection], changes: Counter[str], *, full_read: bool
    ) -> None:
        self._version += 1
        build = self.builder.build(self._version, self.confirmed_at)
        if not full_read:
            # Duplicate keys are found over the whole table: report them once per full read,
            # not again with every change batch.
            build.rejections = [r for r in build.rejections if r.reason != DUPLICATE_KEY]
        build.rejections[:0] = rejections
        for rejection in build.rejections[:MAX_LOGGED_REJECTIONS]:
            log.warning(
                "rule=%s document skipped reason=%s %s",
                self.rule.name,
                rejection.reason,
                rejection.detail,
            )
        if len(build.rejections) > MAX_LOGGED_REJECTIONS:
            log.warning(
                "rule=%s: %d more documents skipped",
                self.rule.name,
                len(build.rejections) - MAX_LOGGED_REJECTIONS,
            )
        self.table = build.table
        self.source = Source.MONGODB
        self.store.on_update(
            TableUpdate(self.index, self.rule, build, Source.MONGODB, changes, full_read)
        )
        self.store.snapshot_due = True


Handler = Callable[[TableUpdate], None]


class MetadataStore:
    """Owns the MongoDB client, one follower per rule and the snapshot file."""

    def __init__(
        self,
        spec: MetadataConfig,
        on_update: Handler,
        on_failure: Callable[[RuleFollower, MetadataUnavailable], None],
        on_state: Callable[[RuleFollower], None] = lambda follower: None,
        health: DurabilityHealth | None = None,
    ) -> None:
        self.spec = spec
        self.health = health if health is not None else DurabilityHealth()
        """Where a damaged snapshot is reported (the server's, which counts it)."""
        self.on_update = on_update
        self.on_failure = on_failure
        self.on_state = on_state
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            spec.mongodb_uri,
            serverSelectionTimeoutMS=spec.timeout_ms,
            connectTimeoutMS=spec.timeout_ms,
            socketTimeoutMS=spec.timeout_ms + CHANGE_WAIT_MS,
        )
        self.followers = [RuleFollower(self, i, r) for i, r in enumerate(spec.enrich_rules)]
        self.snapshot_due = False

    @property
    def loaded(self) -> bool:
        """Every rule has a table (from MongoDB or a snapshot)."""
        return all(f.table is not None for f in self.followers)

    @property
    def stale(self) -> bool:
        """Some table comes from a snapshot: MongoDB has not answered since the start."""
        return any(f.source is Source.SNAPSHOT for f in self.followers)

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(f.run(), name=f"metadata-{f.rule.name}") for f in self.followers
        ]
        if self.spec.snapshot_path:
            tasks.append(asyncio.create_task(self._write_snapshots(), name="metadata-snapshot"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        if self.spec.snapshot_path and self.snapshot_due:
            try:
                await asyncio.to_thread(self.write_snapshot)
            except OSError as exc:  # a full disk must not fail the shutdown
                log.error("metadata snapshot %s not written: %s", self.spec.snapshot_path, exc)
        await self.client.close()

    def adopt(self, previous: MetadataStore) -> list[RuleFollower]:
        """Take over the tables of ``previous`` (closed) for every rule that did not change.

        For a configuration reload, before ``run``: such a rule keeps its table, so the proxy
        stays ready, and on the same server its change stream resumes after the last change
        applied, so nothing is read again. A rule that is new or changed (any of its keys)
        starts without a table, as at start. Returns the followers that took one over.
        """
        same_server = previous.spec.mongodb_uri == self.spec.mongodb_uri
        earlier = {follower.rule: follower for follower in previous.followers}
        adopted = []
        for follower in self.followers:
            old = earlier.get(follower.rule)
            if old is None or old.table is None:
                continue
            follower.builder = old.builder
            follower.table = old.table
            follower.source = old.source
            follower.confirmed_at = old.confirmed_at
            follower._version = old._version
            if same_server:
                follower.resume_token = old.resume_token
                if previous.spec.watch and self.spec.watch:
                    # What it learnt: this server has no change streams, so poll straight away.
                    follower._polling = old._polling
            adopted.append(follower)
        # The snapshot may have moved (snapshot_path) and is written only after a change.
        self.snapshot_due = bool(adopted)
        return adopted

    # --- snapshot ---------------------------------------------------------------------------

    def restore_snapshot(self) -> bool:
        """Load the tables of the snapshot file, where it matches the configured rules.

        A damaged file is reported, moved aside and ignored: the tables then come from MongoDB
        (writes wait for them), which is better than enriching with a table that may be wrong.
        """
        path = self.spec.snapshot_path
        if not path:
            return False
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("metadata snapshot %s unreadable, ignored: %s", path, exc)
            return False
        try:
            document = json.loads(unframe(SNAPSHOT_KIND, data))
            tables = read_snapshot(document, [f.rule for f in self.followers])
        except CorruptFile as exc:
            self._snapshot_damaged(Path(path), str(exc), len(data))
            return False
        except ValueError as exc:  # not JSON, or not UTF-8
            self._snapshot_damaged(Path(path), f"not JSON: {exc}", len(data))
            return False
        except (AttributeError, KeyError, TypeError) as exc:
            self._snapshot_damaged(Path(path), f"malformed: {exc!r}", len(data))
            return False
        if tables is None:
            log.warning("metadata snapshot %s does not match the configured rules, ignored", path)
            return False
        for follower, table in zip(self.followers, tables, strict=True):
            follower.restore(table)
        log.warning(
            "metadata: serving the snapshot of %s (stale until MongoDB answers)",
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(t.loaded_at for t in tables))),
        )
        return True

    def _snapshot_damaged(self, path: Path, what: str, size: int) -> None:
        written = mtime_text(path)
        self.health.corrupted(
            Damage(
                file=SNAPSHOT_FILE,
                path=path,
                what=what,
                records_lost=None,
                bytes_lost=size,
                moved_to=move_aside(path),
                time_range=f"before {written}" if written else "",
                consequence="the tables are read from MongoDB (writes wait for them)",
            )
        )

    def write_snapshot(self) -> None:
        """Write every rule's table atomically (temporary file, fsync, rename; a failed write
        leaves no partial file), behind a header line with its format and checksum."""
        path = self.spec.snapshot_path
        if not path or not all(f.table is not None for f in self.followers):
            return
        document = snapshot_document(
            [(f.rule, f.table) for f in self.followers if f.table is not None]
        )
        payload = json.dumps(document, separators=(",", ":")).encode()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_atomically(Path(path), frame(SNAPSHOT_KIND, payload))

    async def _write_snapshots(self) -> None:
        """Write the snapshot when a table changed; a failed write is tried again every
        interval, and logged once until it works."""
        failing = False
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL_SECONDS)
            if self.snapshot_due and not self.stale:
                self.snapshot_due = False
                try:
                    await asyncio.to_thread(self.write_snapshot)
                except OSError as exc:
                    self.snapshot_due = True
                    if not failing:
                        log.error(
                            "metadata snapshot %s not written, retrying: %s",
                            self.spec.snapshot_path,
                            exc,
                        )
                    failing = True
                    continue
                if failing:
                    log.warning("metadata snapshot %s written again", self.spec.snapshot_path)
                failing = False


def snapshot_document(tables: list[tuple[EnrichRule, MetadataTable]]) -> dict[str, Any]:
    return {
        "format": SNAPSHOT_FORMAT,
        "rules": [
            {
                "name": rule.name,
                "collection": rule.collection,
                "key_fields": list(rule.key_fields),
                "fields": list(rule.fields),
                "loaded_at": table.loaded_at,
                "entries": [[list(key), dict(labels)] for key, labels in table.entries.items()],
            }
            for rule, table in tables
        ],
    }


def read_snapshot(document: Any, rules: list[EnrichRule]) -> list[MetadataTable] | None:
    """The tables of a snapshot document, or None when it does not fit ``rules``."""
    if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
        return None
    saved = document.get("rules")
    if not isinstance(saved, list) or len(saved) != len(rules):
        return None
    tables = []
    for rule, entry in zip(rules, saved, strict=True):
        identity = (rule.name, rule.collection, list(rule.key_fields), list(rule.fields))
        if (
            entry.get("name"),
            entry.get("collection"),
            entry.get("key_fields"),
            entry.get("fields"),
        ) != identity:
            return None
        entries = {
            tuple(key): tuple(sorted(labels.items())) for key, labels in entry.get("entries", [])
        }
        tables.append(MetadataTable(entries, 0, float(entry.get("loaded_at", 0.0))))
    return tables
