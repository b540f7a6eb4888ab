"""The aggregation state on disk: a checkpoint file and an "emitted through" marker.

* ``<state_path>``: every view's state (aggregation_state), written atomically every
  ``checkpoint_interval`` and at shutdown, read at start.
* ``<state_path>.emitted``: per view, the end (ms) of the last window handed to the forwarder
  (milliseconds, not window numbers, so a changed interval reads it right). It is written
  (fsync) before those windows' samples are queued, at every flush. After a crash the restored
  checkpoint may be older than what was already sent; the marker keeps those windows from being
  emitted a second time with other values, which a downstream Prometheus would refuse (400,
  and for remote write 1.0 the whole batch with it).

Samples a crash takes with it since the last checkpoint are not lost for counters: their next
sample carries the whole increase, into the next window.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class StateStore:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.marker_path = self.path.with_name(f"{self.path.name}.emitted")
        self._marked: dict[str, int] = {}

    def load(self) -> tuple[dict[str, Any], dict[str, int], int]:
        """(view states, emitted-through ms per view, first input-log record not covered);
        empty and 0 when there is nothing usable."""
        states: dict[str, Any] = {}
        input_log_next = 0
        try:
            saved = json.loads(self.path.read_bytes())
            if isinstance(saved, dict):
                states = saved.get("views", {})
                input_log_next = int(saved.get("input_log_next", 0))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("aggregation state %s unreadable, starting empty: %s", self.path, exc)
        try:
            self._marked = {
                str(k): int(v) for k, v in json.loads(self.marker_path.read_bytes()).items()
            }
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("emitted marker %s unreadable, ignored: %s", self.marker_path, exc)
        return (states if isinstance(states, dict) else {}), dict(self._marked), input_log_next

    def save(self, states: dict[str, Any], input_log_next: int) -> None:
        """Write the views' states, covering every input-log record below ``input_log_next``."""
        document = {"views": states, "input_log_next": input_log_next}
        _write_atomically(self.path, json.dumps(document, separators=(",", ":")).encode())

    def mark_emitted(self, windows: dict[str, int]) -> None:
        """Record, per view, the end (ms) of the last window emitted; a no-op when nothing
        moved."""
        if windows != self._marked:
            _write_atomically(self.marker_path, json.dumps(windows).encode())
            self._marked = dict(windows)
