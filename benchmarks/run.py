"""enrichproxy benchmarks: both engines (Python reference and native), side by side, one run.

Run with ``.venv/bin/python benchmarks/run.py`` (``make bench``); ``--help`` lists the knobs.
``--engines python,native`` (the default) picks the engines; every section runs for each, and
a table with one column per engine is printed at the end. Sections:

(1) in process, one core, no I/O. Remote-write 1.0 requests of 2,000 series from a 500-pod fleet
    (enrichproxy.tools.loadgen) go through ``Engine.ingest(body)`` → ``Engine.flush`` → encode of
    what the flush emitted, with conf/enrichproxy.yaml's two views and a table built from the
    fleet's documents. ``ingest`` is timed as a whole (it decompresses, decodes and applies);
    the first stage alone is timed in a separate pass over the same requests (Python:
    ``codec.decode_write_request(decompress(body))``; native: ``Core.scan(decompress(body))``),
    and apply is the difference. The same samples are also encoded as remote write 2.0
    requests (the load generator's ``--protocol 2.0``: a symbols table per request, a type on
    every series), and their decode (Python: ``v2.decode_v2_request``; native:
    ``Core.scan_v2``) and ingest are timed the same way, on an engine of their own. "warm" is
    the steady state (every series seen before, as in production, where the same series come
    back every scrape).
(2) ``--instructions``: instructions (callgrind's Ir) per input sample of ingest and of flush,
    in a child process per engine under ``valgrind --tool=callgrind``: a warm-up, then a few
    2,000-series requests, each ingest and each flush a callgrind dump of its own.
(3) first sight: a fresh engine's first scrape, where every series is decoded, joined and
    projected for the first time (series/s; one sample per series).
(4) memory: RSS growth per input series of a fresh child process that ingests 100 k or 1 M
    distinct series (the failure counter over 500 pods x many endpoints and error types, so
    both views are fed) and flushes once.
(5) end to end over HTTP: the real process. A null downstream and secantusdb run as
    subprocesses, the proxy runs as ``python -m enrichproxy serve --config <generated>`` with
    ``engine:`` set per run, and the load generator sends from this process as fast as the
    proxy takes it, once with the memory queue and once durable (disk queue, state file and its
    input log). Its rounds are replayed 15 s apart in sample time (loadgen --sample-interval),
    so each series gets one sample per window as in production; with wall-clock stamps a
    9,000-series fleet at 150 k samples/s would give each series a sample every 60 ms, and the
    aggregation far less work per sample than in production. No pod churn by default: every
    replacement changes the table (``--churn-probability`` measures that). Skipped, with the
    reason, when the proxy does not become ready, so the in-process sections always work.
(6) latency, on the memory-queue proxy of (5): write latency at half the rate (5) measured
    (paced sender), then one request of 1 M new series and, from the moment it is sent, small
    writes one after another until 2 s after it is answered (the flush closing its windows):
    their latency is what a sender sees while the proxy works through a burst of new series.

Everything listens on 127.0.0.1 on ports picked at run time; every subprocess is stopped
before exit, bounded in time. benchmarks/README.md describes the table and records figures.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import cProfile
import gc
import io
import json
import os
import pickle
import pstats
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from enrichproxy.config.durations import format_duration_ms, parse_duration_ms
from enrichproxy.config.schema import Config, load_config
from enrichproxy.engine.factory import make_engine
from enrichproxy.engine.interface import Engine, ViewOutput
from enrichproxy.metadata.table import build_table
from enrichproxy.model import METRIC_NAME_LABEL
from enrichproxy.tools.loadgen import (
    FAILED_METRIC,
    JOB,
    REMOTE_WRITE_HEADERS,
    Batcher,
    Fleet,
    LoadReport,
    LoadSettings,
    MetadataSeeder,
    RequestEncoder,
    RoundClock,
    SeedError,
    V2RequestEncoder,
    generate_load,
    percentile,
)
from enrichproxy.wire import codec
from enrichproxy.wire.v2 import WireProtocol, decode_v2_request

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = ROOT / "conf" / "enrichproxy.yaml"
NULL_SINK = Path(__file__).resolve().parent / "null_sink.py"
LOCALHOST = "127.0.0.1"

# Prometheus' default scrape interval: one aggregation window (15 s) closes every round, so the
# flush and output encoding do the work they do in production.
SCRAPE_INTERVAL_MS = 15_000
FIRST_TIMESTAMP_MS = 1_800_000_000_000
WARMUP_ROUNDS = 3
"""Rounds ingested before timing: the first fills the cache, the next ones the windows."""

# Subprocess bounds: secantusd is ready in ~0.7 s and the proxy should be in a few seconds;
# SIGTERM stops secantusd in 2-4 s (docs/components.md), the proxy within its shutdown_timeout.
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PROXY_SHUTDOWN_TIMEOUT = "5s"
LOG_TAIL_CHARS = 3000

ENGINES = ("python", "native")
HTTP_CONFIGS = ("memory", "durable")
CHILD_TIMEOUT_S = 600.0
"""Bound on a child process (memory, callgrind) and on the big request of (6)."""
BIG_MAX_DECODED_BYTES = 1024**3
"""The proxy's max_decoded_bytes in (5)/(6): a 1 M-series request decodes to ~130 MB."""
SEED_CHUNK = 50
SMALL_WRITE_GAP_S = 0.02
AFTER_BIG_S = 2.0
"""(6) Small writes go on this long after the big request is answered."""
"""(6) Pause between the small writes sent while the big request is in flight."""

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- (a) the engines in process -----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    body: bytes
    """Snappy-compressed WriteRequest, as it arrives over HTTP."""
    samples: int
    now_ms: int
    """The proxy's clock when it handles this request: its newest sample time."""
    body_v2: bytes = b""
    """The same samples as a remote write 2.0 Request, snappy-compressed (section (1))."""


def make_requests(fleet: Fleet, rounds: int, batch: int, first_ms: int) -> list[Request]:
    """``rounds`` scrapes of ``fleet``, 15 s apart, cut into requests as Prometheus would."""
    encoder = RequestEncoder()
    encoder_v2 = V2RequestEncoder()
    batcher = Batcher(batch)
    requests: list[Request] = []
    for index in range(rounds):
        batcher.add(fleet.scrape(first_ms + index * SCRAPE_INTERVAL_MS).samples)
        while len(batcher) >= batch or (index == rounds - 1 and batcher):
            samples = batcher.take()
            requests.append(
                Request(
                    encoder.body(samples),
                    len(samples),
                    max(s.timestamp_ms for s in samples),
                    body_v2=encoder_v2.body(samples),
                )
            )
    return requests


