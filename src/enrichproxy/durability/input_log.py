"""The input write-ahead log: every accepted request body, on disk before it is applied.

With ``aggregation.state_path``, the state checkpoint holds what the views had aggregated at
one moment; the requests accepted after that moment are in this log, under
``<state_path>.wal/``. A request is applied to the engine, and answered 204, only once its
body is fsynced here: a write that cannot be made durable (a full disk) is answered 503 with
nothing applied, and a ``kill -9`` at any moment loses nothing acknowledged: the next start
restores the checkpoint and applies the logged requests again, in order.

The protocol, per request: ``append`` (on OSError nothing was written: the segment is cut back),
``durable`` (on OSError the record and every one after it were taken back), then the caller
applies the body and says so with ``applied``, or ``void`` when the engine refused it (a 400),
so a replay skips it. Until then the record is *in flight*, and ``covered_through`` (what a
checkpoint taken now covers) stays below it.

fsyncs are shared (group commit): one worker-thread fsync covers every request appended
before it, so many concurrent senders wait for one disk flush, not one each. A checkpoint
acknowledges the records it covers, and their segments are deleted.

The record format and the segment handling are the disk queue's (disk_queue.ShardQueue); the
``samples`` field of a record says what it is (``REQUEST`` or ``VOID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass
from pathlib import Path

from enrichproxy.durability.disk_queue import Record, ShardQueue, fsync_paths
from enrichproxy.durability.health import DurabilityHealth
from enrichproxy.wire.v2 import WireProtocol

REQUEST = 0
"""A request body as received."""
VOID = 1
"""The body is the number (u64) of an earlier record the engine refused: never apply it."""
REQUEST_V2 = 2
"""A remote write 2.0 request body as received (a run that predates 2.0 skips it)."""
_KIND_OF = {WireProtocol.V1: REQUEST, WireProtocol.V2: REQUEST_V2}
_NUMBER = struct.Struct("<Q")


@dataclass(frozen=True)
class Ticket:
    """One appended request: its record number and the attempt it belongs to (a failed
    fsync takes back every record of the attempt)."""

    number: int
    epoch: int


class InputLog:
    def __init__(self, directory: Path, health: DurabilityHealth | None = None) -> None:
        self._queue = ShardQueue(directory, health, file="input_log")
        self._synced_through = self._queue.next_number
        """Every record numbered below this is on disk."""
        self._epoch = 0
        self._failure: OSError | None = None
        self._in_flight: set[int] = set()
        """Appended records not yet applied or voided."""
        self._synced = asyncio.Condition()
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def retry_create(self) -> None:
        """Make the log's directory if the start could not (see ShardQueue.retry_create)."""
        self._queue.retry_create()

    @property
    def next_number(self) -> int:
        """The number the next appended record gets."""
        return self._queue.next_number

    @property
    def covered_through(self) -> int:
        """A checkpoint taken now covers every record numbered below this: the oldest record
        still in flight, or the next number when none is."""
        return min(self._in_flight, default=self._queue.next_number)

    def unapplied(self, from_number: int) -> list[Record]:
        """Logged requests a checkpoint taken at ``from_number`` does not cover, less the
        voided ones. Records numbered below it that were lost are never numbered again."""
        self._queue.skip_to(from_number)
        logged = self._queue.unacknowledged()
        voided = {_NUMBER.unpack(r.body)[0] for r in logged if r.samples == VOID}
        return [
            r
            for r in logged
            if r.samples in (REQUEST, REQUEST_V2)
            and r.number >= from_number
            and r.number not in voided
        ]

    @staticmethod
    def protocol_of(record: Record) -> WireProtocol:
        """The message a logged request body holds."""
        return WireProtocol.V2 if record.samples == REQUEST_V2 else WireProtocol.V1

    def append(self, body: bytes, protocol: WireProtocol = WireProtocol.V1) -> Ticket:
        """Log a request body (durable once ``durable`` returns); OSError if it could not be
        written, with nothing left of it on disk."""
        number = self._queue.append(body, _KIND_OF[protocol])
        self._in_flight.add(number)
        self._wanted.set()
        return Ticket(number, self._epoch)

    async def durable(self, ticket: Ticket) -> None:
        """Wait until the record is fsynced; OSError if the disk failed (the record was taken
        back: it must not be applied)."""
        async with self._synced:
            await self._synced.wait_for(
                lambda: self._synced_through > ticket.number or self._epoch != ticket.epoch
            )
        if self._epoch != ticket.epoch:
            self._in_flight.discard(ticket.number)
            assert self._failure is not None
            raise self._failure

    def applied(self, ticket: Ticket) -> None:
        """The engine has the record's effect: a checkpoint may cover it."""
        self._in_flight.discard(ticket.number)

    def void(self, ticket: Ticket) -> None:
        """The engine refused the record (the request was answered 4xx): a replay skips it.

        The void record is not waited for: if a crash takes it, the replay refuses the
        request again as the engine did now.
        """
        self._in_flight.discard(ticket.number)
        with contextlib.suppress(OSError):  # reported by the queue
            self._queue.append(_NUMBER.pack(ticket.number), VOID)

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
        with contextlib.suppress(OSError):  # reported; what was not synced was not answered
            self._queue.sync()

    async def _commit(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            target = self._queue.next_number
            paths = self._queue.take_unsynced()
            try:
                await asyncio.to_thread(fsync_paths, paths, self._queue.directory)
            except OSError as exc:
                # Whether the failed pages reached the disk is unknown: take back every
                # record not known durable (their writers are answered 503), so a restart
                # never applies a write its sender was told to retry.
                self._queue.synced([], exc)
                self._queue.truncate_from(self._synced_through)
                self._in_flight = {n for n in self._in_flight if n < self._synced_through}
                self._failure = exc
                self._epoch += 1
            else:
                self._queue.synced(paths, None)
                self._synced_through = target
            async with self._synced:
                self._synced.notify_all()
