"""Configuration: every problem names its YAML path, all of them are reported in one run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from enrichproxy.codec import DEFAULT_MAX_DECODED_BYTES
from enrichproxy.config import (
    AggregationConfig,
    Config,
    MetadataConfig,
    load_config,
    parse_config,
)
from enrichproxy.errors import ConfigError
from enrichproxy.model import Labels

REPO = Path(__file__).resolve().parent.parent
MINIMAL = """
views:
  - name: ops
    keep: [service]
remote_write:
  - url: http://127.0.0.1:9090/api/v1/write
"""


def parse(text: str) -> Config:
    return parse_config(yaml.safe_load(text))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def with_minimal(extra: str) -> str:
    """MINIMAL with ``extra`` top-level YAML merged over it."""
    data: dict[str, Any] = yaml.safe_load(MINIMAL)
    data.update(yaml.safe_load(extra))
    return yaml.safe_dump(data)


def test_example_configuration_loads() -> None:
    config = load_config(str(REPO / "conf" / "enrichproxy.yaml"))
    assert config.listen_host_port == ("127.0.0.1", 9201)
    assert config.metadata.key_label == "pod"
    assert config.metadata.fields == ("service", "team", "tier")
    assert config.metadata.drop_key_label is True
    assert config.metadata.refresh_interval_ms == 30_000
    assert [view.name for view in config.views] == ["operational", "business"]
    operational, business = config.views
    assert operational.keep == ("service", "endpoint", "error_type")
    assert operational.match is None
    assert business.keep == ("service", "tier")
    assert business.match is not None
    order: Labels = (("__name__", "order_create_failed_total"),)
    assert business.match.matches(order)
    assert not business.match.matches((("__name__", "up"),))
    assert config.aggregation.interval_ms == 15_000
    assert config.view_interval_ms(business) == 15_000
    assert [rw.url for rw in config.remote_write] == ["http://127.0.0.1:9090/api/v1/write"]
    assert config.remote_write[0].timeout_ms == 30_000
    assert config.remote_write[0].name == "127.0.0.1:9090"


def test_minimal_configuration_takes_the_defaults() -> None:
    config = parse(MINIMAL)
    assert config.metadata == MetadataConfig()
    assert config.aggregation == AggregationConfig()
    assert config.max_decoded_bytes == DEFAULT_MAX_DECODED_BYTES
    assert config.listen == "127.0.0.1:9201"
    assert config.log_level == "info"
    (view,) = config.views
    assert (view.name, view.keep, view.match, view.interval_ms) == ("ops", ("service",), None, None)
    (destination,) = config.remote_write
    assert destination.name == "127.0.0.1:9090"
    assert destination.headers == ()


def test_every_key_is_read() -> None:
    config = parse(
        """
listen: "[::1]:9300"
log_level: debug
max_decoded_bytes: 8MiB
shutdown_timeout: 1m
metadata:
  mongodb_uri: mongodb+srv://db.example/
  database: db
  collection: coll
  key_label: instance
  key_field: host
  fields: [team]
  drop_key_label: false
  refresh_interval: 5s
  on_missing: drop
  on_conflict: keep
  timeout: 2s
views:
  - name: ops
    keep: [team, instance]
    match: '{job="x"}'
    interval: 1m
aggregation:
  interval: 30s
  lateness: 0s
  stale_after: 10m
  retention: 2h
  idle_flush: 90s
remote_write:
  - url: https://remote.example/api/v1/write
    name: remote
    timeout: 10s
    max_samples_per_send: 500
    shards: 2
    capacity: 1000
    min_backoff: 50ms
    max_backoff: 5s
    headers: {X-Scope-OrgID: tenant, Authorization: Bearer x}