def new_engine(config: Config, documents: list[dict[str, str]], engine: str) -> Engine:
    """A fresh engine of kind ``engine`` (python or native) with the fleet's table."""
    made, _ = make_engine(replace(config, engine=engine))
    rule = config.metadata.enrich_rules[0]
    made.set_table(build_table(documents, rule, 1, 0.0).table)
    return made


def new_pipeline(config: Config, fleet: Fleet) -> Engine:
    """The Python reference engine (the ``--profile`` path)."""
    return new_engine(config, fleet.documents(), "python")


def decoder(
    engine: Engine, max_decoded_bytes: int, protocol: WireProtocol = WireProtocol.V1
) -> Callable[[bytes], object]:
    """The engine's first stage alone, for timing: decompress + decode of a request body.

    The Python engine decodes into Python objects (codec.decode_write_request, with its shortcut
    for label sets already planned; v2.decode_v2_request); the native one scans into its C
    request (Core.scan, Core.scan_v2).
    """
    core = getattr(engine, "_core", None)
    v2 = protocol is WireProtocol.V2
    if core is not None:
        if v2:
            scan_v2 = core.scan_v2
            return lambda body: scan_v2(
                codec.decompress(body, max_decoded_bytes), max_decoded_bytes
            )
        scan = core.scan
        return lambda body: scan(codec.decompress(body, max_decoded_bytes))
    if v2:
        return lambda body: decode_v2_request(
            codec.decompress(body, max_decoded_bytes), max_decoded_bytes
        )
    known = getattr(engine, "known_label_bytes", ())
    return lambda body: codec.decode_write_request(codec.decompress(body, max_decoded_bytes), known)


@dataclass
class PhaseTimes:
    """Seconds spent in each step, summed over requests."""

    decode: float = 0.0
    """Decompress + decode alone, timed in a separate pass (``ingest`` includes it)."""
    ingest: float = 0.0
    """``Engine.ingest(body)``: decompress, decode and apply."""
    flush: float = 0.0
    encode: float = 0.0
    output_samples: int = 0

    @property
    def apply(self) -> float:
        return max(0.0, self.ingest - self.decode)

    @property
    def total(self) -> float:
        return self.ingest + self.flush + self.encode


def encode_outputs(engine: Engine, outputs: list[ViewOutput], max_samples_per_send: int) -> int:
    """Encode and compress every flushed sample as the forwarder sends it (with the engine's
    encoder: codec.encode_samples or the native one); bytes made."""
    size = 0
    for output in outputs:
        samples = output.samples
        for start in range(0, len(samples), max_samples_per_send):
            chunk = samples[start : start + max_samples_per_send]
            size += len(codec.compress(engine.encode_output(chunk)))
    return size


def process(
    engine: Engine,
    requests: Sequence[Request],
    max_samples_per_send: int,
    flush_every: int = 1,
    protocol: WireProtocol = WireProtocol.V1,
) -> PhaseTimes:
    """Push ``requests`` through ``engine``, flushing after every ``flush_every``-th one."""
    times = PhaseTimes()
    clock = time.perf_counter
    last = len(requests)
    v2 = protocol is WireProtocol.V2
    for number, request in enumerate(requests, 1):
        body = request.body_v2 if v2 else request.body
        t1 = clock()
        engine.ingest(body, request.now_ms, protocol)
        t2 = clock()
        times.ingest += t2 - t1
        if number % flush_every == 0 or number == last:
            outputs = engine.flush(request.now_ms)
            t3 = clock()
            encode_outputs(engine, outputs, max_samples_per_send)
            times.flush += t3 - t2
            times.encode += clock() - t3
            times.output_samples += sum(len(o.samples) for o in outputs)
    return times


def time_decode(
    decode: Callable[[bytes], object],
    requests: Sequence[Request],
    protocol: WireProtocol = WireProtocol.V1,
) -> float:
    v2 = protocol is WireProtocol.V2
    clock = time.perf_counter
    start = clock()
    for request in requests:
        decode(request.body_v2 if v2 else request.body)
    return clock() - start


@dataclass
class PipelineResult:
    warm: dict[int, list[PhaseTimes]] = field(default_factory=dict)
    """Timings of each repeat, by how many requests go between flushes."""
    warm_v2: list[PhaseTimes] = field(default_factory=list)
    """The same requests as 2.0, flushing every ``--flush-every``."""
    warm_samples: int = 0
    cold: list[float] = field(default_factory=list)
    cold_samples: int = 0
    series_per_scrape: int = 0
    requests_per_round: float = 0.0


def max_samples_per_send(config: Config) -> int:
    return config.remote_write[0].max_samples_per_send if config.remote_write else 2_000


def bench_pipeline(args: argparse.Namespace, config: Config, engine: str) -> PipelineResult:
    per_send = max_samples_per_send(config)
    result = PipelineResult()

    # Cold: a fresh engine (empty cache, no aggregation state) gets the fleet's first scrape.
    # Requests hold one round only, so every series in them is new.
    for _ in range(args.repeat):
        cold_fleet = Fleet(args.pods, args.seed, churn_probability=0.0)
        cold_requests = make_requests(cold_fleet, 1, args.batch, FIRST_TIMESTAMP_MS)
        fresh = new_engine(config, cold_fleet.documents(), engine)
        result.cold.append(process(fresh, cold_requests, per_send).total)
        result.cold_samples = sum(r.samples for r in cold_requests)

    # Warm: no churn, so every series after the warm-up has been seen before; churn is the cold
    # path, measured above. The same requests go through an engine that flushes after every
    # request and one that flushes on a timer, as the app does.
    fleet = Fleet(args.pods, args.seed, churn_probability=0.0)
    result.series_per_scrape = fleet.series_per_scrape
    rounds = WARMUP_ROUNDS + args.rounds * args.repeat
    print(f"(a) {engine}: {rounds} scrapes of {fleet.series_per_scrape:,} series ...", flush=True)
    requests = make_requests(fleet, rounds, args.batch, FIRST_TIMESTAMP_MS)
    result.requests_per_round = len(requests) / rounds
    warmup = round(WARMUP_ROUNDS * result.requests_per_round)
    per_repeat = (len(requests) - warmup) // args.repeat
    for flush_every in sorted({1, args.flush_every}):
        warm = new_engine(config, fleet.documents(), engine)
        decode = decoder(warm, config.max_decoded_bytes)
        process(warm, requests[:warmup], per_send, flush_every)
        runs = result.warm.setdefault(flush_every, [])
        for index in range(args.repeat):
            chunk = requests[warmup + index * per_repeat : warmup + (index + 1) * per_repeat]
            times = process(warm, chunk, per_send, flush_every)
            times.decode = time_decode(decode, chunk)
            runs.append(times)
            result.warm_samples = sum(r.samples for r in chunk)
    # The same samples as 2.0 requests, on an engine of their own (the label bytes are the
    # same, so it could share one; separate keeps each run's steady state its own).
    v2 = WireProtocol.V2
    warm = new_engine(config, fleet.documents(), engine)
    decode = decoder(warm, config.max_decoded_bytes, v2)
    process(warm, requests[:warmup], per_send, args.flush_every, v2)
    for index in range(args.repeat):
        chunk = requests[warmup + index * per_repeat : warmup + (index + 1) * per_repeat]
        times = process(warm, chunk, per_send, args.flush_every, v2)
        times.decode = time_decode(decode, chunk, v2)
        result.warm_v2.append(times)

    if args.profile and engine == "python":
        profile_pipeline(args, config, requests, warmup)
    return result


