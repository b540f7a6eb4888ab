"""A load generator that plays a fleet of pods sending remote write 1.0, as Prometheus would.

Benchmarks and soak tests need traffic shaped like production, not random bytes: the same label
sets coming back every scrape (what the proxy's cache is built for), counters that only go up
except when a pod restarts, pods replaced by new ones whose old series end with staleness
markers, and a pod → service/team/tier table for the join. This module produces that traffic.

Two layers, as in the rest of enrichproxy:

* a pure core, with no clock, sockets or database: ``Fleet`` turns a timestamp into the next
  ``Scrape``; ``Batcher`` cuts scrapes into requests; ``RequestEncoder`` turns a request into
  protobuf bytes; ``Pacer`` says how long to wait to hold a rate; ``RoundClock`` stamps
  rounds (wall clock, or replayed history); ``LoadReport`` sums answers.
* shells: ``generate_load`` posts to an endpoint with aiohttp, ``MetadataSeeder`` upserts the
  fleet's documents with pymongo's AsyncMongoClient, and ``add_arguments`` / ``run`` are the
  ``enrichproxy loadgen`` command.

The load generator is a client of the proxy, not part of its data path, so it talks to aiohttp
and pymongo directly instead of through the forwarder and metadata store: those retry, queue
and cache, and a load generator must do none of that (it retries nothing and reports every
status code instead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TextIO

import aiohttp
import yaml
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.errors import PyMongoError

from enrichproxy import __version__
from enrichproxy.config.durations import format_duration_ms, parse_duration_ms
from enrichproxy.model import METRIC_NAME_LABEL, STALE_NAN, Labels, MetricType
from enrichproxy.wire.codec import (
    TAG_SAMPLE,
    TAG_SAMPLE_TIMESTAMP,
    TAG_SAMPLE_VALUE,
    TAG_TIMESERIES,
    compress,
    encode_labels,
    encode_sample,
    encode_varint,
)
from enrichproxy.wire.v2 import CONTENT_TYPE_V2, VERSION_HEADER_V2

# --- defaults -----------------------------------------------------------------------------------

# enrichproxy's default listen address (conf/enrichproxy.yaml): a bare run hits a local proxy.
DEFAULT_URL = "http://127.0.0.1:9201/api/v1/write"
DEFAULT_PODS = 500
# Prometheus' default queue_config.max_samples_per_send: requests the size a real sender makes.
DEFAULT_BATCH = 2_000
DEFAULT_RATE = 50_000.0
# Like a Prometheus remote-write queue with a few shards: enough to overlap network round trips,
# few enough that the load is a handful of steady connections rather than a connection storm.
DEFAULT_CONCURRENCY = 4
DEFAULT_DURATION = "30s"
# Shorter than Prometheus' 30 s remote_timeout: a bounded run should not wait that long at the end.
DEFAULT_TIMEOUT = "10s"
DEFAULT_SEED = 1
DEFAULT_DATABASE = "metrics"
DEFAULT_COLLECTION = "pod_metadata"
# Per pod and scrape round. At the default rate a round of 500 pods comes every ~0.2 s, so each
# is a few times a second across the fleet: rare per series (a pod lives ~1,000 rounds), but
# seen within seconds by whatever consumes the load.
DEFAULT_RESTART_PROBABILITY = 0.001
DEFAULT_CHURN_PROBABILITY = 0.001

USER_AGENT = f"enrichproxy-loadgen/{__version__}"
# What Prometheus sends with every remote write 1.0 request (docs/remote-write.md §1).
REMOTE_WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": USER_AGENT,
}

# What a remote write 2.0 sender sends instead (protobuf_message: io.prometheus.write.v2.Request).
REMOTE_WRITE_V2_HEADERS = {
    **REMOTE_WRITE_HEADERS,
    "Content-Type": CONTENT_TYPE_V2,
    "X-Prometheus-Remote-Write-Version": VERSION_HEADER_V2,
}
PROTOCOLS = ("1.0", "2.0")

PROGRESS_INTERVAL_S = 1.0
# When the target is slower than the requested rate, the pacer does not build up credit for more
# than this much lag: otherwise a stalled target would be hit by a burst once it recovers.
MAX_CATCH_UP_S = 1.0
# How far back a replay (--sample-interval) starts. A 500-pod fleet replayed at 15 s per round
# and 200 k samples/s covers about 5 min of sample time per second, so a day lasts minutes.
# (A receiver that refuses old samples, like Prometheus' TSDB, will refuse a replay.)
REPLAY_HISTORY_MS = 24 * 3_600_000
# Bounds the wait for a Mongo that is down, so a seeding run fails in seconds, not pymongo's 30 s.
MONGO_TIMEOUT_MS = 5_000

# How LoadReport.limit names what held the rate down. A run within 5 % of its target reached
# it (pacing and the last partial round cost a little); 1 % of requests refused already costs
# samples and says the target pushes back; a share of CPU this close to one core means the
# single event loop is saturated; waiting for a free request slot half of the time means the
# answers, not the sending, set the pace.
REACHED_SHARE = 0.95
REFUSED_SHARE = 0.01
CPU_BOUND_SHARE = 0.85
LATENCY_BOUND_SHARE = 0.5
SHORT_RUN_S = 3.0

# Keys of ``LoadReport.requests`` for requests that got no HTTP answer.
STATUS_TIMEOUT = "timeout"
STATUS_CONNECTION_ERROR = "connection_error"

# Exit codes of ``run``.
EXIT_OK = 0
EXIT_NOT_ALL_ACCEPTED = 1
"""Some request was not answered 2xx (the report says which), or seeding failed."""
EXIT_USAGE = 2
"""A bad argument argparse could not catch (an unreadable ``--pods-from`` file), as argparse."""

# --- the simulated product ----------------------------------------------------------------------

JOB = "kubernetes-pods"
"""The scrape job: one for the whole fleet, so only the metadata table knows a pod's service."""
SCRAPE_PORT = 8080

