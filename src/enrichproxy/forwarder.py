"""Sends output samples to the remote-write destinations: the only importer of the HTTP client.

Per destination, samples are sharded by a stable hash of their output label set, and each shard
has exactly one request in flight, retried until it succeeds or fails for good, so every series
reaches the destination in timestamp order (spec, "Per-series order").

What each answer means (remote-write spec, §2):

======================  ==============================================================
2xx                     written
5xx, 429, no answer     transient: retry with exponential backoff and jitter, honouring
                        Retry-After; the shard waits, so order is kept
other 4xx               permanent: the receiver will never take this batch; log the
                        answer, count the samples as dropped, go on with the next batch
======================  ==============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Iterable
from email.utils import parsedate_to_datetime

import aiohttp

from enrichproxy import __version__
from enrichproxy.codec import compress, encode_write_request
from enrichproxy.config import RemoteWriteConfig
from enrichproxy.model import OutputSample
from enrichproxy.telemetry import Telemetry

log = logging.getLogger(__name__)

REMOTE_WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": f"enrichproxy/{__version__}",
}
# Bytes of an error answer kept for the log: receivers explain themselves in the body.
MAX_ERROR_BODY = 512
# A Retry-After longer than this is treated as this: a shard must not sleep for hours.
MAX_RETRY_AFTER_SECONDS = 300.0


def retry_after_seconds(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), if any."""
    if not header:
        return None
    try:
        return min(max(float(header), 0.0), MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    wait: float = moment.timestamp() - time.time()
    return min(max(wait, 0.0), MAX_RETRY_AFTER_SECONDS)


def is_retryable(status: int | None) -> bool:
    """None stands for no answer at all (connection refused, reset, timeout)."""
    return status is None or status >= 500 or status == 429


def encode_batch(batch: Iterable[OutputSample]) -> bytes:
    """Snappy-compressed WriteRequest; samples of one series are grouped, order kept."""
    by_series: dict[bytes, list[tuple[int, float]]] = {}
    for sample in batch:
        by_series.setdefault(sample.label_bytes, []).append((sample.timestamp_ms, sample.value))
    return compress(encode_write_request(by_series.items()))


class _Shard:
    def __init__(self) -> None:
        self.queue: deque[OutputSample] = deque()
        self.wakeup = asyncio.Event()
        self.busy = False


class Destination:
    """One remote_write URL: its shards, their sender tasks and its queue accounting."""

    def __init__(
        self,
        config: RemoteWriteConfig,
        session: aiohttp.ClientSession,
        telemetry: Telemetry,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._session = session
        self._telemetry = telemetry
        self._rng = rng or random.Random()
        self._shards = [_Shard() for _ in range(config.shards)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._give_up_at: float | None = None
        self.queued = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._headers = {**dict(config.headers), **REMOTE_WRITE_HEADERS}
        telemetry.queue_capacity.labels(self.name).set(config.capacity)
        telemetry.watch_function(
            telemetry.queue_samples.labels(self.name), lambda: float(self.queued)
        )

    @property
    def full(self) -> bool:
        return self.queued >= self.config.capacity

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(shard), name=f"forward-{self.name}-{i}")
            for i, shard in enumerate(self._shards)
        ]

    def enqueue(self, samples: Iterable[OutputSample]) -> None:
        """Queue samples for sending. Never refuses: callers check ``full`` beforehand."""
        shards = self._shards
        count = len(shards)
        touched = set()
        added = 0
        for sample in samples:
            index = zlib.crc32(sample.label_bytes) % count
            shards[index].queue.append(sample)
            touched.add(index)
            added += 1
        if added:
            self.queued += added
            self._idle.clear()
            for index in touched:
                shards[index].wakeup.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued was sent or given up on; False on timeout."""
        self._give_up_at = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.queued:
            log.error(
                "destination=%s dropped %d queued samples at shutdown", self.name, self.queued
            )
            self._telemetry.forward_dropped.labels(self.name, "shutdown").inc(self.queued)
            self.queued = 0

    async def _run(self, shard: _Shard) -> None:
        limit = self.config.max_samples_per_send
        while True:
            if not shard.queue:
                shard.wakeup.clear()
                await shard.wakeup.wait()
                continue
            batch = [shard.queue.popleft() for _ in range(min(limit, len(shard.queue)))]
            finished = False
            try:
                await self._send(batch)  # accounts for what it sent or gave up on
                finished = True
            finally:
                if not finished:  # cancelled mid-send at shutdown
                    self._telemetry.forward_dropped.labels(self.name, "shutdown").inc(len(batch))
                self.queued -= len(batch)
                if self.queued == 0:
                    self._idle.set()

    async def _send(self, batch: list[OutputSample]) -> None:
        body = encode_batch(batch)
        attempt = 0
        while True:
            status, detail, retry_after = await self._attempt(body)
            if status is not None and 200 <= status < 300:
                self._telemetry.forward_samples.labels(self.name).inc(len(batch))
                return
            if not is_retryable(status):
                log.error(
                    "destination=%s refused %d samples status=%s answer=%r",
                    self.name,
                    len(batch),
                    status,
                    detail,
                )
                self._telemetry.forward_dropped.labels(self.name, str(status)).inc(len(batch))
                return
            backoff = self._backoff(attempt, retry_after)
            if self._give_up_at is not None and time.monotonic() + backoff > self._give_up_at:
                log.error(
                    "destination=%s shutting down: giving up %d samples after status=%s",
                    self.name,
                    len(batch),
                    status or "no answer",
                )
                self._telemetry.forward_dropped.labels(self.name, "shutdown").inc(len(batch))
                return
            log.warning(
                "destination=%s retrying in %.2fs status=%s answer=%r",
                self.name,
                backoff,
                status or "no answer",
                detail,
            )
            self._telemetry.forward_retries.labels(self.name).inc()
            attempt += 1
            await asyncio.sleep(backoff)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = self.config.max_backoff_ms / 1000
        base = min(ceiling, self.config.min_backoff_ms / 1000 * 2.0**attempt)
        # "Equal jitter" (a random point in the upper half) keeps shards from retrying in step.
        delay = base / 2 + self._rng.random() * base / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _attempt(self, body: bytes) -> tuple[int | None, str, float | None]:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_ms / 1000)
        started = time.perf_counter()
        try:
            async with self._session.post(
                self.config.url, data=body, headers=self._headers, timeout=timeout
            ) as response:
                detail = ""
                if response.status >= 300:
                    detail = (await response.content.read(MAX_ERROR_BODY)).decode(errors="replace")
                else:
                    await response.read()
                status: int | None = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, detail, retry_after = None, f"{type(exc).__name__}: {exc}", None
        self._telemetry.forward_duration.labels(self.name).observe(time.perf_counter() - started)
        self._telemetry.forward_requests.labels(self.name, str(status or "error")).inc()
        return status, detail.strip(), retry_after


class Forwarder:
    """All destinations; every output sample goes to each of them."""

    def __init__(self, configs: Iterable[RemoteWriteConfig], telemetry: Telemetry) -> None:
        self._configs = tuple(configs)
        self._telemetry = telemetry
        self._session: aiohttp.ClientSession | None = None
        self.destinations: list[Destination] = []

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.destinations = [
            Destination(config, self._session, self._telemetry) for config in self._configs
        ]
        for destination in self.destinations:
            destination.start()

    @property
    def full(self) -> bool:
        return any(d.full for d in self.destinations)

    def enqueue(self, samples: list[OutputSample]) -> None:
        if samples:
            for destination in self.destinations:
                destination.enqueue(samples)

    async def drain(self, timeout: float) -> bool:
        results = await asyncio.gather(*(d.drain(timeout) for d in self.destinations))
        return all(results)

    async def stop(self) -> None:
        for destination in self.destinations:
            await destination.stop()
        if self._session is not None:
            await self._session.close()