def profile_pipeline(
    args: argparse.Namespace, config: Config, requests: Sequence[Request], warmup: int
) -> None:
    """cProfile of the warm path, flushing after every request; printed, never saved."""
    per_send = max_samples_per_send(config)
    pipeline = new_pipeline(config, Fleet(args.pods, args.seed, churn_probability=0.0))
    process(pipeline, requests[:warmup], per_send)
    profiler = cProfile.Profile()
    profiler.enable()
    process(pipeline, requests[warmup:], per_send)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(args.profile_top)
    print("\n(a) cProfile of the warm path, flush after every request (sorted by own time):")
    print(out.getvalue().strip())


def report_pipeline(
    result: PipelineResult, views: int, engine: str, summary: Summary, flush_every: int
) -> None:
    def row(label: str, samples: int, seconds: float) -> None:
        print(f"    {label:<46}{samples / seconds:>12,.0f}{seconds / samples * 1e6:>11.2f}")

    print(
        f"\n(a) {engine} engine in process, one core: {result.series_per_scrape:,} series per"
        f" scrape, {result.requests_per_round:.1f} requests per scrape, {views} views,"
        f" median of {len(result.cold)}"
    )
    print(f"    {'':<46}{'samples/s':>12}{'µs/sample':>11}")
    samples = result.warm_samples
    for every, runs in sorted(result.warm.items()):
        when = "every request" if every == 1 else f"every {every} requests"
        total = statistics.median(t.total for t in runs)
        row(f"warm, flush {when}", samples, total)
        for phase in ("decode", "ingest", "apply", "flush", "encode"):
            seconds = statistics.median(getattr(t, phase) for t in runs)
            row(f"  {PHASE_LABELS[phase]}", samples, seconds)
            if every == flush_every:
                summary.put(
                    f"(1) µs/sample: {PHASE_LABELS[phase].strip()}",
                    engine,
                    f"{seconds / samples * 1e6:.2f}",
                )
        if every == flush_every:
            summary.put(
                f"(1) µs/sample warm total, flush every {every}",
                engine,
                f"{total / samples * 1e6:.2f}",
            )
            summary.put(
                f"(1) samples/s warm, flush every {every}", engine, f"{samples / total:,.0f}"
            )
    if result.warm_v2:
        print(f"    the same samples as remote write 2.0, flush every {flush_every} requests:")
        for phase in ("decode", "ingest"):
            seconds = statistics.median(getattr(t, phase) for t in result.warm_v2)
            row(f"  2.0: {PHASE_LABELS[phase]}", samples, seconds)
            summary.put(
                f"(1) µs/sample 2.0: {PHASE_LABELS[phase].strip()}",
                engine,
                f"{seconds / samples * 1e6:.2f}",
            )
    cold = statistics.median(result.cold)
    row("cold: first scrape, fresh engine", result.cold_samples, cold)
    summary.put(
        "(3) first sight: series/s, fresh engine", engine, f"{result.cold_samples / cold:,.0f}"
    )
    any_runs = next(iter(result.warm.values()))
    outputs = statistics.median(t.output_samples for t in any_runs)
    print(f"    output samples per input sample (warm): {outputs / samples:.4f}")


PHASE_LABELS = {
    "decode": "decompress + decode (separate pass)",
    "ingest": "ingest(body) as a whole",
    "apply": "  of which apply (ingest - decode)",
    "flush": "flush",
    "encode": "output encoding",
}


# --- the summary table --------------------------------------------------------------------------


class Summary:
    """Rows of the final table, one column per engine, in the order rows are first put."""

    def __init__(self, engines: Sequence[str]) -> None:
        self.engines = list(engines)
        self.rows: dict[str, dict[str, str]] = {}

    def put(self, row: str, engine: str, value: str) -> None:
        self.rows.setdefault(row, {})[engine] = value

    def print(self) -> None:
        width = max((len(row) for row in self.rows), default=10) + 2
        columns = [
            max([24, *(len(v.get(e, "")) + 2 for v in self.rows.values())]) for e in self.engines
        ]
        print("\nSummary (one run; this machine is shared and noisy: compare within a run only)")
        header = "".join(f"{e:>{w}}" for e, w in zip(self.engines, columns, strict=True))
        print(f"{'':<{width}}{header}")
        for row, values in self.rows.items():
            cells = "".join(
                f"{values.get(e, '-'):>{w}}" for e, w in zip(self.engines, columns, strict=True)
            )
            print(f"{row:<{width}}{cells}")


# --- child processes: instructions under callgrind, memory --------------------------------------

WIDE_ERROR_TYPES = 40
"""Series of the memory and big-request workloads: 500 pods x endpoints x 40 error types."""


