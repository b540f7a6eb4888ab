"""Record framing: a damaged record costs that record only, wherever the damage is."""

from __future__ import annotations

import struct
import zlib

import pytest

from enrichproxy.durability import records

BODIES = [bytes([index]) * (20 + index) for index in range(5)]


def segment(first: int = 10) -> bytes:
    return b"".join(records.encode(first + i, i + 1, body) for i, body in enumerate(BODIES))


def bodies(data: bytes, scan: records.Scan) -> list[bytes]:
    return [data[frame.offset : frame.end] for frame in scan.frames]


def test_records_come_back_with_their_numbers_and_samples() -> None:
    data = segment()
    scan = records.scan(data, 10)
    assert scan.version == 2
    assert [(f.number, f.samples) for f in scan.frames] == [(10 + i, i + 1) for i in range(5)]
    assert bodies(data, scan) == BODIES
    assert scan.damaged == [] and scan.torn_tail is None


def record_bounds() -> list[tuple[int, int]]:
    data, bounds, start = segment(), [], 0
    for body in BODIES:
        end = start + records.HEADER_SIZE + len(body)
        bounds.append((start, end))
        start = end
    assert start == len(data)
    return bounds


@pytest.mark.parametrize("victim", range(len(BODIES)))
def test_a_flipped_byte_anywhere_in_a_record_costs_that_record_only(victim: int) -> None:
    start, end = record_bounds()[victim]
    for position in range(start, end):  # every byte: magic, number, samples, length, CRC, body
        data = bytearray(segment())
        data[position] ^= 0x40
        scan = records.scan(bytes(data), 10)
        numbers = [frame.number for frame in scan.frames]
        assert numbers == [10 + i for i in range(len(BODIES)) if i != victim], position
        lost = (scan.damaged[0] if scan.damaged else scan.torn_tail) or records.Span(0, 0)
        assert lost.offset == start, position


def test_a_cut_last_record_is_a_torn_write_not_damage() -> None:
    data = segment()
    for cut in range(1, records.HEADER_SIZE + len(BODIES[-1])):
        scan = records.scan(data[:-cut], 10)
        assert len(scan.frames) == 4
        assert scan.damaged == []
        assert scan.torn_tail is not None


def test_format_1_segments_are_still_read() -> None:
    legacy = b"".join(
        struct.pack("<III", len(body), zlib.crc32(body), i + 1) + body
        for i, body in enumerate(BODIES)
    )
    scan = records.scan(legacy, 7)
    assert scan.version == 1
    assert [f.number for f in scan.frames] == [7, 8, 9, 10, 11]
    assert bodies(legacy, scan) == BODIES