# (service, team, tier) of the first services; the rest are svc-NN with rotating teams and tiers.
NAMED_SERVICES: tuple[tuple[str, str, str], ...] = (
    ("checkout", "orders", "critical"),
    ("payment", "payments", "critical"),
    ("cart", "storefront", "critical"),
    ("catalog", "storefront", "standard"),
    ("inventory", "fulfilment", "standard"),
    ("shipping", "fulfilment", "standard"),
    ("search", "storefront", "standard"),
    ("pricing", "payments", "standard"),
    ("auth", "platform", "critical"),
    ("recommendation", "growth", "best-effort"),
    ("notification", "platform", "best-effort"),
    ("review", "growth", "best-effort"),
)
TEAMS = ("orders", "payments", "storefront", "fulfilment", "platform", "growth")
TIERS = ("critical", "standard", "best-effort")
PODS_PER_SERVICE = 10

FAILED_METRIC = "order_create_failed_total"
INFLIGHT_METRIC = "checkout_inflight_requests"
DURATION_METRIC = "http_request_duration_seconds"
ENDPOINTS = ("/orders", "/cart", "/checkout")
ERROR_TYPES = ("timeout", "db_error", "validation")
# Upper bounds of the duration histogram's buckets, as Prometheus spells them in `le`.
BUCKET_BOUNDS: tuple[tuple[str, float], ...] = (
    ("0.05", 0.05),
    ("0.1", 0.1),
    ("0.25", 0.25),
    ("0.5", 0.5),
    ("1", 1.0),
    ("+Inf", math.inf),
)
SERIES_PER_POD = len(ENDPOINTS) * len(ERROR_TYPES) + 1 + len(BUCKET_BOUNDS) + 2

# Chance per counter and round that it goes up, and the mean request duration observed.
_FAILURE_PROBABILITY = 0.3
_MEAN_DURATION_S = 0.12
_MAX_INFLIGHT = 50.0


class Sample(NamedTuple):
    """One sample of one series, as a scrape produced it."""

    labels: Labels
    """Sorted by name, so ``__name__`` comes first, as Prometheus sends them."""
    timestamp_ms: int
    value: float


@dataclass(frozen=True)
class PodMetadata:
    """A pod's row in the metadata table the proxy joins on."""

    pod: str
    service: str
    team: str
    tier: str

    def as_document(self) -> dict[str, str]:
        return {"pod": self.pod, "service": self.service, "team": self.team, "tier": self.tier}


@dataclass(frozen=True)
class Scrape:
    """One scrape round of the whole fleet, all at one timestamp."""

    timestamp_ms: int
    samples: list[Sample]
    started: list[PodMetadata]
    """Pods that appear in this round for the first time (replacements of ended pods)."""
    ended: list[str]
    """Pods replaced in this round: their series carry staleness markers, for the last time."""
    restarted: list[str]
    """Pods whose counters went back to zero before this round's values."""


def service_names(count: int) -> list[tuple[str, str, str]]:
    """(service, team, tier) for ``count`` services: the named ones first, then svc-NN."""
    services = list(NAMED_SERVICES[:count])
    for index in range(len(services), count):
        services.append((f"svc-{index:02d}", TEAMS[index % len(TEAMS)], TIERS[index % len(TIERS)]))
    return services


def _series_labels(pod: str, instance: str) -> tuple[Labels, ...]:
    """Every series one pod exposes, in the order its values are kept."""
    common = (("instance", instance), ("job", JOB), ("pod", pod))
    series: list[Labels] = []
    for endpoint in ENDPOINTS:
        for error_type in ERROR_TYPES:
            extra = (("endpoint", endpoint), ("error_type", error_type))
            series.append(_sorted_labels(FAILED_METRIC, common + extra))
    series.append(_sorted_labels(INFLIGHT_METRIC, common))
    for le, _ in BUCKET_BOUNDS:
        series.append(_sorted_labels(f"{DURATION_METRIC}_bucket", (*common, ("le", le))))
    series.append(_sorted_labels(f"{DURATION_METRIC}_count", common))
    series.append(_sorted_labels(f"{DURATION_METRIC}_sum", common))
    return tuple(series)


def _sorted_labels(name: str, labels: Iterable[tuple[str, str]]) -> Labels:
    # Plain lexicographic order puts "__name__" first: "_" sorts before every lowercase letter.
    return tuple(sorted(((METRIC_NAME_LABEL, name), *labels)))


class _Pod:
    """One running pod: its identity, its series and their current values."""

    __slots__ = (
        "buckets",
        "duration_count",
        "duration_sum",
        "failed",
        "inflight",
        "metadata",
        "series",
    )

    def __init__(self, metadata: PodMetadata, instance: str) -> None:
        self.metadata = metadata
        self.series = _series_labels(metadata.pod, instance)
        self.failed = [0.0] * (len(ENDPOINTS) * len(ERROR_TYPES))
        self.inflight = 0.0
        self.buckets = [0.0] * len(BUCKET_BOUNDS)
        self.duration_count = 0.0
        self.duration_sum = 0.0

    def restart(self) -> None:
        """A container restart: same pod name, every counter back to zero."""
        self.failed = [0.0] * len(self.failed)
        self.inflight = 0.0
        self.buckets = [0.0] * len(self.buckets)
        self.duration_count = 0.0
        self.duration_sum = 0.0

    def values(self) -> list[float]:
        """Current values, in the order of ``series``."""
        return [
            *self.failed,
            self.inflight,
            *self.buckets,
            self.duration_count,
            self.duration_sum,
        ]


