"""The on-disk FIFO of one shard: order, acknowledgement, restarts, torn writes, making room."""

from __future__ import annotations

from pathlib import Path

import pytest

from enrichproxy.durability import disk_queue
from enrichproxy.durability.disk_queue import ShardQueue


def fill(queue: ShardQueue, count: int, size: int = 100) -> None:
    for index in range(count):
        queue.append(bytes([index % 256]) * size, samples=index + 1)
    queue.sync()


def test_records_come_back_in_order_and_acknowledged_ones_never_again(tmp_path: Path) -> None:
    queue = ShardQueue(tmp_path)
    fill(queue, 3)
    first = queue.peek()
    assert first is not None and first.number == 0 and first.samples == 1
    queue.ack(first)
    reopened = ShardQueue(tmp_path)
    assert [r.number for r in reopened.unacknowledged()] == [1, 2]
    assert reopened.samples == 2 + 3


def test_acknowledged_bytes_do_not_count_as_queued(tmp_path: Path) -> None:
    queue = ShardQueue(tmp_path)
    fill(queue, 3, size=1000)
    assert queue.size_bytes == 3 * (1000 + disk_queue.HEADER_SIZE)
    while (record := queue.peek()) is not None:
        queue.ack(record)
    assert queue.size_bytes == 0
    assert queue.samples == 0
    assert ShardQueue(tmp_path).size_bytes == 0


def test_a_torn_tail_is_cut_and_appending_goes_on(tmp_path: Path) -> None:
    queue = ShardQueue(tmp_path)
    fill(queue, 2)
    segment = next(tmp_path.glob("*.seg"))
    with segment.open("ab") as handle:
        handle.write(b"\xff\x00\x00\x00garbage")
    reopened = ShardQueue(tmp_path)
    assert len(reopened) == 2
    reopened.append(b"next", 1)
    assert [r.body for r in ShardQueue(tmp_path).unacknowledged()][-1] == b"next"


def test_segments_roll_and_acknowledged_ones_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk_queue, "SEGMENT_BYTES", 250)
    queue = ShardQueue(tmp_path)
    fill(queue, 6)
    assert len(list(tmp_path.glob("*.seg"))) == 2  # 3 records of 124 bytes each
    for _ in range(4):
        record = queue.peek()
        assert record is not None
        queue.ack(record)
    assert len(list(tmp_path.glob("*.seg"))) == 1
    assert [r.number for r in queue.unacknowledged()] == [4, 5]


def test_drop_oldest_makes_room_even_within_one_segment(tmp_path: Path) -> None:
    queue = ShardQueue(tmp_path)
    fill(queue, 4)
    dropped = queue.drop_oldest()
    assert dropped == 1 + 2  # the older half
    assert [r.number for r in queue.unacknowledged()] == [2, 3]
    assert [r.number for r in ShardQueue(tmp_path).unacknowledged()] == [2, 3]
