"""write_relabel_configs: validated as promtool validates them, applied as Prometheus applies them.

Both halves are checked against the real Prometheus 2.42: every entry of the validation table
goes through ``promtool check config`` too, and the differential test sends the same series
through a real Prometheus' write_relabel_configs and through ours and compares what arrives.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Gauge
from realparts import (
    Exporter,
    PrometheusFactory,
    find_promtool,
    prometheus_config,
    remote_write_config,
    scrape_config,
    write_config,
)
from sinks import RecordingSink

from enrichproxy.config.relabel import RelabelConfig, RelabelProblems, parse_relabel_config
from enrichproxy.config.schema import parse_config
from enrichproxy.errors import ConfigError
from enrichproxy.forward.relabel import Relabeler, relabel
from enrichproxy.model import Labels
from enrichproxy.wire.codec import encode_labels


def labels(**pairs: str) -> Labels:
    names = {"name": "__name__"}
    return tuple(sorted((names.get(key, key), value) for key, value in pairs.items()))


def steps(*entries: dict[str, Any]) -> tuple[RelabelConfig, ...]:
    return tuple(parse_relabel_config(entry) for entry in entries)


SERIES = labels(name="orders_total", pod="checkout-6c8f9", service="checkout", env="prod")


def plus(**pairs: str) -> Labels:
    """SERIES with ``pairs`` set."""
    return tuple(sorted({**dict(SERIES), **pairs}.items()))


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([], SERIES),
        ([{"source_labels": ["service"], "regex": "check.*", "action": "keep"}], SERIES),
        # Anchored: "check" alone does not match "checkout".
        ([{"source_labels": ["service"], "regex": "check", "action": "keep"}], None),
        ([{"source_labels": ["service"], "regex": "check", "action": "drop"}], SERIES),
        ([{"source_labels": ["env", "service"], "regex": "prod;checkout", "action": "drop"}], None),
        (
            [
                {
                    "source_labels": ["pod"],
                    "regex": "([a-z]+)-(?P<hash>.*)",
                    "target_label": "${1}_hash",
                    "replacement": "$hash/$2/$$/$9/$",
                }
            ],
            labels(
                name="orders_total",
                pod="checkout-6c8f9",
                service="checkout",
                env="prod",
                checkout_hash="6c8f9/6c8f9/$//$",
            ),
        ),
        # An empty replacement removes the target label; no match changes nothing.
        (
            [{"source_labels": ["env"], "target_label": "env", "replacement": ""}],
            labels(name="orders_total", pod="checkout-6c8f9", service="checkout"),
        ),
        ([{"source_labels": ["env"], "regex": "dev", "target_label": "x"}], SERIES),
        # Default regex (.*) and replacement $1 copy a label.
        (
            [{"source_labels": ["service"], "target_label": "job"}],
            plus(job="checkout"),
        ),
        (
            [{"regex": "pod|env", "action": "labeldrop"}],
            labels(name="orders_total", service="checkout"),
        ),
        (
            [{"regex": "__name__|service", "action": "LabelKeep"}],
            labels(name="orders_total", service="checkout"),
        ),
        (
            [{"regex": "(s)(.*)", "replacement": "app_$2", "action": "labelmap"}],
            plus(app_ervice="checkout"),
        ),
        ([{"source_labels": ["service"], "target_label": "env", "action": "keepequal"}], None),
        ([{"source_labels": ["service"], "target_label": "env", "action": "dropequal"}], SERIES),
        (
            [{"source_labels": ["service"], "target_label": "service", "action": "uppercase"}],
            plus(service="CHECKOUT"),
        ),
        # RE2 classes, as Prometheus has them.
        ([{"source_labels": ["service"], "regex": "[[:alpha:]]+", "action": "drop"}], None),
        ([{"source_labels": ["pod"], "regex": r"\pL+-\w+", "action": "keep"}], SERIES),
        # No label left: dropped.
        ([{"regex": ".*", "action": "labeldrop"}], None),
    ],
)
def test_relabel_table(entries: list[dict[str, Any]], expected: Labels | None) -> None:
    """hashmod's arithmetic is checked against a real Prometheus below."""
    assert relabel(SERIES, steps(*entries)) == expected


def test_relabeler_caches_and_encodes() -> None:
    relabeler = Relabeler(steps({"regex": "pod", "action": "labeldrop"}))
    encoded = encode_labels(SERIES)
    first = relabeler(encoded)
    assert first == encode_labels(labels(name="orders_total", service="checkout", env="prod"))
    assert relabeler(encoded) is first


# --- validation, as promtool has it -------------------------------------------------------------

