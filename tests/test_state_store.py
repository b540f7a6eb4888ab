"""Checkpoints and the emitted marker: checksummed, two kept, damage reported and set aside."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from enrichproxy.durability import state_store
from enrichproxy.durability.health import Damage, DurabilityHealth
from enrichproxy.durability.state_store import StateStore, frame, unframe


def store_at(tmp_path: Path) -> tuple[StateStore, list[Damage]]:
    damage: list[Damage] = []
    return StateStore(
        str(tmp_path / "state.json"), DurabilityHealth(on_damage=damage.append)
    ), damage


def saved_twice(tmp_path: Path) -> None:
    store, _ = store_at(tmp_path)
    assert store.save({"business": {"value": 400}}, 10) == 0  # no previous one yet
    assert store.save({"business": {"value": 500}}, 20) == 10  # the log may be cut at 10


def test_the_newest_checkpoint_comes_first_and_the_previous_one_is_kept(tmp_path: Path) -> None:
    saved_twice(tmp_path)
    store, damage = store_at(tmp_path)
    newest, previous = store.checkpoints()
    assert (newest.views, newest.input_log_next) == ({"business": {"value": 500}}, 20)
    assert (previous.views, previous.input_log_next) == ({"business": {"value": 400}}, 10)
    assert damage == []


def test_a_changed_value_is_detected_and_the_previous_checkpoint_used(tmp_path: Path) -> None:
    saved_twice(tmp_path)
    path = tmp_path / "state.json"
    path.write_bytes(path.read_bytes().replace(b'"value":500', b'"value":900'))
    store, damage = store_at(tmp_path)
    (only,) = store.checkpoints()
    assert only.input_log_next == 10
    (report,) = damage
    assert "checksum" in report.what
    assert report.moved_to is not None and b'"value":900' in report.moved_to.read_bytes()
    assert not path.exists()
    # The next save does not push the good previous checkpoint out.
    assert store.save({"business": {"value": 600}}, 30) == 10


@pytest.mark.parametrize(
    "document",
    [
        {"views": {"business": {}}},  # no input_log_next: taken as 0 (format 1 had none)
        {"views": [], "input_log_next": 3},
        {"views": {"business": 5}, "input_log_next": 3},
        {"views": {}, "input_log_next": "3"},
        [1, 2],
    ],
)
def test_a_structurally_wrong_checkpoint_is_set_aside(tmp_path: Path, document: object) -> None:
    saved_twice(tmp_path)
    (tmp_path / "state.json").write_bytes(frame("state", json.dumps(document).encode()))
    store, damage = store_at(tmp_path)
    found = store.checkpoints()
    if isinstance(document, dict) and "input_log_next" not in document:
        assert found[0].input_log_next == 0
        return
    assert [c.input_log_next for c in found] == [10]
    assert len(damage) == 1


@pytest.mark.parametrize("cut", [1, 10, 40])
def test_a_cut_checkpoint_is_detected(tmp_path: Path, cut: int) -> None:
    saved_twice(tmp_path)
    path = tmp_path / "state.json"
    path.write_bytes(path.read_bytes()[:-cut])
    store, damage = store_at(tmp_path)
    assert [c.input_log_next for c in store.checkpoints()] == [10]
    assert len(damage) == 1


def test_format_1_checkpoints_are_still_read(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"views": {"business": {}}, "input_log_next": 4}')
    store, damage = store_at(tmp_path)
    assert [c.input_log_next for c in store.checkpoints()] == [4]
    assert damage == []


def test_a_damaged_marker_is_ignored_and_reported(tmp_path: Path) -> None:
    store, _ = store_at(tmp_path)
    store.mark_emitted({"business": 1000})
    marker = tmp_path / "state.json.emitted"
    assert json.loads(unframe("emitted", marker.read_bytes())) == {"business": 1000}
    marker.write_bytes(marker.read_bytes().replace(b"1000", b"9000"))
    reopened, damage = store_at(tmp_path)
    assert reopened.load_marker() == {}
    assert len(damage) == 1 and damage[0].file == "emitted_marker"


def test_a_marker_the_disk_refuses_is_pending_until_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = store_at(tmp_path)
    real = state_store._write_synced

    def refuse(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_store, "_write_synced", refuse)
    with pytest.raises(OSError):
        store.mark_emitted({"business": 1000})
    assert store.marker_pending
    with pytest.raises(OSError):
        store.save({}, 1)
    monkeypatch.setattr(state_store, "_write_synced", real)
    store.retry_marker()
    assert not store.marker_pending
    assert store_at(tmp_path)[0].load_marker() == {"business": 1000}