class Fleet:
    """The simulated product: ``pods`` pods over about pods/10 services, or the given pods.

    Pure and deterministic: the same ``seed`` and the same sequence of ``scrape`` timestamps give
    the same samples, so a run can be replayed and a seeding run and a sending run (same seed and
    pod count) agree on pod names. With ``pods_metadata`` the fleet is exactly those pods (say, an
    existing metadata table); replacements still get new names.
    """

    def __init__(
        self,
        pods: int = DEFAULT_PODS,
        seed: int = DEFAULT_SEED,
        *,
        restart_probability: float = DEFAULT_RESTART_PROBABILITY,
        churn_probability: float = DEFAULT_CHURN_PROBABILITY,
        pods_metadata: Sequence[PodMetadata] | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        self.restart_probability = restart_probability
        self.churn_probability = churn_probability
        self._used_names: set[str] = set()
        self._pods_created = 0
        if pods_metadata is not None:
            if not pods_metadata:
                raise ValueError("a fleet needs at least one pod")
            services = {(p.service, p.team, p.tier): None for p in pods_metadata}
            self.services = list(services)
            self._pods = [self._add_pod(metadata) for metadata in pods_metadata]
            return
        if pods <= 0:
            raise ValueError("a fleet needs at least one pod")
        self.services = service_names(max(1, round(pods / PODS_PER_SERVICE)))
        self._pods = [
            self._new_pod(self.services[index % len(self.services)]) for index in range(pods)
        ]

    @property
    def pod_count(self) -> int:
        return len(self._pods)

    @property
    def series_per_scrape(self) -> int:
        return len(self._pods) * SERIES_PER_POD

    def metadata(self) -> list[PodMetadata]:
        """The metadata of every pod running now."""
        return [pod.metadata for pod in self._pods]

    def documents(self) -> list[dict[str, str]]:
        """``metadata`` as the documents of the table the proxy joins on."""
        return [pod.metadata.as_document() for pod in self._pods]

    def scrape(self, timestamp_ms: int) -> Scrape:
        """Advance every pod by one round and return what a scrape of all of them sees.

        The caller must pass increasing timestamps, as a scraper would.
        """
        rng = self._rng.random
        samples: list[Sample] = []
        started: list[PodMetadata] = []
        ended: list[str] = []
        restarted: list[str] = []
        for index, current in enumerate(self._pods):
            pod = current
            if rng() < self.churn_probability:
                # The old pod's series end here: a staleness marker, as Prometheus writes when a
                # target disappears. Its replacement runs the same service under a new name.
                samples.extend(Sample(labels, timestamp_ms, STALE_NAN) for labels in pod.series)
                ended.append(pod.metadata.pod)
                service = (pod.metadata.service, pod.metadata.team, pod.metadata.tier)
                pod = self._new_pod(service)
                self._pods[index] = pod
                started.append(pod.metadata)
            elif rng() < self.restart_probability:
                pod.restart()
                restarted.append(pod.metadata.pod)
            self._advance(pod)
            samples.extend(
                Sample(labels, timestamp_ms, value)
                for labels, value in zip(pod.series, pod.values(), strict=True)
            )
        return Scrape(timestamp_ms, samples, started, ended, restarted)

    def _advance(self, pod: _Pod) -> None:
        rng = self._rng.random
        failed = pod.failed
        for index, value in enumerate(failed):
            if rng() < _FAILURE_PROBABILITY:
                failed[index] = value + 1 + int(rng() * 3)
        pod.inflight = min(_MAX_INFLIGHT, max(0.0, pod.inflight + int(rng() * 5) - 2))
        buckets = pod.buckets
        for _ in range(int(rng() * 4)):
            duration = -math.log(1.0 - rng()) * _MEAN_DURATION_S
            for index, (_, bound) in enumerate(BUCKET_BOUNDS):
                if duration <= bound:
                    buckets[index] += 1
            pod.duration_count += 1
            pod.duration_sum += duration

    def _new_pod(self, service: tuple[str, str, str]) -> _Pod:
        name, team, tier = service
        while True:
            pod_name = f"{name}-{self._rng.getrandbits(20):05x}"
            if pod_name not in self._used_names:
                break
        return self._add_pod(PodMetadata(pod_name, name, team, tier))

    def _add_pod(self, metadata: PodMetadata) -> _Pod:
        if metadata.pod in self._used_names:
            raise ValueError(f"pod {metadata.pod!r} appears twice")
        self._used_names.add(metadata.pod)
        serial = self._pods_created
        self._pods_created += 1
        # A pod IP from 10.0.0.0/8, unique per pod ever created, as a cluster's pod CIDR gives.
        instance = f"10.{serial >> 16 & 255}.{serial >> 8 & 255}.{serial & 255}:{SCRAPE_PORT}"
        return _Pod(metadata, instance)


def load_pods(path: str) -> list[PodMetadata]:
    """Pods from a YAML list of metadata documents (conf/metadata.yaml's format).

    ValueError naming the file and the entry when it is not one: each entry needs ``pod`` and
    ``service``; ``team`` and ``tier`` may be left out.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of pod documents")
    pods: list[PodMetadata] = []
    for index, item in enumerate(data):
        fields = item if isinstance(item, dict) else {}
        values = {name: fields.get(name) for name in ("pod", "service", "team", "tier")}
        if not all(isinstance(values[name], str) and values[name] for name in ("pod", "service")):
            raise ValueError(f"{path}: [{index}] needs string fields pod and service")
        text = {name: str(value) if value is not None else "" for name, value in values.items()}
        pods.append(PodMetadata(text["pod"], text["service"], text["team"], text["tier"]))
    return pods


# --- requests -----------------------------------------------------------------------------------


class Batcher:
    """Cuts the stream of scraped samples into requests of at most ``batch_size`` series.

    A request may span two scrape rounds, as a Prometheus queue shard fills its batches from
    whatever was scraped; the sender decides when a partial batch goes out anyway.
    """

    def __init__(self, batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError("batch size must be positive")
        self.batch_size = batch_size
        self._pending: list[Sample] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, samples: Iterable[Sample]) -> None:
        self._pending.extend(samples)

    def take(self) -> list[Sample]:
        """The next request's samples (fewer than a batch only when that is all there is)."""
        batch = self._pending[: self.batch_size]
        del self._pending[: self.batch_size]
        return batch


def batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """``samples`` in requests of at most ``batch_size`` series, in order."""
    batcher = Batcher(batch_size)
    batcher.add(samples)
    while batcher:
        yield batcher.take()


_pack_double = struct.Struct("<d").pack


class RequestEncoder:
    """Samples → WriteRequest bytes, byte for byte what ``codec.encode_write_request`` writes.

    Built from the codec's pieces rather than calling ``encode_write_request``, because the load
    generator must outrun the proxy
    it measures: each series' label bytes and TimeSeries header are encoded once and kept, so a
    sample costs a few byte joins. The cache holds every series ever seen; a fleet's label sets
    are bounded (churn adds ``SERIES_PER_POD`` per replaced pod).
    """

    def __init__(self) -> None:
        # labels → (sample field length it was built for, TimeSeries tag + length + labels)
        self._prefixes: dict[Labels, tuple[int, bytes]] = {}

    def encode(self, samples: Iterable[Sample]) -> bytes:
        """One TimeSeries with one Sample per element of ``samples``."""
        prefixes = self._prefixes
        parts: list[bytes] = []
        append = parts.append
        last_timestamp: int | None = None
        sample_head = timestamp_field = b""
        sample_field_length = 0
        for labels, timestamp_ms, value in samples:
            if timestamp_ms != last_timestamp:
                last_timestamp = timestamp_ms
                timestamp_field = bytes((TAG_SAMPLE_TIMESTAMP,)) + encode_varint(timestamp_ms)
                sample_length = 9 + len(timestamp_field)  # value tag + double + timestamp field
                sample_head = bytes((TAG_SAMPLE, sample_length, TAG_SAMPLE_VALUE))
                sample_field_length = 2 + sample_length
            cached = prefixes.get(labels)
            if cached is None or cached[0] != sample_field_length:
                cached = (sample_field_length, self._prefix(labels, sample_field_length))
                prefixes[labels] = cached
            append(cached[1])
            append(sample_head)
            append(_pack_double(value))
            append(timestamp_field)
        return b"".join(parts)

    def body(self, samples: Iterable[Sample]) -> bytes:
        """A request body as sent: the encoded WriteRequest, snappy block format."""
        return compress(self.encode(samples))

    @staticmethod
    def _prefix(labels: Labels, sample_field_length: int) -> bytes:
        label_bytes = encode_labels(labels)
        length = encode_varint(len(label_bytes) + sample_field_length)
        return bytes((TAG_TIMESERIES,)) + length + label_bytes


class V2RequestEncoder:
    """Samples → ``io.prometheus.write.v2.Request`` bytes, as a 2.0 sender writes them: one
    symbols table per request (so every request starts it afresh, as Prometheus does), each
    series' labels as references into it, and its metric type in its metadata, which a 2.0
    sender always sends (the fleet's metrics: a counter, a gauge and a classic histogram)."""

    def __init__(self) -> None:
        self._types: dict[Labels, bytes] = {}
        """labels → the encoded metadata field of their series (empty: no type)."""

    def encode(self, samples: Iterable[Sample]) -> bytes:
        index: dict[str, int] = {"": 0}
        parts: list[bytes] = []
        for labels, timestamp_ms, value in samples:
            refs = bytearray()
            for pair in labels:
                for text in pair:
                    ref = index.get(text)
                    if ref is None:
                        ref = index[text] = len(index)
                    refs += encode_varint(ref)
            sample = encode_sample(timestamp_ms, value)
            metadata = self._types.get(labels)
            if metadata is None:
                metadata = self._types[labels] = _metadata_field(labels)
            series = b"".join(
                (
                    b"\x0a",
                    encode_varint(len(refs)),
                    refs,
                    bytes((TAG_SAMPLE,)),
                    encode_varint(len(sample)),
                    sample,
                    metadata,
                )
            )
            parts.append(b"\x2a" + encode_varint(len(series)) + series)
        symbols = [b"\x22" + encode_varint(len(t.encode())) + t.encode() for t in index]
        return b"".join(symbols) + b"".join(parts)

    def body(self, samples: Iterable[Sample]) -> bytes:
        """A request body as sent: the encoded Request, snappy block format."""
        return compress(self.encode(samples))


def _metadata_field(labels: Labels) -> bytes:
    """A 2.0 TimeSeries' metadata field giving the type of the fleet metric ``labels`` is of."""
    name = dict(labels).get(METRIC_NAME_LABEL, "")
    metric_type = MetricType.UNKNOWN
    if name == FAILED_METRIC:
        metric_type = MetricType.COUNTER
    elif name == INFLIGHT_METRIC:
        metric_type = MetricType.GAUGE
    elif name.startswith(DURATION_METRIC):
        metric_type = MetricType.HISTOGRAM
    if not metric_type:
        return b""
    return b"\x2a\x02\x08" + bytes((int(metric_type),))


# --- pacing and reporting -----------------------------------------------------------------------


class Pacer:
    """When the next request may go so that samples leave at ``rate`` per second on average.

    Pure: the caller passes the time (any monotonic clock, in seconds). A rate of 0 or less means
    as fast as the concurrency limit allows.
    """

    def __init__(self, rate: float, start: float) -> None:
        self.rate = rate
        self._origin = start
        self._scheduled = 0

    def delay(self, now: float) -> float:
        """Seconds to wait before sending the next request."""
        if self.rate <= 0:
            return 0.0
        due = self._origin + self._scheduled / self.rate
        if now - due > MAX_CATCH_UP_S:
            self._origin = now - MAX_CATCH_UP_S - self._scheduled / self.rate
            due = now - MAX_CATCH_UP_S
        return max(0.0, due - now)

    def sent(self, samples: int) -> None:
        self._scheduled += samples


class RoundClock:
    """The timestamp of each scrape round: the wall clock, or replayed history.

    Wall mode (no ``interval_ms``): the current time, at least 1 ms after the previous round.
    Replay mode: rounds ``interval_ms`` apart in sample time, starting ``REPLAY_HISTORY_MS``
    before the first round, so production-shaped traffic (each series sampled once per scrape
    interval) can be sent faster than real time. A round is never ahead of the wall clock: a
    replay that catches up goes on in wall mode. Pure: callers pass the wall time.
    """

    def __init__(self, interval_ms: int | None = None) -> None:
        self.interval_ms = interval_ms
        self._previous: int | None = None

    def next(self, wall_ms: int) -> int:
        """The next round's timestamp; when it is after ``wall_ms``, wait until then."""
        previous, interval = self._previous, self.interval_ms
        if previous is None:
            timestamp = wall_ms - REPLAY_HISTORY_MS if interval else wall_ms
        elif interval:
            timestamp = min(previous + interval, max(wall_ms, previous + 1))
        else:
            timestamp = max(wall_ms, previous + 1)
        self._previous = timestamp
        return timestamp


def percentile(sorted_values: Sequence[float], quantile: float) -> float:
    """Nearest-rank percentile of already sorted values; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(quantile * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(rank, 1)) - 1]


@dataclass
class LoadReport:
    """What a run sent and how the target answered."""

    samples_sent: int = 0
    """Samples in every request whose answer (or failure) has come back."""
    samples_accepted: int = 0
    """Samples in requests answered 2xx."""
    requests: Counter[str] = field(default_factory=Counter)
    """Requests by HTTP status code, or ``timeout`` / ``connection_error``."""
    latencies_ms: list[float] = field(default_factory=list)
    """Time to the full answer, for requests that got one."""
    elapsed_s: float = 0.0
    pods_started: int = 0
    pods_ended: int = 0
    pods_restarted: int = 0
    rounds: int = 0
    target_rate: float = 0.0
    """The requested samples/s; 0: as fast as possible."""
    concurrency: int = DEFAULT_CONCURRENCY
    batch: int = DEFAULT_BATCH
    cpu_s: float = 0.0
    """CPU time this process used during the run (user + system)."""
    slot_wait_s: float = 0.0
    """Time a ready request waited because every slot held an unanswered one."""
    interrupted: bool = False
    """Stopped early by Ctrl-C (or SIGTERM)."""

    def record(self, status: str, samples: int, latency_ms: float | None) -> None:
        self.requests[status] += 1
        self.samples_sent += samples
        if status.startswith("2") and len(status) == 3:
            self.samples_accepted += samples
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)

    @property
    def requests_total(self) -> int:
        return sum(self.requests.values())

    @property
    def requests_not_accepted(self) -> int:
        return sum(n for status, n in self.requests.items() if not status.startswith("2"))

    @property
    def accepted_per_second(self) -> float:
        return self.samples_accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def sent_per_second(self) -> float:
        return self.samples_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self, quantile: float) -> float:
        return percentile(sorted(self.latencies_ms), quantile)

    @property
    def cpu_share(self) -> float:
        """CPU time over elapsed time: 1.0 is one core busy all along."""
        return self.cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def limit(self) -> str:
        """What held the achieved rate below the target (or what capped a full-speed run).

        Checked in this order, because each one also inflates the next: answers other than
        2xx (the target refused, samples/s accepted falls however fast we send), this
        process's CPU (a saturated event loop also delays every answer it reads), then the
        target's latency (every request slot busy waiting for answers).
        """
        achieved = self.accepted_per_second
        if not self.requests_total:
            return "nothing was answered: no request completed"
        refused = self.requests_not_accepted / self.requests_total
        if self.target_rate > 0 and achieved >= REACHED_SHARE * self.target_rate:
            return "nothing: the target rate was reached"
        if refused >= REFUSED_SHARE:
            statuses = [(n, s) for s, n in self.requests.items() if not s.startswith("2")]
            named = ", ".join(
                f"{_status_text(status)} to {n / self.requests_total:.0%} of requests"
                for n, status in sorted(statuses, reverse=True)
            )
            return f"the proxy's answers: {named}{_status_hint({s: n for n, s in statuses})}"
        if self.cpu_share >= CPU_BOUND_SHARE:
            return (
                f"this generator's CPU: {self.cpu_share:.0%} of a core busy (one event loop);"
                " run several generators, each with its own --seed"
            )
        if self.slot_wait_s >= LATENCY_BOUND_SHARE * self.elapsed_s:
            p50 = self.latency_ms(0.5)
            ceiling = self.concurrency * self.batch / (p50 / 1000.0) if p50 > 0 else math.inf
            cap = f"at most ~{ceiling:,.0f} samples/s" if math.isfinite(ceiling) else "a cap"
            return (
                f"the proxy's latency: all {self.concurrency} request slots were busy"
                f" {self.slot_wait_s / self.elapsed_s:.0%} of the time (p50 {p50:.1f} ms per"
                f" request of up to {self.batch:,} samples: {cap}); raise --concurrency if the"
                " proxy has CPU to spare"
            )
        if self.target_rate > 0 and self.elapsed_s < SHORT_RUN_S:
            return "the run was too short to reach the rate (the first round starts cold)"
        return "nothing measurable here: neither refusals, CPU nor the proxy's latency"

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON values (``--json``); NaN latencies become null."""

        def number(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 3)

        return {
            "samples_sent": self.samples_sent,
            "samples_accepted": self.samples_accepted,
            "elapsed_s": round(self.elapsed_s, 3),
            "samples_per_second": round(self.accepted_per_second, 1),
            "sent_per_second": round(self.sent_per_second, 1),
            "requests": dict(sorted(self.requests.items())),
            "latency_p50_ms": number(self.latency_ms(0.5)),
            "latency_p99_ms": number(self.latency_ms(0.99)),
            "rounds": self.rounds,
            "pods_started": self.pods_started,
            "pods_ended": self.pods_ended,
            "pods_restarted": self.pods_restarted,
            "target_per_second": self.target_rate or None,
            "cpu_share": round(self.cpu_share, 3),
            "limited_by": self.limit(),
            "interrupted": self.interrupted,
        }

    def format(self) -> str:
        """The human-readable final report; every figure is a number or says why not."""
        statuses = ", ".join(f"{status}: {n:,}" for status, n in sorted(self.requests.items()))
        if self.latencies_ms:
            p50, p99 = self.latency_ms(0.5), self.latency_ms(0.99)
            latency = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        else:
            latency = "none: no request was answered"
        achieved = self.accepted_per_second
        if self.target_rate > 0:
            target = (
                f"{self.target_rate:,.0f} samples/s, achieved {achieved / self.target_rate:.0%}"
            )
        else:
            target = "none (as fast as possible)"
        lines = [
            f"samples sent:       {self.samples_sent:,} in {self.requests_total:,} requests"
            f" over {self.elapsed_s:.2f} s ({self.rounds:,} scrape rounds)",
            f"samples/s achieved: {achieved:,.0f} answered 2xx ({self.sent_per_second:,.0f} sent)",
            f"target:             {target}",
            f"limited by:         {self.limit()}",
            f"requests by status: {statuses or 'none'}",
            f"latency:            {latency}",
            f"generator CPU:      {self.cpu_share:.0%} of a core",
            f"fleet changes:      {self.pods_restarted:,} restarts,"
            f" {self.pods_ended:,} pods replaced",
        ]
        if self.interrupted:
            lines.insert(0, f"interrupted after {self.elapsed_s:.2f} s: the report so far")
        return "\n".join(lines)


def _status_text(status: str) -> str:
    if status == STATUS_TIMEOUT:
        return "no answer in time (timeout)"
    if status == STATUS_CONNECTION_ERROR:
        return "no connection"
    return f"HTTP {status}"


def _status_hint(statuses: dict[str, int]) -> str:
    """What the most frequent refusal usually means, for the reader of the report."""
    top = max(statuses, key=statuses.__getitem__)
    hints = {
        "503": " (not ready: a metadata table not loaded yet, or a full queue; its /metrics"
        " and log say which)",
        "429": " (rate limited)",
        "400": " (the request was refused as invalid: the proxy's answer says why)",
        STATUS_TIMEOUT: " (the proxy is overloaded or stalled; try a lower --rate)",
        STATUS_CONNECTION_ERROR: " (is the proxy running at --url?)",
    }
    return hints.get(top, "")


# --- the sender ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSettings:
    """What to send where, for how long; built once from the command line."""

    url: str = DEFAULT_URL
    batch: int = DEFAULT_BATCH
    rate: float = DEFAULT_RATE
    """Samples per second; 0 for as fast as the concurrency allows."""
    concurrency: int = DEFAULT_CONCURRENCY
    duration_ms: int = 30_000
    max_requests: int | None = None
    timeout_ms: int = 10_000
    sample_interval_ms: int | None = None
    """Replay mode (see RoundClock): rounds this far apart in sample time; None: wall clock."""
    protocol: str = "1.0"
    """Remote write 1.0 or 2.0 (PROTOCOLS)."""


PodsStartedHook = Callable[[list[PodMetadata]], None]
"""Called with the pods a scrape round started; must not block (queue the work)."""


class _Progress:
    """The once-a-second progress line on stderr."""

    def __init__(self, report: LoadReport, stream: TextIO, start: float) -> None:
        self._report = report
        self._stream = stream
        self._start = start
        self._last_time = start
        self._last_samples = 0

    def line(self, now: float, in_flight: int) -> str:
        report = self._report
        interval = max(now - self._last_time, 1e-9)
        current = (report.samples_sent - self._last_samples) / interval
        self._last_time, self._last_samples = now, report.samples_sent
        return (
            f"loadgen {now - self._start:6.1f}s: {report.samples_sent:,} samples sent"
            f" ({current:,.0f}/s), {report.requests_total:,} requests,"
            f" {report.requests_not_accepted:,} not 2xx, {in_flight} in flight"
        )

    async def loop(self, in_flight: Callable[[], int]) -> None:
        event_loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            print(self.line(event_loop.time(), in_flight()), file=self._stream, flush=True)


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    samples: int,
    report: LoadReport,
    *,
    headers: dict[str, str] = REMOTE_WRITE_HEADERS,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            status = str(response.status)
    except TimeoutError:  # aiohttp's timeouts are TimeoutError subclasses
        report.record(STATUS_TIMEOUT, samples, None)
        return
    except aiohttp.ClientError:
        report.record(STATUS_CONNECTION_ERROR, samples, None)
        return
    report.record(status, samples, (loop.time() - started) * 1000.0)


def _wall_ms() -> int:
    # The loop clock is monotonic, not wall time; samples need the real time of day.
    return time.time_ns() // 1_000_000


async def generate_load(
    settings: LoadSettings,
    fleet: Fleet,
    *,
    on_pods_started: PodsStartedHook | None = None,
    progress: TextIO | None = None,
    wall_ms: Callable[[], int] = _wall_ms,
    round_clock: RoundClock | None = None,
    stop: asyncio.Event | None = None,
) -> LoadReport:
    """Scrape ``fleet`` round after round and post it to ``settings.url`` until time is up.

    At a ``rate``, a round is scraped every ``series / rate`` seconds and its requests are spread
    over that period; a round's last, partial request goes out without waiting for the next one.
    Without a rate, requests are always full and go out as fast as ``concurrency`` allows.

    Each round is stamped by ``round_clock`` (by default a new one for
    ``settings.sample_interval_ms``); pass the same clock to successive runs on one fleet so
    their timestamps keep increasing.

    Stops starting requests at ``duration_ms``, after ``max_requests`` or when ``stop`` is set
    (Ctrl-C), then waits for the ones in flight (each bounded by ``timeout_ms``). Never
    retries: every answer is counted.
    """
    loop = asyncio.get_running_loop()
    report = LoadReport(
        target_rate=settings.rate, concurrency=settings.concurrency, batch=settings.batch
    )
    v2 = settings.protocol == "2.0"
    encoder = V2RequestEncoder() if v2 else RequestEncoder()
    headers = REMOTE_WRITE_V2_HEADERS if v2 else REMOTE_WRITE_HEADERS
    batcher = Batcher(settings.batch)
    slots = asyncio.Semaphore(settings.concurrency)
    in_flight: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=settings.timeout_ms / 1000.0)
    connector = aiohttp.TCPConnector(limit=settings.concurrency)
    start = loop.time()
    deadline = start + settings.duration_ms / 1000.0
    pacer = Pacer(settings.rate, start)
    if round_clock is None:
        round_clock = RoundClock(settings.sample_interval_ms)
    # The fleet is scraped once per period: its series at the requested rate (period 0, as fast
    # as taken, when there is no rate).
    round_period = fleet.series_per_scrape / settings.rate if settings.rate > 0 else 0.0
    next_round = start
    requests_started = 0
    stopped = stop if stop is not None else asyncio.Event()
    cpu_start = time.process_time()

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        slots.release()

    async def pause(seconds: float) -> None:
        """Sleep, but wake up at once when the run is stopped (Ctrl-C)."""
        if seconds > 0 and not stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), seconds)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        progress_task = None
        if progress is not None:
            reporter = _Progress(report, progress, start)
            progress_task = asyncio.create_task(reporter.loop(lambda: len(in_flight)))
        try:
            while settings.max_requests is None or requests_started < settings.max_requests:
                now = loop.time()
                if now >= deadline or stopped.is_set():
                    break
                if len(batcher) < settings.batch and now >= next_round:
                    # Rounds come one period apart, as scrapes do; when the target falls behind,
                    # at most MAX_CATCH_UP_S of them are made up, not the whole backlog.
                    next_round = max(next_round + round_period, now - MAX_CATCH_UP_S)
                    now_ms = wall_ms()
                    timestamp = round_clock.next(now_ms)
                    if timestamp > now_ms:  # wall mode, rounds less than 1 ms apart
                        await pause((timestamp - now_ms) / 1000.0)
                    scrape = fleet.scrape(timestamp)
                    report.rounds += 1
                    report.pods_started += len(scrape.started)
                    report.pods_ended += len(scrape.ended)
                    report.pods_restarted += len(scrape.restarted)
                    if scrape.started and on_pods_started is not None:
                        on_pods_started(scrape.started)
                    batcher.add(scrape.samples)
                    continue
                if not batcher:
                    await pause(min(next_round, deadline) - now)
                    continue
                # A full batch, or what is left of the last round before the next one is due
                # (a Prometheus queue sends a partial batch after its batch_send_deadline).
                batch = batcher.take()
                body = encoder.body(batch)
                delay = pacer.delay(loop.time())
                if loop.time() + delay >= deadline:
                    await pause(deadline - loop.time())
                    break
                await pause(delay)
                if stopped.is_set():
                    break
                if slots.locked():
                    # Every slot holds a request the target has not answered yet: time the
                    # target's latency takes from the rate (LoadReport.limit reads it).
                    waited_from = loop.time()
                    await slots.acquire()
                    report.slot_wait_s += loop.time() - waited_from
                else:
                    await slots.acquire()
                if loop.time() >= deadline or stopped.is_set():
                    slots.release()
                    break
                pacer.sent(len(batch))
                requests_started += 1
                task = asyncio.create_task(
                    _post(session, settings.url, body, len(batch), report, headers=headers)
                )
                in_flight.add(task)
                task.add_done_callback(finished)
        finally:
            if in_flight:
                await asyncio.wait(set(in_flight))
            report.elapsed_s = loop.time() - start
            report.cpu_s = time.process_time() - cpu_start
            report.interrupted = stopped.is_set()
            if progress_task is not None:
                progress_task.cancel()
                await asyncio.gather(progress_task, return_exceptions=True)
    return report


