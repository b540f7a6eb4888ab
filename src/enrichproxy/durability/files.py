"""Small file operations every durable component needs: atomic replace, moving damage aside."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path


def write_atomically(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content; with
    ``keep_previous``, the file replaced is renamed there first.

    On failure the temporary file is removed, so a full disk is not filled further by
    half-written copies that every retry would leave behind.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def aside_name(path: Path) -> Path:
    """Where a damaged file is kept for inspection: ``<name>.corrupt-<unix time>``, next to it
    (a name no reader of the original globs for)."""
    stamp = int(time.time())
    candidate = path.with_name(f"{path.name}.corrupt-{stamp}")
    suffix = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.corrupt-{stamp}.{suffix}")
        suffix += 1
    return candidate


def move_aside(path: Path) -> Path | None:
    """Rename a damaged file out of the way (never delete it); None if even that failed."""
    target = aside_name(path)
    try:
        os.replace(path, target)
    except OSError:
        return None
    return target


def keep_copy(path: Path) -> Path | None:
    """Keep the current content of ``path`` aside before it is rewritten: a hard link (no
    space needed), or a copy where links are not possible; None if neither worked."""
    target = aside_name(path)
    try:
        os.link(path, target)
    except OSError:
        try:
            shutil.copyfile(path, target)
        except OSError:
            return None
    return target


def mtime_text(path: Path) -> str:
    """When ``path`` was last written, UTC, or "" when it cannot be told."""
    try:
        moment = path.stat().st_mtime
    except OSError:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
