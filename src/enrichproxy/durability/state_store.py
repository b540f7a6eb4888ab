"""The aggregation state on disk: two checkpoints and an "emitted through" marker.

* ``<state_path>``: every view's state (aggregation_state), written atomically every
  ``checkpoint_interval`` and at shutdown, read at start; the one it replaced is kept as
  ``<state_path>.prev``. The input log keeps every record the *previous* checkpoint does not
  cover, so when the newest one is damaged the start falls back to the previous one and
  replays the log from there: nothing acknowledged is lost.
* ``<state_path>.emitted``: per view, the end (ms) of the last window handed to the forwarder
  (milliseconds, not window numbers, so a changed interval reads it right). It is written
  (fsync) before those windows' samples are queued, at every flush. After a crash the restored
  checkpoint may be older than what was already sent; the marker keeps those windows from being
  emitted a second time with other values, which a downstream Prometheus would refuse (400,
  and for remote write 1.0 the whole batch with it).

Each file starts with a line ``enrichproxy-<kind> 2 <crc32> <length>`` (format, checksum and
length of the JSON that follows), so a changed or cut file is told from a good one; files of
format 1 (the JSON alone) are still read. A damaged file is moved aside as
``<name>.corrupt-<time>``, reported in one line, and never stops the start.

Samples a crash takes with it since the last checkpoint are not lost for counters: their next
sample carries the whole increase, into the next window.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enrichproxy.durability.files import move_aside, mtime_text, write_atomically
from enrichproxy.durability.health import Damage, DurabilityHealth

FORMAT_VERSION = 2


class CorruptFile(ValueError):
    """A durable file that is not what was written: the reason, for the report."""


def frame(kind: str, payload: bytes) -> bytes:
    header = f"enrichproxy-{kind} {FORMAT_VERSION} {zlib.crc32(payload):08x} {len(payload)}\n"
    return header.encode() + payload


def unframe(kind: str, data: bytes) -> bytes:
    """The payload of a framed file; CorruptFile when it is not intact."""
    if data.startswith(b"{"):
        return data  # format 1: JSON without a header
    line, newline, payload = data.partition(b"\n")
    parts = line.decode("ascii", errors="replace").split(" ")
    if not newline or len(parts) != 4 or parts[0] != f"enrichproxy-{kind}":
        raise CorruptFile("no valid header line")
    if parts[1] != str(FORMAT_VERSION):
        raise CorruptFile(f"unknown format {parts[1]!r}")
    if not parts[3].isdigit() or int(parts[3]) != len(payload):
        raise CorruptFile(f"length {len(payload)} differs from the header's {parts[3]}")
    if f"{zlib.crc32(payload):08x}" != parts[2]:
        raise CorruptFile("checksum mismatch: the content was changed")
    return payload


def _write_synced(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Replace ``path`` atomically (fsync, then rename, then fsync the folder); with
    ``keep_previous``, the file replaced is renamed there first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, keep_previous)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Checkpoint:
    views: dict[str, Any]
    input_log_next: int
    """The first input-log record this checkpoint does not cover."""
    path: Path


class StateStore:
    def __init__(self, path: str, health: DurabilityHealth | None = None) -> None:
        self.path = Path(path)
        self.previous_path = self.path.with_name(f"{self.path.name}.prev")
        self.marker_path = self.path.with_name(f"{self.path.name}.emitted")
        self._health = health or DurabilityHealth()
        self._marked: dict[str, int] = {}
        self._marker_wanted: dict[str, int] | None = None
        """A marker that could not be written yet."""
        self._covers: dict[Path, int] = {}
        """What the checkpoint files now on disk cover (input-log record numbers)."""

    # --- reading at start --------------------------------------------------------------------

    def checkpoints(self) -> list[Checkpoint]:
        """The intact checkpoints, newest first; damaged ones are reported and moved aside."""
        found = []
        for path in (self.path, self.previous_path):
            checkpoint = self._read_checkpoint(path)
            if checkpoint is not None:
                found.append(checkpoint)
                self._covers[path] = checkpoint.input_log_next
        return found

    def _read_checkpoint(self, path: Path) -> Checkpoint | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._damaged("checkpoint", path, f"unreadable ({exc})", 0)
            return None
        try:
            document = json.loads(unframe("state", data))
            if not isinstance(document, dict):
                raise CorruptFile("not a JSON object")
            views, input_log_next = document.get("views"), document.get("input_log_next", 0)
            if not isinstance(views, dict) or not all(
                isinstance(name, str) and isinstance(state, dict) for name, state in views.items()
            ):
                raise CorruptFile("'views' is not an object of view states")
            if not isinstance(input_log_next, int) or input_log_next < 0:
                raise CorruptFile("'input_log_next' is not a record number")
        except (CorruptFile, ValueError) as exc:  # json's errors are ValueErrors
            self._damaged("checkpoint", path, str(exc), len(data))
            return None
        return Checkpoint(views, input_log_next, path)

    def reject(self, checkpoint: Checkpoint, reason: str) -> None:
        """The engine could not restore ``checkpoint``: report it and move it aside."""
        self._covers.pop(checkpoint.path, None)
        size = checkpoint.path.stat().st_size if checkpoint.path.exists() else 0
        self._damaged(
            "checkpoint", checkpoint.path, f"not a state this engine reads: {reason}", size
        )

    def _damaged(self, file: str, path: Path, what: str, size: int) -> None:
        consequence = {
            "checkpoint": "the previous checkpoint is used, and the input log replayed from it",
            "emitted_marker": "windows already sent may be sent again (the downstream refuses"
            " those duplicates)",
        }[file]
        written = mtime_text(path)
        self._health.corrupted(
            Damage(
                file=file,
                path=path,
                what=what,
                records_lost=0,
                bytes_lost=size,
                moved_to=move_aside(path),
                time_range=f"before {written}" if written else "",
                consequence=consequence,
            )
        )

    def load_marker(self) -> dict[str, int]:
        """Emitted-through ms per view, {} when there is none or it is damaged."""
        try:
            data = self.marker_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._damaged("emitted_marker", self.marker_path, f"unreadable ({exc})", 0)
            return {}
        try:
            document = json.loads(unframe("emitted", data))
            if not isinstance(document, dict):
                raise CorruptFile("not a JSON object")
            self._marked = {str(k): int(v) for k, v in document.items()}
        except (CorruptFile, ValueError, TypeError) as exc:
            self._damaged("emitted_marker", self.marker_path, str(exc), len(data))
            return {}
        return dict(self._marked)

    # --- writing -----------------------------------------------------------------------------

    def save(self, states: dict[str, Any], input_log_next: int) -> int:
        """Write the views' states, covering every input-log record below ``input_log_next``;
        the checkpoint written before becomes the previous one. Returns the record number the
        input log may now be cut at: what the previous checkpoint covers. OSError (reported)
        when it could not be written; the checkpoints on disk are then unchanged."""
        document = {"views": states, "input_log_next": input_log_next}
        data = frame("state", json.dumps(document, separators=(",", ":")).encode())
        # Only a checkpoint known good becomes the previous one: a damaged file that could
        # not be moved aside must not push the good previous checkpoint out.
        keep = self.previous_path if self.path in self._covers else None
        try:
            _write_synced(self.path, data, keep_previous=keep)
        except OSError as exc:
            self._health.failed("checkpoint", "write", self.path, exc)
            raise
        self._health.recovered("checkpoint", "write", self.path)
        if self.path in self._covers:
            self._covers[self.previous_path] = self._covers[self.path]
        self._covers[self.path] = input_log_next
        return self._covers.get(self.previous_path, 0)

    @property
    def marker_pending(self) -> bool:
        """A marker could not be written: nothing may be emitted until it is."""
        return self._marker_wanted is not None

    def mark_emitted(self, windows: dict[str, int]) -> None:
        """Record, per view, the end (ms) of the last window emitted; a no-op when nothing
        moved. OSError (reported) when it could not be written: ``retry_marker`` tries again."""
        if windows == self._marked:
            if self._marker_wanted is not None:  # what failed to be written is moot now
                self._marker_wanted = None
                self._health.recovered("emitted_marker", "write", self.marker_path)
            return
        self._marker_wanted = dict(windows)
        self.retry_marker()

    def retry_marker(self) -> None:
        """Write a marker that could not be written before; OSError while that still fails."""
        wanted = self._marker_wanted
        if wanted is None:
            return
        try:
            _write_synced(self.marker_path, frame("emitted", json.dumps(wanted).encode()))
        except OSError as exc:
            self._health.failed("emitted_marker", "write", self.marker_path, exc)
            raise
        self._health.recovered("emitted_marker", "write", self.marker_path)
        self._marked, self._marker_wanted = wanted, None
