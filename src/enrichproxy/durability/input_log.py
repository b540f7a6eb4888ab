"""The input write-ahead log: every accepted request body, on disk before it is acknowledged.

With ``aggregation.state_path``, the state checkpoint holds what the views had aggregated at
one moment; the requests accepted after that moment are in this log, under
``<state_path>.wal/``. A request is answered 204 only once its body is fsynced there, so a
``kill -9`` at any moment loses nothing acknowledged: the next start restores the checkpoint
and applies the logged requests again, in order.

fsyncs are shared (group commit): one worker-thread fsync covers every request appended
before it, so many concurrent senders wait for one disk flush, not one each. A checkpoint
acknowledges the records it covers, and their segments are deleted.

The record format and the segment handling are the disk queue's (disk_queue.ShardQueue).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from enrichproxy.durability.disk_queue import Record, ShardQueue, fsync_paths


class InputLog:
    def __init__(self, directory: Path) -> None:
        self._queue = ShardQueue(directory)
        self._synced_through = self._queue.next_number
        """Every record numbered below this is on disk."""
        self._synced = asyncio.Condition()
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure: OSError | None = None

    @property
    def next_number(self) -> int:
        """The number the next appended record gets: a checkpoint covers all below it."""
        return self._queue.next_number

    def unapplied(self, from_number: int) -> list[Record]:
        """Logged records a checkpoint taken at ``from_number`` does not cover."""
        return [r for r in self._queue.unacknowledged() if r.number >= from_number]

    def append(self, body: bytes) -> int:
        """Log a request body; its record number (durable once ``durable`` returns)."""
        self._queue.append(body, 0)
        self._wanted.set()
        return self._queue.next_number - 1

    async def durable(self, number: int) -> None:
        """Wait until record ``number`` is fsynced; OSError if the disk failed."""
        async with self._synced:
            await self._synced.wait_for(
                lambda: self._synced_through > number or self._failure is not None
            )
        if self._synced_through <= number and self._failure is not None:
            raise self._failure

    def covered_by_checkpoint(self, number: int) -> None:
        """A checkpoint holds the effect of every record below ``number``: forget them."""
        self._queue.ack_through(number)

    def start(self) -> None:
        self._task = asyncio.create_task(self._commit(), name="input-log-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._queue.sync()

    async def _commit(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            target = self._queue.next_number
            paths = self._queue.take_unsynced()
            try:
                await asyncio.to_thread(fsync_paths, paths, self._queue.directory)
                self._failure = None
                self._synced_through = target
            except OSError as exc:
                self._failure = exc
            async with self._synced:
                self._synced.notify_all()
