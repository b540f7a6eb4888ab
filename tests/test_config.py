"""Configuration: every problem names its YAML path, all of them are reported in one run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from enrichproxy.config.schema import (
    AggregationConfig,
    Config,
    EnrichRule,
    MetadataConfig,
    load_config,
    parse_config,
)
from enrichproxy.errors import ConfigError
from enrichproxy.model import Labels
from enrichproxy.wire.codec import DEFAULT_MAX_DECODED_BYTES

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
    assert operational.match is not None
    assert not operational.match.matches((("__name__", "up"),))
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
    assert config.body_read_timeout_ms == 30_000
    assert config.listen == "127.0.0.1:9201"
    assert config.log_level == "info"
    assert config.engine == "auto"
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
engine: python
max_decoded_bytes: 8MiB
body_read_timeout: 10s
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
    assert config.engine == "python"
    assert config.max_decoded_bytes == 8 * 1024 * 1024
    assert config.body_read_timeout_ms == 10_000
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
        (with_minimal("body_read_timeout: 30"), "body_read_timeout: must be a duration"),
        (with_minimal("body_read_timeout: 0s"), "body_read_timeout: must be greater"),
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
            "views[0].match: not a valid series selector: column 5: expected the end",
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
        (with_minimal("engine: rust"), "engine: must be one of auto, native, python, got 'rust'"),
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


def test_unknown_key_suggests_the_nearest_known_ones() -> None:
    (problem,) = problems(with_minimal("aggregation: {intervall: 15s}"))
    assert problem == "aggregation.intervall: unknown key (did you mean 'interval'?)"
    # Prometheus' spelling of our key, on the top level.
    (problem,) = problems(with_minimal("log.level: info"))
    assert "did you mean 'log_level'" in problem


def test_unknown_key_without_a_near_one_lists_the_known_ones() -> None:
    (problem,) = problems(with_minimal("aggregation: {zzz: 15s}"))
    known = (
        "checkpoint_interval, idle_flush, interval, lateness, retention, stale_after, state_path"
    )
    assert f"known keys: {known}" in problem


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


# --- metadata.rules: several joins --------------------------------------------------------------

TWO_RULES = """
metadata:
  database: meta
  watch: false
  snapshot_path: /var/lib/enrichproxy/metadata.json
  rules:
    - name: pods
      collection: pod_metadata
      key_labels: [namespace, pod]
      key_fields: [ns, pod_name]
      fields: [service, team]
    - collection: service_owners
      database: owners
      key_label: service
      key_field: svc
      fields: [owner, slack_channel]
      drop_key_label: false
      on_missing: drop
views:
  - name: ops
    keep: [service, owner]
remote_write:
  - url: http://127.0.0.1:9090/api/v1/write
