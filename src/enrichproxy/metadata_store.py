"""Loads the metadata table from MongoDB: the only module that imports the Mongo driver.

It uses pymongo's asyncio API (``AsyncMongoClient``), the official successor of the deprecated
motor. The table is rebuilt from a full read every ``refresh_interval`` and handed over whole,
so lookups never wait on the database. A failed reload keeps the last good table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from enrichproxy.config import MetadataConfig
from enrichproxy.errors import EnrichproxyError
from enrichproxy.metadata_table import MetadataTable, TableBuild, build_table

log = logging.getLogger(__name__)

# Before the first table is loaded writes are refused (503), so retry quickly until then.
INITIAL_RETRY_SECONDS = 1.0
# Rejections logged per load; the rest are only counted.
MAX_LOGGED_REJECTIONS = 10


class MetadataUnavailable(EnrichproxyError):
    """MongoDB could not be read; the message says why."""


class MetadataStore:
    """Owns the MongoDB client and the refresh loop."""

    def __init__(
        self,
        spec: MetadataConfig,
        on_load: Callable[[TableBuild], None],
        on_failure: Callable[[MetadataUnavailable], None],
    ) -> None:
        self.spec = spec
        self._on_load = on_load
        self._on_failure = on_failure
        self._client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            spec.mongodb_uri,
            serverSelectionTimeoutMS=spec.timeout_ms,
            connectTimeoutMS=spec.timeout_ms,
            socketTimeoutMS=spec.timeout_ms,
        )
        self._version = 0
        self.table: MetadataTable | None = None

    @property
    def loaded(self) -> bool:
        return self.table is not None

    async def load(self) -> TableBuild:
        """Read the whole collection and build a table; MetadataUnavailable on any DB failure."""
        projection = {self.spec.key_field: 1, **{name: 1 for name in self.spec.fields}}
        collection = self._client[self.spec.database][self.spec.collection]
        try:
            documents = await collection.find({}, projection).to_list(None)
        except PyMongoError as exc:
            # The driver appends its whole topology description; the first part says why.
            reason = str(exc).split(", Topology Description:")[0]
            raise MetadataUnavailable(f"reading {self.spec.collection}: {reason}") from None
        self._version += 1
        build = build_table(documents, self.spec, self._version, time.time())
        for rejection in build.rejections[:MAX_LOGGED_REJECTIONS]:
            log.warning(
                "metadata document skipped reason=%s %s", rejection.reason, rejection.detail
            )
        if len(build.rejections) > MAX_LOGGED_REJECTIONS:
            log.warning(
                "metadata: %d more documents skipped", len(build.rejections) - MAX_LOGGED_REJECTIONS
            )
        return build

    async def refresh(self) -> bool:
        """One load; hands the table over or reports the failure. True on success."""
        try:
            build = await self.load()
        except MetadataUnavailable as exc:
            self._on_failure(exc)
            return False
        self.table = build.table
        self._on_load(build)
        return True

    async def run(self) -> None:
        """Refresh forever: fast retries until the first success, then every refresh_interval."""
        while True:
            ok = await self.refresh()
            delay = self.spec.refresh_interval_ms / 1000
            if not ok and not self.loaded:
                delay = min(delay, INITIAL_RETRY_SECONDS)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._client.close()
