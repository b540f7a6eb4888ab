"""enrichproxy benchmarks: input samples per second, in process and end to end over HTTP.

Run with ``.venv/bin/python benchmarks/run.py`` (``make bench``); ``--help`` lists the knobs.

(a) pipeline: one core, no I/O. Remote-write 1.0 requests of 2,000 series from a 500-pod fleet
    (enrichproxy.tools.loadgen) go through decode → Pipeline.apply → Pipeline.flush → encode of
    what the flush emitted, with conf/enrichproxy.yaml's two views and a table built from the
    fleet's documents. "warm" is the steady state (every series seen before, as in production, where
    the same series come back every scrape); "cold" is a fresh pipeline's first scrape, where
    every series is decoded, joined and projected for the first time.
(b) http: the real process. A null downstream and secantusdb run as subprocesses, the proxy
    runs as ``python -m enrichproxy serve --config <generated>``, and the load generator sends
    from this process as fast as the proxy takes it. Its rounds are replayed 15 s apart in
    sample time (loadgen --sample-interval), so each series gets one sample per window as in
    production; with wall-clock stamps a 9,000-series fleet at 150 k samples/s would give each
    series a sample every 60 ms, and the aggregation far less work per sample than in
    production. No pod churn by default: every replacement changes the table (``--churn-
    probability`` measures that). Skipped, with the reason, when the proxy does not become
    ready, so (a) always works.

Everything listens on 127.0.0.1 on ports picked at run time; every subprocess is stopped
before exit, bounded in time. benchmarks/README.md records the figures measured here and
the peers' figures for the same workload shape.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from enrichproxy.config.durations import format_duration_ms, parse_duration_ms
from enrichproxy.config.schema import Config, load_config
from enrichproxy.engine.interface import ViewOutput
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.metadata.table import build_table
from enrichproxy.tools.loadgen import (
    Batcher,
    Fleet,
    LoadReport,
    LoadSettings,
    MetadataSeeder,
    RequestEncoder,
    RoundClock,
    SeedError,
    generate_load,
)
from enrichproxy.wire import codec

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

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- (a) the pipeline in process ----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    body: bytes
    """Snappy-compressed WriteRequest, as it arrives over HTTP."""
    samples: int
    now_ms: int
    """The proxy's clock when it handles this request: its newest sample time."""


def make_requests(fleet: Fleet, rounds: int, batch: int, first_ms: int) -> list[Request]:
    """``rounds`` scrapes of ``fleet``, 15 s apart, cut into requests as Prometheus would."""
    encoder = RequestEncoder()
    batcher = Batcher(batch)
    requests: list[Request] = []
    for index in range(rounds):
        batcher.add(fleet.scrape(first_ms + index * SCRAPE_INTERVAL_MS).samples)
        while len(batcher) >= batch or (index == rounds - 1 and batcher):
            samples = batcher.take()
            body = encoder.body(samples)
            requests.append(Request(body, len(samples), max(s.timestamp_ms for s in samples)))
    return requests


def new_pipeline(config: Config, fleet: Fleet) -> Pipeline:
    pipeline = Pipeline(config)
    rule = config.metadata.enrich_rules[0]
    pipeline.set_table(build_table(fleet.documents(), rule, 1, 0.0).table)
    return pipeline


@dataclass
class PhaseTimes:
    """Seconds spent in each step, summed over requests."""

    decode: float = 0.0
    ingest: float = 0.0
    flush: float = 0.0
    encode: float = 0.0
    output_samples: int = 0

    @property
    def total(self) -> float:
        return self.decode + self.ingest + self.flush + self.encode


def encode_outputs(outputs: list[ViewOutput], max_samples_per_send: int) -> int:
    """Encode and compress every flushed sample as the forwarder would send it; bytes made."""
    size = 0
    for output in outputs:
        samples = output.samples
        for start in range(0, len(samples), max_samples_per_send):
            chunk = samples[start : start + max_samples_per_send]
            message = codec.encode_write_request(
                (s.label_bytes, ((s.timestamp_ms, s.value),)) for s in chunk
            )
            size += len(codec.compress(message))
    return size