"""


def test_rules_are_read_in_order_with_their_defaults() -> None:
    metadata = parse(TWO_RULES).metadata
    assert metadata.watch is False
    assert metadata.snapshot_path == "/var/lib/enrichproxy/metadata.json"
    assert metadata.enrich_rules == metadata.rules
    assert metadata.rules == (
        EnrichRule(
            name="pods",
            database="meta",  # metadata.database
            collection="pod_metadata",
            key_labels=("namespace", "pod"),
            key_fields=("ns", "pod_name"),
            fields=("service", "team"),
            drop_key_labels=True,
            on_missing="keep",
        ),
        EnrichRule(
            name="service_owners",  # the collection's name
            database="owners",
            collection="service_owners",
            key_labels=("service",),
            key_fields=("svc",),
            fields=("owner", "slack_channel"),
            drop_key_labels=False,
            on_missing="drop",
        ),
    )


def test_key_fields_default_to_the_key_labels() -> None:
    text = with_minimal(
        "metadata: {rules: [{collection: c, key_labels: [namespace, pod], fields: [service]}]}"
    )
    (rule,) = parse(text).metadata.enrich_rules
    assert rule.key_fields == ("namespace", "pod")
    assert rule.drop_key_labels is True


def test_the_single_rule_form_is_one_rule() -> None:
    assert MetadataConfig().enrich_rules == (
        EnrichRule(
            name="pod_metadata",
            database="metrics",
            collection="pod_metadata",
            key_labels=("pod",),
            key_fields=("pod",),
            fields=("service", "team", "tier"),
            drop_key_labels=True,
            on_missing="keep",
        ),
    )
    flat = parse(
        with_minimal(
            "metadata: {database: db, collection: hosts, key_label: instance, key_field: host,"
            " fields: [rack], drop_key_label: false, on_missing: drop}"
        )
    ).metadata
    assert flat.rules == ()
    as_rule = parse(
        with_minimal(
            "metadata: {database: db, rules: [{collection: hosts, key_label: instance,"
            " key_field: host, fields: [rack], drop_key_label: false, on_missing: drop}]}"
        )
    ).metadata
    assert flat.enrich_rules == as_rule.enrich_rules
    assert flat.enrich_rules[0].name == "hosts"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (
            "{rules: [{collection: c, key_labels: [namespace, pod], key_fields: [pod], "
            "fields: [s]}]}",
            "metadata.rules[0].key_fields: has 1 fields for 2 key labels: give one per label",
        ),
        (
            "{rules: [{collection: c, key_label: pod, key_fields: [ns, pod], fields: [s]}]}",
            "metadata.rules[0].key_fields: has 2 fields for 1 key labels",
        ),
        (
            "{rules: [{collection: c, key_labels: [pod], key_fields: pod, fields: [s]}]}",
            "metadata.rules[0].key_fields: must be a list of document field names",
        ),
        (
            "{collection: c, rules: [{collection: c, key_label: pod, fields: [s]}]}",
            "metadata.collection: cannot be combined with metadata.rules: set it in each rule",
        ),
        (
            "{fields: [s], rules: [{collection: c, key_label: pod, fields: [s]}]}",
            "metadata.fields: cannot be combined with metadata.rules",
        ),
        (
            "{drop_key_label: false, rules: [{collection: c, key_label: pod, fields: [s]}]}",
            "metadata.drop_key_label: cannot be combined with metadata.rules",
        ),
        (
            "{rules: [{collection: c, key_label: pod, fields: [s]}, "
            "{name: c, collection: d, key_label: s, fields: [o]}]}",
            "metadata.rules[1].name: duplicate rule name 'c'",
        ),
        (
            "{rules: [{collection: c, key_label: pod, fields: [service, __meta_x]}]}",
            "metadata.rules[0].fields[1]: '__meta_x': names starting with __ are reserved",
        ),
        (
            "{rules: [{collection: c, key_label: pod, key_labels: [pod], fields: [s]}]}",
            "metadata.rules[0].key_label: give key_label or key_labels, not both",
        ),
        (
            "{rules: [{collection: c, key_label: pod, drop_key_label: true, "
            "drop_key_labels: true, fields: [s]}]}",
            "metadata.rules[0].drop_key_label: give drop_key_label or drop_key_labels",
        ),
        ("{rules: [{key_label: pod, fields: [s]}]}", "metadata.rules[0].collection: is required"),
        ("{rules: [{collection: c, fields: [s]}]}", "metadata.rules[0].key_labels: is required"),
        ("{rules: [{collection: c, key_label: pod}]}", "metadata.rules[0].fields: is required"),
        (
            "{rules: [{collection: c, key_label: pod, fields: [s], on_missing: skip}]}",
            "metadata.rules[0].on_missing: must be one of keep, drop",
        ),
        (
            "{rules: [{collection: c, key_label: pod, fields: [s], colection: d}]}",
            "metadata.rules[0].colection: unknown key",
        ),
        ("{rules: []}", "metadata.rules: must be a non-empty list of rules"),
        ("{rules: {collection: c}}", "metadata.rules: must be a non-empty list of rules"),
        ("{rules: [pods]}", "metadata.rules[0]: must be a mapping, got a string"),
        ("{watch: 'yes'}", "metadata.watch: must be true or false"),
        ("{snapshot_path: ''}", "metadata.snapshot_path: must be a non-empty string"),
    ],
)
def test_each_rule_problem_names_its_yaml_path(metadata: str, expected: str) -> None:
    found = problems(with_minimal(f"metadata: {metadata}"))
    assert any(problem.startswith(expected) for problem in found), found


def test_a_view_may_not_keep_a_key_label_a_later_rule_removes() -> None:
    """pod → service, then service → owner: the second rule removes the service label."""
    rules = (
        "metadata: {rules: [{collection: pods, key_label: pod, fields: [service]},"
        " {collection: owners, key_label: service, fields: [owner]}]}\n"
    )
    found = problems(with_minimal(rules + "views: [{name: a, keep: [service, owner]}]"))
    assert found == [
        "views[0].keep: keeps 'service', which metadata.rules[1] removes (drop_key_labels)"
    ]
    # Kept by the rule, or added back by a later one: fine.
    kept = rules.replace("fields: [owner]", "fields: [owner], drop_key_labels: false")
    parse(with_minimal(kept + "views: [{name: a, keep: [service, owner]}]"))
    added_back = rules.replace("fields: [owner]", "fields: [owner, service]")
    parse(with_minimal(added_back + "views: [{name: a, keep: [service, owner]}]"))


def test_a_key_label_two_rules_remove_is_reported_once() -> None:
    rules = (
        "metadata: {rules: [{collection: pods, key_labels: [namespace, pod], fields: [service]},"
        " {collection: ns, key_label: namespace, fields: [cluster]}]}\n"
    )
    found = problems(with_minimal(rules + "views: [{name: a, keep: [namespace, pod]}]"))
    assert found == [
        "views[0].keep: keeps 'namespace', which metadata.rules[0] removes (drop_key_labels)",
        "views[0].keep: keeps 'pod', which metadata.rules[0] removes (drop_key_labels)",
    ]


# --- remote_write[].views ----------------------------------------------------------------------

TWO_VIEWS = """
views:
  - {name: ops, keep: [service]}
  - {name: business, keep: [tier]}