VALIDATION: list[tuple[dict[str, Any], str | None]] = [
    ({"source_labels": ["a"], "action": "keep"}, None),
    ({"source_labels": ["a"], "regex": "[[:alpha:]]+", "action": "drop"}, None),
    ({"source_labels": ["a"], "regex": r"\p{Greek}+", "action": "drop"}, None),
    ({"source_labels": ["a"], "regex": "(?<n>x)", "action": "drop"}, "regex"),
    ({"source_labels": ["a"], "regex": r"\C", "action": "drop"}, "regex"),
    ({"source_labels": ["a"], "regex": "a++", "action": "drop"}, "regex"),
    ({"source_labels": ["a"], "regex": "(?=x)", "action": "drop"}, "regex"),
    ({"source_labels": ["a"], "action": "frobnicate"}, "action"),
    ({"source_labels": ["1a"], "action": "keep"}, "source_labels[0]"),
    ({"source_labels": ["a"]}, "target_label"),
    ({"source_labels": ["a"], "target_label": "${1}x"}, None),
    ({"source_labels": ["a"], "target_label": "1x"}, "target_label"),
    ({"source_labels": ["a"], "target_label": "b", "action": "hashmod"}, "modulus"),
    ({"source_labels": ["a"], "target_label": "$1", "action": "hashmod", "modulus": 2}, "target"),
    ({"source_labels": ["a"], "target_label": "b", "action": "hashmod", "modulus": 2}, None),
    ({"regex": "a", "action": "labeldrop"}, None),
    ({"regex": "a", "action": "labeldrop", "source_labels": ["a"]}, "labeldrop"),
    ({"regex": "a", "action": "labelkeep", "target_label": "b"}, "labelkeep"),
    ({"regex": "(.*)", "replacement": "x_$1", "action": "labelmap"}, None),
    ({"regex": "(.*)", "replacement": "x-$1", "action": "labelmap"}, "replacement"),
    ({"source_labels": ["a"], "target_label": "b", "action": "keepequal"}, None),
    (
        {"source_labels": ["a"], "target_label": "b", "action": "dropequal", "regex": "x"},
        "dropequal",
    ),
    (
        {"source_labels": ["a"], "target_label": "b", "action": "keepequal", "replacement": "x"},
        "rep",
    ),
    ({"source_labels": ["a"], "action": "lowercase"}, "target_label"),
    ({"source_labels": ["a"], "target_label": "b", "action": "Lowercase"}, None),
]


def _promtool_accepts(tmp_path: Path, entry: dict[str, Any]) -> tuple[bool, str]:
    config = {
        "remote_write": [
            {"url": "http://127.0.0.1:1/api/v1/write", "write_relabel_configs": [entry]}
        ]
    }
    path = write_config(tmp_path / "prometheus.yml", config)
    completed = subprocess.run(
        [find_promtool(), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize(("entry", "problem_at"), VALIDATION)
def test_validation_agrees_with_promtool(
    tmp_path: Path, entry: dict[str, Any], problem_at: str | None
) -> None:
    accepted_by_promtool, output = _promtool_accepts(tmp_path, entry)
    try:
        parse_relabel_config(entry)
        problems: list[tuple[str, str]] = []
    except RelabelProblems as exc:
        problems = exc.problems
    assert (not problems) == accepted_by_promtool, (problems, output)
    assert (problem_at is None) == (not problems)
    if problem_at is not None:
        assert any(problem_at in f"{key} {message}" for key, message in problems), problems


def test_pasted_prometheus_block_is_accepted() -> None:
    """A remote_write entry as it stands in a Prometheus 2.42 configuration."""
    block = yaml.safe_load(
        """
        - name: long-term
          url: https://metrics.example.com/api/v1/write
          remote_timeout: 15s
          headers: {X-Scope-OrgID: tenant-1}
          authorization: {type: Bearer, credentials: s3cret}
          tls_config: {min_version: TLS13, insecure_skip_verify: false}
          follow_redirects: true
          enable_http2: true
          send_exemplars: false
          queue_config:
            capacity: 2500
            max_shards: 8
            min_shards: 1
            max_samples_per_send: 500
            batch_send_deadline: 5s
            min_backoff: 30ms
            max_backoff: 5s
            retry_on_http_429: false
          metadata_config: {send: true, send_interval: 1m, max_samples_per_send: 500}
          write_relabel_configs:
            - source_labels: [__name__]
              regex: up|prometheus_.*
              action: drop
        """
    )
    config = parse_config({"views": [{"name": "v", "keep": ["service"]}], "remote_write": block})
    destination = config.remote_write[0]
    assert destination.name == "long-term"
    assert destination.timeout_ms == 15_000
    assert (destination.shards, destination.capacity) == (8, 2500 * 8)
    assert (destination.min_backoff_ms, destination.max_backoff_ms) == (30, 5_000)
    assert destination.max_samples_per_send == 500
    assert destination.retry_on_http_429 is False
    assert destination.bearer_token is not None and destination.bearer_token.value == "s3cret"
    assert destination.tls_config is not None and destination.tls_config.min_version == "TLS13"
    assert [step.action for step in destination.write_relabel_configs] == ["drop"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"remote_timout": "5s"}, "remote_write[0].remote_timout: unknown key (did you mean"),
        ({"queue_config": {"max_shard": 2}}, "did you mean 'max_shards'"),
        ({"oauth2": {"client_id": "x"}}, "OAuth 2.0 is not supported"),
        ({"queue_config": {"max_shards": 2}, "shards": 3}, "queue_config.max_shards: sets what"),
        ({"authorization": {"type": "Basic", "credentials": "x"}}, "use basic_auth"),
        ({"tls_config": {"min_version": "TLS14"}}, "tls_config.min_version: must be one of"),
        (
            {"write_relabel_configs": [{"action": "keep", "regex": "(?<n>x)"}]},
            "write_relabel_configs[0].regex: invalid regex",
        ),
    ],
)
def test_refusals_name_the_key(entry: dict[str, Any], message: str) -> None:
    destination = {"url": "https://127.0.0.1:1/api/v1/write", **entry}
    with pytest.raises(ConfigError) as caught:
        parse_config({"views": [{"name": "v", "keep": ["a"]}], "remote_write": [destination]})
    assert message in str(caught.value)


