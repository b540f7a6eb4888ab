"""An on-disk FIFO of encoded remote-write batches, one per shard of a destination.

Batches stay on disk until the destination accepts them, so a restart, a crash or a long
downstream outage loses nothing that was queued, and each shard drains in the order it was
filled (per-series order, spec §3).

Layout, under ``<queue.path>/shard-<n>/``:

* ``<first record number>.seg``: records framed as ``records`` describes (magic, number,
  samples, length, CRC), appended; a new segment starts past ``SEGMENT_BYTES``;
* ``ack``: ``enrichproxy-ack 2 <number> <crc32>``, the number of the next record to send,
  rewritten atomically after every accepted batch (so at most the batch in flight when the
  process died is sent again: the downstream accepts an exact duplicate of its newest samples).

Faults, and what they cost:

* an append that fails (a full disk) is rolled back at once, so the segment never holds a torn
  record that later appends would follow; if even the rollback fails, appends are refused
  until it succeeds;
* at start, an interrupted write at the end of a segment is cut off; damage anywhere else costs
  the damaged records only: the reader resynchronises on the next intact record, the damaged
  segment is kept aside as ``<name>.corrupt-<time>`` and rewritten with what is intact, and
  one log line says what was lost (a whole missing segment too);
* an unreadable ack file is kept aside and every record still on disk is sent again (the
  downstream refuses or ignores what it has: a duplicate, never a loss);
* an ack that cannot be replaced (a full disk) is rewritten in place (same size, no new
  block); if even that fails it is kept in memory and written again at the next sync.

Every failure is reported to ``DurabilityHealth``. ``sync`` makes appended records durable
(fsync); callers sync before they acknowledge.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from enrichproxy.durability import records
from enrichproxy.durability.files import keep_copy, move_aside, mtime_text, write_atomically
from enrichproxy.durability.health import Damage, DurabilityHealth
from enrichproxy.durability.timespan import between, sample_times

log = logging.getLogger(__name__)

SEGMENT_BYTES = 8 * 1024 * 1024
HEADER_SIZE = records.HEADER_SIZE
ACK_FORMAT = "enrichproxy-ack 2"


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
        self.next = first
        """The number after this segment's last record."""
        self.size = 0
        self.closed = False
        """Read only: a format-1 segment, or a damaged one that could not be rewritten."""


def encode_ack(number: int) -> bytes:
    """Fixed width, so that an ack can be rewritten in place when the disk is full."""
    text = f"{number:020d}"
    return f"{ACK_FORMAT} {text} {zlib.crc32(text.encode()):08x}\n".encode()


def _overwrite(path: Path, data: bytes) -> None:
    """Rewrite a file of the same size in place: no new block is needed, so it works on a
    full disk. A torn write fails the CRC and costs a resend, never a loss."""
    fd = os.open(path, os.O_WRONLY)
    try:
        if os.fstat(fd).st_size != len(data):
            raise OSError(errno.ENOSPC, "no ack of the same size to overwrite")
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def decode_ack(data: bytes) -> int | None:
    """The number an ack file holds, or None when it is damaged."""
    try:
        parts = data.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    if not parts:
        return 0
    if len(parts) == 1 and parts[0].isdigit():
        return int(parts[0])  # format 1: the number alone
    if (
        len(parts) == 4
        and " ".join(parts[:2]) == ACK_FORMAT
        and parts[2].isdigit()
        and f"{zlib.crc32(parts[2].encode()):08x}" == parts[3]
    ):
        return int(parts[2])
    return None