"""


def test_a_destination_receives_every_view_unless_it_lists_some() -> None:
    config = parse(
        TWO_VIEWS
        + """
remote_write:
  - {url: "http://a:9090/api/v1/write"}
  - {url: "http://b:9090/api/v1/write", views: [business]}
"""
    )
    every, business = config.remote_write
    assert every.views is None
    assert every.receives("ops") and every.receives("business")
    assert business.views == ("business",)
    assert business.receives("business") and not business.receives("ops")


@pytest.mark.parametrize(
    ("views", "expected"),
    [
        ("[business, x]", ["remote_write[0].views[1]: no view named 'x'"]),
        ("[ops, ops]", ["remote_write[0].views[1]: view 'ops' is listed twice"]),
        ("[]", ["remote_write[0].views: must be a non-empty list of view names"]),
        ("ops", ["remote_write[0].views: must be a non-empty list of view names"]),
        # An invalid item keeps the positions of the others: x is still named at [2].
        (
            "[1, ops, x]",
            [
                "remote_write[0].views[0]: must be a view name, got int",
                "remote_write[0].views[2]: no view named 'x'",
            ],
        ),
    ],
)
def test_a_destination_views_problem_names_its_path(views: str, expected: list[str]) -> None:
    text = TWO_VIEWS + f'remote_write: [{{url: "http://a:9090/api/v1/write", views: {views}}}]'
    found = problems(text)
    assert len(found) == len(expected), found
    for problem, start in zip(found, expected, strict=True):
        assert problem.startswith(start), found
