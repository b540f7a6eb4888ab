"""The load generator: its pure parts (fleet, batching, encoding, pacing) and one real run."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from pymongo import AsyncMongoClient
from realparts import MongoServer

from enrichproxy import __version__
from enrichproxy.model import METRIC_NAME_LABEL, is_stale_marker
from enrichproxy.tools.loadgen import (
    DEFAULT_URL,
    EXIT_NOT_ALL_ACCEPTED,
    EXIT_OK,
    EXIT_USAGE,
    REPLAY_HISTORY_MS,
    SERIES_PER_POD,
    Batcher,
    Fleet,
    LoadReport,
    Pacer,
    RequestEncoder,
    RoundClock,
    Sample,
    Scrape,
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
