"""``enrichproxy demo``: the whole product on one machine, natively, told as a story.

Starts a MongoDB-compatible server (secantusdb, a demo/test extra), loads the metadata documents
from conf/, starts a downstream Prometheus as remote-write receiver and runs enrichproxy
in-process with the example configuration pointed at them. Then, in order:

1. the worked example of the design, literally: the one series
   ``order_create_failed_total{pod="checkout-6c8f9",endpoint="/orders",error_type="timeout"} 37``
   sent as Prometheus would, its row of the table, the enriched series, and both views with
   their values as the downstream Prometheus holds them (``worked_example``);
2. the load generator's fleet for ``--duration``, with its report;
3. what arrived per view; with ``--keep-running`` the stack stays up, the load goes on and the
   links it prints work until Ctrl-C, otherwise it says how to get that.

The native twin of compose.yaml.
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
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pymongo import AsyncMongoClient

from enrichproxy.config.durations import parse_duration_ms
from enrichproxy.config.schema import (
    Config,
    MetadataConfig,
    RemoteWriteConfig,
    load_config,
)
from enrichproxy.engine.explain import EXPLAIN_PATH
from enrichproxy.metadata.admin import import_documents, read_documents
from enrichproxy.model import STALE_NAN, Labels
from enrichproxy.server.app import create_app
from enrichproxy.tools import loadgen
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request

LOCALHOST = "127.0.0.1"
PROMETHEUS = "/usr/bin/prometheus"
STARTUP_TIMEOUT_SECONDS = 20.0
# Short windows so a one-minute demo shows several of them, and a lateness that covers the
# load generator's requests on this machine (the sender is local and does not batch for
# seconds as a Prometheus queue does).
DEMO_INTERVAL = "5s"
DEMO_LATENESS = "2s"
# How to ask for the stack to stay up, as the Makefile passes it on.
KEEP_RUNNING_HINT = "make demo DEMO_ARGS=--keep-running  (or: enrichproxy demo --keep-running)"

# The worked example of the design (README, issue 10), sent literally. The labels are in the
# order the design writes them; on the wire they are sorted, as Prometheus sends them.
WORKED_EXAMPLE_SERIES: tuple[tuple[str, str], ...] = (
    ("pod", "checkout-6c8f9"),
    ("endpoint", "/orders"),
    ("error_type", "timeout"),
)
WORKED_EXAMPLE_METRIC = "order_create_failed_total"
WORKED_EXAMPLE_VALUE = 37.0
# Sent again every second, as a scrape of an unchanged counter would, until the downstream
# holds both views: a window is emitted once later samples show it complete.
WORKED_EXAMPLE_RESEND_SECONDS = 1.0
WORKED_EXAMPLE_TIMEOUT_SECONDS = 60.0
VIEW_ROWS_SHOWN = 25


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
        help="after the report, keep everything up and the load going until Ctrl-C, to look"
        " around in the downstream Prometheus' UI",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


# Local addresses only: an HTTP proxy from the environment has no business here.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, headers: Mapping[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with _HTTP.open(request, timeout=5) as response:
        body: bytes = response.read()
    return body


async def _wait_http(url: str, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(_get, url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become ready in {timeout:.0f}s") from None
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _process(*argv: str, log_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: Ctrl-C reaches the demo alone, which stops it in order.
            start_new_session=True,
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
    payload = json.loads(_get(url))
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def _series_text(metric: Mapping[str, str]) -> str:
    """A query result's labels as Prometheus prints a series: name, then labels by name."""
    labels = dict(metric)
    name = labels.pop("__name__", "")
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{pairs}}}"


def _print_view(base: str, view: str) -> None:
    """The view's failure counters downstream, then the names of its other metrics."""
    rows = _query(base, f'{{view="{view}"}}')
    print(f"\n== view={view}: {len(rows)} series downstream")
    story = [row for row in rows if row["metric"].get("__name__") == WORKED_EXAMPLE_METRIC]
    for row in sorted(story, key=lambda r: sorted(r["metric"].items()))[:VIEW_ROWS_SHOWN]:
        print(f"  {_series_text(row['metric'])} {row['value'][1]}")
    if len(story) > VIEW_ROWS_SHOWN:
        print(f"  … and {len(story) - VIEW_ROWS_SHOWN} more")
    others = sorted({row["metric"].get("__name__", "") for row in rows} - {WORKED_EXAMPLE_METRIC})
    if others:
        print(f"  and {len(rows) - len(story)} series of {', '.join(others)}")