# --- the same series through a real Prometheus and through us -----------------------------------

DIFFERENTIAL_CASES: list[list[dict[str, Any]]] = [
    [],
    [{"source_labels": ["service"], "regex": "check.*", "action": "drop"}],
    [{"source_labels": ["pod", "service"], "regex": "(.*)-(.*);(.*)", "target_label": "x_$3"}],
    [
        {
            "source_labels": ["pod"],
            "regex": r"(\pL+)-.*",
            "replacement": "${1}!",
            "target_label": "a",
        }
    ],
    [{"regex": "pod|instance", "action": "labeldrop"}],
    [{"regex": "__name__|job|tier", "action": "labelkeep"}],
    [{"regex": "(t.*)", "replacement": "meta_$1", "action": "labelmap"}],
    [{"source_labels": ["pod"], "target_label": "shard", "modulus": 7, "action": "hashmod"}],
    [{"source_labels": ["service"], "target_label": "tier", "action": "dropequal"}],
    [{"source_labels": ["tier"], "target_label": "tier", "action": "uppercase"}],
    [{"source_labels": ["tier"], "regex": "[[:upper:]][[:lower:]]+", "action": "keep"}],
]


@pytest.mark.integration
async def test_relabelling_matches_a_real_prometheus(
    prometheus_factory: PrometheusFactory, exporter: Exporter
) -> None:
    gauge = Gauge("relabel_probe", "probe", ["pod", "service", "tier"], registry=exporter.registry)
    for pod, service, tier in [
        ("checkout-6c8f9", "checkout", "Critical"),
        ("payment-x1", "payment", "payment"),
        ("search-ζ", "search", "low"),
        ("αβγ-1", "greek", "Standard"),
    ]:
        gauge.labels(pod, service, tier).set(1)
    sinks = [RecordingSink() for _ in DIFFERENTIAL_CASES]
    for sink in sinks:
        await sink.start()
    try:
        only_probe = {"source_labels": ["__name__"], "regex": "relabel_probe", "action": "keep"}
        writes = [
            remote_write_config(sink.url, write_relabel_configs=[only_probe, *case])
            for sink, case in zip(sinks, DIFFERENTIAL_CASES, strict=True)
        ]
        sender = prometheus_config(
            scrape_configs=[scrape_config("probe", [exporter.target])], remote_write=writes
        )
        await asyncio.to_thread(prometheus_factory, sender)
        # The identity case sees every series; two more scrapes let every sink catch up.
        await sinks[0].wait_accepted(4, timeout=20)
        await asyncio.sleep(2.5)
        inputs = {series for series, _ts, _value in sinks[0].accepted_samples()}
        assert len(inputs) == 4
        for sink, case in zip(sinks, DIFFERENTIAL_CASES, strict=True):
            ours = {relabel(series, steps(*case)) for series in inputs} - {None}
            theirs = {series for series, _ts, _value in sink.accepted_samples()}
            assert theirs == ours, case
    finally:
        for sink in sinks:
            await sink.stop()