def wide_label_bytes(documents: Sequence[dict[str, str]], count: int) -> list[bytes]:
    """``count`` distinct label sets of the failure counter (feeds both example views), every
    pod of the table with ever more endpoint / error type pairs: a wide, high-cardinality fleet."""
    pods = [document["pod"] for document in documents]
    out: list[bytes] = []
    combo = 0
    while len(out) < count:
        endpoint, error_type = divmod(combo, WIDE_ERROR_TYPES)
        combo += 1
        for index, pod in enumerate(pods):
            labels = (
                (METRIC_NAME_LABEL, FAILED_METRIC),
                ("endpoint", f"/e{endpoint:03d}"),
                ("error_type", f"t{error_type:02d}"),
                ("instance", f"10.1.{index >> 8 & 255}.{index & 255}:8080"),
                ("job", JOB),
                ("pod", pod),
            )
            out.append(codec.encode_labels(labels))
            if len(out) == count:
                break
    return out


def wide_body(label_bytes: Sequence[bytes], timestamp_ms: int) -> bytes:
    """One request with one sample per series of ``label_bytes``, snappy-compressed."""
    sample = ((timestamp_ms, 1.0),)
    return codec.compress(codec.encode_write_request((lb, sample) for lb in label_bytes))


def write_requests(
    path: Path, documents: list[dict[str, str]], requests: Iterable[Request], marker: int = 0
) -> None:
    """The child's input: the table's documents, a count, then one pickle per request."""
    with path.open("wb") as out:
        pickle.dump((documents, marker), out)
        for request in requests:
            pickle.dump((request.body, request.samples, request.now_ms), out)


def read_requests(path: Path) -> tuple[list[dict[str, str]], int, Iterator[Request]]:
    source = path.open("rb")
    documents, marker = pickle.load(source)

    def requests() -> Iterator[Request]:
        with source:
            while True:
                try:
                    body, samples, now_ms = pickle.load(source)
                except EOFError:
                    return
                yield Request(body, samples, now_ms)

    return documents, marker, requests()


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def child_main(args: argparse.Namespace, config: Config) -> int:
    """Run in a child process (``--child``): one engine, one workload, figures on stdout."""
    documents, marker, requests = read_requests(args.child_file)
    engine = new_engine(config, documents, args.child_engine)
    if args.child == "instructions":
        # The first ``marker`` requests warm up; then every ingest and every flush is one
        # callgrind dump (--dump-before=getpgid: os.getpgid is the marker, called nowhere else).
        for number, request in enumerate(requests):
            if number == marker:
                os.getpgid(0)
            engine.ingest(request.body, request.now_ms)
            if number >= marker:
                os.getpgid(0)
            engine.flush(request.now_ms)
            if number >= marker:
                os.getpgid(0)
        return 0
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    series = 0
    now_ms = 0
    for request in requests:
        if series >= args.child_series:
            break
        engine.ingest(request.body, request.now_ms)
        series += request.samples
        now_ms = request.now_ms
    ingested = time.perf_counter() - started
    engine.flush(now_ms)
    after = rss_bytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cached = engine.stats().cached_series
    print(
        json.dumps(
            {
                "series": series,
                "cached": cached,
                "before": before,
                "after": after,
                "peak": peak,
                "seconds": ingested,
            }
        )
    )
    return 0


def child_argv(kind: str, engine: str, path: Path, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--config", str(args.config),
        "--child", kind, "--child-engine", engine, "--child-file", str(path),
    ]  # fmt: skip


