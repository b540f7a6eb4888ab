"""When the data of a record was sampled: to say which time range damage cost.

Input-log records and disk-queue batches are both remote-write requests, so the sample
timestamps of the intact records on either side of a damaged one bound what it held. Only
read when damage is found, never on the data path.
"""

from __future__ import annotations

import time

from enrichproxy.errors import DecodeError
from enrichproxy.wire.codec import decode_write_request, decompress


def sample_times(body: bytes) -> tuple[int, int] | None:
    """(earliest, latest) sample timestamp in ms of a remote-write body; None when it holds
    none or is not one (a void record, a metadata-only request)."""
    try:
        request = decode_write_request(decompress(body))
    except DecodeError:
        return None
    stamps = [timestamp for series in request.series for timestamp, _ in series.samples]
    return (min(stamps), max(stamps)) if stamps else None


def between(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str:
    """The time range between the samples of the intact record before and the one after."""

    def text(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

    start = text(before[1]) if before is not None else "?"
    end = text(after[0]) if after is not None else "?"
    return f"samples {start}..{end}"
