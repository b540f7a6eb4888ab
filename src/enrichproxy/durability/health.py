"""Whether the files that make writes durable can be written, and what was found damaged.

Every durable component (input log, disk queues, checkpoint, emitted marker) reports here
instead of letting an ``OSError`` end the task it runs in: a full or failing disk must neither
stop forwarding for good nor pass unnoticed. Each distinct failure (file, operation, path,
errno) is logged once, at its first occurrence, and again only after it cleared and came back;
every occurrence is counted. While any failure is outstanding, durability is *impaired*:
``/-/ready`` answers 503 and the flusher holds output back. The component that failed retries
by itself and reports ``recovered`` when the same operation succeeds.

Damage found when a file is read at start (``corrupted``) is reported in one line with what it
cost, counted, and does not impair anything: what is still readable is used.

Metrics live in the server stage; they are reached through the two callbacks.
"""

from __future__ import annotations

import errno as errno_names
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Damage:
    """What a corrupt file cost: how much of it could not be used, and where it went."""

    file: str
    """The kind of file: ``input_log``, ``queue``, ``queue_ack``, ``checkpoint``..."""
    path: Path
    what: str
    """What was wrong, for the log line."""
    records_lost: int | None = None
    """Records that could not be read; None when unknown (the damage hid how many)."""
    bytes_lost: int = 0
    moved_to: Path | None = None
    """Where the damaged bytes were moved for inspection (never deleted)."""
    time_range: str = ""
    """When the lost data was written, as far as the file tells."""
    consequence: str = ""


def _describe_errno(exc: OSError) -> str:
    if exc.errno is None:
        return "errno=?"
    return f"errno={exc.errno} ({errno_names.errorcode.get(exc.errno, '?')})"


class DurabilityHealth:
    def __init__(
        self,
        on_error: Callable[[str, str], None] | None = None,
        on_damage: Callable[[Damage], None] | None = None,
    ) -> None:
        self._on_error = on_error or (lambda _file, _op: None)
        self._on_damage = on_damage or (lambda _damage: None)
        self._failures: dict[tuple[str, str, str], int | None] = {}
        """(file, operation, path) → errno of the outstanding failure."""

    def failed(self, file: str, op: str, path: Path, exc: OSError) -> None:
        """``op`` on ``path`` failed; the caller keeps what it could not write and retries."""
        key = (file, op, str(path))
        if key not in self._failures or self._failures[key] != exc.errno:
            log.error(
                "durability impaired: %s %s failed path=%s %s: %s; retrying until it works",
                file,
                op,
                path,
                _describe_errno(exc),
                exc.strerror or exc,
            )
        self._failures[key] = exc.errno
        self._on_error(file, op)

    def recovered(self, file: str, op: str, path: Path) -> None:
        """``op`` on ``path`` worked: clears a failure reported for it, if there was one."""
        key = (file, op, str(path))
        if key in self._failures:
            del self._failures[key]
            log.warning("durability restored: %s %s works again path=%s", file, op, path)

    def corrupted(self, damage: Damage) -> None:
        """Report damage found in a file, once, with what it cost."""
        records = "unknown" if damage.records_lost is None else str(damage.records_lost)
        log.error(
            "corrupt %s path=%s: %s; lost records=%s bytes=%d%s%s%s",
            damage.file,
            damage.path,
            damage.what,
            records,
            damage.bytes_lost,
            f" written={damage.time_range}" if damage.time_range else "",
            f" moved_to={damage.moved_to}" if damage.moved_to is not None else "",
            f"; {damage.consequence}" if damage.consequence else "",
        )
        self._on_damage(damage)

    @property
    def impaired(self) -> bool:
        return bool(self._failures)

    def describe(self) -> str:
        """The outstanding failures, for ``/-/ready``."""
        return "; ".join(
            f"{file} {op} failed on {path} (errno {number})"
            for (file, op, path), number in sorted(self._failures.items())
        )