def start_instructions(
    args: argparse.Namespace, engines: Sequence[str], workdir: Path
) -> dict[str, tuple[subprocess.Popen[bytes], Path, int]]:
    """Start one callgrind child per engine (they run while the next section does)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("(2) SKIPPED: valgrind is not installed")
        return {}
    fleet = Fleet(args.pods, args.seed, churn_probability=0.0)
    requests = make_requests(fleet, WARMUP_ROUNDS + 6, args.batch, FIRST_TIMESTAMP_MS)
    warmup = round(WARMUP_ROUNDS * len(requests) / (WARMUP_ROUNDS + 6))
    count = args.instruction_requests
    requests = requests[: warmup + count]
    path = workdir / "instructions.pickle"
    write_requests(path, fleet.documents(), requests, warmup)
    samples = sum(r.samples for r in requests[warmup:])
    started = {}
    for engine in engines:
        out = workdir / f"callgrind.{engine}"
        argv = [
            valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-before=getpgid",
            *child_argv("instructions", engine, path, args),
        ]  # fmt: skip
        with (workdir / f"callgrind.{engine}.log").open("wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT)
        started[engine] = (process, out, samples)
    print(
        f"(2) callgrind: {len(engines)} children, {warmup} warm-up requests, then {count}"
        f" requests of {args.batch:,} series ({samples:,} samples) measured",
        flush=True,
    )
    return started


def callgrind_total(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"no totals in {path}")


def finish_instructions(
    started: dict[str, tuple[subprocess.Popen[bytes], Path, int]], summary: Summary
) -> None:
    for engine, (process, out, samples) in started.items():
        try:
            code = process.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = -1
        dumps = sorted(
            out.parent.glob(f"{out.name}.*[0-9]"), key=lambda p: int(p.name.rsplit(".", 1)[1])
        )
        if code != 0 or len(dumps) < 3:
            print(f"(2) {engine}: callgrind child failed (exit {code}, {len(dumps)} dumps)")
            print(tail(out.parent / f"{out.name}.log"))
            continue
        # Dump 1 is start-up and warm-up; then ingest, flush, ingest, flush, ...
        phases = [callgrind_total(p) for p in dumps[1:]]
        ingest, flush = sum(phases[0::2]), sum(phases[1::2])
        print(
            f"(2) {engine}: Ir per input sample: ingest {ingest / samples:,.0f},"
            f" flush {flush / samples:,.0f} ({len(phases) // 2} requests)"
        )
        summary.put("(2) instructions (Ir) per sample: ingest", engine, f"{ingest / samples:,.0f}")
        summary.put("(2) instructions (Ir) per sample: flush", engine, f"{flush / samples:,.0f}")


def bench_memory(
    args: argparse.Namespace, engines: Sequence[str], workdir: Path, summary: Summary
) -> None:
    """(4) RSS growth of a fresh child per engine and size: bytes per input series."""
    sizes = sorted(args.memory_series)
    fleet = Fleet(args.pods, args.seed, churn_probability=0.0)
    documents = fleet.documents()
    print(f"\n(4) memory: preparing {max(sizes):,} distinct series ...", flush=True)
    labels = wide_label_bytes(documents, max(sizes))
    path = workdir / "memory.pickle"
    batch = args.batch
    write_requests(
        path,
        documents,
        (
            Request(
                wide_body(labels[i : i + batch], FIRST_TIMESTAMP_MS),
                len(labels[i : i + batch]),
                FIRST_TIMESTAMP_MS,
            )
            for i in range(0, len(labels), batch)
        ),
    )
    del labels
    jobs = [
        (engine, size)
        for size in sorted(sizes, reverse=True)
        for engine in engines
        if engine != "python" or size <= args.memory_python_max
    ]

    def run(job: tuple[str, int]) -> tuple[str, int, dict[str, Any] | str]:
        engine, size = job
        argv = [*child_argv("memory", engine, path, args), "--child-series", str(size)]
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=CHILD_TIMEOUT_S, cwd=ROOT, check=False
            )
        except subprocess.TimeoutExpired:
            return engine, size, f"timed out after {CHILD_TIMEOUT_S:g} s"
        if done.returncode != 0:
            return engine, size, f"exit {done.returncode}: {done.stderr.decode()[-LOG_TAIL_CHARS:]}"
        figures: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return engine, size, figures

    # Two at a time (two cores): RSS does not depend on how fast a child runs.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, jobs))
    print(
        f"    {'engine':<8}{'series':>11}{'RSS before':>12}{'RSS after':>12}{'peak':>10}"
        f"{'bytes/series':>14}{'ingest s':>10}"
    )
    for engine, size, figures in sorted(results, key=lambda r: (r[1], r[0])):
        if isinstance(figures, str):
            print(f"    {engine:<8}{size:>11,}  FAILED: {figures}")
            continue
        series = figures["series"]
        per_series = (figures["after"] - figures["before"]) / series
        mib = 1024 * 1024
        print(
            f"    {engine:<8}{series:>11,}{figures['before'] / mib:>9.0f} MiB"
            f"{figures['after'] / mib:>9.0f} MiB{figures['peak'] / mib:>6.0f} MiB"
            f"{per_series:>14,.0f}{figures['seconds']:>10.1f}"
        )
        label = f"{series / 1e6:g} M" if series >= 1_000_000 else f"{series // 1000:,} k"
        summary.put(f"(4) bytes per input series at {label}", engine, f"{per_series:,.0f}")
        summary.put(
            f"(4) RSS after ingest + flush at {label}", engine, f"{figures['after'] / mib:,.0f} MiB"
        )
    for size in sizes:
        for engine in engines:
            if engine == "python" and size > args.memory_python_max:
                label = f"{size / 1e6:g} M" if size >= 1_000_000 else f"{size // 1000:,} k"
                summary.put(
                    f"(4) bytes per input series at {label}",
                    engine,
                    "not run (--memory-python-max)",
                )


# --- (b) end to end over HTTP -------------------------------------------------------------------


class SkipHttp(Exception):
    """(b) cannot run; the message says why."""


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for programs that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except FileNotFoundError:
        return "(no log)"


class Child:
    """A subprocess with its output in a log file; ``stop`` is SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, **kwargs: Any) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=kwargs.pop("stdout", log),
                stderr=log,
                # Own process group: a Ctrl-C reaches only this script, which stops the children.
                start_new_session=True,
                **kwargs,
            )

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise SkipHttp(f"{self.name} exited with code {code}:\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"    {self.name} ignored SIGTERM for {STOP_TIMEOUT_S:g} s: killed")
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


def poll_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise SkipHttp(f"{what} not ready after {timeout:g} s")
        time.sleep(0.1)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with _NO_PROXY.open(url, timeout=2.0) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def start_null_sink(workdir: Path) -> tuple[Child, str]:
    sink = Child(
        "null sink",
        [sys.executable, str(NULL_SINK)],
        workdir / "null-sink.log",
        stdout=subprocess.PIPE,
    )
    assert sink.process.stdout is not None
    ready, _, _ = select.select([sink.process.stdout], [], [], READY_TIMEOUT_S)
    line = sink.process.stdout.readline().decode() if ready else ""
    if not line.startswith("listening on "):
        sink.stop()
        raise SkipHttp(f"null sink did not start: {line!r}\n{tail(sink.log_path)}")
    return sink, f"http://{line.removeprefix('listening on ').strip()}"


def start_secantus(workdir: Path) -> tuple[Child, str]:
    port = free_port()
    mongo = Child(
        "secantusd",
        [
            sys.executable, "-m", "secantus", "--host", LOCALHOST, "--port", str(port),
            "--storage-path", str(workdir / "secantus"), "--log-level", "WARNING",
        ],
        workdir / "secantusd.log",
    )  # fmt: skip
    uri = f"mongodb://{LOCALHOST}:{port}/"
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, directConnection=True, serverSelectionTimeoutMS=300, connectTimeoutMS=300
    )

    def answers_ping() -> bool:
        mongo.check_alive()
        try:
            client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    try:
        poll_until(answers_ping, READY_TIMEOUT_S, f"secantusd at {uri}")
    except BaseException:
        mongo.stop()
        raise
    finally:
        client.close()
    return mongo, uri


def proxy_config(
    mongo_uri: str,
    sink_url: str,
    port: int,
    args: argparse.Namespace,
    workdir: Path,
    *,
    engine: str = "auto",
    durable: bool = False,
) -> dict[str, Any]:
    """conf/enrichproxy.yaml with its addresses pointed at this benchmark's parts.

    The aggregation settings are the file's unless ``--window`` / ``--lateness`` say otherwise.
    ``durable`` adds a disk queue, the state file (with its input log next to it) and the
    metadata snapshot, all in ``workdir``; without it nothing is kept on disk. The limits
    let one request of ``--big-series`` tiny series in (section (6)).
    """
    data: dict[str, Any] = yaml.safe_load(CONFIG_PATH.read_text())
    data["listen"] = f"{LOCALHOST}:{port}"
    data["log_level"] = "warning"
    data["engine"] = engine
    data["metadata"]["mongodb_uri"] = mongo_uri
    data["remote_write"] = [{"url": f"{sink_url}/api/v1/write"}]
    # The shipped file keeps its state under data/ of the working directory: a run must neither
    # read what an earlier one left there (a 1 M-series checkpoint takes minutes to load) nor
    # leave anything. The memory configuration keeps nothing on disk, the durable one keeps it
    # all in this run's directory.
    aggregation_state = data.setdefault("aggregation", {})
    aggregation_state.pop("state_path", None)
    data["metadata"].pop("snapshot_path", None)
    if durable:
        data["remote_write"][0]["queue"] = {"path": str(workdir / "queue")}
        aggregation_state["state_path"] = str(workdir / "state.json")
        data["metadata"]["snapshot_path"] = str(workdir / "metadata.json")
    data["shutdown_timeout"] = PROXY_SHUTDOWN_TIMEOUT
    data["max_decoded_bytes"] = BIG_MAX_DECODED_BYTES
    data["limits"] = {"max_series_per_request": max(2 * args.big_series, 100_000)}
    aggregation = data.setdefault("aggregation", {})
    if args.window is not None:
        aggregation["interval"] = format_duration_ms(args.window)
    if args.lateness is not None:
        aggregation["lateness"] = format_duration_ms(args.lateness)
    return data


