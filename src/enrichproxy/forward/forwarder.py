"""Sends output samples to the remote-write destinations: the only importer of the HTTP client.

Per destination, samples are sharded by a stable hash of their output label set, and each shard
has exactly one request in flight, retried until it succeeds or fails for good, so every series
reaches the destination in timestamp order (spec, "Per-series order").

What each answer means. The spec (§2) says only 5xx and 429 are retried; Prometheus drops on
every other 4xx (and on 429 by default), vmagent drops only on 400, 409 and 415. Ours:

===================================  ===================================================
2xx                                  written
5xx, 429, no answer                  transient: retry with exponential backoff and
                                     jitter, honouring Retry-After
3xx                                  retried like a 5xx, never followed: a redirect
                                     turns the POST into a GET (whose 200 stores
                                     nothing), so it is a wrong URL, logged with its
                                     Location until the configuration is fixed
401, 403, 404, 407, 408, 425         retried like a 5xx: a wrong credential, tenant or
                                     URL is a misconfiguration that a fix heals, and a
                                     dropped batch would not come back. The queue fills
                                     meanwhile and, when full, writes are answered 503
                                     (or, with ``when_full: drop_oldest``, the oldest
                                     batches go), so the problem shows on every alert.
any other 4xx (400, 409, 413, 422…)  permanent: this batch will never be taken (bad data,
                                     out of order, too large); log the answer, count the
                                     samples as dropped by destination and status, go on
===================================  ===================================================

While a batch is retried its shard waits, so per-series order holds.

Answers are read with a cap (``MAX_RESPONSE_BODY``): a destination that answers with a huge
body costs no memory; the connection is closed instead of drained.

With a disk queue, a batch that cannot be appended (a full disk) is held in memory, in order,
and appended again at every sync (each flush tick) until the disk takes it; meanwhile
``holds_unqueued`` is true, and the flusher emits nothing more and takes no checkpoint. Every
such failure is reported to ``DurabilityHealth``; none ends a sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from enrichproxy import __version__
from enrichproxy.config.schema import RemoteWriteConfig
from enrichproxy.durability.disk_queue import Record, ShardQueue
from enrichproxy.durability.health import DurabilityHealth
from enrichproxy.forward.relabel import Relabeler
from enrichproxy.model import MetricType, OutputSample
from enrichproxy.server.auth import outbound_authorization
from enrichproxy.server.telemetry import Telemetry
from enrichproxy.server.tls import client_context
from enrichproxy.wire.codec import compress, encode_samples
from enrichproxy.wire.v2 import (
    CONTENT_TYPE_V2,
    SAMPLES_WRITTEN_HEADER,
    VERSION_HEADER_V2,
    TypeOf,
    WireProtocol,
    body_protocol,
    encode_v2_samples,
    transcode,
)

if TYPE_CHECKING:
    from ssl import SSLContext

log = logging.getLogger(__name__)

REMOTE_WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": f"enrichproxy/{__version__}",
}
# What changes for a destination sent remote write 2.0 (protobuf_message).
REMOTE_WRITE_V2_HEADERS = {
    **REMOTE_WRITE_HEADERS,
    "Content-Type": CONTENT_TYPE_V2,
    "X-Prometheus-Remote-Write-Version": VERSION_HEADER_V2,
}
# Bytes of an error answer kept for the log: receivers explain themselves in the body.
MAX_ERROR_BODY = 512
# Bytes of any answer read at most; beyond, the connection is closed rather than drained. A
# remote-write answer is empty or a short message: this only guards against a wrong endpoint.
MAX_RESPONSE_BODY = 64 * 1024
# A sender whose disk queue cannot be read waits this long before trying again.
DISK_RETRY_SECONDS = 1.0
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


# Client errors that say "not like this, not now" rather than "never this data" (table above).
RETRIED_CLIENT_ERRORS = frozenset({401, 403, 404, 407, 408, 425, 429})


def is_retryable(status: int | None) -> bool:
    """None stands for no answer at all (connection refused, reset, timeout)."""
    return (
        status is None
        or status >= 500
        or status in RETRIED_CLIENT_ERRORS
        or 300 <= status < 400  # never followed: see the table
    )


V2Encoder = Callable[[Sequence[OutputSample], TypeOf], bytes]
"""Output samples and a type lookup → an uncompressed 2.0 Request: ``encode_v2_samples``
here, or the engine's (``Engine.encode_output_v2``)."""

