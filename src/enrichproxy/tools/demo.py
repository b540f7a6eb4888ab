"""``enrichproxy demo``: the whole product on one machine, natively, then a report.

Starts a MongoDB-compatible server (secantusdb, a demo/test extra), loads the metadata documents
from conf/, starts a downstream Prometheus as remote-write receiver, runs enrichproxy in-process
with the example configuration pointed at them, drives it with the load generator, then prints
what arrived downstream per view and stops everything. The native twin of compose.yaml.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from pymongo import AsyncMongoClient

from enrichproxy.config.schema import Config, RemoteWriteConfig, load_config
from enrichproxy.metadata.admin import import_documents, read_documents
from enrichproxy.server.app import create_app
from enrichproxy.tools import loadgen

LOCALHOST = "127.0.0.1"
PROMETHEUS = "/usr/bin/prometheus"
STARTUP_TIMEOUT_SECONDS = 20.0
# Short windows so a one-minute demo shows several of them.
DEMO_INTERVAL = "5s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="conf/enrichproxy.yaml", help="proxy configuration")
    parser.add_argument(
        "--metadata", default="conf/metadata.yaml", help="metadata documents to load (YAML list)"
    )
    parser.add_argument("--duration", default="30s", help="how long to send load")
    parser.add_argument("--rate", type=int, default=2000, help="samples per second to send")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the report, keep everything up until Ctrl-C (to look at the sink's UI)",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


async def _wait_http(url: str, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become ready in {timeout:.0f}s") from None
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _process(*argv: str, log_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=log_file, stderr=asyncio.subprocess.STDOUT
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


@contextlib.asynccontextmanager
async def _mongo(workdir: Path) -> AsyncIterator[str]:
    port = _free_port()
    async with _process(
        sys.executable,
        "-m",
        "secantus",
        "--host",
        LOCALHOST,
        "--port",
        str(port),
        "--storage-path",
        str(workdir / "mongo"),
        log_path=workdir / "mongo.log",
    ):
        uri = f"mongodb://{LOCALHOST}:{port}/"
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=int(STARTUP_TIMEOUT_SECONDS * 1000)
        )
        try:
            await client.admin.command("ping")
        finally:
            await client.close()
        yield uri


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        payload = json.load(response)
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def _print_view(base: str, view: str) -> None:
    rows = _query(base, f'{{view="{view}"}}')
    print(f"\n== view={view}: {len(rows)} series downstream")
    for row in sorted(rows, key=lambda r: sorted(r["metric"].items()))[:25]:
        metric = dict(row["metric"])
        name = metric.pop("__name__", "")
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()))
        print(f"  {name}{{{labels}}} = {row['value'][1]}")
    if len(rows) > 25:
        print(f"  … and {len(rows) - 25} more")


async def run(args: argparse.Namespace) -> int:
    if shutil.which(PROMETHEUS) is None:
        print("the demo needs Prometheus: apt-get install -y prometheus", file=sys.stderr)
        return 1
    base_config = load_config(args.config)
    documents = read_documents(args.metadata)
    workdir = Path(tempfile.mkdtemp(prefix="enrichproxy-demo-"))
    sink_port, proxy_port = _free_port(), _free_port()
    sink = f"http://{LOCALHOST}:{sink_port}"
    (workdir / "sink.yml").write_text("global: {scrape_interval: 15s}\n", encoding="utf-8")
    try:
        async with contextlib.AsyncExitStack() as stack:
            uri = await stack.enter_async_context(_mongo(workdir))
            # Seeded the way an operator loads the table: `enrichproxy metadata import`.
            seeded = replace(base_config.metadata, mongodb_uri=uri)
            report = await import_documents(seeded, documents)
            print(f"MongoDB-compatible server (secantusdb) at {uri}: {report.summary()}")
            for line in report.rejected:
                print(f"  {args.metadata}: rejected {line}")
            await stack.enter_async_context(
                _process(
                    PROMETHEUS,
                    f"--config.file={workdir / 'sink.yml'}",
                    f"--storage.tsdb.path={workdir / 'sink-data'}",
                    f"--web.listen-address={LOCALHOST}:{sink_port}",
                    "--web.enable-remote-write-receiver",
                    log_path=workdir / "sink.log",
                )
            )
            await _wait_http(f"{sink}/-/ready")
            print(f"downstream Prometheus (remote-write receiver) at {sink}")
            config = _demo_config(base_config, uri, proxy_port, f"{sink}/api/v1/write")
            runner = web.AppRunner(create_app(config), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, LOCALHOST, proxy_port).start()
            proxy = f"http://{LOCALHOST}:{proxy_port}"
            await _wait_http(f"{proxy}/-/ready")
            print(f"enrichproxy at {proxy} (metrics at {proxy}/metrics)")
            parser = argparse.ArgumentParser()
            loadgen.add_arguments(parser)
            load_args = parser.parse_args(
                [
                    "--url",
                    f"{proxy}/api/v1/write",
                    "--pods-from",
                    args.metadata,
                    "--rate",
                    str(args.rate),
                    "--duration",
                    args.duration,
                ]
            )
            print(f"sending load for {args.duration} …")
            await loadgen.run(load_args)
            print("stopping enrichproxy: emitting open windows, draining queues …")
            await runner.cleanup()
            await asyncio.sleep(1)
            for view in config.views:
                _print_view(sink, view.name)
            print(
                f"\nlook further in the sink's UI, {sink}/graph, e.g.\n"
                '  sum by (service, tier) (rate(order_create_failed_total{view="business"}[1m]))\n'
                "  sum by (service, endpoint, error_type) "
                '(order_create_failed_total{view="operational"})'
            )
            if args.keep_running:
                print("\nrunning until Ctrl-C …")
                with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
                    await asyncio.Event().wait()
    finally:
        if not os.environ.get("ENRICHPROXY_DEMO_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _demo_config(base: Config, mongodb_uri: str, port: int, sink_url: str) -> Config:
    from enrichproxy.config.durations import parse_duration_ms

    interval = parse_duration_ms(DEMO_INTERVAL)
    return replace(
        base,
        listen=f"{LOCALHOST}:{port}",
        metadata=replace(base.metadata, mongodb_uri=mongodb_uri),
        aggregation=replace(base.aggregation, interval_ms=interval, lateness_ms=interval),
        views=tuple(replace(v, interval_ms=None) for v in base.views),
        remote_write=(RemoteWriteConfig(url=sink_url, name="sink", timeout_ms=10_000),),
        shutdown_timeout_ms=10_000,
    )