class ShardQueue:
    """One shard's FIFO on disk. Not thread-safe: one event loop owns it.

    ``file`` names what it holds in reports (``queue``, ``input_log``).
    """

    def __init__(
        self, directory: Path, health: DurabilityHealth | None = None, file: str = "queue"
    ) -> None:
        self.directory = directory
        self._health = health or DurabilityHealth()
        self._file = file
        self._created = False
        # A first start on a full disk cannot make the directory. That must not stop the
        # start (a crash loop helps nobody): the failure is reported (durability impaired:
        # writes 503, /-/ready failing), the queue starts empty, and every append and sync
        # tries again, so it heals by itself when space returns.
        with contextlib.suppress(OSError):
            self._ensure_directory()
        self._segments: deque[_Segment] = deque()
        self._pending: deque[_Entry] = deque()
        """Records not yet acknowledged, oldest first (positions only: bodies stay on disk)."""
        self.samples = 0
        """Samples in records not yet acknowledged."""
        self.size_bytes = 0
        """Bytes of the records not yet acknowledged (what a full queue is measured by;
        acknowledged records can linger in the segment still being written to)."""
        self._dirty_paths: set[Path] = set()
        self._torn: tuple[Path, int] | None = None
        """A failed append whose rollback failed too: (segment, good size) to cut first."""
        self._ack_unsaved = False
        self._floor = 0
        self.damage: list[Damage] = []
        """What was found damaged at start (already reported)."""
        self._ack_trusted = True
        self._next_ack = self._read_ack()
        self._open_segments()

    # --- startup ----------------------------------------------------------------------------

    def _ensure_directory(self) -> None:
        """Make the queue's directory if it is not made yet; OSError (reported) if the disk
        refuses."""
        if self._created:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._health.failed(self._file, "create", self.directory, exc)
            raise
        self._created = True
        self._health.recovered(self._file, "create", self.directory)

    def retry_create(self) -> None:
        """Try again to make a directory the start could not (a no-op once it exists): for
        owners with no append or sync due, so that durability is restored without a write."""
        with contextlib.suppress(OSError):
            self._ensure_directory()

    def _report(self, damage: Damage) -> None:
        self.damage.append(damage)
        self._health.corrupted(damage)

    def _read_ack(self) -> int:
        path = self.directory / "ack"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            data, problem = b"", f"unreadable ({exc})"
        else:
            problem = "not an acknowledgement"
        number = decode_ack(data) if data else None
        if number is not None:
            return number
        self._ack_trusted = False
        consequence = (
            "the checkpoint decides what is applied again: nothing is lost"
            if self._file == "input_log"
            else "every record still on disk is sent again (duplicates, nothing lost)"
        )
        self._report(
            Damage(
                file=f"{self._file}_ack",
                path=path,
                what=f"{problem}: {data[:40]!r}",
                records_lost=0,
                moved_to=move_aside(path),
                consequence=consequence,
            )
        )
        return 0

    def _open_segments(self) -> None:
        found: list[tuple[int, Path]] = []
        for path in self.directory.glob("*.seg"):
            try:
                found.append((int(path.stem), path))
            except ValueError:
                self._report(
                    Damage(
                        file=self._file,
                        path=path,
                        what="not a segment name",
                        moved_to=move_aside(path),
                    )
                )
        found.sort()
        # (number after the last intact record, its file) before each segment: at first what
        # the ack file says was sent, unless it was damaged (then nothing is known).
        previous: tuple[int, Path] | None = (
            (self._next_ack, self.directory / "ack") if self._ack_trusted else None
        )
        for index, (first, path) in enumerate(found):
            following = found[index + 1][0] if index + 1 < len(found) else None
            segment = self._open_segment(first, path, following, previous)
            if segment is None:
                continue
            previous = (segment.next, path)
            if segment.next <= self._next_ack and following is not None:
                with contextlib.suppress(OSError):
                    path.unlink()  # fully acknowledged before the stop
                continue
            self._segments.append(segment)

    def _open_segment(
        self, first: int, path: Path, following: int | None, previous: tuple[int, Path] | None
    ) -> _Segment | None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._report(Damage(file=self._file, path=path, what=f"unreadable ({exc})"))
            return None
        if previous is not None and previous[0] < first:
            self._report_missing(previous, first, path)
        scan = records.scan(data, first)
        segment = _Segment(path, first)
        segment.closed = scan.version == 1
        if scan.damaged:
            data, scan = self._contain(segment, data, scan, following)
        elif scan.torn_tail is not None:
            # A crash during an append leaves this; that record was never acknowledged (the
            # input log's) or never synced (a queue's), but a cut file looks the same: say so.
            log.warning(
                "%s: cut %d bytes of an interrupted write at the end of %s",
                self._file,
                scan.torn_tail.length,
                path,
            )
            data = data[: scan.torn_tail.offset]
            try:
                os.truncate(path, len(data))
            except OSError:
                segment.closed = True  # read what is intact, append elsewhere
        segment.size = len(data)
        if scan.frames:
            segment.next = scan.frames[-1].number + 1
        for frame in scan.frames:
            if frame.number >= self._next_ack:
                self._push_pending(
                    _Entry(frame.number, path, frame.offset, frame.length, frame.samples)
                )
        return segment

    def _report_missing(self, previous: tuple[int, Path], first: int, path: Path) -> None:
        """Records between two segments are missing: a segment was deleted or lost."""
        start = max(previous[0], self._next_ack)
        if start >= first:
            return  # only records already acknowledged are missing
        self._report(
            Damage(
                file=self._file,
                path=self.directory / f"{start:020d}.seg",
                what=f"records {start} to {first - 1} missing (a deleted segment, or damage at"
                " the end of the one before)",
                records_lost=first - start,
                time_range=f"{mtime_text(previous[1])}..{mtime_text(path)}",
            )
        )

    def _contain(
        self, segment: _Segment, data: bytes, scan: records.Scan, following: int | None
    ) -> tuple[bytes, records.Scan]:
        """Report a damaged segment, keep it aside, and rewrite it with its intact records.

        Records lost inside the segment are counted from the gaps in the numbers; after
        damage at its end they can be counted only up to the next segment (whose report
        covers them), and not at all in the last segment.
        """
        path, first = segment.path, segment.first
        numbers = {frame.number for frame in scan.frames}
        last = scan.frames[-1].number if scan.frames else first - 1
        tail_damaged = not scan.frames or scan.damaged[-1].offset >= scan.frames[-1].end
        records_lost: int | None = sum(
            1 for n in range(max(first, self._next_ack), last + 1) if n not in numbers
        )
        if tail_damaged and following is None:
            records_lost = None
        damaged = ", ".join(f"{span.offset}+{span.length}" for span in scan.damaged)
        bytes_lost = sum(span.length for span in scan.damaged)
        written = mtime_text(path)
        first_bad, last_bad = scan.damaged[0].offset, scan.damaged[-1].offset
        before = [f for f in scan.frames if f.end <= first_bad]
        after = [f for f in scan.frames if f.offset > last_bad]
        sampled = between(
            sample_times(data[before[-1].offset : before[-1].end]) if before else None,
            sample_times(data[after[0].offset : after[0].end]) if after else None,
        )
        moved_to = keep_copy(path)
        clean = b"".join(
            records.encode(f.number, f.samples, data[f.offset : f.end]) for f in scan.frames
        )
        segment.closed = True  # until rewritten: read the intact records where they are
        if moved_to is not None:
            try:
                write_atomically(path, clean)
            except OSError:
                pass
            else:
                data, scan = clean, records.scan(clean, first)
                segment.closed = False
        self._report(
            Damage(
                file=self._file,
                path=path,
                what=f"damaged bytes (offset+length) {damaged}; {len(numbers)} intact records"
                + (" kept" if not segment.closed else " read in place (could not rewrite)"),
                records_lost=records_lost,
                bytes_lost=bytes_lost,
                moved_to=moved_to,
                time_range=f"{sampled}, file written before {written}",
            )
        )
        return data, scan

    # --- writing ----------------------------------------------------------------------------

    @property
    def next_number(self) -> int:
        last = self._segments[-1].next if self._segments else 0
        return max(last, self._next_ack, self._floor)

    def skip_to(self, number: int) -> None:
        """Number the next record ``number`` at least (records up to it were lost)."""
        self._floor = max(self._floor, number)

    def append(self, body: bytes, samples: int) -> int:
        """Append a record; its number. On OSError nothing was appended (rolled back)."""
        self._ensure_directory()
        self._repair()
        number = self.next_number
        segment = self._segments[-1] if self._segments else None
        new = (
            segment is None
            or segment.closed
            or segment.size >= SEGMENT_BYTES
            or segment.next != number
        )
        if segment is None or new:
            segment = _Segment(self.directory / f"{number:020d}.seg", number)
        data = records.encode(number, samples, body)
        try:
            self._write(segment, data)
        except OSError as exc:
            self._health.failed(self._file, "append", self.directory, exc)
            raise
        self._health.recovered(self._file, "append", self.directory)
        if new:
            self._segments.append(segment)
        entry = _Entry(number, segment.path, segment.size + HEADER_SIZE, len(body), samples)
        segment.size += len(data)
        segment.next = number + 1
        self._push_pending(entry)
        self._dirty_paths.add(segment.path)
        return number

    def _write(self, segment: _Segment, data: bytes) -> None:
        """Append ``data`` whole, or cut the segment back to where it was."""
        fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            written = 0
            try:
                while written < len(data):
                    written += os.write(fd, memoryview(data)[written:])
            except OSError:
                try:
                    os.ftruncate(fd, segment.size)
                except OSError:
                    self._torn = (segment.path, segment.size)
                raise
        finally:
            os.close(fd)

    def _repair(self) -> None:
        """Cut a torn record left by a failed append whose rollback failed, before appending."""
        if self._torn is None:
            return
        path, size = self._torn
        try:
            os.truncate(path, size)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._health.failed(self._file, "append", self.directory, exc)
            raise
        self._torn = None

    def truncate_from(self, number: int) -> None:
        """Take back every record numbered ``number`` or above (none acknowledged yet): their
        writes failed and were refused, so they must not be found after a restart."""
        cut: _Entry | None = None
        while self._pending and self._pending[-1].number >= number:
            cut = self._pending.pop()
            self.samples -= cut.samples
            self.size_bytes -= HEADER_SIZE + cut.length
        if cut is None:
            return
        while self._segments and self._segments[-1].path != cut.path:
            gone = self._segments.pop()
            self._dirty_paths.discard(gone.path)
            with contextlib.suppress(OSError):
                gone.path.unlink()
        segment = self._segments[-1]
        segment.size, segment.next = cut.offset - HEADER_SIZE, cut.number
        try:
            os.truncate(segment.path, segment.size)
        except OSError:
            self._torn = (segment.path, segment.size)

    def _push_pending(self, entry: _Entry) -> None:
        self._pending.append(entry)
        self.samples += entry.samples
        self.size_bytes += HEADER_SIZE + entry.length

    def _pop_pending(self) -> _Entry:
        entry = self._pending.popleft()
        self.samples -= entry.samples
        self.size_bytes -= HEADER_SIZE + entry.length
        return entry

    def take_unsynced(self) -> list[Path]:
        """Segments appended to since the last call; hand them to ``fsync_paths``.

        Split from the fsync itself so the fsync can run in a worker thread while this
        queue goes on taking appends (which the next call then reports).
        """
        paths = sorted(self._dirty_paths)
        self._dirty_paths.clear()
        return paths

    def synced(self, paths: list[Path], failure: OSError | None) -> None:
        """The fsync of ``paths`` (from ``take_unsynced``) ended; a failed one is tried again
        at the next sync."""
        if failure is None:
            self._health.recovered(self._file, "sync", self.directory)
            self.retry_ack()
        else:
            self._dirty_paths.update(paths)
            self._health.failed(self._file, "sync", self.directory, failure)

    def sync(self) -> None:
        """fsync what was appended since the last sync, in this thread; OSError if it failed
        (reported, and tried again at the next sync)."""
        self._ensure_directory()
        paths = self.take_unsynced()
        try:
            fsync_paths(paths, self.directory)
        except OSError as exc:
            self.synced(paths, exc)
            raise
        self.synced(paths, None)

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
        one being written to. An ack that cannot be written stays in memory (reported) and is
        written by the next ``retry_ack``; segments are deleted only once it is."""
        if number <= self._next_ack:
            self.retry_ack()  # no progress, but an earlier ack may still wait for the disk
            return
        self._next_ack = number
        self._ack_unsaved = True
        self.retry_ack()

    def retry_ack(self) -> None:
        if not self._ack_unsaved:
            return
        path, data = self.directory / "ack", encode_ack(self._next_ack)
        try:
            write_atomically(path, data)
        except OSError as exc:
            try:
                _overwrite(path, data)
            except OSError:
                self._health.failed(f"{self._file}_ack", "write", self.directory, exc)
                return
        self._ack_unsaved = False
        self._health.recovered(f"{self._file}_ack", "write", self.directory)
        while len(self._segments) > 1 and self._segments[0].next <= self._next_ack:
            with contextlib.suppress(OSError):
                self._segments.popleft().path.unlink()

    def unacknowledged(self) -> list[Record]:
        """Every record not acknowledged yet, oldest first, read from disk."""
        found = []
        for entry in self._pending:
            with entry.path.open("rb") as handle:
                handle.seek(entry.offset)
                found.append(Record(entry.number, handle.read(entry.length), entry.samples))
        return found

    def drop_oldest(self) -> int:
        """Give up the oldest records to make room: what is left of the oldest segment, or
        the older half when only one segment is left. The samples they held (0 if none)."""
        if not self._pending:
            return 0
        if len(self._segments) > 1:
            end = self._segments[0].next
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
