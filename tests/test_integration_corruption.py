"""Damaged durable files, against the real process: it starts, says what was lost, loses no more.

One run of enrichproxy takes writes while its downstream is down, so its disk queue, input log,
checkpoints and marker all hold something, and is stopped. The test then damages one file the
way a bad disk, a bad copy or a bad hand would, starts enrichproxy again with the downstream
up, and checks that it starts (no crash loop), logs the damage once, counts it, and that the
downstream ends at the exact sum of what was acknowledged: for counters a lost record costs
at most the points it carried, never the total.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from realparts import (
    MongoServer,
    PrometheusFactory,
    ProxyProcess,
    prometheus_config,
)
from test_integration_disk_faults import PODS, QUERY, Sender

from enrichproxy.durability.state_store import frame, unframe

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Files:
    state: Path
    wal: Path
    queue: Path
    snapshot: Path

    def segments(self, directory: Path) -> list[Path]:
        found = sorted(directory.glob("*.seg"))
        assert found, f"nothing in {directory}"
        return found


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_an_input_log_record(files: Files) -> None:
    """The record before the last: one the newest checkpoint may cover, the previous does
    not (records the previous checkpoint covers cost nothing)."""
    last = files.segments(files.wal)[-1]
    data = last.read_bytes()
    starts = [i for i in range(len(data)) if data.startswith(b"\xe9PR\x02", i)]
    flip(last, starts[-2] + 40)  # inside its body


def cut_input_log(files: Files) -> None:
    last = files.segments(files.wal)[-1]
    last.write_bytes(last.read_bytes()[:-7])


def flip_queue_head(files: Files) -> None:
    flip(files.segments(files.queue)[0], 8)  # the first record's number


def cut_queue(files: Files) -> None:
    last = files.segments(files.queue)[-1]
    last.write_bytes(last.read_bytes()[:-7])


def bad_queue_ack(files: Files) -> None:
    (files.queue / "ack").write_text("twelve\n")


def bad_input_log_ack(files: Files) -> None:
    (files.wal / "ack").write_text("NaN\n")


def wrong_structure(files: Files) -> None:
    document = json.loads(unframe("state", files.state.read_bytes()))
    for view in document["views"].values():
        del view["groups"]
    files.state.write_bytes(frame("state", json.dumps(document).encode()))  # checksum is right


def changed_value(files: Files) -> None:
    data = files.state.read_bytes()
    header, _, payload = data.partition(b"\n")
    files.state.write_bytes(header + b"\n" + payload.replace(b"1", b"7", 1))


def cut_checkpoint(files: Files) -> None:
    files.state.write_bytes(files.state.read_bytes()[:-20])


def changed_snapshot(files: Files) -> None:
    """A pod's service changed by hand (or by a bad disk): the checksum no longer fits, so the
    start reads MongoDB instead of enriching with a table that may be wrong."""
    data = files.snapshot.read_bytes()
    header, _, payload = data.partition(b"\n")
    assert b"checkout" in payload
    files.snapshot.write_bytes(header + b"\n" + payload.replace(b"checkout", b"checkoux", 1))


def bad_marker(files: Files) -> None:
    files.state.with_name(f"{files.state.name}.emitted").write_text('{"business": ')


@dataclass(frozen=True)
class Case:
    damage: Callable[[Files], None]
    logged: str
    """A fragment of the one line that must report it."""
    counted: dict[str, float]
    """enrichproxy_durability_corruption_total by file."""
    lost: dict[str, float]
    """enrichproxy_durability_records_lost_total by file."""
    duplicates: bool = False
    """Output may be sent again: the downstream refuses what it has (logged there)."""
    kill: bool = False
    """End the first run with SIGKILL, so the last records are covered by no checkpoint."""


CASES = {
    "input log: a flipped byte in a record": Case(
        flip_an_input_log_record,
        "corrupt input_log",
        {"input_log": 1},
        {"input_log": 1},
        kill=True,
    ),
    "input log: cut": Case(cut_input_log, "interrupted write", {}, {}),
    "queue: a flipped byte in the head record": Case(
        flip_queue_head, "corrupt queue", {"queue": 1}, {"queue": 1}
    ),
    "queue: cut": Case(cut_queue, "interrupted write", {}, {}),
    "queue: a non-numeric ack": Case(
        bad_queue_ack, "corrupt queue_ack", {"queue_ack": 1}, {}, duplicates=True
    ),
    "input log: a non-numeric ack": Case(
        bad_input_log_ack, "corrupt input_log_ack", {"input_log_ack": 1}, {}
    ),
    "checkpoint: wrong structure, right checksum": Case(
        wrong_structure, "not a state this engine reads", {"checkpoint": 1}, {}
    ),
    "checkpoint: a changed value": Case(changed_value, "checksum", {"checkpoint": 1}, {}),
    "checkpoint: cut": Case(cut_checkpoint, "corrupt checkpoint", {"checkpoint": 1}, {}),
    "metadata snapshot: a changed value": Case(
        changed_snapshot, "corrupt metadata_snapshot", {"metadata_snapshot": 1}, {}
    ),
    "emitted marker: not JSON": Case(
        bad_marker, "corrupt emitted_marker", {"emitted_marker": 1}, {}, duplicates=True
    ),
}


@pytest.fixture
def seeded(mongo: MongoServer, mongo_db_name: str) -> str:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri)
    try:
        client[mongo_db_name]["pod_metadata"].insert_many(
            [{"pod": pod, "service": "checkout", "tier": "gold"} for pod in PODS]
        )
    finally:
        client.close()
    return mongo_db_name


@pytest.mark.parametrize("name", list(CASES))
def test_a_damaged_file_is_reported_set_aside_and_costs_no_acknowledged_total(
    name: str,
    tmp_path: Path,
    mongo: MongoServer,
    seeded: str,
    prometheus_factory: PrometheusFactory,
) -> None:
    case = CASES[name]
    receiver = prometheus_factory(prometheus_config(), receiver=True, name="receiver")
    url = receiver.write_url
    receiver.stop()  # down: the output waits in the disk queue
    files = Files(
        state=tmp_path / "state" / "aggregation.json",
        wal=tmp_path / "state" / "aggregation.json.wal",
        queue=tmp_path / "queue" / "shard-0",
        snapshot=tmp_path / "state" / "metadata.json",
    )
    config = {
        "metadata": {
            "mongodb_uri": mongo.uri,
            "database": seeded,
            "refresh_interval": "1h",
            "snapshot_path": str(files.snapshot),
        },
        "views": [{"name": "business", "keep": ["service", "tier"]}],
        "aggregation": {
            "interval": "1s",
            "lateness": "1s",
            "state_path": str(files.state),
            "checkpoint_interval": "1s",
        },
        "remote_write": [
            {
                "url": url,
                "name": "sink",
                "shards": 1,
                "min_backoff": "50ms",
                "max_backoff": "200ms",
                "queue": {"path": str(tmp_path / "queue")},
            }
        ],
        "shutdown_timeout": "2s",
    }
    proxy = ProxyProcess(tmp_path / "proxy", config)
    proxy.start()
    sender = Sender(proxy)
    try:
        assert set(sender.run(4, pause=0.1)) == {204}
        if case.kill:
            proxy.kill()
        else:
            assert proxy.stop() == 0
        case.damage(files)

        receiver.start()
        proxy.start()  # ready: the damage did not stop it
        reports = proxy.log_lines("corrupt ", "interrupted write")
        assert len(reports) == 1, reports
        assert case.logged in reports[0], reports
        for file, count in case.counted.items():
            assert proxy.metric("enrichproxy_durability_corruption_total", file=file) == count
        for file, count in case.lost.items():
            assert proxy.metric("enrichproxy_durability_records_lost_total", file=file) == count
        if case.counted:
            assert list(tmp_path.rglob("*.corrupt-*")), "the damaged part was not kept"
        assert proxy.log_lines("Traceback") == []

        delivered = sender.delivered(receiver)
        assert delivered == sender.expected
        values = [float(v) for _, v in receiver.query(f"{QUERY}[10m]")[0]["values"]]
        assert values == sorted(values)
        if not case.duplicates:
            assert receiver.rejection_lines() == []
        print(f"{name}: acknowledged sum {sender.expected}, delivered {delivered}")
    finally:
        proxy.stop()