# --- the worked example -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkedExample:
    """The worked example as it went through the running stack, each part read back from
    where it lives: the table row from MongoDB, the enriched series from the proxy's
    /debug/explain, the views from the downstream Prometheus."""

    series: str
    """The input series, in the design's label order."""
    value: float
    table: str
    """Where the row lives, ``database.collection``."""
    table_row: Mapping[str, Any]
    enriched: str
    views: Sequence[tuple[str, str]]
    """(series, value) per view as the downstream holds them, in the configuration's order."""

    def format(self) -> str:
        value = _number_text(self.value)
        row = ", ".join(f"{key}: {item}" for key, item in self.table_row.items())
        lines = [
            "== The worked example: one series through enrichproxy",
            "input, remote-written as Prometheus sends it:",
            f"  {self.series} {value}",
            f"table row (MongoDB {self.table}):",
            f"  {{{row}}}",
            "enriched series (the proxy's /debug/explain):",
            f"  {self.enriched} {value}",
            "views, as the downstream Prometheus holds them:",
        ]
        lines += [f"  {series} {view_value}" for series, view_value in self.views]
        return "\n".join(lines)


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def worked_example_labels() -> Labels:
    """The worked example's labels, sorted as on the wire."""
    return tuple(sorted((("__name__", WORKED_EXAMPLE_METRIC), *WORKED_EXAMPLE_SERIES)))