def start_proxy(
    workdir: Path,
    mongo_uri: str,
    sink_url: str,
    args: argparse.Namespace,
    *,
    engine: str = "auto",
    durable: bool = False,
) -> tuple[Child, str]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "enrichproxy.yaml"
    config = proxy_config(mongo_uri, sink_url, port, args, workdir, engine=engine, durable=durable)
    config_path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "enrichproxy", "serve", "--config", str(config_path)]
    proxy = Child("enrichproxy serve", argv, workdir / "enrichproxy.log", cwd=ROOT)
    base = f"http://{LOCALHOST}:{port}"

    def ready() -> bool:
        proxy.check_alive()
        try:
            return http_get(f"{base}/-/ready")[0] == 200
        except OSError:
            return False

    try:
        poll_until(ready, READY_TIMEOUT_S, f"enrichproxy at {base}/-/ready")
    except BaseException:
        proxy.stop()
        raise
    return proxy, base


async def seed(uri: str, fleet: Fleet, config: Config) -> None:
    seeder = MetadataSeeder(uri, config.metadata.database, config.metadata.collection)
    pods = fleet.metadata()
    try:
        # In chunks: secantusdb takes longer than the seeder's 5 s timeout for 500 upserts
        # in one bulk write on this machine.
        for start in range(0, len(pods), SEED_CHUNK):
            await seeder.upsert(pods[start : start + SEED_CHUNK])
    except SeedError as exc:
        raise SkipHttp(str(exc)) from None
    finally:
        await seeder.close()


async def send(
    settings: LoadSettings,
    fleet: Fleet,
    clock: RoundClock,
    mongo_uri: str,
    config: Config,
    *,
    progress: bool,
) -> LoadReport:
    """One load run; replacement pods are upserted into the table as they start."""
    seeder = MetadataSeeder(mongo_uri, config.metadata.database, config.metadata.collection)
    try:
        return await generate_load(
            settings,
            fleet,
            on_pods_started=seeder.upsert_later,
            progress=sys.stderr if progress else None,
            round_clock=clock,
        )
    finally:
        await seeder.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), 0 when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields after "(comm)": state is index 0, so utime (14th field) and stime (15th) are 11, 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class HttpResult:
    report: LoadReport
    delivered: dict[str, int]
    """What the null sink received during the measured run."""
    proxy_cpu_s: float
    loadgen_cpu_s: float


@dataclass
class HttpParts:
    """What every run of (5) and (6) shares: the sink, secantusdb, the fleet and its clock."""

    workdir: Path
    sink_url: str
    mongo_uri: str
    fleet: Fleet
    clock: RoundClock
    config: Config
    big_labels: list[bytes] = field(default_factory=list)


def measure_run(
    parts: HttpParts, proxy: Child, settings: LoadSettings, args: argparse.Namespace
) -> HttpResult:
    """Warm-up, then one measured load run against ``proxy``."""
    fleet, clock, mongo_uri, config = parts.fleet, parts.clock, parts.mongo_uri, parts.config
    warmup = replace(settings, duration_ms=args.warmup, rate=0.0)
    asyncio.run(send(warmup, fleet, clock, mongo_uri, config, progress=False))
    before = json.loads(http_get(f"{parts.sink_url}/stats")[1])
    proxy_cpu, own_cpu = cpu_seconds(proxy.process.pid), time.process_time()
    report = asyncio.run(send(settings, fleet, clock, mongo_uri, config, progress=True))
    proxy_cpu, own_cpu = (
        cpu_seconds(proxy.process.pid) - proxy_cpu,
        time.process_time() - own_cpu,
    )
    time.sleep(1.0)  # let the proxy's forwarder drain before reading what arrived
    after = json.loads(http_get(f"{parts.sink_url}/stats")[1])
    proxy.check_alive()
    delivered = {key: after[key] - before[key] for key in after}
    return HttpResult(report, delivered, proxy_cpu, own_cpu)