"""
    )
    assert config.listen_host_port == ("::1", 9300)
    assert config.log_level == "debug"
    assert config.max_decoded_bytes == 8 * 1024 * 1024
    assert config.shutdown_timeout_ms == 60_000
    assert config.metadata == MetadataConfig(
        mongodb_uri="mongodb+srv://db.example/",
        database="db",
        collection="coll",
        key_label="instance",
        key_field="host",
        fields=("team",),
        drop_key_label=False,
        refresh_interval_ms=5_000,
        on_missing="drop",
        on_conflict="keep",
        timeout_ms=2_000,
    )
    (view,) = config.views
    assert view.interval_ms == 60_000
    assert config.view_interval_ms(view) == 60_000
    assert config.aggregation == AggregationConfig(
        interval_ms=30_000,
        lateness_ms=0,
        stale_after_ms=600_000,
        retention_ms=7_200_000,
        idle_flush_ms=90_000,
    )
    (destination,) = config.remote_write
    assert destination.name == "remote"
    assert (destination.timeout_ms, destination.max_samples_per_send) == (10_000, 500)
    assert (destination.shards, destination.capacity) == (2, 1000)
    assert (destination.min_backoff_ms, destination.max_backoff_ms) == (50, 5_000)
    assert destination.headers == (("X-Scope-OrgID", "tenant"), ("Authorization", "Bearer x"))


def test_config_objects_are_frozen() -> None:
    config = parse(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.views[0].name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        # unknown keys, at every level
        (with_minimal("listne: x"), "listne: unknown key"),
        (with_minimal("metadata: {colection: x}"), "metadata.colection: unknown key"),
        (with_minimal("aggregation: {intervall: 15s}"), "aggregation.intervall: unknown key"),
        (
            "views: [{name: a, keep: [], kep: [x]}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].kep: unknown key",
        ),
        (
            "views: [{name: a, keep: []}]\nremote_write: [{url: 'http://h/', timout: 1s}]",
            "remote_write[0].timout: unknown key",
        ),
        # bad durations
        (with_minimal("aggregation: {interval: 15}"), "aggregation.interval: must be a duration"),
        (with_minimal("aggregation: {interval: 15x}"), "aggregation.interval: '15x' is not a dur"),
        (with_minimal("aggregation: {interval: 0s}"), "aggregation.interval: must be greater"),
        (with_minimal("aggregation: {lateness: -5s}"), "aggregation.lateness: '-5s' is not a dur"),
        (with_minimal("aggregation: {stale_after: 1.5m}"), "aggregation.stale_after: '1.5m'"),
        (with_minimal("metadata: {refresh_interval: 0s}"), "metadata.refresh_interval: must be"),
        (with_minimal("shutdown_timeout: soon"), "shutdown_timeout: 'soon' is not a duration"),
        (
            "views: [{name: a, keep: [], interval: 10}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].interval: must be a duration",
        ),
        (
            "views: [{name: a, keep: []}]\nremote_write: [{url: 'http://h/', max_backoff: 1}]",
            "remote_write[0].max_backoff: must be a duration",
        ),
        # bad selectors
        (
            "views: [{name: a, keep: [], match: 'rate(x[5m])'}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].match: must be a series selector",
        ),
        (
            "views: [{name: a, keep: [], match: '{x=~\"(\"}'}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].match: not a valid series selector",
        ),
        (
            "views: [{name: a, keep: [], match: [x]}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].match: must be a series selector string",
        ),
        # bad label names
        (
            "views: [{name: a, keep: [ok, also_ok, 1bad]}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].keep[2]: '1bad' is not a valid label name",
        ),
        (
            "views: [{name: a, keep: [service, service]}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].keep[1]: label 'service' is listed twice",
        ),
        (
            "views: [{name: a, keep: service}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].keep: must be a list of label names",
        ),
        (
            "views: [{name: a, keep: [__name__]}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].keep[0]: '__name__' is always set by the view",
        ),
        (
            "views: [{name: a, keep: [x, view]}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].keep[1]: 'view' is always set by the view",
        ),
        (with_minimal("metadata: {fields: [team, a-b]}"), "metadata.fields[1]: 'a-b' is not a"),
        (with_minimal("metadata: {fields: [__name__]}"), "metadata.fields[0]: '__name__': names"),
        (with_minimal("metadata: {key_label: 'pod name'}"), "metadata.key_label: 'pod name'"),
        (
            "views: [{name: my-view, keep: []}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].name: 'my-view' must be letters, digits and underscores",
        ),
        (
            "views: [{name: a, keep: [pod]}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].keep: keeps 'pod', which metadata.drop_key_label removes",
        ),
        # duplicate names
        (
            "views: [{name: ops, keep: []}, {name: biz, keep: []}, {name: ops, keep: []}]\n"
            "remote_write: [{url: 'http://h/'}]",
            "views[2].name: duplicate view name 'ops'",
        ),
        (
            "views: [{name: a, keep: []}]\n"
            "remote_write: [{url: 'http://h/'}, {url: 'http://h/other'}]",
            "remote_write[1].name: duplicate destination name 'h'",
        ),
        # reserved headers, in any spelling
        (
            "views: [{name: a, keep: []}]\n"
            "remote_write: [{url: 'http://h/', headers: {Content-Type: text/plain}}]",
            "remote_write[0].headers.Content-Type: is a reserved remote-write header",
        ),
        (
            "views: [{name: a, keep: []}]\nremote_write: [{url: 'http://h/', headers: "
            "{x-prometheus-remote-write-version: 2.0.0}}]",
            "remote_write[0].headers.x-prometheus-remote-write-version: is a reserved",
        ),
        (
            "views: [{name: a, keep: []}]\n"
            "remote_write: [{url: 'http://h/', headers: {USER-AGENT: me}}]",
            "remote_write[0].headers.USER-AGENT: is a reserved",
        ),
        (
            "views: [{name: a, keep: []}]\n"
            "remote_write: [{url: 'http://h/', headers: {X-Count: 3}}]",
            "remote_write[0].headers.X-Count: must be a string",
        ),
        # missing required keys
        ("remote_write: [{url: 'http://h/'}]", "views: at least one view is required"),
        ("views: []\nremote_write: [{url: 'http://h/'}]", "views: at least one view is required"),
        ("views: [{name: a, keep: []}]", "remote_write: at least one destination is required"),
        (
            "views: [{keep: []}]\nremote_write: [{url: 'http://h/'}]",
            "views[0].name: is required",
        ),
        ("views: [{name: a}]\nremote_write: [{url: 'http://h/'}]", "views[0].keep: is required"),
        (
            "views: [{name: a, keep: []}]\nremote_write: [{name: x}]",
            "remote_write[0].url: is required",
        ),
        # wrong shapes and values
        ("- a\n- b", "(top level): must be a mapping, got a list"),
        (
            "views: {name: a}\nremote_write: [{url: 'http://h/'}]",
            "views: must be a list of views",
        ),
        ("views: [ops]\nremote_write: [{url: 'http://h/'}]", "views[0]: must be a mapping"),
        (with_minimal("metadata: [x]"), "metadata: must be a mapping, got a list"),
        (with_minimal("listen: 9201"), "listen: must be a non-empty string"),
        (with_minimal("listen: localhost"), "listen: 'localhost' must be host:port"),
        (with_minimal("listen: 'h:70000'"), "listen: 'h:70000' must be host:port"),
        (with_minimal("log_level: loud"), "log_level: must be one of debug, info"),
        (with_minimal("max_decoded_bytes: lots"), "max_decoded_bytes: must be a positive size"),
        (with_minimal("max_decoded_bytes: 0"), "max_decoded_bytes: must be a positive size"),
        (with_minimal("metadata: {on_missing: ignore}"), "metadata.on_missing: must be one of"),
        (with_minimal("metadata: {on_conflict: merge}"), "metadata.on_conflict: must be one of"),
        (with_minimal("metadata: {drop_key_label: 'yes'}"), "metadata.drop_key_label: must be"),
        (with_minimal("metadata: {mongodb_uri: 'http://db'}"), "metadata.mongodb_uri: must start"),
        (with_minimal("metadata: {database: ''}"), "metadata.database: must be a non-empty"),
        (
            "views: [{name: a, keep: []}]\nremote_write: [{url: 'ftp://h/'}]",
            "remote_write[0].url: 'ftp://h/' is not an http(s) URL",
        ),
        (
            "views: [{name: a, keep: []}]\nremote_write: [{url: 'http://h/', shards: 0}]",
            "remote_write[0].shards: must be a positive integer",
        ),
        (
            "views: [{name: a, keep: []}]\nremote_write: [{url: 'http://h/', capacity: true}]",
            "remote_write[0].capacity: must be a positive integer",
        ),
        (
            "views: [{name: a, keep: []}]\n"
            "remote_write: [{url: 'http://h/', min_backoff: 10s, max_backoff: 1s}]",
            "remote_write[0].min_backoff: must not exceed max_backoff",
        ),
        (
            "views: [{name: a, keep: []}]\nremote_write: [{url: 'http://h/', headers: [x]}]",
            "remote_write[0].headers: must be a mapping",
        ),
    ],
)
def test_each_problem_names_its_yaml_path(yaml_text: str, expected: str) -> None:
    found = problems(yaml_text)
    assert any(problem.startswith(expected) for problem in found), found


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        """
listne: 1
log_level: loud
metadata:
  on_missing: ignore
  fields: [ok, 1bad]