async def worked_example(proxy: str, sink: str, config: Config) -> WorkedExample:
    """Send the worked example to the proxy at ``proxy`` until the downstream Prometheus at
    ``sink`` holds the output series of every view of ``config``; what each part holds then.

    The series is sent again every second with the same value, as a scrape of a counter that
    did not move: windows are defined by sample time, and the later samples are what shows a
    window complete. RuntimeError when the views do not arrive in time.
    """
    labels = worked_example_labels()
    rule = config.metadata.enrich_rules[0]
    row = await _table_row(config.metadata, dict(WORKED_EXAMPLE_SERIES)[rule.key_labels[0]])
    view_names = [view.name for view in config.views]
    selector = f'{WORKED_EXAMPLE_METRIC}{{view=~"{"|".join(view_names)}"}}'
    deadline = time.monotonic() + WORKED_EXAMPLE_TIMEOUT_SECONDS
    async with aiohttp.ClientSession() as session:
        while True:
            timestamp_ms = time.time_ns() // 1_000_000
            request = [(encode_labels(labels), [(timestamp_ms, WORKED_EXAMPLE_VALUE)])]
            body = compress(encode_write_request(request))
            async with session.post(
                f"{proxy}/api/v1/write", data=body, headers=loadgen.REMOTE_WRITE_HEADERS
            ) as response:
                await response.read()  # a 503 (not ready yet) is simply sent again
            rows = await asyncio.to_thread(_query, sink, selector)
            views = {
                row["metric"].get("view", ""): (_series_text(row["metric"]), row["value"][1])
                for row in rows
            }
            if all(name in views for name in view_names):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the worked example reached {sorted(views) or 'no view'} of {view_names}"
                    f" downstream in {WORKED_EXAMPLE_TIMEOUT_SECONDS:.0f}s"
                )
            await asyncio.sleep(WORKED_EXAMPLE_RESEND_SECONDS)
        query = urllib.parse.urlencode({"series": _series_text(dict(labels))})
        async with session.get(
            f"{proxy}{EXPLAIN_PATH}?{query}", headers={"Accept": "application/json"}
        ) as response:
            explanation = await response.json()
        # The example's sender goes away, as Prometheus says it when a target does: with a
        # staleness marker. A series that merely falls silent would hold the views' windows
        # back for `idle_flush` (they wait for every input that still sends).
        ended = [(encode_labels(labels), [(time.time_ns() // 1_000_000, STALE_NAN)])]
        async with session.post(
            f"{proxy}/api/v1/write",
            data=compress(encode_write_request(ended)),
            headers=loadgen.REMOTE_WRITE_HEADERS,
        ) as response:
            await response.read()
    return WorkedExample(
        series=WORKED_EXAMPLE_METRIC
        + "{"
        + ",".join(f'{name}="{value}"' for name, value in WORKED_EXAMPLE_SERIES)
        + "}",
        value=WORKED_EXAMPLE_VALUE,
        table=f"{rule.database}.{rule.collection}",
        table_row=row,
        enriched=str(explanation["enriched_text"]),
        views=[views[name] for name in view_names],
    )


async def _table_row(metadata: MetadataConfig, key: str) -> dict[str, Any]:
    """The worked example's document, its key first and then the fields the rule copies, as
    the design writes it."""
    rule = metadata.enrich_rules[0]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        metadata.mongodb_uri, serverSelectionTimeoutMS=metadata.timeout_ms
    )
    try:
        document = await client[rule.database][rule.collection].find_one(
            {rule.key_fields[0]: key}, {"_id": 0}
        )
    finally:
        await client.close()
    if document is None:
        raise RuntimeError(f"{rule.database}.{rule.collection} has no document for {key!r}")
    order = [rule.key_fields[0], *rule.fields]
    return {name: document[name] for name in order if name in document}


# --- the demo -----------------------------------------------------------------------------------


def _load_arguments(
    url: str, metadata: str, rate: int, duration: str, quiet: bool
) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    loadgen.add_arguments(parser)
    argv = ["--url", url, "--pods-from", metadata, "--rate", str(rate), "--duration", duration]
    return parser.parse_args([*argv, "--quiet"] if quiet else argv)


def _sink_link(sink: str) -> str:
    """The downstream's graph page with the business view's failure rate in it."""
    expr = 'sum by (service, tier) (rate(order_create_failed_total{view="business"}[1m]))'
    query = urllib.parse.urlencode({"g0.expr": expr, "g0.tab": "0", "g0.range_input": "15m"})
    return f"{sink}/graph?{query}"


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
            stack.push_async_callback(runner.cleanup)  # a second cleanup is a no-op
            await web.TCPSite(runner, LOCALHOST, proxy_port).start()
            proxy = f"http://{LOCALHOST}:{proxy_port}"
            await _wait_http(f"{proxy}/-/ready")
            print(f"enrichproxy at {proxy} (metrics at {proxy}/metrics)\n")

            print("sending the worked example, once a second, until both views are downstream …")
            example = await worked_example(proxy, sink, config)
            print(example.format())

            url = f"{proxy}/api/v1/write"
            print(f"\n== The load: the pods of {args.metadata} for {args.duration}")
            await loadgen.run(_load_arguments(url, args.metadata, args.rate, args.duration, False))
            if args.keep_running:
                forever = _load_arguments(url, args.metadata, args.rate, "1000d", True)
                # Returns at Ctrl-C, with its report (loadgen stops on SIGINT by itself).
                load = asyncio.create_task(loadgen.run(forever))
                # The windows of the load so far reach the downstream meanwhile.
                await asyncio.sleep(_emission_delay_seconds(config))
                await asyncio.to_thread(_print_views, sink, config)
                print(
                    "\n== Running until Ctrl-C, the load going on; look around:\n"
                    f"  {_sink_link(sink)}\n"
                    f"  {proxy}/metrics\n"
                    f"  enrichproxy explain --url {proxy} '{example.series}'",
                    flush=True,
                )
                await load
                print("stopping …")
            else:
                print("\nstopping enrichproxy: emitting open windows, draining queues …")
                await runner.cleanup()
                await asyncio.sleep(1)
                await asyncio.to_thread(_print_views, sink, config)
                print("\nThe stack stops now. To keep it running and look around:")
                print(f"  {KEEP_RUNNING_HINT}")
    finally:
        if not os.environ.get("ENRICHPROXY_DEMO_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _emission_delay_seconds(config: Config) -> float:
    """How long after its samples a window is downstream at most: its length, the lateness,
    a flush tick and the send."""
    interval_ms = max(config.view_interval_ms(view) for view in config.views)
    return (interval_ms + config.aggregation.lateness_ms) / 1000 + 1.5


def _print_views(sink: str, config: Config) -> None:
    for view in config.views:
        _print_view(sink, view.name)


def _demo_config(base: Config, mongodb_uri: str, port: int, sink_url: str) -> Config:
    """The example configuration on this machine's ports, with short windows, and without its
    files: the demo's stack is thrown away at the end, and without ``state_path`` the stop
    emits every open window, so the last seconds of load are downstream too (with it they
    would wait in the state for the next start)."""
    interval = parse_duration_ms(DEMO_INTERVAL)
    return replace(
        base,
        listen=f"{LOCALHOST}:{port}",
        metadata=replace(base.metadata, mongodb_uri=mongodb_uri, snapshot_path=None),
        aggregation=replace(
            base.aggregation,
            interval_ms=interval,
            lateness_ms=parse_duration_ms(DEMO_LATENESS),
            state_path=None,
        ),
        views=tuple(replace(v, interval_ms=None) for v in base.views),
        remote_write=(RemoteWriteConfig(url=sink_url, name="sink", timeout_ms=10_000),),
        shutdown_timeout_ms=10_000,
    )