def process(
    pipeline: Pipeline,
    requests: Sequence[Request],
    max_samples_per_send: int,
    flush_every: int = 1,
) -> PhaseTimes:
    """Push ``requests`` through ``pipeline``, flushing after every ``flush_every``-th one."""
    times = PhaseTimes()
    clock = time.perf_counter
    last = len(requests)
    for number, request in enumerate(requests, 1):
        t0 = clock()
        decoded = codec.decode_write_request(
            codec.decompress(request.body), pipeline.known_label_bytes
        )
        t1 = clock()
        pipeline.apply(decoded, request.now_ms)
        t2 = clock()
        times.decode += t1 - t0
        times.ingest += t2 - t1
        if number % flush_every == 0 or number == last:
            outputs = pipeline.flush(request.now_ms)
            t3 = clock()
            encode_outputs(outputs, max_samples_per_send)
            times.flush += t3 - t2
            times.encode += clock() - t3
            times.output_samples += sum(len(o.samples) for o in outputs)
    return times


@dataclass
class PipelineResult:
    warm: dict[int, list[PhaseTimes]] = field(default_factory=dict)
    """Timings of each repeat, by how many requests go between flushes."""
    warm_samples: int = 0
    cold: list[float] = field(default_factory=list)
    cold_samples: int = 0
    series_per_scrape: int = 0
    requests_per_round: float = 0.0


def max_samples_per_send(config: Config) -> int:
    return config.remote_write[0].max_samples_per_send if config.remote_write else 2_000


def bench_pipeline(args: argparse.Namespace, config: Config) -> PipelineResult:
    per_send = max_samples_per_send(config)
    result = PipelineResult()

    # Cold: a fresh pipeline (empty cache, no aggregation state) gets the fleet's first scrape.
    # Requests hold one round only, so every series in them is new.
    for _ in range(args.repeat):
        cold_fleet = Fleet(args.pods, args.seed, churn_probability=0.0)
        cold_requests = make_requests(cold_fleet, 1, args.batch, FIRST_TIMESTAMP_MS)
        pipeline = new_pipeline(config, cold_fleet)
        result.cold.append(process(pipeline, cold_requests, per_send).total)
        result.cold_samples = sum(r.samples for r in cold_requests)

    # Warm: no churn, so every series after the warm-up has been seen before; churn is the cold
    # path, measured above. The same requests go through a pipeline that flushes after every
    # request and one that flushes on a timer, as the app does.
    fleet = Fleet(args.pods, args.seed, churn_probability=0.0)
    result.series_per_scrape = fleet.series_per_scrape
    rounds = WARMUP_ROUNDS + args.rounds * args.repeat
    print(f"(a) preparing {rounds} scrapes of {fleet.series_per_scrape:,} series ...", flush=True)
    requests = make_requests(fleet, rounds, args.batch, FIRST_TIMESTAMP_MS)
    result.requests_per_round = len(requests) / rounds
    warmup = round(WARMUP_ROUNDS * result.requests_per_round)
    per_repeat = (len(requests) - warmup) // args.repeat
    for flush_every in sorted({1, args.flush_every}):
        pipeline = new_pipeline(config, fleet)
        process(pipeline, requests[:warmup], per_send, flush_every)
        runs = result.warm.setdefault(flush_every, [])
        for index in range(args.repeat):
            chunk = requests[warmup + index * per_repeat : warmup + (index + 1) * per_repeat]
            runs.append(process(pipeline, chunk, per_send, flush_every))
            result.warm_samples = sum(r.samples for r in chunk)

    if args.profile:
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


