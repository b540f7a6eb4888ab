"""An on-disk FIFO of encoded remote-write batches, one per shard of a destination.

Batches stay on disk until the destination accepts them, so a restart, a crash or a long
downstream outage loses nothing that was queued, and each shard drains in the order it was
filled (per-series order, spec §3).

Layout, under ``<queue.path>/shard-<n>/``:

* ``<first record number>.seg``: records ``[length u32][crc32 u32][samples u32][body]``,
  appended; a new segment starts past ``SEGMENT_BYTES``;
* ``ack``: the number of the next record to send, rewritten atomically after every accepted
  batch (so at most the batch in flight when the process died is sent again: the downstream
  accepts an exact duplicate of its newest samples).

A torn record at the tail (a crash during a write) fails its CRC and is cut off at start.
``sync`` makes appended records durable (fsync); callers sync before they acknowledge.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 8 * 1024 * 1024
_HEADER = struct.Struct("<III")


@dataclass(frozen=True)
class Record:
    number: int
    body: bytes
    samples: int


@dataclass(frozen=True)
class _Entry:
    """Where a record not yet acknowledged lies; its body is read when it is sent."""

    number: int
    path: Path
    offset: int
    length: int
    samples: int


class _Segment:
    def __init__(self, path: Path, first: int) -> None:
        self.path = path
        self.first = first
        self.count = 0
        self.size = 0


class ShardQueue:
    """One shard's FIFO on disk. Not thread-safe: one event loop owns it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: deque[_Segment] = deque()
        self._next_ack = self._read_ack()
        self._pending: deque[_Entry] = deque()
        """Records not yet acknowledged, oldest first (positions only: bodies stay on disk)."""
        self.samples = 0
        """Samples in records not yet acknowledged."""
        self.size_bytes = 0
        """Bytes of the records not yet acknowledged (what a full queue is measured by;
        acknowledged records can linger in the segment still being written to)."""
        self._dirty_paths: set[Path] = set()
        self._open_segments()

    # --- startup ----------------------------------------------------------------------------

    def _read_ack(self) -> int:
        try:
            return int((self.directory / "ack").read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _open_segments(self) -> None:
        paths = sorted(self.directory.glob("*.seg"), key=lambda p: int(p.stem))
        for path in paths:
            segment = _Segment(path, int(path.stem))
            records, good_size = self._scan(path, segment.first)
            if good_size != path.stat().st_size:
                with path.open("r+b") as handle:  # a torn tail: cut it off
                    handle.truncate(good_size)
            segment.count, segment.size = len(records), good_size
            if segment.first + segment.count <= self._next_ack:
                path.unlink()  # fully acknowledged before the stop
                continue
            self._segments.append(segment)
            for record in records:
                if record.number >= self._next_ack:
                    self._push_pending(record)

    @staticmethod
    def _scan(path: Path, first: int) -> tuple[list[_Entry], int]:
        data = path.read_bytes()
        records: list[_Entry] = []
        position = 0
        while position + _HEADER.size <= len(data):
            length, crc, samples = _HEADER.unpack_from(data, position)
            start = position + _HEADER.size
            body = data[start : start + length]
            if len(body) != length or zlib.crc32(body) != crc:
                break
            records.append(_Entry(first + len(records), path, start, length, samples))
            position = start + length
        return records, position

    # --- writing ----------------------------------------------------------------------------

    @property
    def next_number(self) -> int:
        if self._segments:
            last = self._segments[-1]
            return last.first + last.count
        return self._next_ack

    def append(self, body: bytes, samples: int) -> None:
        segment = self._segments[-1] if self._segments else None
        if segment is None or segment.size >= SEGMENT_BYTES:
            segment = _Segment(self.directory / f"{self.next_number:020d}.seg", self.next_number)
            self._segments.append(segment)
        with segment.path.open("ab") as handle:
            handle.write(_HEADER.pack(len(body), zlib.crc32(body), samples))
            handle.write(body)
        entry = _Entry(
            segment.first + segment.count,
            segment.path,
            segment.size + _HEADER.size,
            len(body),
            samples,
        )
        segment.count += 1
        segment.size += _HEADER.size + len(body)
        self._push_pending(entry)
        self._dirty_paths.add(segment.path)

    def _push_pending(self, entry: _Entry) -> None:
        self._pending.append(entry)
        self.samples += entry.samples
        self.size_bytes += _HEADER.size + entry.length

    def _pop_pending(self) -> _Entry:
        entry = self._pending.popleft()
        self.samples -= entry.samples
        self.size_bytes -= _HEADER.size + entry.length
        return entry

    def take_unsynced(self) -> list[Path]:
        """Segments appended to since the last call; hand them to ``fsync_paths``.

        Split from the fsync itself so the fsync can run in a worker thread while this
        queue goes on taking appends (which the next call then reports).
        """
        paths = sorted(self._dirty_paths)
        self._dirty_paths.clear()
        return paths

    def sync(self) -> None:
        """fsync what was appended since the last sync, in this thread."""
        fsync_paths(self.take_unsynced(), self.directory)

    # --- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    def peek(self) -> Record | None:
        """The oldest record not acknowledged yet, read from disk."""
        if not self._pending:
            return None
        entry = self._pending[0]
        with entry.path.open("rb") as handle:
            handle.seek(entry.offset)
            body = handle.read(entry.length)
        return Record(entry.number, body, entry.samples)

    def ack(self, record: Record) -> None:
        """``record`` (the one ``peek`` gave) was accepted: never send it again."""
        head = self._pop_pending()
        assert head.number == record.number, "records are acknowledged in order"
        self._acknowledge_below(record.number + 1)

    def ack_through(self, number: int) -> None:
        """Every record numbered below ``number`` was dealt with (a checkpoint covers it)."""
        while self._pending and self._pending[0].number < number:
            self._pop_pending()
        self._acknowledge_below(number)

    def _acknowledge_below(self, number: int) -> None:
        """Persist the acknowledgement point; delete segments entirely below it, except the
        one being written to."""
        if number <= self._next_ack:
            return
        self._next_ack = number
        _write_atomically(self.directory / "ack", str(number).encode())
        while len(self._segments) > 1 and (
            self._segments[0].first + self._segments[0].count <= number
        ):
            self._segments.popleft().path.unlink()

    def unacknowledged(self) -> list[Record]:
        """Every record not acknowledged yet, oldest first, read from disk."""
        records = []
        for entry in self._pending:
            with entry.path.open("rb") as handle:
                handle.seek(entry.offset)
                records.append(Record(entry.number, handle.read(entry.length), entry.samples))
        return records

    def drop_oldest(self) -> int:
        """Give up the oldest records to make room: what is left of the oldest segment, or
        the older half when only one segment is left. The samples they held (0 if none)."""
        if not self._pending:
            return 0
        if len(self._segments) > 1:
            end = self._segments[0].first + self._segments[0].count
        else:
            end = self._pending[0].number + max(1, len(self._pending) // 2)
        dropped = 0
        while self._pending and self._pending[0].number < end:
            dropped += self._pop_pending().samples
        self._acknowledge_below(end)
        return dropped


def fsync_paths(paths: list[Path], directory: Path) -> None:
    """fsync files (appended to earlier) and their folder (new files); safe in any thread."""
    if not paths:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # acknowledged and deleted meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