SampleEncoder = Callable[[Sequence[OutputSample]], bytes]
"""Output samples → an uncompressed WriteRequest, samples of one series grouped, order kept:
``encode_samples`` here, or the native engine's (``Engine.encode_output``)."""


def no_types(_metric_name: str) -> MetricType:
    """The type lookup of a forwarder told nothing: every series goes out untyped."""
    return MetricType.UNKNOWN


def encode_batch(batch: Sequence[OutputSample], encode: SampleEncoder = encode_samples) -> bytes:
    """Snappy-compressed WriteRequest of ``batch``."""
    return compress(encode(batch))


@dataclass
class Batch:
    """One request's worth of samples, encoded."""

    body: bytes
    samples: int
    record: Record | None = None
    """Its place in the disk queue, when there is one."""


class MemoryShard:
    """A shard's samples in memory, encoded when they are sent (lost on a crash)."""

    def __init__(self, limit: int, encode: SampleEncoder = encode_samples) -> None:
        self._limit = limit
        self._encode = encode
        self._queue: deque[OutputSample] = deque()
        self.samples = 0
        """Queued and in flight."""
        self.size_bytes = 0

    def put(self, samples: list[OutputSample]) -> None:
        self._queue.extend(samples)
        self.samples += len(samples)

    def take(self) -> Batch | None:
        if not self._queue:
            return None
        batch = [self._queue.popleft() for _ in range(min(self._limit, len(self._queue)))]
        return Batch(encode_batch(batch, self._encode), len(batch))

    def done(self, batch: Batch) -> None:
        self.samples -= batch.samples

    def discard(self) -> int:
        """Give up on everything at shutdown; how many samples that was."""
        dropped, self.samples = self.samples, 0
        self._queue.clear()
        return dropped

    def sync(self) -> None:
        pass


class DiskShard:
    """A shard's batches in a disk queue: encoded when queued, kept until accepted.

    A batch the disk does not take (full, failing) waits in memory, in order, and is appended
    again at every ``put`` and ``sync`` until it is.
    """

    def __init__(
        self,
        directory: Path,
        limit: int,
        health: DurabilityHealth,
        encode: SampleEncoder = encode_samples,
    ) -> None:
        self._limit = limit
        self._encode = encode
        self._health = health
        self.queue = ShardQueue(directory, health, file="queue")
        self._unqueued: deque[tuple[bytes, int]] = deque()

    @property
    def samples(self) -> int:
        return self.queue.samples + sum(samples for _, samples in self._unqueued)

    @property
    def size_bytes(self) -> int:
        return self.queue.size_bytes + sum(len(body) for body, _ in self._unqueued)

    @property
    def holds_unqueued(self) -> bool:
        return bool(self._unqueued)

    def put(self, samples: list[OutputSample]) -> None:
        for start in range(0, len(samples), self._limit):
            chunk = samples[start : start + self._limit]
            self._unqueued.append((encode_batch(chunk, self._encode), len(chunk)))
        self.queue_held()

    def queue_held(self) -> bool:
        """Append the batches held in memory; whether none is left."""
        while self._unqueued:
            body, samples = self._unqueued[0]
            try:
                self.queue.append(body, samples)
            except OSError:
                return False  # reported by the queue; kept for the next try
            self._unqueued.popleft()
        return True

    def take(self) -> Batch | None:
        try:
            record = self.queue.peek()
        except OSError as exc:
            self._health.failed("queue", "read", self.queue.directory, exc)
            raise
        self._health.recovered("queue", "read", self.queue.directory)
        return None if record is None else Batch(record.body, record.samples, record)

    def done(self, batch: Batch) -> None:
        assert batch.record is not None
        self.queue.ack(batch.record)  # an ack that cannot be written is kept and retried

    def discard(self) -> int:
        dropped = sum(samples for _, samples in self._unqueued)
        if dropped:
            log.error(
                "disk queue %s: %d samples never reached the disk", self.queue.directory, dropped
            )
        self._unqueued.clear()
        return dropped  # the rest stays on disk for the next start

    def sync(self) -> None:
        self.queue_held()
        with contextlib.suppress(OSError):  # reported by the queue, tried again next time
            self.queue.sync()
        self.queue.retry_ack()