def report_pipeline(result: PipelineResult, views: int) -> None:
    def row(label: str, samples: int, seconds: float) -> None:
        print(f"    {label:<46}{samples / seconds:>12,.0f}{seconds / samples * 1e6:>11.2f}")

    print(
        f"\n(a) pipeline in process, one core: {result.series_per_scrape:,} series per scrape,"
        f" {result.requests_per_round:.1f} requests per scrape, {views} views,"
        f" median of {len(result.cold)}"
    )
    print(f"    {'':<46}{'samples/s':>12}{'µs/sample':>11}")
    samples = result.warm_samples
    for flush_every, runs in sorted(result.warm.items()):
        when = "every request" if flush_every == 1 else f"every {flush_every} requests"
        row(f"warm, flush {when}", samples, statistics.median(t.total for t in runs))
        for phase in ("decode", "ingest", "flush", "encode"):
            seconds = statistics.median(getattr(t, phase) for t in runs)
            row(f"  of which {phase}", samples, seconds)
    row("cold: first scrape, fresh pipeline", result.cold_samples, statistics.median(result.cold))
    any_runs = next(iter(result.warm.values()))
    outputs = statistics.median(t.output_samples for t in any_runs)
    print(f"    output samples per input sample (warm): {outputs / samples:.4f}")


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
    mongo_uri: str, sink_url: str, port: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """conf/enrichproxy.yaml with its addresses pointed at this benchmark's parts.

    The aggregation settings are the file's unless ``--window`` / ``--lateness`` say otherwise.
    """
    data: dict[str, Any] = yaml.safe_load(CONFIG_PATH.read_text())
    data["listen"] = f"{LOCALHOST}:{port}"
    data["log_level"] = "warning"
    data["metadata"]["mongodb_uri"] = mongo_uri
    data["remote_write"] = [{"url": f"{sink_url}/api/v1/write"}]
    if args.disk_queue:
        data["remote_write"][0]["queue"] = {"path": str(workdir / "queue")}
        aggregation_state = data.setdefault("aggregation", {})
        aggregation_state["state_path"] = str(workdir / "state.json")
    data["shutdown_timeout"] = PROXY_SHUTDOWN_TIMEOUT
    aggregation = data.setdefault("aggregation", {})
    if args.window is not None:
        aggregation["interval"] = format_duration_ms(args.window)
    if args.lateness is not None:
        aggregation["lateness"] = format_duration_ms(args.lateness)
    return data


def start_proxy(
    workdir: Path, mongo_uri: str, sink_url: str, args: argparse.Namespace
) -> tuple[Child, str]:
    port = free_port()
    config_path = workdir / "enrichproxy.yaml"
    config = proxy_config(mongo_uri, sink_url, port, args, workdir)
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
    try:
        await seeder.upsert(fleet.metadata())
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


def bench_http(args: argparse.Namespace, config: Config) -> None:
    sample_interval = None if args.wall_clock else args.sample_interval
    timestamps = (
        "wall-clock timestamps"
        if sample_interval is None
        else f"rounds {format_duration_ms(sample_interval)} apart in sample time"
    )
    print(
        f"\n(b) end to end over HTTP: enrichproxy serve, secantusdb, a null sink; load from this"
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
        proxy, proxy_url = start_proxy(workdir, mongo_uri, sink_url, args)
        children.append(proxy)
        settings = LoadSettings(
            url=f"{proxy_url}/api/v1/write",
            batch=args.batch,
            rate=args.rate,
            concurrency=args.concurrency,
            duration_ms=args.duration,
            sample_interval_ms=sample_interval,
        )
        clock = RoundClock(sample_interval)
        warmup = replace(settings, duration_ms=args.warmup)
        asyncio.run(send(warmup, fleet, clock, mongo_uri, config, progress=False))
        before = json.loads(http_get(f"{sink_url}/stats")[1])
        proxy_cpu, own_cpu = cpu_seconds(proxy.process.pid), time.process_time()
        report = asyncio.run(send(settings, fleet, clock, mongo_uri, config, progress=True))
        proxy_cpu, own_cpu = (
            cpu_seconds(proxy.process.pid) - proxy_cpu,
            time.process_time() - own_cpu,
        )
        time.sleep(1.0)  # let the proxy's forwarder drain before reading what arrived
        after = json.loads(http_get(f"{sink_url}/stats")[1])
        proxy.check_alive()
        delivered = {key: after[key] - before[key] for key in after}
        print_http_report(HttpResult(report, delivered, proxy_cpu, own_cpu), args)
    except SkipHttp as exc:
        print(f"    SKIPPED: {exc}")
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)


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
        description="enrichproxy benchmarks: (a) pipeline in process, (b) end to end over HTTP"
    )
    parser.add_argument("--only", choices=("pipeline", "http"), help="run one benchmark")
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
        "--duration", type=duration_arg, default=20_000, help="(b) measured time (default 20s)"
    )
    parser.add_argument(
        "--warmup", type=duration_arg, default=3_000, help="(b) unmeasured time first (3s)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="(b) samples/s offered, 0 = as fast as taken"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="(b) requests in flight")
    parser.add_argument(
        "--disk-queue",
        action="store_true",
        help="(b) run the proxy with a disk queue and an aggregation state file",
    )
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
    return parser.parse_args(argv)


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
    print("enrichproxy benchmarks:", "; ".join(environment()))
    if args.only in (None, "pipeline"):
        result = bench_pipeline(args, config)
        report_pipeline(result, len(config.views))
    if args.only in (None, "http"):
        bench_http(args, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
