"""A highly available pair: two replicas fed the same stream write the same samples.

The real chain: the load generator's fleet as a scrape target → one Prometheus with two
``remote_write`` entries, one per enrichproxy replica, whose queues batch differently (one
shard with short batches, several shards with longer ones, as two queues of one Prometheus can
end up) → both replicas write to one downstream Prometheus. One replica is killed (SIGKILL) for
many windows and started again from its state; Prometheus then replays that replica's backlog
from its WAL, through several shards at once.

The downstream accepts a sample it already holds with the same value as a duplicate, and
rejects one with another value ("duplicate sample for timestamp", or "out of order" when the
replica writes it after a newer one); so the pair works only if both replicas write exactly
the same samples. What the downstream holds is compared with the reset-safe sums computed here
from the raw input samples, which the source Prometheus keeps: every window, no gap, the exact
value, and no rejection in the receiver's log or in either replica's forwarder.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from realparts import (
    MongoServer,
    PrometheusProcess,
    ProxyProcess,
    poll_until,
    prometheus_config,
    remote_write_config,
    scrape_config,
    stop_all,
)
from test_integration_restart import FleetExporter

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "conf" / "enrichproxy.yaml"

PODS = 60
"""600 input series a second per replica (9 failure counters and one gauge per pod)."""
RESTART_PROBABILITY = 0.002
"""About one pod restart (its counters back to zero) every 8 s: resets around the crash too."""
INTERVAL_S = 2
LATENESS = "0s"
"""No allowance for the spread between the shards of one Prometheus queue: whether a window is
complete must not depend on how the sender batched its samples."""
RUN_BEFORE_S = 20.0
OUTAGE_S = 40.0
"""Twenty windows: the killed replica's sender queues that much and replays it at once."""
RUN_AFTER_S = 25.0
CATCH_UP_TIMEOUT_S = 60.0
OUT_OF_ORDER_WINDOW = "10m"
"""Longer than the outage plus the catch-up: how far behind the other a replica may write."""

COUNTER = "order_create_failed_total"
GAUGE = "checkout_inflight_requests"
VIEWS = [
    {"name": "failures", "keep": ["error_type"], "match": f'{{__name__="{COUNTER}"}}'},
    {"name": "inflight", "keep": [], "match": f'{{__name__="{GAUGE}"}}'},
]
"""A counter view and a gauge view, each keeping only labels the source series carry, so that
their exact output can be computed here from the source's raw samples."""


def replica_config(
    mongo_uri: str, database: str, downstreams: list[str], engine: str
) -> dict[str, Any]:
    """conf/enrichproxy.yaml with the test's views and short windows; state, snapshot and disk
    queue under the replica's own working directory, as the shipped file puts them."""
    config: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["engine"] = engine
    config["metadata"].update({"mongodb_uri": mongo_uri, "database": database})
    config["views"] = VIEWS
    config["aggregation"].update({"interval": f"{INTERVAL_S}s", "lateness": LATENESS})
    [destination] = config["remote_write"]
    assert config["aggregation"]["state_path"] and destination["queue"]["path"]
    config["remote_write"] = [
        {**destination, "name": f"d{index}", "url": url, "queue": {"path": f"data/queue-{index}"}}
        for index, url in enumerate(downstreams)
    ]
    return config


Samples = list[tuple[int, float]]
"""(timestamp in ms, value) in time order."""


def raw_samples(prometheus: PrometheusProcess, selector: str, at: float, seconds: int) -> Any:
    """Every stored sample of ``selector`` in the ``seconds`` before ``at``, per series."""
    result = prometheus.query(f"{selector}[{seconds}s]", time=at)
    return {
        tuple(sorted(item["metric"].items())): [
            (round(float(t) * 1000), float(v)) for t, v in item["values"]
        ]
        for item in result
    }