def bench_http(
    args: argparse.Namespace, config: Config, engines: Sequence[str], summary: Summary
) -> None:
    sample_interval = None if args.wall_clock else args.sample_interval
    timestamps = (
        "wall-clock timestamps"
        if sample_interval is None
        else f"rounds {format_duration_ms(sample_interval)} apart in sample time"
    )
    print(
        f"\n(5) end to end over HTTP: enrichproxy serve, secantusdb, a null sink; load from this"
        f" process for {args.duration / 1000:g} s after {args.warmup / 1000:g} s of warm-up,"
        f" {timestamps}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="enrichproxy-bench-"))
    children: list[Child] = []
    try:
        sink, sink_url = start_null_sink(workdir)
        children.append(sink)
        mongo, mongo_uri = start_secantus(workdir)
        children.append(mongo)
        fleet = Fleet(args.pods, args.seed, churn_probability=args.churn_probability)
        asyncio.run(seed(mongo_uri, fleet, config))
        parts = HttpParts(workdir, sink_url, mongo_uri, fleet, RoundClock(sample_interval), config)
        settings = LoadSettings(
            batch=args.batch,
            rate=args.rate,
            concurrency=args.concurrency,
            duration_ms=args.duration,
            sample_interval_ms=sample_interval,
        )
        for engine in engines:
            for kind in args.http_configs:
                run_proxy(parts, args, engine=engine, kind=kind, settings=settings, summary=summary)
    except SkipHttp as exc:
        print(f"    SKIPPED: {exc}")
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run_proxy(
    parts: HttpParts,
    args: argparse.Namespace,
    *,
    engine: str,
    kind: str,
    settings: LoadSettings,
    summary: Summary,
) -> None:
    """One proxy process: (5) at full speed, then on the memory queue (6) latency."""
    durable = kind == "durable"
    what = "disk queue + state file + input log" if durable else "memory queue"
    print(f"\n    --- {engine} engine, {what}", flush=True)
    workdir = parts.workdir / f"{engine}-{kind}"
    proxy, proxy_url = start_proxy(
        workdir, parts.mongo_uri, parts.sink_url, args, engine=engine, durable=durable
    )
    url = f"{proxy_url}/api/v1/write"
    try:
        result = measure_run(parts, proxy, replace(settings, url=url), args)
        print_http_report(result, args)
        report = result.report
        rate = report.accepted_per_second
        per_cpu = report.samples_accepted / result.proxy_cpu_s if result.proxy_cpu_s else 0.0
        elapsed = report.elapsed_s or 1.0
        summary.put(f"(5) HTTP {kind}: samples/s accepted", engine, f"{rate:,.0f}")
        summary.put(f"(5) HTTP {kind}: samples per proxy CPU-s", engine, f"{per_cpu:,.0f}")
        summary.put(
            f"(5) HTTP {kind}: proxy / load generator cores",
            engine,
            f"{result.proxy_cpu_s / elapsed:.2f} / {result.loadgen_cpu_s / elapsed:.2f}",
        )
        summary.put(
            f"(5) HTTP {kind}: p50 / p99 ms at full speed",
            engine,
            f"{report.latency_ms(0.5):.0f} / {report.latency_ms(0.99):.0f}",
        )
        if durable or args.latency_duration <= 0 or rate <= 0:
            return
        paced = replace(settings, url=url, rate=rate / 2, duration_ms=args.latency_duration)
        half = asyncio.run(
            send(paced, parts.fleet, parts.clock, parts.mongo_uri, parts.config, progress=False)
        )
        print(
            f"    (6) paced at {rate / 2:,.0f} samples/s for {args.latency_duration / 1000:g} s:"
            f" {half.accepted_per_second:,.0f} accepted, latency p50 / p99"
            f" {half.latency_ms(0.5):.1f} / {half.latency_ms(0.99):.1f} ms"
        )
        summary.put(
            "(6) write p50 / p99 ms at half the max rate",
            engine,
            f"{half.latency_ms(0.5):.1f} / {half.latency_ms(0.99):.1f}",
        )
        if args.big_series > 0:
            big_request(parts, args, engine=engine, url=url, proxy=proxy, summary=summary)
    finally:
        proxy.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class BigResult:
    big_status: str = ""
    big_latency_ms: float = 0.0
    small: list[float] = field(default_factory=list)
    """Latencies (ms) of the small writes started while the big request was in flight."""
    small_statuses: Counter[str] = field(default_factory=Counter)


async def _timed_post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=REMOTE_WRITE_HEADERS) as response:
            await response.read()
            status = str(response.status)
    except (TimeoutError, aiohttp.ClientError) as exc:
        status = type(exc).__name__
    return status, (time.perf_counter() - started) * 1000.0


