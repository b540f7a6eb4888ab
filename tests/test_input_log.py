"""The input write-ahead log: appended, fsynced (group commit), covered by checkpoints."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from enrichproxy.durability import input_log
from enrichproxy.durability.input_log import InputLog
from enrichproxy.wire.v2 import WireProtocol


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


async def test_a_failed_fsync_takes_back_every_record_it_did_not_make_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = InputLog(tmp_path / "wal")
    log.start()
    kept = log.append(b"kept")
    await log.durable(kept)
    log.applied(kept)

    def failing(paths: list[Path], directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(input_log, "fsync_paths", failing)
    refused = [log.append(b"refused 1"), log.append(b"refused 2")]
    for ticket in refused:
        with pytest.raises(OSError):
            await log.durable(ticket)
    assert log.covered_through == log.next_number == 1  # nothing of them in flight or on disk
    monkeypatch.undo()
    again = log.append(b"retried")
    await log.durable(again)
    log.applied(again)
    await log.stop()
    assert [r.body for r in InputLog(tmp_path / "wal").unapplied(0)] == [b"kept", b"retried"]


async def test_a_checkpoint_never_covers_a_record_still_in_flight(tmp_path: Path) -> None:
    log = InputLog(tmp_path / "wal")
    log.start()
    first, second = log.append(b"a"), log.append(b"b")
    await log.durable(second)
    log.applied(second)
    assert log.covered_through == first.number  # "a" is logged but not applied yet
    log.applied(first)
    assert log.covered_through == 2
    await log.stop()


async def test_a_refused_request_is_never_applied_again(tmp_path: Path) -> None:
    log = InputLog(tmp_path / "wal")
    log.start()
    tickets = [log.append(body) for body in (b"good", b"refused by the engine", b"good too")]
    await log.durable(tickets[-1])
    log.void(tickets[1])
    await log.stop()
    assert [r.body for r in InputLog(tmp_path / "wal").unapplied(0)] == [b"good", b"good too"]


async def test_a_request_keeps_its_protocol_for_the_replay(tmp_path: Path) -> None:
    log = InputLog(tmp_path / "wal")
    log.start()
    first = log.append(b"a 1.0 body")
    second = log.append(b"a 2.0 body", WireProtocol.V2)
    await asyncio.gather(log.durable(first), log.durable(second))
    await log.stop()
    records = InputLog(tmp_path / "wal").unapplied(0)
    assert [(r.body, InputLog.protocol_of(r)) for r in records] == [
        (b"a 1.0 body", WireProtocol.V1),
        (b"a 2.0 body", WireProtocol.V2),
    ]
