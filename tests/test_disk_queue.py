"""The on-disk FIFO of one shard: order, acknowledgement, restarts, torn writes, making room."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from enrichproxy.durability import disk_queue
from enrichproxy.durability.disk_queue import ShardQueue
from enrichproxy.durability.files import write_atomically
from enrichproxy.durability.health import Damage, DurabilityHealth
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request


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


# --- faults ---------------------------------------------------------------------------------


class Reports:
    """A DurabilityHealth that keeps what it was told."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.damage: list[Damage] = []
        self.health = DurabilityHealth(
            on_error=lambda file, op: self.errors.append((file, op)), on_damage=self.damage.append
        )


def test_a_failed_append_leaves_no_torn_record_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = Reports()
    queue = ShardQueue(tmp_path, reports.health)
    fill(queue, 2)
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        written = real_write(fd, bytes(memoryview(data)[: len(memoryview(data)) // 2]))
        monkeypatch.setattr(os, "write", full_disk)
        return written

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        queue.append(b"refused" * 10, 7)
    assert reports.errors == [("queue", "append")]
    assert reports.health.impaired
    monkeypatch.setattr(os, "write", real_write)
    assert queue.append(b"accepted", 1) == 2  # the refused one took no number
    assert not reports.health.impaired
    queue.sync()
    reopened = ShardQueue(tmp_path, Reports().health)
    assert [r.body for r in reopened.unacknowledged()][-1] == b"accepted"
    assert [r.number for r in reopened.unacknowledged()] == [0, 1, 2]
    assert reopened.damage == []


def test_a_damaged_record_costs_only_itself_and_is_kept_aside(tmp_path: Path) -> None:
    queue = ShardQueue(tmp_path)
    fill(queue, 5)
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[2 * (100 + disk_queue.HEADER_SIZE) + disk_queue.HEADER_SIZE + 10] ^= 0xFF  # record 2
    segment.write_bytes(bytes(data))

    reports = Reports()
    reopened = ShardQueue(tmp_path, reports.health)
    assert [r.number for r in reopened.unacknowledged()] == [0, 1, 3, 4]
    assert reopened.samples == 1 + 2 + 4 + 5
    (damage,) = reports.damage
    assert damage.records_lost == 1
    assert damage.bytes_lost == 100 + disk_queue.HEADER_SIZE
    assert damage.moved_to is not None and damage.moved_to.read_bytes() == bytes(data)
    # Rewritten with what was intact: the next start finds nothing wrong.
    again = Reports()
    assert [r.number for r in ShardQueue(tmp_path, again.health).unacknowledged()] == [0, 1, 3, 4]
    assert again.damage == []


def test_a_deleted_segment_is_reported_with_the_records_it_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk_queue, "SEGMENT_BYTES", 250)
    queue = ShardQueue(tmp_path)
    fill(queue, 9)  # segments of 3 records: 0-2, 3-5, 6-8
    (tmp_path / f"{3:020d}.seg").unlink()
    reports = Reports()
    reopened = ShardQueue(tmp_path, reports.health)
    assert [r.number for r in reopened.unacknowledged()] == [0, 1, 2, 6, 7, 8]
    (damage,) = reports.damage
    assert damage.records_lost == 3
    assert "records 3 to 5 missing" in damage.what


@pytest.mark.parametrize(
    "content", [b"garbage", b"12x", b"enrichproxy-ack 2 3 00000000\n", b"\xff"]
)
def test_a_bad_ack_file_sends_everything_again_and_is_kept_aside(
    tmp_path: Path, content: bytes
) -> None:
    queue = ShardQueue(tmp_path)
    fill(queue, 4)
    record = queue.peek()
    assert record is not None
    queue.ack(record)
    (tmp_path / "ack").write_bytes(content)
    reports = Reports()
    reopened = ShardQueue(tmp_path, reports.health)
    assert [r.number for r in reopened.unacknowledged()] == [0, 1, 2, 3]  # a duplicate, no loss
    (damage,) = reports.damage
    assert damage.file == "queue_ack"
    assert damage.moved_to is not None and damage.moved_to.read_bytes() == content


def test_an_ack_the_disk_refuses_is_kept_and_written_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = Reports()
    queue = ShardQueue(tmp_path, reports.health)
    fill(queue, 3)
    real = write_atomically

    def refuse(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("enrichproxy.durability.disk_queue.write_atomically", refuse)
    record = queue.peek()
    assert record is not None
    queue.ack(record)  # does not raise: the sender goes on
    assert reports.errors == [("queue_ack", "write")]
    assert queue.peek() is not None and queue.peek().number == 1  # type: ignore[union-attr]
    monkeypatch.setattr("enrichproxy.durability.disk_queue.write_atomically", real)
    queue.sync()
    assert not reports.health.impaired
    assert [r.number for r in ShardQueue(tmp_path).unacknowledged()] == [1, 2]


def test_the_report_bounds_when_the_lost_samples_were_taken(tmp_path: Path) -> None:
    labels = encode_labels((("__name__", "m_total"), ("pod", "a")))
    queue = ShardQueue(tmp_path)
    base = 1_800_000_000_000  # 2027-01-15T08:00:00Z
    for index in range(3):
        body = compress(encode_write_request([(labels, [(base + index * 60_000, float(index))])]))
        queue.append(body, 1)
    queue.sync()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    second = data.index(b"\xe9PR\x02", 1)
    data[second + disk_queue.HEADER_SIZE + 3] ^= 0xFF
    segment.write_bytes(bytes(data))
    reports = Reports()
    ShardQueue(tmp_path, reports.health)
    (damage,) = reports.damage
    assert "samples 2027-01-15T08:00:00Z..2027-01-15T08:02:00Z" in damage.time_range


def test_on_a_full_disk_an_existing_ack_is_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = Reports()
    queue = ShardQueue(tmp_path, reports.health)
    fill(queue, 3)
    first = queue.peek()
    assert first is not None
    queue.ack(first)  # the ack file exists from here on

    def refuse(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("enrichproxy.durability.disk_queue.write_atomically", refuse)
    second = queue.peek()
    assert second is not None
    queue.ack(second)
    assert reports.errors == []
    assert [r.number for r in ShardQueue(tmp_path).unacknowledged()] == [2]


def test_a_directory_the_start_cannot_make_is_reported_and_made_later(tmp_path: Path) -> None:
    """A first start on a full disk: the queue starts empty instead of failing, reports the
    failure (durability impaired), and every append or sync tries again."""
    errors: list[tuple[str, str]] = []
    health = DurabilityHealth(on_error=lambda file, op: errors.append((file, op)))
    blocker = tmp_path / "state"
    blocker.write_bytes(b"")  # a file where the queue's parent directory must go: mkdir fails
    queue = ShardQueue(blocker / "queue", health)
    assert health.impaired and errors == [("queue", "create")]
    assert len(queue) == 0
    with pytest.raises(OSError):
        queue.append(b"body", 1)
    with pytest.raises(OSError):
        queue.sync()
    queue.retry_create()
    assert errors == [("queue", "create")] * 4
    blocker.unlink()  # space comes back
    queue.retry_create()
    assert not health.impaired
    assert queue.append(b"body", 1) == 0
    queue.sync()
    assert [record.body for record in ShardQueue(blocker / "queue").unacknowledged()] == [b"body"]