async def big_and_small(
    url: str, big: bytes, fleet: Fleet, clock: RoundClock, batch: int
) -> BigResult:
    """Post ``big``, then at once small writes one after the other until AFTER_BIG_S after it
    is answered (the flush that closes its windows comes then)."""
    result = BigResult()
    encoder = RequestEncoder()
    batcher = Batcher(batch)
    timeout = aiohttp.ClientTimeout(total=CHILD_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        answered: list[float] = []
        big_task = asyncio.create_task(_timed_post(session, url, big))
        big_task.add_done_callback(lambda _: answered.append(time.perf_counter()))
        await asyncio.sleep(0)
        while not answered or time.perf_counter() - answered[0] < AFTER_BIG_S:
            if len(batcher) < batch:
                batcher.add(fleet.scrape(clock.next(time.time_ns() // 1_000_000)).samples)
            body = encoder.body(batcher.take())
            status, latency = await _timed_post(session, url, body)
            result.small.append(latency)
            result.small_statuses[status] += 1
            await asyncio.sleep(SMALL_WRITE_GAP_S)
        result.big_status, result.big_latency_ms = await big_task
    return result


def big_request(
    parts: HttpParts,
    args: argparse.Namespace,
    *,
    engine: str,
    url: str,
    proxy: Child,
    summary: Summary,
) -> None:
    """(6) A small write's latency while one request of ``--big-series`` new series is applied
    and its windows are flushed."""
    if len(parts.big_labels) != args.big_series:
        documents = parts.fleet.documents()
        parts.big_labels = wide_label_bytes(documents, args.big_series)
    big = wide_body(parts.big_labels, parts.clock.next(time.time_ns() // 1_000_000))
    result = asyncio.run(big_and_small(url, big, parts.fleet, parts.clock, args.batch))
    proxy.check_alive()
    small = sorted(result.small)
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(result.small_statuses.items()))
    p99 = percentile(small, 0.99) if small else 0.0
    print(
        f"    (6) one request of {args.big_series:,} new series ({len(big) / 1e6:.1f} MB):"
        f" answered {result.big_status} in {result.big_latency_ms / 1000:.2f} s; {len(small)}"
        f" small writes ({args.batch:,} series) meanwhile and {AFTER_BIG_S:.0f} s after:"
        f" max {max(small, default=0):.0f} ms,"
        f" p99 {p99:.0f} ms, p50 {percentile(small, 0.5) if small else 0:.0f} ms ({statuses})"
    )
    label = f"{args.big_series:,}"
    summary.put(
        f"(6) request of {label} new series: status, seconds",
        engine,
        f"{result.big_status}, {result.big_latency_ms / 1000:.2f}",
    )
    summary.put(
        "(6) small writes during it: max / p99 ms (n)",
        engine,
        f"{max(small, default=0):.0f} / {p99:.0f} ({len(small)})",
    )


def print_http_report(result: HttpResult, args: argparse.Namespace) -> None:
    report, delivered = result.report, result.delivered
    statuses = ", ".join(f"{status}: {n:,}" for status, n in sorted(report.requests.items()))
    offered = f"{args.rate:,.0f} samples/s" if args.rate else "as fast as taken"
    elapsed = report.elapsed_s or 1.0
    proxy_cores = result.proxy_cpu_s / elapsed
    per_core = report.samples_accepted / result.proxy_cpu_s if result.proxy_cpu_s else 0.0
    print(
        f"    load: {args.pods} pods, {args.batch:,}-series requests, {offered},"
        f" {args.concurrency} in flight"
    )
    print(f"    samples/s accepted (2xx):  {report.accepted_per_second:>12,.0f}")
    print(f"    samples/s sent:            {report.sent_per_second:>12,.0f}")
    print(f"    latency p50 / p99:         {report.latency_ms(0.5):>9.1f} ms /"
          f" {report.latency_ms(0.99):.1f} ms")  # fmt: skip
    print(f"    requests by status:        {statuses or 'none'}")
    print(
        f"    proxy CPU:                 {proxy_cores:>12.2f} cores"
        f" ({per_core:,.0f} samples per CPU-second);"
        f" load generator {result.loadgen_cpu_s / elapsed:.2f} cores"
    )
    print(
        f"    delivered downstream:      {delivered['samples']:,} samples in"
        f" {delivered['requests']:,} requests ({delivered['bad_requests']} refused as malformed)"
    )


# --- main ---------------------------------------------------------------------------------------


def duration_arg(text: str) -> int:
    try:
        value = parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="enrichproxy benchmarks: both engines in process, memory, over HTTP"
    )
    parser.add_argument(
        "--only",
        choices=("pipeline", "instructions", "memory", "http"),
        help="run one section: pipeline (1, 3), instructions (2), memory (4), http (5, 6)",
    )
    parser.add_argument(
        "--engines",
        type=engine_list,
        default=list(ENGINES),
        help="comma-separated engines to compare (default python,native)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="(2) also count instructions per sample under valgrind --tool=callgrind",
    )
    parser.add_argument(
        "--instruction-requests",
        type=int,
        default=20,
        help="(2) warm requests measured under callgrind (default 20)",
    )
    parser.add_argument(
        "--memory-series",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[100_000, 1_000_000],
        help="(4) input series counts (default 100000,1000000)",
    )
    parser.add_argument(
        "--memory-python-max",
        type=int,
        default=1_000_000,
        help="(4) largest count the Python engine is measured at (default 1000000)",
    )
    parser.add_argument("--pods", type=int, default=500, help="fleet size (default 500)")
    parser.add_argument("--batch", type=int, default=2_000, help="series per request")
    parser.add_argument("--seed", type=int, default=1, help="fleet random seed")
    parser.add_argument("--config", type=Path, default=CONFIG_PATH, help="views and settings")
    parser.add_argument("--rounds", type=int, default=20, help="(a) scrapes timed per repeat")
    parser.add_argument("--repeat", type=int, default=3, help="(a) repeats; the median is shown")
    parser.add_argument(
        "--flush-every",
        type=int,
        default=25,
        help="(a) requests between flushes in the second warm row; 25 is about the app's"
        " 0.25 s flush tick at 200 k samples/s (default 25)",
    )
    parser.add_argument("--profile", action="store_true", help="(a) also print a cProfile")
    parser.add_argument("--profile-top", type=int, default=25, help="(a) profile rows shown")
    parser.add_argument(
        "--duration", type=duration_arg, default=8_000, help="(5) measured time (default 8s)"
    )
    parser.add_argument(
        "--warmup", type=duration_arg, default=2_000, help="(5) unmeasured time first (2s)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="(b) samples/s offered, 0 = as fast as taken"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="(5) requests in flight")
    parser.add_argument(
        "--disk-queue",
        action="store_true",
        help="(5) only the durable runs: disk queue, aggregation state file and input log",
    )
    parser.add_argument(
        "--http-configs",
        type=lambda text: [part for part in text.split(",") if part],
        default=list(HTTP_CONFIGS),
        help="(5) proxy configurations: memory (memory queue), durable (disk queue, state file,"
        " input log); default memory,durable",
    )
    parser.add_argument(
        "--latency-duration",
        type=int,
        default=6_000,
        help="(6) ms of paced sending at half the measured rate (default 6000, 0 = skip (6))",
    )
    parser.add_argument(
        "--big-series",
        type=int,
        default=1_000_000,
        help="(6) series of the big request (default 1000000, 0 = skip it)",
    )
    parser.add_argument("--child", choices=("instructions", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--child-engine", default="python", help=argparse.SUPPRESS)
    parser.add_argument("--child-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-series", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--sample-interval",
        type=duration_arg,
        default=SCRAPE_INTERVAL_MS,
        help="(b) sample time between scrape rounds, replayed faster than real time (15s)",
    )
    parser.add_argument(
        "--wall-clock",
        action="store_true",
        help="(b) stamp rounds with the wall clock instead: each series then gets a sample every"
        " few ms, far more per window than in production (set --window/--lateness to see output)",
    )
    parser.add_argument(
        "--churn-probability",
        type=float,
        default=0.0,
        help="(b) pod replacements per pod and round (default 0: every replacement changes the"
        " table, and rounds come many times faster than in production)",
    )
    parser.add_argument(
        "--window", type=duration_arg, help="(b) aggregation interval (default: the config's)"
    )
    parser.add_argument(
        "--lateness", type=duration_arg, help="(b) aggregation lateness (default: the config's)"
    )
    args = parser.parse_args(argv)
    if args.disk_queue:
        args.http_configs = ["durable"]
    for kind in args.http_configs:
        if kind not in HTTP_CONFIGS:
            parser.error(
                f"--http-configs: unknown {kind!r} (choose from {', '.join(HTTP_CONFIGS)})"
            )
    return args


def engine_list(text: str) -> list[str]:
    engines = [part.strip() for part in text.split(",") if part.strip()]
    for engine in engines:
        if engine not in ENGINES:
            raise argparse.ArgumentTypeError(f"unknown engine {engine!r}: python or native")
    if not engines:
        raise argparse.ArgumentTypeError("no engine")
    return engines


def environment() -> Iterator[str]:
    yield f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                yield line.split(":", 1)[1].strip()
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(str(args.config))
    if args.child:
        return child_main(args, config)
    engines = args.engines
    summary = Summary(engines)
    print("enrichproxy benchmarks:", "; ".join(environment()), f"; engines: {', '.join(engines)}")
    workdir = Path(tempfile.mkdtemp(prefix="enrichproxy-bench-children-"))
    try:
        started = {}
        if args.instructions or args.only == "instructions":
            # Instruction counts do not depend on what else runs: the callgrind children run
            # alongside the in-process section and the memory children.
            started = start_instructions(args, engines, workdir)
        if args.only in (None, "pipeline"):
            for engine in engines:
                result = bench_pipeline(args, config, engine)
                report_pipeline(result, len(config.views), engine, summary, args.flush_every)
        if args.only in (None, "memory"):
            bench_memory(args, engines, workdir, summary)
        if started:
            finish_instructions(started, summary)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.only in (None, "http"):
        bench_http(args, config, engines, summary)
    summary.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
