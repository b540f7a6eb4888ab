"""The input write-ahead log: appended, fsynced (group commit), covered by checkpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

from enrichproxy.durability.input_log import InputLog


async def test_records_survive_a_reopen_until_a_checkpoint_covers_them(tmp_path: Path) -> None:
    log = InputLog(tmp_path / "wal")
    log.start()
    tickets = [log.append(f"request {index}".encode()) for index in range(5)]
    await asyncio.gather(*(log.durable(ticket) for ticket in tickets))
    log.covered_by_checkpoint(3)
    await log.stop()

    reopened = InputLog(tmp_path / "wal")
    assert [r.body for r in reopened.unapplied(3)] == [b"request 3", b"request 4"]
    assert reopened.next_number == 5
    reopened.start()
    ticket = reopened.append(b"request 5")
    await reopened.durable(ticket)
    assert ticket.number == 5
    await reopened.stop()


async def test_one_fsync_serves_many_waiting_writes(tmp_path: Path) -> None:
    log = InputLog(tmp_path / "wal")
    log.start()
    tickets = [log.append(b"x" * 100) for _ in range(50)]
    await asyncio.wait_for(asyncio.gather(*(log.durable(t) for t in tickets)), timeout=5)
    await log.stop()
    assert len(InputLog(tmp_path / "wal").unapplied(0)) == 50


async def test_a_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    log = InputLog(tmp_path / "wal")
    log.start()
    await log.durable(log.append(b"complete"))
    await log.stop()
    segment = next((tmp_path / "wal").glob("*.seg"))
    with segment.open("ab") as handle:
        handle.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00half a reco")
    assert [r.body for r in InputLog(tmp_path / "wal").unapplied(0)] == [b"complete"]