views:
  - name: ops
    keep: [service, 9x]
    match: 'sum(x)'
  - name: ops
    keep: [service]
    interval: 15
aggregation:
  interval: 15x
  lateness: soon
remote_write:
  - url: 'ftp://x'
    headers: {Content-Type: x}
"""
    )
    paths = [problem.split(": ", 1)[0] for problem in found]
    assert paths == [
        "listne",
        "log_level",
        "metadata.fields[1]",
        "metadata.on_missing",
        "views[0].keep[1]",
        "views[0].match",
        "views[1].name",
        "views[1].interval",
        "aggregation.interval",
        "aggregation.lateness",
        "remote_write[0].url",
        "remote_write[0].headers.Content-Type",
    ]


def test_an_empty_file_lists_what_is_missing() -> None:
    assert problems("") == [
        "views: at least one view is required",
        "remote_write: at least one destination is required",
    ]


def test_unknown_key_lists_the_known_ones() -> None:
    (problem,) = problems(with_minimal("aggregation: {intervall: 15s}"))
    assert "known keys: idle_flush, interval, lateness, retention, stale_after" in problem


def test_keep_may_list_the_key_label_when_it_is_not_dropped() -> None:
    config = parse(
        with_minimal("metadata: {drop_key_label: false}\nviews: [{name: a, keep: [pod]}]")
    )
    assert config.views[0].keep == ("pod",)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=f"{missing}: cannot read"):
        load_config(str(missing))
    broken = tmp_path / "broken.yaml"
    broken.write_text("views: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{broken}: not valid YAML"):
        load_config(str(broken))
    bad = tmp_path / "bad.yaml"
    bad.write_text("views: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="views: at least one view is required"):
        load_config(str(bad))


@pytest.mark.parametrize(
    ("listen", "host_port"),
    [
        ("127.0.0.1:9201", ("127.0.0.1", 9201)),
        (":9201", ("0.0.0.0", 9201)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_listen_host_port(listen: str, host_port: tuple[str, int]) -> None:
    assert parse(with_minimal(f"listen: '{listen}'")).listen_host_port == host_port


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1048576, 1048576),
        ("1048576", 1048576),
        ("64KiB", 65536),
        ("2 MiB", 2 << 20),
        ("1GiB", 1 << 30),
    ],
)
def test_byte_sizes(size: int | str, expected: int) -> None:
    text = yaml.safe_dump({"max_decoded_bytes": size})
    assert parse(with_minimal(text)).max_decoded_bytes == expected
