"""The load generator: its pure parts (fleet, batching, encoding, pacing) and one real run."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from pymongo import AsyncMongoClient
from realparts import MongoServer, PrometheusProcess, ProxyProcess, free_port, poll_until

from enrichproxy import __version__
from enrichproxy.model import METRIC_NAME_LABEL, MetricType, is_stale_marker
from enrichproxy.tools.loadgen import (
    DEFAULT_URL,
    EXIT_NOT_ALL_ACCEPTED,
    EXIT_OK,
    EXIT_USAGE,
    REPLAY_HISTORY_MS,
    SERIES_PER_POD,
    STATUS_TIMEOUT,
    Batcher,
    Fleet,
    LoadReport,
    Pacer,
    RequestEncoder,
    RoundClock,
    Sample,
    Scrape,
    V2RequestEncoder,
    add_arguments,
    batches,
    fleet_from_args,
    load_pods,
    percentile,
    run,
    settings_from_args,
)
from enrichproxy.wire.codec import (
    decode_labels,
    decode_write_request,
    decompress,
    encode_labels,
    encode_write_request,
)
from enrichproxy.wire.proto import write_v2_pb2
from enrichproxy.wire.v2 import decode_v2_request

T0 = 1_800_000_000_000
DEMO_METADATA = Path(__file__).resolve().parent.parent / "conf" / "metadata.yaml"
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def scrapes(fleet: Fleet, rounds: int, step_ms: int = 15_000) -> list[Scrape]:
    return [fleet.scrape(T0 + index * step_ms) for index in range(rounds)]


def label(labels: tuple[tuple[str, str], ...], name: str) -> str:
    return dict(labels).get(name, "")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


# --- the fleet ----------------------------------------------------------------------------------


def test_same_seed_same_scrapes_other_seed_other_pods() -> None:
    first, second = Fleet(30, seed=7), Fleet(30, seed=7)
    assert first.documents() == second.documents()
    assert scrapes(first, 5) == scrapes(second, 5)
    assert Fleet(30, seed=8).documents() != Fleet(30, seed=7).documents()


def test_fleet_shape_and_labels() -> None:
    fleet = Fleet(500, seed=1, churn_probability=0.0)
    documents = fleet.documents()
    assert len(documents) == len({d["pod"] for d in documents}) == 500
    services = [name for name, _, _ in fleet.services]
    assert len(services) == 50
    assert services[:3] == ["checkout", "payment", "cart"]
    assert services[-1] == "svc-49"
    assert {d["service"] for d in documents} == set(services)
    assert all(set(d) == {"pod", "service", "team", "tier"} and all(d.values()) for d in documents)

    scrape = fleet.scrape(T0)
    assert len(scrape.samples) == fleet.series_per_scrape == 500 * SERIES_PER_POD
    assert len({s.labels for s in scrape.samples}) == len(scrape.samples)
    assert {s.timestamp_ms for s in scrape.samples} == {T0}
    for sample in scrape.samples:
        names = [name for name, _ in sample.labels]
        assert names == sorted(names) and names[0] == METRIC_NAME_LABEL
        assert all(value for _, value in sample.labels)
    assert {label(s.labels, "pod") for s in scrape.samples} == {d["pod"] for d in documents}
    families = Counter(label(s.labels, METRIC_NAME_LABEL) for s in scrape.samples)
    assert families["order_create_failed_total"] == 500 * 9
    assert families["checkout_inflight_requests"] == 500
    assert families["http_request_duration_seconds_bucket"] == 500 * 6


def test_counters_only_go_down_when_their_pod_restarts() -> None:
    fleet = Fleet(40, seed=3, restart_probability=0.05, churn_probability=0.0)
    previous: dict[tuple[tuple[str, str], ...], float] = {}
    restarts = decreases = 0
    for scrape in scrapes(fleet, 40):
        restarted = set(scrape.restarted)
        restarts += len(restarted)
        for sample in scrape.samples:
            if not label(sample.labels, METRIC_NAME_LABEL).endswith(COUNTER_SUFFIXES):
                continue
            before = previous.get(sample.labels)
            if before is not None and sample.value < before:
                decreases += 1
                assert label(sample.labels, "pod") in restarted, sample
            previous[sample.labels] = sample.value
    assert restarts > 0 and decreases > 0


def test_histogram_buckets_are_cumulative() -> None:
    fleet = Fleet(20, seed=5, churn_probability=0.0)
    scrape = scrapes(fleet, 10)[-1]
    by_pod: dict[str, dict[str, float]] = {}
    for sample in scrape.samples:
        name = label(sample.labels, METRIC_NAME_LABEL)
        pod = by_pod.setdefault(label(sample.labels, "pod"), {})
        if name.endswith("_bucket"):
            pod[label(sample.labels, "le")] = sample.value
        elif name.endswith("_count"):
            pod["count"] = sample.value
    for values in by_pod.values():
        ordered = [values[le] for le in ("0.05", "0.1", "0.25", "0.5", "1", "+Inf")]
        assert ordered == sorted(ordered)
        assert values["+Inf"] == values["count"] > 0


def test_churn_ends_old_series_with_stale_markers() -> None:
    fleet = Fleet(40, seed=11, restart_probability=0.0, churn_probability=0.05)
    seen_after_end: set[str] = set()
    ended_total = 0
    ended_before: set[str] = set()
    for index in range(20):
        scrape = fleet.scrape(T0 + index * 15_000)
        pods_here = {label(s.labels, "pod") for s in scrape.samples}
        seen_after_end |= pods_here & ended_before
        stale = [s for s in scrape.samples if is_stale_marker(s.value)]
        assert {label(s.labels, "pod") for s in stale} == set(scrape.ended)
        assert len(stale) == SERIES_PER_POD * len(scrape.ended)
        assert not any(math.isnan(s.value) for s in scrape.samples if not is_stale_marker(s.value))
        current = {d["pod"] for d in fleet.documents()}
        assert {p.pod for p in scrape.started} <= current
        assert not set(scrape.ended) & current
        assert len(scrape.started) == len(scrape.ended)
        assert len(current) == 40
        ended_before |= set(scrape.ended)
        ended_total += len(scrape.ended)
    assert ended_total > 0
    assert not seen_after_end, "a replaced pod sent samples after its staleness markers"


def test_pods_from_a_metadata_file_are_the_fleet_without_churn() -> None:
    pods = load_pods(str(DEMO_METADATA))
    fleet = fleet_from_args(parse(["--pods-from", str(DEMO_METADATA)]))
    assert fleet.churn_probability == 0.0
    assert fleet.metadata() == pods
    scraped = {label(s.labels, "pod") for s in fleet.scrape(T0).samples}
    assert scraped == {p.pod for p in pods}
    churning = parse(["--pods-from", str(DEMO_METADATA), "--churn-probability", "0.5"])
    assert fleet_from_args(churning).churn_probability == 0.5


async def test_bad_pods_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text("- {service: checkout}\n")
    assert await run(parse(["--pods-from", str(path)])) == EXIT_USAGE
    assert "needs string fields pod and service" in capsys.readouterr().err


# --- requests -----------------------------------------------------------------------------------


def test_batches_are_at_most_the_batch_size_and_keep_order() -> None:
    samples = Fleet(30, seed=2).scrape(T0).samples
    chunks = list(batches(samples, 100))
    assert all(0 < len(chunk) <= 100 for chunk in chunks)
    assert [len(chunk) for chunk in chunks[:-1]] == [100] * (len(chunks) - 1)
    assert [s for chunk in chunks for s in chunk] == samples


def test_batcher_fills_requests_across_scrape_rounds() -> None:
    fleet = Fleet(10, seed=2)  # 180 series per round
    batcher = Batcher(500)
    taken: list[Sample] = []
    sent: list[Sample] = []
    for index in range(4):
        scrape = fleet.scrape(T0 + index)
        sent.extend(scrape.samples)
        batcher.add(scrape.samples)
        while len(batcher) >= 500:
            batch = batcher.take()
            assert len(batch) == 500
            taken.extend(batch)
    while batcher:
        taken.extend(batcher.take())
    assert taken == sent


def test_encoder_writes_what_the_codec_writes_and_it_decodes_back() -> None:
    fleet = Fleet(20, seed=4, churn_probability=0.2)
    encoder = RequestEncoder()
    for scrape in scrapes(fleet, 3):
        for batch in batches(scrape.samples, 128):
            expected = encode_write_request(
                (encode_labels(s.labels), [(s.timestamp_ms, s.value)]) for s in batch
            )
            assert encoder.encode(batch) == expected
            decoded = decode_write_request(decompress(encoder.body(batch)))
            assert len(decoded.series) == len(batch)
            for series, sample in zip(decoded.series, batch, strict=True):
                assert decode_labels(series.label_bytes) == sample.labels
                [(timestamp, value)] = series.samples
                assert timestamp == sample.timestamp_ms
                if is_stale_marker(sample.value):
                    assert is_stale_marker(value)
                else:
                    assert value == sample.value


def test_2_0_encoder_writes_the_same_series_with_their_types() -> None:
    """--protocol 2.0: the same series and samples as 1.0, a fresh symbols table per request,
    and the fleet's metric types, checked with the official schema's parser too."""
    fleet = Fleet(20, seed=4, churn_probability=0.2)
    v1, v2 = RequestEncoder(), V2RequestEncoder()
    for scrape in scrapes(fleet, 2):
        for batch in batches(scrape.samples, 128):
            expected = decode_write_request(v1.encode(batch))
            data = v2.encode(batch)
            decoded = decode_v2_request(data)
            assert [s.label_bytes for s in decoded.series] == [
                s.label_bytes for s in expected.series
            ]
            assert [[(t, struct.pack("<d", v)) for t, v in s.samples] for s in decoded.series] == [
                [(t, struct.pack("<d", v)) for t, v in s.samples] for s in expected.series
            ]
            message = write_v2_pb2.Request.FromString(data)
            assert message.symbols[0] == ""
            types = {
                message.symbols[item.labels_refs[1]]: MetricType(item.metadata.type)
                for item in message.timeseries
                if message.symbols[item.labels_refs[0]] == METRIC_NAME_LABEL
            }
            assert types["order_create_failed_total"] == MetricType.COUNTER
            assert types["checkout_inflight_requests"] == MetricType.GAUGE
            assert types["http_request_duration_seconds_bucket"] == MetricType.HISTOGRAM


def test_encoder_handles_timestamps_of_every_varint_length() -> None:
    encoder = RequestEncoder()
    labels = (("__name__", "up"),)
    for timestamp in (0, 1, 127, 128, 2**35, T0, -1):
        sample = Sample(labels, timestamp, 1.5)
        assert encoder.encode([sample]) == encode_write_request(
            [(encode_labels(labels), [(timestamp, 1.5)])]
        )


# --- pacing, reporting, flags -------------------------------------------------------------------


def test_pacer_holds_the_rate_and_does_not_burst_after_a_stall() -> None:
    pacer = Pacer(rate=1000.0, start=100.0)
    assert pacer.delay(100.0) == 0.0
    pacer.sent(500)
    assert pacer.delay(100.0) == pytest.approx(0.5)
    assert pacer.delay(100.2) == pytest.approx(0.3)
    pacer.sent(500)
    # Ten seconds behind: at most one second of catch-up is allowed, not ten.
    assert pacer.delay(111.0) == 0.0
    pacer.sent(1000)
    assert pacer.delay(111.0) == 0.0  # one second of credit left, spent on this request
    pacer.sent(1000)
    assert pacer.delay(111.0) == pytest.approx(1.0)
    assert Pacer(rate=0.0, start=0.0).delay(0.0) == 0.0


def test_wall_clock_rounds_are_at_least_a_millisecond_apart() -> None:
    clock = RoundClock()
    assert [clock.next(wall) for wall in (T0, T0, T0 + 5, T0 + 3)] == [T0, T0 + 1, T0 + 5, T0 + 6]


def test_replayed_rounds_are_an_interval_apart_and_never_ahead_of_the_wall_clock() -> None:
    clock = RoundClock(interval_ms=15_000)
    start = T0 - REPLAY_HISTORY_MS
    assert [clock.next(T0) for _ in range(3)] == [start, start + 15_000, start + 30_000]
    clock = RoundClock(interval_ms=REPLAY_HISTORY_MS // 2)
    assert [clock.next(T0) for _ in range(4)] == [
        T0 - REPLAY_HISTORY_MS,
        T0 - REPLAY_HISTORY_MS // 2,
        T0,
        T0 + 1,
    ]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_report_counts_samples_by_answer() -> None:
    report = LoadReport(elapsed_s=2.0)
    report.record("204", 100, 1.0)
    report.record("503", 50, 2.0)
    report.record("timeout", 25, None)
    assert report.samples_sent == 175
    assert report.samples_accepted == 100
    assert report.accepted_per_second == 50.0
    assert report.requests_not_accepted == 2
    assert report.as_dict()["requests"] == {"204": 1, "503": 1, "timeout": 1}
    assert "204: 1" in report.format()


def test_flags_defaults_and_durations() -> None:
    args = parse([])
    settings = settings_from_args(args)
    assert settings.url == DEFAULT_URL
    assert (args.pods, settings.batch, settings.rate, settings.concurrency) == (500, 2000, 50000, 4)
    assert args.seed_metadata is None
    assert (args.database, args.collection) == ("metrics", "pod_metadata")
    assert parse(["--duration", "1m30s"]).duration == 90_000
    for bad in (["--duration", "10"], ["--duration", "0s"], ["--pods", "0"], ["--rate", "-1"]):
        with pytest.raises(SystemExit):
            parse(bad)


# --- a real run ---------------------------------------------------------------------------------


class CountingReceiver:
    """Decodes every request; answers 503 to every third one, 204 to the others."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.samples = 0
        self.samples_accepted = 0
        self.headers: list[dict[str, str]] = []
        self.timestamps: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        decoded = decode_write_request(decompress(await request.read()))
        count = sum(len(series.samples) for series in decoded.series)
        self.timestamps.extend(t for series in decoded.series for t, _ in series.samples)
        self.samples += count
        status = 503 if sum(self.statuses.values()) % 3 == 2 else 204
        self.statuses[str(status)] += 1
        if status == 204:
            self.samples_accepted += count
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[CountingReceiver, str]]:
    counting = CountingReceiver()
    app = web.Application()
    app.router.add_post("/api/v1/write", counting.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield counting, f"http://127.0.0.1:{port}/api/v1/write"
    await runner.cleanup()


async def test_run_reports_what_the_server_received(
    receiver: tuple[CountingReceiver, str], capsys: pytest.CaptureFixture[str]
) -> None:
    counting, url = receiver
    flags = ["--duration", "1s", "--pods", "20", "--batch", "100", "--rate", "20000"]
    args = parse(["--url", url, *flags, "--concurrency", "2", "--json"])
    code = await run(args)
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == EXIT_NOT_ALL_ACCEPTED  # the receiver answered some requests 503
    assert report["requests"] == dict(counting.statuses)
    assert report["samples_sent"] == counting.samples > 0
    assert report["samples_accepted"] == counting.samples_accepted
    # About 20,000 samples in one second: the pacing holds the rate within loose bounds.
    assert 5_000 <= counting.samples <= 25_000
    assert report["latency_p50_ms"] is not None
    assert "loadgen" in captured.err  # the progress line
    assert counting.timestamps == sorted(counting.timestamps)
    headers = counting.headers[0]
    assert headers["Content-Encoding"] == "snappy"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert headers["User-Agent"] == f"enrichproxy-loadgen/{__version__}"


async def test_run_exits_zero_when_every_request_is_accepted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    received: list[int] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/api/v1/write", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1/write"
    try:
        code = await run(parse(["--url", url, "--requests", "3", "--pods", "5", "--quiet"]))
    finally:
        await runner.cleanup()
    captured = capsys.readouterr()
    assert code == EXIT_OK
    assert len(received) == 3
    assert "requests by status: 204: 3" in captured.out
    assert captured.err == ""


@pytest.mark.integration
async def test_seed_metadata_upserts_the_fleet(
    mongo: MongoServer, mongo_db_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--seed-metadata", mongo.uri, "--database", mongo_db_name, "--pods", "30"]
    assert await run(parse(argv)) == EXIT_OK
    assert await run(parse(argv)) == EXIT_OK  # upserts: a second run changes nothing
    assert "upserted 30 pod documents" in capsys.readouterr().out
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo.uri)
    try:
        stored = await client[mongo_db_name]["pod_metadata"].find({}, {"_id": 0}).to_list(None)
    finally:
        await client.close()
    assert sorted(stored, key=lambda d: str(d["pod"])) == sorted(
        Fleet(30).documents(), key=lambda d: d["pod"]
    )


@pytest.mark.integration
async def test_seed_then_send_keeps_the_table_current(
    mongo: MongoServer,
    mongo_db_name: str,
    receiver: tuple[CountingReceiver, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    counting, url = receiver
    argv = ["--seed-metadata", mongo.uri, "--database", mongo_db_name, "--url", url]
    argv += ["--pods", "10", "--churn-probability", "0.05", "--duration", "1s", "--rate", "5000"]
    await run(parse([*argv, "--quiet", "--json"]))
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "upserted 10 pod documents" in captured.err
    assert report["samples_sent"] == counting.samples > 0
    assert report["pods_started"] > 0
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo.uri)
    try:
        stored = await client[mongo_db_name]["pod_metadata"].count_documents({})
    finally:
        await client.close()
    assert stored == 10 + report["pods_started"]


# --- the report: target against achieved, what limited it, never nan ----------------------------


def answered(report: LoadReport, status: str, requests: int, latency_ms: float = 5.0) -> None:
    for _ in range(requests):
        report.record(status, report.batch, latency_ms)


def test_limit_names_a_reached_target() -> None:
    report = LoadReport(elapsed_s=10.0, target_rate=2_000.0, batch=100)
    answered(report, "204", 198)  # 1,980 samples/s: within 5 %
    assert report.limit() == "nothing: the target rate was reached"
    assert "target:             2,000 samples/s, achieved 99%" in report.format()


def test_limit_names_the_proxys_refusals_first() -> None:
    # Also CPU-bound and waiting for slots: the refusals are what the reader must fix first.
    report = LoadReport(elapsed_s=10.0, target_rate=50_000.0, batch=100, cpu_s=9.9, slot_wait_s=9.0)
    answered(report, "204", 60)
    answered(report, "503", 40)
    answered(report, STATUS_TIMEOUT, 1)
    limit = report.limit()
    assert limit.startswith("the proxy's answers: HTTP 503 to 40% of requests")
    assert "no answer in time (timeout) to 1% of requests" in limit
    assert "not ready" in limit  # what a 503 of enrichproxy means


def test_limit_names_the_generators_own_cpu() -> None:
    report = LoadReport(
        elapsed_s=10.0, target_rate=1_000_000.0, batch=2_000, cpu_s=9.6, slot_wait_s=8.0
    )
    answered(report, "204", 100)
    assert report.limit().startswith("this generator's CPU: 96% of a core busy")
    assert "generator CPU:      96% of a core" in report.format()


def test_limit_names_the_proxys_latency_with_the_ceiling_it_implies() -> None:
    report = LoadReport(
        elapsed_s=10.0, target_rate=100_000.0, concurrency=2, batch=1_000, slot_wait_s=9.0
    )
    answered(report, "204", 200, latency_ms=50.0)
    limit = report.limit()
    assert limit.startswith("the proxy's latency: all 2 request slots were busy 90% of the time")
    # 2 in flight x 1,000 samples / 50 ms = 40,000 samples/s at most.
    assert "at most ~40,000 samples/s" in limit


@pytest.mark.parametrize(
    "report",
    [
        LoadReport(),
        LoadReport(elapsed_s=1.0, target_rate=1_000.0),
        LoadReport(elapsed_s=0.0, target_rate=0.0, requests=Counter({"timeout": 3})),
        LoadReport(elapsed_s=2.0, requests=Counter({"connection_error": 1}), samples_sent=10),
    ],
    ids=["empty", "nothing-answered", "no-time", "no-connection"],
)
def test_report_never_shows_nan(report: LoadReport) -> None:
    text = report.format()
    assert "nan" not in text.lower() and "inf" not in text.lower(), text
    json.dumps(report.as_dict(), allow_nan=False)  # raises on NaN or infinity
    assert "latency:            none: no request was answered" in text


def test_readme_loadgen_command_seeds_the_pods_it_sends() -> None:
    """The README's command must not send pods the table lacks (every lookup a miss)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("enrichproxy loadgen ")]
    assert commands, "the README shows a loadgen command"
    for command in commands:
        argv = command.split("#")[0].split()[2:]
        args = parse(argv)
        assert args.url is not None
        assert args.seed_metadata is not None or args.pods_from is not None, command


# --- against the real proxy ---------------------------------------------------------------------


def loadgen_argv(*flags: str) -> list[str]:
    return [sys.executable, "-m", "enrichproxy", "loadgen", *flags]


def proxy_config(mongo_uri: str, database: str, downstream: str) -> dict[str, object]:
    return {
        "metadata": {"mongodb_uri": mongo_uri, "database": database, "timeout": "1s"},
        "views": [{"name": "business", "keep": ["service", "tier"]}],
        "aggregation": {"interval": "1s", "lateness": "1s"},
        "remote_write": [{"url": downstream, "name": "sink"}],
    }


@pytest.mark.integration
def test_ctrl_c_prints_the_report_without_a_traceback(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    prometheus_receiver: PrometheusProcess,
) -> None:
    """Seeded and sent in one command, stopped with SIGINT halfway through a long run: the
    report comes, every lookup of the proxy was a hit, and no traceback is printed."""
    proxy = ProxyProcess(
        tmp_path / "proxy", proxy_config(mongo.uri, mongo_db_name, prometheus_receiver.write_url)
    )
    # Ready needs a table: seed first (the same command seeds again before sending).
    seed = loadgen_argv("--seed-metadata", mongo.uri, "--database", mongo_db_name, "--pods", "20")
    subprocess.run(seed, check=True, capture_output=True, timeout=30)
    proxy.start()
    try:
        argv = loadgen_argv(
            *("--seed-metadata", mongo.uri, "--database", mongo_db_name),
            *("--url", proxy.write_url, "--pods", "20", "--rate", "2000", "--duration", "10m"),
        )
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            poll_until(
                lambda: (proxy.metric("enrichproxy_lookups_total", result="hit") or 0) > 0,
                15,
                "the first samples at the proxy",
            )
            time.sleep(1.0)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert "Traceback" not in out + err, err
        assert process.returncode == EXIT_OK, (out, err)
        assert out.startswith("interrupted after "), out
        assert "target:             2,000 samples/s, achieved " in out
        assert "limited by:" in out and "nan" not in out.lower()
        assert "requests by status: 204: " in out
        assert (proxy.metric("enrichproxy_lookups_total", result="miss") or 0) == 0
    finally:
        proxy.stop()


@pytest.mark.integration
async def test_a_proxy_that_answers_503_is_named_as_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real proxy whose MongoDB is unreachable has no table and answers every write 503."""
    proxy = ProxyProcess(
        tmp_path / "proxy",
        proxy_config(f"mongodb://127.0.0.1:{free_port()}/", "metrics", "http://127.0.0.1:1/"),
    )
    await asyncio.to_thread(proxy.start, 20.0, False)
    try:
        argv = ["--url", proxy.write_url, "--pods", "10", "--rate", "5000", "--duration", "2s"]
        code = await run(parse([*argv, "--quiet"]))
    finally:
        await asyncio.to_thread(proxy.stop)
    out = capsys.readouterr().out
    assert code == EXIT_NOT_ALL_ACCEPTED
    assert "limited by:         the proxy's answers: HTTP 503 to 100% of requests" in out
    assert "achieved 0%" in out


async def test_a_slow_target_is_named_as_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    """Answers that take 50 ms with one request in flight cap the rate at 20 requests/s."""

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.05)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/api/v1/write", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1/write"
    flags = ["--pods", "10", "--batch", "100", "--concurrency", "1", "--rate", "50000"]
    try:
        code = await run(parse(["--url", url, *flags, "--duration", "2s", "--quiet"]))
    finally:
        await runner.cleanup()
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "limited by:         the proxy's latency: all 1 request slots were busy" in out
