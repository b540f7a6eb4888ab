"""How records are framed in the disk queue's and the input log's segment files.

Format 2, one record::

    magic "\\xe9PR\\x02" | number u64 | samples u32 | length u32 | crc32 u32 | body (length bytes)

all little-endian. The CRC covers number, samples, length and body, so a changed byte anywhere
in a record is caught. Each record carries its own number, so a record lost to damage does not
renumber the ones after it (the ack file and the checkpoint refer to numbers). The magic, which
also carries the format version, lets a reader find the next intact record after damage: a bad
record costs that record, not the rest of its segment.

Format 1 (before 0.2): ``[length u32][crc32 u32][samples u32][body]``, numbered by position;
still read, so queued data survives an upgrade, and never appended to.

This module is pure: bytes in, frames out.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

MAGIC = b"\xe9PR\x02"
_HEADER = struct.Struct("<4sQIII")
HEADER_SIZE = _HEADER.size
_CHECKED = struct.Struct("<QII")
_V1_HEADER = struct.Struct("<III")
# A length beyond this is damage, not a record: a batch or request is megabytes at most.
MAX_BODY_BYTES = 1 << 30


def encode(number: int, samples: int, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(_CHECKED.pack(number, samples, len(body))))
    return _HEADER.pack(MAGIC, number, samples, len(body), crc) + body


@dataclass(frozen=True)
class Frame:
    """An intact record: its number, samples, and where its body lies in the segment."""

    number: int
    samples: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Span:
    offset: int
    length: int


@dataclass
class Scan:
    version: int
    frames: list[Frame] = field(default_factory=list)
    damaged: list[Span] = field(default_factory=list)
    """Bytes between intact records (or before the first) that are no record."""
    torn_tail: Span | None = None
    """An incomplete last record: a write that was interrupted (nothing after it is intact)."""


def _frame_at(data: bytes, position: int) -> Frame | None:
    """The intact format-2 record at ``position``, if there is one."""
    if len(data) - position < HEADER_SIZE:
        return None
    magic, number, samples, length, crc = _HEADER.unpack_from(data, position)
    start = position + HEADER_SIZE
    if magic != MAGIC or length > MAX_BODY_BYTES or start + length > len(data):
        return None
    checked = zlib.crc32(_CHECKED.pack(number, samples, length))
    if zlib.crc32(memoryview(data)[start : start + length], checked) != crc:
        return None
    return Frame(number, samples, start, length)


def _is_torn(data: bytes, position: int) -> bool:
    """Whether the bytes from ``position`` to the end are the start of a record."""
    rest = data[position:]
    if len(rest) < len(MAGIC):
        return MAGIC.startswith(rest)
    if not rest.startswith(MAGIC):
        return False
    if len(rest) < HEADER_SIZE:
        return True
    length: int = _HEADER.unpack_from(rest, 0)[3]
    return HEADER_SIZE + length > len(rest)


def _scan_v1(data: bytes, first: int) -> Scan | None:
    """The format-1 records of a segment, or None when it does not start with one."""
    scan = Scan(version=1)
    position = 0
    while position + _V1_HEADER.size <= len(data):
        length, crc, samples = _V1_HEADER.unpack_from(data, position)
        start = position + _V1_HEADER.size
        body = memoryview(data)[start : start + length]
        if len(body) != length or zlib.crc32(body) != crc:
            break
        scan.frames.append(Frame(first + len(scan.frames), samples, start, length))
        position = start + length
    if not scan.frames:
        return None
    if position < len(data):  # format 1 cannot tell damage from a torn write
        scan.torn_tail = Span(position, len(data) - position)
    return scan


def scan(data: bytes, first: int) -> Scan:
    """Every intact record of a segment whose file name says it starts at ``first``."""
    if data and not data.startswith(MAGIC[: len(data)]):
        legacy = _scan_v1(data, first)
        if legacy is not None:
            return legacy
    result = Scan(version=2)
    position = 0
    while position < len(data):
        frame = _frame_at(data, position)
        if frame is not None:
            result.frames.append(frame)
            position = frame.end
            continue
        candidate = data.find(MAGIC, position + 1)
        while candidate != -1 and _frame_at(data, candidate) is None:
            candidate = data.find(MAGIC, candidate + 1)
        if candidate == -1:
            tail = Span(position, len(data) - position)
            if _is_torn(data, position):
                result.torn_tail = tail
            else:
                result.damaged.append(tail)
            break
        result.damaged.append(Span(position, candidate - position))
        position = candidate
    return result