def metric_total(replica: ProxyProcess, name: str) -> float:
    """The sum of every sample of ``name`` on a replica's /metrics (all label values)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(replica.get("/metrics")[1])
        for sample in family.samples
        if sample.name == name
    )


def window_end(timestamp_ms: int) -> int:
    interval_ms = INTERVAL_S * 1000
    return -(-timestamp_ms // interval_ms) * interval_ms


def expected_output(
    inputs: dict[Any, Samples], group_of: Any, is_counter: bool
) -> dict[Any, dict[int, float]]:
    """What a view writes, per output series and window end, from its inputs' samples alone.

    Counters: the sum over inputs of value plus the values before each reset (reset-safe),
    every input counting from its first sample. Gauges: the sum of the latest values. A group
    writes a window only when one of its inputs has a sample in it.
    """
    # Per input: its contribution after each of its samples, by window (the last one wins).
    by_window: dict[Any, dict[Any, dict[int, float]]] = defaultdict(dict)
    for labels, samples in inputs.items():
        offset, previous, per_window = 0.0, None, {}
        for timestamp_ms, value in samples:
            if is_counter and previous is not None and value < previous:
                offset += previous
            previous = value
            per_window[window_end(timestamp_ms)] = offset + value if is_counter else value
        by_window[group_of(labels)][labels] = per_window
    expected: dict[Any, dict[int, float]] = {}
    for group, members in by_window.items():
        windows = sorted({end for per_window in members.values() for end in per_window})
        latest: dict[Any, float] = {}
        values: dict[int, float] = {}
        for end in windows:
            for labels, per_window in members.items():
                if end in per_window:
                    latest[labels] = per_window[end]
            values[end] = math.fsum(latest.values())
        expected[group] = values
    return expected


@pytest.mark.timeout(300)
def test_a_pair_of_replicas_writes_identical_samples_through_a_crash(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    prometheus_bin: str,
    engine_under_test: str,
) -> None:
    from enrichproxy.cli import main

    seeded = ["loadgen", "--seed-metadata", mongo.uri, "--database", mongo_db_name]
    assert main([*seeded, "--pods", str(PODS)]) == 0
    # The receiver both replicas write to. Its out-of-order window takes the copy of the
    # replica that is behind (after its outage, or by a window under load) as the duplicate it
    # is: without one, a sample older than the newest of its series is refused as "out of
    # order" even when it is the same.
    downstream = PrometheusProcess(
        tmp_path / "downstream",
        prometheus_config(storage={"tsdb": {"out_of_order_time_window": OUT_OF_ORDER_WINDOW}}),
        receiver=True,
        binary=prometheus_bin,
        name="downstream",
    )
    # Each replica also writes to a receiver of its own, which holds exactly what it wrote:
    # the shared one keeps only the first of two copies.
    own = {
        name: PrometheusProcess(
            tmp_path / f"own-{name}", receiver=True, binary=prometheus_bin, name=f"own-{name}"
        )
        for name in ("a", "b")
    }
    replicas: dict[str, ProxyProcess] = {}
    exporter = FleetExporter(tmp_path / "exporter", PODS, RESTART_PROBABILITY)
    source: PrometheusProcess | None = None
    keep = [{"source_labels": ["__name__"], "regex": f"{COUNTER}|{GAUGE}", "action": "keep"}]
    try:
        for receiver in (downstream, *own.values()):
            receiver.start()
        for name in ("a", "b"):
            writes_to = [downstream.write_url, own[name].write_url]
            config = replica_config(mongo.uri, mongo_db_name, writes_to, engine_under_test)
            replicas[name] = ProxyProcess(tmp_path / name, config)
            replicas[name].start()
        exporter.start()
        # Two queues of one Prometheus that batch differently: "a" one shard, short batches;
        # "b" four shards with longer, smaller ones, whose requests overtake each other.
        writes = [
            remote_write_config(replicas["a"].write_url, name="a", write_relabel_configs=keep),
            remote_write_config(
                replicas["b"].write_url,
                name="b",
                batch_send_deadline="1s",
                write_relabel_configs=keep,
                queue_config={"min_shards": 4, "max_samples_per_send": 100},
            ),
        ]
        source = PrometheusProcess(
            tmp_path / "source",
            prometheus_config(
                scrape_configs=[scrape_config("kubernetes-pods", [exporter.target])],
                remote_write=writes,
            ),
            binary=prometheus_bin,
            name="source",
        )
        source.start()
        started = time.time()
        downstream.wait_for(f'{COUNTER}{{view="failures"}}', timeout=30)
        time.sleep(RUN_BEFORE_S)

        killed = replicas["b"]
        dropped_before = metric_total(killed, "enrichproxy_view_samples_dropped_total")
        killed_at = time.time()
        killed.kill()
        time.sleep(OUTAGE_S)
        killed.start()
        back_at = time.time()
        time.sleep(RUN_AFTER_S)

        # Everything up to `end` is written by both replicas: the restarted one has replayed
        # its backlog once its watermark is back near the present and its queue is empty.
        end = time.time() - 10

        def caught_up() -> bool:
            lag = killed.metric("enrichproxy_aggregation_watermark_lag_seconds", view="failures")
            queued = metric_total(killed, "enrichproxy_queue_samples")
            return lag is not None and lag < 5 and not queued

        poll_until(caught_up, CATCH_UP_TIMEOUT_S, "the restarted replica to catch up", 0.5)
        # Each output series arrives in time order: one newer than `end` everywhere means all.
        for receiver in (downstream, *own.values()):
            for metric, view in ((COUNTER, "failures"), (GAUGE, "inflight")):
                receiver.wait_for(f'min(timestamp({metric}{{view="{view}"}})) > {end}', timeout=30)
        seconds = math.ceil(time.time() - started) + 30
        at = time.time()

        problems: list[str] = []
        checked = 0
        for view, metric, keep_labels, is_counter in (
            ("failures", COUNTER, ("error_type",), True),
            ("inflight", GAUGE, (), False),
        ):
            inputs = raw_samples(source, f'{metric}{{job="kubernetes-pods"}}', at, seconds)
            assert len(inputs) == PODS * (9 if is_counter else 1), len(inputs)

            def group_of(labels: Any, keep_labels: tuple[str, ...] = keep_labels) -> Any:
                return tuple(value for name, value in labels if name in keep_labels)

            expected = expected_output(inputs, group_of, is_counter)
            for receiver in (downstream, *own.values()):
                written = raw_samples(receiver, f'{metric}{{view="{view}"}}', at, seconds)
                assert {group_of(labels) for labels in written} == set(expected)
                for labels, samples in written.items():
                    want = {t: v for t, v in expected[group_of(labels)].items() if t <= end * 1000}
                    got = {t: v for t, v in samples if t <= end * 1000}
                    wrong = {t: (got.get(t), v) for t, v in want.items() if got.get(t) != v}
                    extra = sorted(set(got) - set(want))
                    if wrong or extra:
                        problems.append(
                            f"{receiver.name} {view} {dict(labels)}: (written, computed) "
                            f"{sorted(wrong.items())} extra {extra}"
                        )
                    checked += len(want)
                    # The windows of the outage are there, from the replica that ran on.
                    outage = [t for t in want if killed_at * 1000 < t < back_at * 1000]
                    assert len(outage) >= OUTAGE_S / INTERVAL_S * 0.8, (receiver.name, labels)
        late = {
            name: metric_total(replica, "enrichproxy_view_samples_dropped_total")
            for name, replica in replicas.items()
        }
        print(
            f"{checked} output samples checked; dropped by views {late} "
            f"(b before its crash: {dropped_before}); killed at {killed_at:.1f}, "
            f"back at {back_at:.1f}"
        )
        print("\n".join(problems))
        assert not problems
        assert downstream.rejection_lines() == []
        for name, replica in replicas.items():
            forwarded = metric_total(replica, "enrichproxy_forward_samples_total")
            dropped = metric_total(replica, "enrichproxy_forward_samples_dropped_total")
            assert forwarded > 0 and dropped == 0, (name, forwarded, dropped)
    finally:
        started_parts = (source, *replicas.values(), exporter, downstream, *own.values())
        stop_all([part for part in started_parts if part is not None])