# --- metadata -----------------------------------------------------------------------------------


class SeedError(Exception):
    """The metadata documents could not be written; the message says why."""


class MetadataSeeder:
    """Upserts pod documents into the collection the proxy reads its table from.

    One client serves the initial seed and, during a run, the documents of replacement pods, the
    way a cluster controller keeps the table current. Upserts keyed on ``pod`` make reseeding
    idempotent. pymongo errors become SeedError here, and nowhere else.
    """

    def __init__(
        self, uri: str, database: str, collection: str, timeout_ms: int = MONGO_TIMEOUT_MS
    ) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms,
        )
        self._collection = self._client[database][collection]
        self.target = f"{database}.{collection}"
        self._pending: set[asyncio.Task[None]] = set()
        self.failures: list[str] = []
        """Errors of background upserts (``upsert_later``), for the caller to report."""

    async def upsert(self, pods: Sequence[PodMetadata]) -> int:
        """Write ``pods``' documents; the number written. SeedError when Mongo fails."""
        if not pods:
            return 0
        requests = [
            UpdateOne({"pod": pod.pod}, {"$set": pod.as_document()}, upsert=True) for pod in pods
        ]
        try:
            await self._collection.bulk_write(requests, ordered=False)
        except PyMongoError as exc:
            raise SeedError(f"upserting {len(pods)} documents into {self.target}: {exc}") from None
        return len(pods)

    def upsert_later(self, pods: list[PodMetadata]) -> None:
        """``upsert`` in the background (a ``PodsStartedHook``); failures go to ``failures``."""

        async def write() -> None:
            try:
                await self.upsert(pods)
            except SeedError as exc:
                self.failures.append(str(exc))

        task = asyncio.create_task(write())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Finish background upserts (each bounded by the client's timeouts), then disconnect."""
        if self._pending:
            await asyncio.wait(set(self._pending))
        await self._client.close()


# --- command line -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be 0 (unlimited) or a positive number, got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive_duration(text: str) -> int:
    try:
        value = parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``enrichproxy loadgen`` flags; ``run`` reads them from the parsed namespace."""
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        default=None,
        help=f"remote-write endpoint to post to (default {DEFAULT_URL}); with --seed-metadata, "
        "giving --url seeds first and then sends",
    )
    target.add_argument(
        "--rate",
        type=_rate,
        default=DEFAULT_RATE,
        help=f"target samples per second, 0 for as fast as possible (default {DEFAULT_RATE:g})",
    )
    target.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at most (default {DEFAULT_CONCURRENCY})",
    )
    target.add_argument(
        "--batch",
        type=_positive_int,
        default=DEFAULT_BATCH,
        help=f"series per request at most (default {DEFAULT_BATCH})",
    )
    target.add_argument(
        "--duration",
        type=_positive_duration,
        default=parse_duration_ms(DEFAULT_DURATION),
        metavar="DURATION",
        help=f"how long to send, e.g. 30s, 5m (default {DEFAULT_DURATION})",
    )
    target.add_argument(
        "--requests",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N requests, if that comes before --duration",
    )
    target.add_argument(
        "--sample-interval",
        type=_positive_duration,
        default=None,
        metavar="DURATION",
        help="replay: space scrape rounds this far apart in sample time (e.g. 15s), starting a"
        " day back, instead of stamping them with the wall clock; sends production-shaped"
        " traffic (one sample per series per interval) faster than real time, for benchmarks",
    )
    target.add_argument(
        "--timeout",
        type=_positive_duration,
        default=parse_duration_ms(DEFAULT_TIMEOUT),
        metavar="DURATION",
        help=f"per-request timeout (default {DEFAULT_TIMEOUT}); no request is ever retried",
    )
    target.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="1.0",
        help="remote write 1.0 (prometheus.WriteRequest, the default) or 2.0"
        " (io.prometheus.write.v2.Request: symbols table, a metric type on every series)",
    )
    fleet = parser.add_argument_group("simulated fleet")
    fleet.add_argument(
        "--pods",
        type=_positive_int,
        default=DEFAULT_PODS,
        help=f"pods, over about pods/{PODS_PER_SERVICE} services, {SERIES_PER_POD} series each"
        f" (default {DEFAULT_PODS})",
    )
    fleet.add_argument(
        "--pods-from",
        default=None,
        metavar="PATH",
        help="simulate exactly the pods of this YAML list of metadata documents (the format of "
        "conf/metadata.yaml) instead of --pods generated ones; pod churn is then off by default,"
        " as replacements would be missing from that table",
    )
    fleet.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"random seed: same seed and --pods, same pod names (default {DEFAULT_SEED})",
    )
    fleet.add_argument(
        "--restart-probability",
        type=_probability,
        default=DEFAULT_RESTART_PROBABILITY,
        metavar="P",
        help="chance per pod and scrape round that its counters reset"
        f" (default {DEFAULT_RESTART_PROBABILITY:g})",
    )
    fleet.add_argument(
        "--churn-probability",
        type=_probability,
        default=None,
        metavar="P",
        help="chance per pod and scrape round that a new pod replaces it"
        f" (default {DEFAULT_CHURN_PROBABILITY:g}, 0 with --pods-from)",
    )
    metadata = parser.add_argument_group("metadata")
    metadata.add_argument(
        "--seed-metadata",
        default=None,
        metavar="MONGODB_URI",
        help="upsert the fleet's pod documents (pod, service, team, tier) and exit; with --url, "
        "seed, then send, upserting replacement pods as they start",
    )
    metadata.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"database for --seed-metadata (default {DEFAULT_DATABASE})",
    )
    metadata.add_argument(
        "--collection",
        default=DEFAULT_COLLECTION,
        help=f"collection for --seed-metadata (default {DEFAULT_COLLECTION})",
    )
    exporter = parser.add_argument_group("exporter mode (a scrape target instead of a sender)")
    exporter.add_argument(
        "--exporter-port",
        type=int,
        default=None,
        help="serve the fleet on /metrics at this port instead of sending remote write",
    )
    exporter.add_argument(
        "--exporter-host",
        default="127.0.0.1",
        help="address to serve /metrics on (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    exporter.add_argument(
        "--scrape-interval",
        type=_positive_duration,
        default=1000,
        help="how often the fleet advances in exporter mode (default 1s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--quiet", action="store_true", help="no progress line on stderr every second"
    )
    output.add_argument(
        "--json", action="store_true", help="print the final report as one JSON object"
    )


def settings_from_args(args: argparse.Namespace) -> LoadSettings:
    return LoadSettings(
        url=args.url or DEFAULT_URL,
        batch=args.batch,
        rate=args.rate,
        concurrency=args.concurrency,
        duration_ms=args.duration,
        max_requests=args.requests,
        timeout_ms=args.timeout,
        sample_interval_ms=args.sample_interval,
        protocol=args.protocol,
    )


def fleet_from_args(args: argparse.Namespace) -> Fleet:
    """The fleet the flags describe; ValueError when ``--pods-from`` names a bad file."""
    pods = load_pods(args.pods_from) if args.pods_from is not None else None
    churn = args.churn_probability
    if churn is None:
        churn = 0.0 if pods is not None else DEFAULT_CHURN_PROBABILITY
    return Fleet(
        args.pods,
        args.seed,
        restart_probability=args.restart_probability,
        churn_probability=churn,
        pods_metadata=pods,
    )


@contextlib.contextmanager
def _stop_signals_call(callback: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGINT (Ctrl-C) and SIGTERM call ``callback`` instead of interrupting.

    A load run stopped by hand should end like one that ran out of time: the requests in
    flight answered, the report printed. asyncio's default for Ctrl-C cancels the main task
    instead, which loses the report and ends in a traceback. Outside the main thread (where
    signals cannot be handled) this does nothing. The handlers in place before are restored.
    """
    loop = asyncio.get_running_loop()
    installed: list[tuple[signal.Signals, Any]] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        try:
            loop.add_signal_handler(signum, callback)
        except (RuntimeError, ValueError):  # not the main thread
            continue
        installed.append((signum, previous))
    try:
        yield
    finally:
        for signum, previous in installed:
            loop.remove_signal_handler(signum)
            signal.signal(signum, previous)


async def run(args: argparse.Namespace) -> int:
    """``enrichproxy loadgen``: seed metadata, send load, or both; the process exit code.

    ``--seed-metadata`` alone seeds and exits. With ``--url`` as well it seeds, then sends, and
    keeps the table current as pods are replaced. Otherwise it sends. The final report goes to
    stdout; 0 when every request was answered 2xx, 1 otherwise (the report says what came back).
    """
    try:
        fleet = fleet_from_args(args)
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.exporter_port is not None:
        from enrichproxy.tools.exporter import serve

        return await serve(
            fleet, args.exporter_host, args.exporter_port, args.scrape_interval / 1000
        )
    settings = settings_from_args(args)
    seeder: MetadataSeeder | None = None
    if args.seed_metadata is not None:
        seeder = MetadataSeeder(args.seed_metadata, args.database, args.collection)
        try:
            written = await seeder.upsert(fleet.metadata())
        except SeedError as exc:
            await seeder.close()
            print(f"loadgen: {exc}", file=sys.stderr)
            return EXIT_NOT_ALL_ACCEPTED
        message = f"loadgen: upserted {written:,} pod documents into {seeder.target}"
        if args.url is None:
            await seeder.close()
            print(message)
            return EXIT_OK
        print(message, file=sys.stderr)
    if seeder is None and args.pods_from is None and not args.quiet:
        # Generated pod names are in no table unless this run or an earlier one seeded them:
        # every lookup would miss and the views would hold no service or tier.
        print(
            f"loadgen: the {fleet.pod_count:,} generated pods are only in the proxy's metadata"
            " table if seeded (same --pods and --seed): add --seed-metadata MONGODB_URI",
            file=sys.stderr,
        )
    if not args.quiet:
        print(
            f"loadgen: {fleet.series_per_scrape:,} series from {fleet.pod_count:,} pods"
            f" to {settings.url}"
            f" at {f'{settings.rate:,.0f} samples/s' if settings.rate else 'full speed'}"
            f"{', replaying history' if settings.sample_interval_ms else ''},"
            f" {settings.concurrency} in flight, for {format_duration_ms(settings.duration_ms)}",
            file=sys.stderr,
        )
    stop = asyncio.Event()

    def interrupt() -> None:
        if not stop.is_set():
            print(
                "\nloadgen: interrupted; waiting for the requests in flight, then the report",
                file=sys.stderr,
                flush=True,
            )
        stop.set()

    try:
        with _stop_signals_call(interrupt):
            report = await generate_load(
                settings,
                fleet,
                on_pods_started=seeder.upsert_later if seeder is not None else None,
                progress=None if args.quiet else sys.stderr,
                stop=stop,
            )
    finally:
        if seeder is not None:
            await seeder.close()
    if seeder is not None and seeder.failures:
        print(
            f"loadgen: {len(seeder.failures)} metadata upserts failed, first: {seeder.failures[0]}",
            file=sys.stderr,
        )
    print(json.dumps(report.as_dict()) if args.json else report.format(), flush=True)
    if report.requests_not_accepted or not report.requests_total:
        return EXIT_NOT_ALL_ACCEPTED
    return EXIT_OK
