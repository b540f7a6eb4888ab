"""Disk queue benchmarks: what queueing on disk costs, and how fast a backlog drains.

(c) enqueue throughput: output samples/s that ``Destination.enqueue`` plus the fsync of each
    flush tick take, disk queue against memory queue (no network).
(d) drain: the outputs of five minutes of the benchmark fleet (500 pods, both example views,
    15 s windows, i.e. what piles up while the downstream is down for five minutes), queued
    on disk, then sent to an in-process null receiver once it is up: seconds to drain.

Run: ``.venv/bin/python benchmarks/queue_bench.py`` (``make bench`` runs it after run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from enrichproxy.config.schema import QueueConfig, load_config
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.forward.forwarder import Destination
from enrichproxy.metadata.table import build_table
from enrichproxy.model import OutputSample
from enrichproxy.server.telemetry import Telemetry
from enrichproxy.tools.loadgen import Fleet
from enrichproxy.wire.codec import (
    compress,
    decode_write_request,
    decompress,
    encode_labels,
    encode_write_request,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = ROOT / "conf" / "enrichproxy.yaml"
SCRAPE_MS = 15_000
FLUSH_TICKS_PER_SECOND = 4  # the app's flush tick is 0.25 s: one fsync per tick


def outputs_of(fleet: Fleet, pipeline: Pipeline, minutes: int) -> list[list[OutputSample]]:
    """Per scrape round, the output samples the pipeline emitted (5 min = 20 rounds)."""
    start = 1_700_000_000_000
    rounds = []
    for index in range(minutes * 60_000 // SCRAPE_MS):
        timestamp = start + index * SCRAPE_MS
        scrape = fleet.scrape(timestamp)
        body = compress(
            encode_write_request(
                (encode_labels(s.labels), [(s.timestamp_ms, s.value)]) for s in scrape.samples
            )
        )
        pipeline.ingest(body, timestamp)
        emitted = [s for output in pipeline.flush(timestamp) for s in output.samples]
        rounds.append(emitted)
    rounds.append([s for output in pipeline.flush(start * 2, final=True) for s in output.samples])
    return rounds


def settings(url: str, queue: Path | None, session: aiohttp.ClientSession) -> Destination:
    config = load_config(str(CONFIG_PATH))
    destination = replace(
        config.remote_write[0],
        url=url,
        name="bench",
        min_backoff_ms=10,
        max_backoff_ms=100,
        queue=QueueConfig(path=str(queue)) if queue is not None else None,
    )
    return Destination(destination, session, Telemetry())


async def bench_enqueue(
    rounds: list[list[OutputSample]], repeat: int, session: aiohttp.ClientSession
) -> dict[str, float]:
    """Samples/s through enqueue (+ fsync per tick for disk); nothing is sent."""
    results: dict[str, list[float]] = {"memory": [], "disk": []}
    samples = [s for batch in rounds for s in batch]
    ticks = max(1, len(rounds))
    for _ in range(repeat):
        for kind in ("memory", "disk"):
            with tempfile.TemporaryDirectory() as directory:
                queue = Path(directory) if kind == "disk" else None
                destination = settings("http://127.0.0.1:9/api/v1/write", queue, session)
                chunk = max(1, len(samples) // (ticks * FLUSH_TICKS_PER_SECOND))
                started = time.perf_counter()
                for offset in range(0, len(samples), chunk):
                    destination.enqueue(samples[offset : offset + chunk])
                    destination.sync()
                elapsed = time.perf_counter() - started
                results[kind].append(len(samples) / elapsed)
    return {kind: statistics.median(values) for kind, values in results.items()}


async def bench_drain(
    rounds: list[list[OutputSample]], session: aiohttp.ClientSession
) -> tuple[int, int, float]:
    """(samples, bytes queued, seconds to drain) for a backlog sent to a null receiver."""
    received = 0

    async def write(request: web.Request) -> web.Response:
        nonlocal received
        decoded = decode_write_request(decompress(await request.read()))
        received += sum(len(series.samples) for series in decoded.series)
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/api/v1/write", write)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with tempfile.TemporaryDirectory() as directory:
        # Queued while the receiver was away: built first, then a fresh Destination resumes it
        # from disk, as after a restart.
        url = f"http://127.0.0.1:{port}/api/v1/write"
        filling = settings(url, Path(directory), session)
        for batch in rounds:
            filling.enqueue(batch)
        filling.sync()
        backlog, size = filling.queued, filling.queued_bytes
        draining = settings(url, Path(directory), session)
        started = time.perf_counter()
        draining.start()
        while draining.queued:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        await draining.stop()
    await runner.cleanup()
    assert received == backlog, (received, backlog)
    return backlog, size, elapsed


async def main_async(args: argparse.Namespace) -> int:
    config = load_config(str(CONFIG_PATH))
    fleet = Fleet(args.pods, args.seed, churn_probability=0.0, restart_probability=0.0)
    pipeline = Pipeline(config)
    rule = config.metadata.enrich_rules[0]
    pipeline.set_table(build_table(fleet.documents(), rule, 1, 0.0).table)
    print(f"(c, d) preparing {args.minutes} minutes of outputs of {args.pods} pods ...")
    rounds = outputs_of(fleet, pipeline, args.minutes)
    total = sum(len(batch) for batch in rounds)
    async with aiohttp.ClientSession() as session:
        rates = await bench_enqueue(rounds, args.repeat, session)
        backlog, size, seconds = await bench_drain(rounds, session)
    print(
        f"\n(c) enqueue {total:,} output samples, one fsync per flush tick, median of {args.repeat}"
    )
    print(f"    {'memory queue':<34}{rates['memory']:>12,.0f} samples/s")
    print(f"    {'disk queue (encode, write, fsync)':<34}{rates['disk']:>12,.0f} samples/s")
    print(f"\n(d) drain a {args.minutes}-minute backlog from disk to a null receiver")
    print(
        f"    {backlog:,} samples, {size / 1e6:.1f} MB on disk: drained in {seconds:.2f} s "
        f"({backlog / seconds:,.0f} samples/s)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