Shard = MemoryShard | DiskShard


class Destination:
    """One remote_write URL: its shards, their sender tasks and its queue accounting."""

    def __init__(
        self,
        config: RemoteWriteConfig,
        session: aiohttp.ClientSession,
        telemetry: Telemetry,
        rng: random.Random | None = None,
        *,
        encode: SampleEncoder = encode_samples,
        health: DurabilityHealth | None = None,
        types: TypeOf = no_types,
        encode_v2: V2Encoder = encode_v2_samples,
    ) -> None:
        self.config = config
        self.name = config.name
        self.protocol = WireProtocol(config.protobuf_message)
        """What is sent: the configured message until a 415 makes a 2.0 destination fall back
        to 1.0 (for as long as this destination runs; a restart or reload tries 2.0 again)."""
        self._encode_v1 = encode
        self._encode_v2 = encode_v2
        self._types = types

        self._session = session
        self._telemetry = telemetry
        self._rng = rng or random.Random()
        limit = config.max_samples_per_send
        queue = config.queue
        health = health or DurabilityHealth()
        self._shards: list[Shard] = [
            DiskShard(Path(queue.path) / f"shard-{index}", limit, health, self._encode)
            if queue is not None
            else MemoryShard(limit, self._encode)
            for index in range(config.shards)
        ]
        self._wakeups = [asyncio.Event() for _ in self._shards]
        self._tasks: list[asyncio.Task[None]] = []
        self._give_up_at: float | None = None
        self._idle = asyncio.Event()
        self._update_idle()
        # Built once; holds the credentials, so it is never logged. The remote-write headers
        # come last: nothing configured can override them.
        configured = {
            **dict(config.headers),
            **outbound_authorization(
                config.basic_auth, config.bearer_token, config.authorization_type
            ),
        }
        self._headers = {
            WireProtocol.V1: {**configured, **REMOTE_WRITE_HEADERS},
            WireProtocol.V2: {**configured, **REMOTE_WRITE_V2_HEADERS},
        }
        tls = config.tls_config
        self._ssl: SSLContext | bool = (
            True if tls is None else client_context(tls, f"remote_write[{self.name}].tls_config")
        )
        self._server_hostname = None if tls is None else tls.server_name
        self._relabeler = (
            Relabeler(config.write_relabel_configs) if config.write_relabel_configs else None
        )
        telemetry.queue_capacity.labels(self.name).set(config.capacity)
        telemetry.queue_capacity_bytes.labels(self.name).set(
            0 if queue is None else queue.max_bytes
        )
        telemetry.watch_function(
            telemetry.queue_samples.labels(self.name), lambda: float(self.queued)
        )
        telemetry.watch_function(
            telemetry.queue_bytes.labels(self.name), lambda: float(self.queued_bytes)
        )

    def _encode(self, batch: Sequence[OutputSample]) -> bytes:
        """A batch in the protocol the destination speaks now."""
        if self.protocol is WireProtocol.V2:
            return self._encode_v2(batch, self._types)
        return self._encode_v1(batch)

    @property
    def queued(self) -> int:
        return sum(shard.samples for shard in self._shards)

    @property
    def queued_bytes(self) -> int:
        return sum(shard.size_bytes for shard in self._shards)

    @property
    def full(self) -> bool:
        queue = self.config.queue
        if queue is None:
            return self.queued >= self.config.capacity
        return queue.when_full == "block" and self.queued_bytes >= queue.max_bytes

    @property
    def holds_unqueued(self) -> bool:
        """Some output could not be written to the disk queue yet (it waits in memory)."""
        return any(isinstance(s, DiskShard) and s.holds_unqueued for s in self._shards)

    def queue_held(self) -> bool:
        """Try the disk again for output held in memory; whether none is left."""
        return all(s.queue_held() for s in self._shards if isinstance(s, DiskShard))

    def _update_idle(self) -> None:
        if self.queued:
            self._idle.clear()
        else:
            self._idle.set()

    def start(self) -> None:
        if self.queued:
            log.info("destination=%s resuming %d queued samples", self.name, self.queued)
        self._tasks = [
            asyncio.create_task(self._run(index), name=f"forward-{self.name}-{index}")
            for index in range(len(self._shards))
        ]

    def enqueue(self, samples: Iterable[OutputSample]) -> None:
        """Queue samples for sending. Never refuses: callers check ``full`` beforehand."""
        shards = self._shards
        count = len(shards)
        if self._relabeler is not None:
            samples = self._relabel(samples)
        by_shard: dict[int, list[OutputSample]] = {}
        for sample in samples:
            by_shard.setdefault(zlib.crc32(sample.label_bytes) % count, []).append(sample)
        for index, shard_samples in by_shard.items():
            shards[index].put(shard_samples)
            self._wakeups[index].set()
        if by_shard:
            self._idle.clear()
            self._make_room()

    def _relabel(self, samples: Iterable[OutputSample]) -> list[OutputSample]:
        """``samples`` after write_relabel_configs; those it drops are counted."""
        relabeler = self._relabeler
        assert relabeler is not None
        kept: list[OutputSample] = []
        dropped = 0
        for sample in samples:
            label_bytes = relabeler(sample.label_bytes)
            if label_bytes is None:
                dropped += 1
            else:
                kept.append(sample._replace(label_bytes=label_bytes))
        if dropped:
            self._telemetry.forward_relabel_dropped.labels(self.name).inc(dropped)
        return kept

    def _make_room(self) -> None:
        queue = self.config.queue
        if queue is None or queue.when_full != "drop_oldest":
            return
        while self.queued_bytes > queue.max_bytes:
            largest = max(
                (s for s in self._shards if isinstance(s, DiskShard)), key=lambda s: s.size_bytes
            )
            dropped = largest.queue.drop_oldest()
            if not dropped:
                break
            log.warning("destination=%s queue full: dropped %d oldest samples", self.name, dropped)
            self._telemetry.forward_dropped.labels(self.name, "queue_full").inc(dropped)

    def sync(self) -> None:
        """Make everything queued so far durable (a no-op for memory queues)."""
        for shard in self._shards:
            shard.sync()

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued was sent or given up on; False on timeout.

        A disk queue only needs to be durable: what it holds is sent after the next start.
        """
        self._give_up_at = time.monotonic() + timeout
        if self.config.queue is not None:
            self.sync()
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        dropped = sum(shard.discard() for shard in self._shards)
        if dropped:
            log.error("destination=%s dropped %d queued samples at shutdown", self.name, dropped)
            self._telemetry.forward_dropped.labels(self.name, "shutdown").inc(dropped)
        elif self.queued:
            log.info("destination=%s keeps %d samples queued on disk", self.name, self.queued)

    async def _run(self, index: int) -> None:
        shard, wakeup = self._shards[index], self._wakeups[index]
        while True:
            try:
                batch = shard.take()
            except OSError:  # reported by the shard
                await asyncio.sleep(DISK_RETRY_SECONDS)
                continue
            if batch is None:
                wakeup.clear()
                self._update_idle()
                await wakeup.wait()
                continue
            sent = False
            try:
                sent = await self._send(batch)
            finally:
                if sent or isinstance(shard, MemoryShard):
                    shard.done(batch)
                if not sent and isinstance(shard, MemoryShard):  # cancelled mid-send
                    self._telemetry.forward_dropped.labels(self.name, "shutdown").inc(batch.samples)
                self._update_idle()

    async def _send(self, batch: Batch) -> bool:
        """Send until accepted or given up for good; False only when cancelled."""
        body = batch.body
        attempt = 0
        while True:
            # Queued before a fallback, or on disk from a run configured otherwise.
            sent_as = self.protocol
            if body_protocol(body) is not sent_as:
                body = transcode(body, sent_as, self._types)
            status, detail, retry_after, confirmed = await self._attempt(body)
            if sent_as is WireProtocol.V2 and status is not None:
                # A 1.x receiver answers 415 to 2.0, or, older still, reads the 2.0 body as an
                # empty 1.0 request and answers 2xx without the written counts a 2.0 receiver
                # must send (spec): either way nothing was written, so the batch goes again.
                unconfirmed = 200 <= status < 300 and not confirmed and batch.samples
                if status == 415 or unconfirmed:
                    self._fall_back(
                        detail if status == 415 else "2xx without the written-count headers"
                    )
                    continue
            if status is not None and 200 <= status < 300:
                self._telemetry.forward_samples.labels(self.name).inc(batch.samples)
                return True
            if status is not None and 300 <= status < 400:
                detail = f"redirect to {detail or '?'} not followed: fix the url"
            if not is_retryable(status) or (status == 429 and not self.config.retry_on_http_429):
                log.error(
                    "destination=%s refused %d samples status=%s answer=%r",
                    self.name,
                    batch.samples,
                    status,
                    detail,
                )
                self._telemetry.forward_dropped.labels(self.name, str(status)).inc(batch.samples)
                return True
            backoff = self._backoff(attempt, retry_after)
            shutting_down = self._give_up_at is not None
            # At shutdown a memory queue gives up at the deadline; a disk queue keeps the batch.
            if (
                shutting_down
                and batch.record is None
                and time.monotonic() + backoff > (self._give_up_at or 0.0)
            ):
                log.error(
                    "destination=%s shutting down: giving up %d samples after status=%s",
                    self.name,
                    batch.samples,
                    status or "no answer",
                )
                self._telemetry.forward_dropped.labels(self.name, "shutdown").inc(batch.samples)
                return True
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

    def _fall_back(self, detail: str) -> None:
        """The receiver speaks 1.0 only (spec: a sender may fall back); once per destination,
        however many shards learn it."""
        if self.protocol is WireProtocol.V1:
            return
        self.protocol = WireProtocol.V1
        log.warning(
            "destination=%s does not take remote write 2.0: sending 1.0 from now on answer=%r",
            self.name,
            detail,
        )
        self._telemetry.forward_protocol_fallbacks.labels(self.name).inc()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = self.config.max_backoff_ms / 1000
        base = min(ceiling, self.config.min_backoff_ms / 1000 * 2.0**attempt)
        # "Equal jitter" (a random point in the upper half) keeps shards from retrying in step.
        delay = base / 2 + self._rng.random() * base / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _attempt(self, body: bytes) -> tuple[int | None, str, float | None, bool]:
        """(status or None for no answer, what the answer said, Retry-After, whether the
        answer carried a 2.0 receiver's written counts)."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_ms / 1000)
        started = time.perf_counter()
        try:
            async with self._session.post(
                self.config.url,
                data=body,
                headers=self._headers[self.protocol],
                timeout=timeout,
                ssl=self._ssl,
                server_hostname=self._server_hostname,
                proxy=self.config.proxy_url,
                allow_redirects=False,
            ) as response:
                head = await read_capped(response)
                detail = ""
                if 300 <= response.status < 400:
                    detail = response.headers.get("Location", "")
                elif response.status >= 400:
                    detail = head.decode(errors="replace")
                status: int | None = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                confirmed = SAMPLES_WRITTEN_HEADER in response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, detail, retry_after = None, f"{type(exc).__name__}: {exc}", None
            confirmed = False
        self._telemetry.forward_duration.labels(self.name).observe(time.perf_counter() - started)
        self._telemetry.forward_requests.labels(self.name, str(status or "error")).inc()
        return status, detail.strip(), retry_after, confirmed


async def read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The first ``MAX_ERROR_BODY`` bytes of an answer, reading at most ``MAX_RESPONSE_BODY``;
    a longer answer is not drained: its connection is closed."""
    kept = b""
    read = 0
    while read < MAX_RESPONSE_BODY:
        chunk = await response.content.read(MAX_RESPONSE_BODY - read)
        if not chunk:
            return kept
        read += len(chunk)
        if len(kept) < MAX_ERROR_BODY:
            kept += chunk[: MAX_ERROR_BODY - len(kept)]
    if not response.content.at_eof():
        response.close()
    return kept


class Forwarder:
    """All destinations; every output sample goes to each that receives its view."""

    def __init__(
        self,
        configs: Iterable[RemoteWriteConfig],
        telemetry: Telemetry,
        encode: SampleEncoder = encode_samples,
        *,
        health: DurabilityHealth | None = None,
        types: TypeOf = no_types,
        encode_v2: V2Encoder = encode_v2_samples,
    ) -> None:
        self._configs = tuple(configs)
        self._telemetry = telemetry
        self._encode = encode
        self._types = types
        """Metric name → the type 2.0 destinations send its series with."""
        self._encode_v2 = encode_v2
        self._health = health or DurabilityHealth()
        self._session: aiohttp.ClientSession | None = None
        self.destinations: list[Destination] = []

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.destinations = [
            Destination(
                config,
                self._session,
                self._telemetry,
                encode=self._encode,
                health=self._health,
                types=self._types,
                encode_v2=self._encode_v2,
            )
            for config in self._configs
        ]
        for destination in self.destinations:
            destination.start()

    @property
    def full(self) -> bool:
        return any(d.full for d in self.destinations)

    def enqueue(self, samples: list[OutputSample], view: str | None = None) -> None:
        """Queue ``samples`` of ``view`` for each destination that receives that view (every
        destination when ``view`` is None)."""
        if samples:
            for destination in self.destinations:
                if view is None or destination.config.receives(view):
                    destination.enqueue(samples)

    async def reconfigure(self, configs: Iterable[RemoteWriteConfig], drain_timeout: float) -> None:
        """Switch to ``configs``, keeping every destination whose sending is unchanged.

        A destination (by name) whose settings differ at most in ``views`` keeps its queue and
        senders and receives the views listed now. Every other one that changed or went away
        leaves the routing at once, sends what it holds (a memory queue within
        ``drain_timeout``, what is left then is dropped as at shutdown; a disk queue stays on
        disk, for the destination that uses its path next) and stops. Only then do the new ones
        start, so a changed destination never has two senders at once, which would break its
        series' order and share a disk queue between two writers. The caller must not enqueue
        meanwhile: a new destination would miss those samples.
        """
        if self._session is None:
            raise RuntimeError("Forwarder.reconfigure before start")
        self._configs = tuple(configs)
        current = {destination.name: destination for destination in self.destinations}
        kept: dict[str, Destination] = {}
        for config in self._configs:
            destination = current.get(config.name)
            if destination is not None and replace(destination.config, views=None) == replace(
                config, views=None
            ):
                destination.config = config
                kept[config.name] = destination
        retired = [d for d in self.destinations if d.name not in kept]
        self.destinations = list(kept.values())
        drained = await asyncio.gather(*(d.drain(drain_timeout) for d in retired))
        for destination, done in zip(retired, drained, strict=True):
            if not done:
                log.error(
                    "destination=%s not drained within %.0fs before its reconfiguration",
                    destination.name,
                    drain_timeout,
                )
            await destination.stop()
            self._telemetry.forget_destination(destination.name)
        destinations = []
        for config in self._configs:
            destination = kept.get(config.name)
            if destination is None:
                destination = Destination(
                    config,
                    self._session,
                    self._telemetry,
                    encode=self._encode,
                    health=self._health,
                    types=self._types,
                    encode_v2=self._encode_v2,
                )
                destination.start()
            destinations.append(destination)
        self.destinations = destinations

    def sync(self) -> None:
        for destination in self.destinations:
            destination.sync()

    @property
    def holds_unqueued(self) -> bool:
        """Some output could not be written to a disk queue yet (it waits in memory): a
        checkpoint now would cover output a crash loses."""
        return any(d.holds_unqueued for d in self.destinations)

    def queue_held(self) -> bool:
        """Try the disk again for output held in memory; whether none is left."""
        return all([d.queue_held() for d in self.destinations])

    async def drain(self, timeout: float) -> bool:
        results = await asyncio.gather(*(d.drain(timeout) for d in self.destinations))
        return all(results)

    async def stop(self) -> None:
        for destination in self.destinations:
            await destination.stop()
        if self._session is not None:
            await self._session.close()
