"""The YAML configuration, validated once into frozen objects.

Every problem is reported with its YAML path (``views[1].keep[2]: "1bad" is not a valid label
name``), all of them at once, so ``enrichproxy check`` can list everything wrong in one run.
Key names are a public contract: keys may be added, never renamed.

The one file access besides the YAML itself: the files that secrets and TLS material are named
by (``*_file`` keys) are read or opened here, so a missing or unreadable one is a problem with
its YAML path at start, and ``enrichproxy check`` finds it too. Secrets are held as ``Secret``,
whose ``repr`` and ``str`` never show them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from enrichproxy.config.durations import parse_duration_ms
from enrichproxy.config.relabel import KEYS as RELABEL_KEYS
from enrichproxy.config.relabel import RelabelConfig, RelabelProblems, parse_relabel_config
from enrichproxy.config.selector import Selector, parse_selector
from enrichproxy.errors import ConfigError
from enrichproxy.model import METRIC_NAME_LABEL, VIEW_LABEL
from enrichproxy.wire.codec import DEFAULT_MAX_DECODED_BYTES

LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_BYTE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_BYTES_RE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB)?$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LEVEL_ALIASES = {"warn": "warning"}
"""Prometheus' spellings of our log levels (its --log.level takes warn)."""
LOG_FORMATS = ("logfmt", "json")
ENGINES = ("auto", "native", "python")
"""The data path's implementations (engine.factory): auto prefers native when it is built."""


@dataclass(frozen=True)
class EnrichRule:
    """One join: the series' key labels matched against a collection's key fields."""

    name: str
    database: str
    collection: str
    key_labels: tuple[str, ...]
    key_fields: tuple[str, ...]
    """Document fields matched against ``key_labels``, position by position."""
    fields: tuple[str, ...]
    drop_key_labels: bool = True
    on_missing: str = "keep"
    """keep: forward the series without this rule's labels; drop: count and drop it."""


@dataclass(frozen=True)
class MetadataConfig:
    mongodb_uri: str = "mongodb://127.0.0.1:27017/"
    database: str = "metrics"
    # The single-rule form; ``rules`` replaces these when it is given.
    collection: str = "pod_metadata"
    key_label: str = "pod"
    key_field: str = "pod"
    fields: tuple[str, ...] = ("service", "team", "tier")
    drop_key_label: bool = True
    on_missing: str = "keep"
    """keep: forward the series unenriched; drop: count and drop it."""
    rules: tuple[EnrichRule, ...] = ()
    """Several joins applied in order; each sees the labels the ones before it added."""
    refresh_interval_ms: int = 30_000
    """Full reload of every collection: the polling interval, and a safety net when changes
    are followed by a change stream."""
    watch: bool = True
    """Follow changes with a change stream (falls back to polling where there is none)."""
    snapshot_path: str | None = None
    """File the last loaded tables are written to, to start from when MongoDB is down."""
    on_conflict: str = "overwrite"
    """When the series already has an enrichment label: overwrite (the table wins) or keep."""
    timeout_ms: int = 5_000
    """Server selection and socket timeout: a reload fails fast instead of hanging 30 s."""

    @property
    def enrich_rules(self) -> tuple[EnrichRule, ...]:
        """The joins to apply, in order: ``rules``, or the single rule the flat keys describe."""
        if self.rules:
            return self.rules
        return (
            EnrichRule(
                name=self.collection,
                database=self.database,
                collection=self.collection,
                key_labels=(self.key_label,),
                key_fields=(self.key_field,),
                fields=self.fields,
                drop_key_labels=self.drop_key_label,
                on_missing=self.on_missing,
            ),
        )


@dataclass(frozen=True)
class ViewConfig:
    name: str
    keep: tuple[str, ...]
    match: Selector | None = None
    interval_ms: int | None = None
    """Overrides ``aggregation.interval`` for this view."""
    max_series: int = 0
    """Cardinality guard: output series this view may have at most (0: no cap). Over it, input
    series that would make a new output series are left out of the view and counted; the
    existing output series keep flowing."""
    max_input_series: int = 0
    """Input series this view's aggregation may track at most (0: no limit beyond
    ``limits.max_input_series``). ``max_series`` bounds what the view writes; this bounds the
    state feeding it, which is what grows with a label explosion that keeps the output labels
    (a new ``pod`` value per request). Over it, new inputs are left out of the view and
    counted; the inputs it tracks keep flowing, and inputs forgotten after ``retention`` make
    room."""


@dataclass(frozen=True)
class AggregationConfig:
    interval_ms: int = 15_000
    lateness_ms: int = 5_000
    """How far behind the newest sample time an older sample may still arrive and count in its
    window: a window is emitted once a sample this much newer than its end has arrived. 5 s is
    Prometheus' default batch_send_deadline, the spread of arrival times between a sender's
    shards; later counter increases are carried into the next window, never lost."""
    stale_after_ms: int = 300_000
    """An input series not seen for this long has ended (Prometheus' lookback delta, 5 m)."""
    retention_ms: int = 3_600_000
    """How long an ended input's last value is remembered, so a series that comes back within
    it continues its counter instead of being counted again from zero."""
    idle_flush_ms: int = 60_000
    """Wall time without any newer sample after which the open windows are emitted anyway."""
    state_path: str | None = None
    """File the aggregation state is checkpointed to and restored from at start."""
    checkpoint_interval_ms: int = 10_000
    """How often the state is written. What a crash loses since is only the attribution of
    counter increases to windows: the next sample of each counter carries them."""


@dataclass(frozen=True)
class Secret:
    """A password or token. Its ``repr`` and ``str`` hide it, so a config object that ends up
    in a log line, an error or a test failure never shows it; use ``.value`` where it is sent."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    def __str__(self) -> str:
        return "<redacted>"


@dataclass(frozen=True)
class BasicAuthConfig:
    username: str
    password: Secret


@dataclass(frozen=True)
class AuthConfig:
    """The credentials every request but ``/-/healthy``, ``/-/ready`` and ``/metrics`` must
    carry. Exactly one of the two is set."""

    bearer_token: Secret | None = None
    """From ``bearer_token_file``."""
    basic_auth: BasicAuthConfig | None = None
    """From ``basic_auth: {username, password_file}``."""


@dataclass(frozen=True)
class ServerTLSConfig:
    """The listener's certificate chain and private key (PEM files)."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class ClientTLSConfig:
    """How a destination's server is verified and how we present ourselves (Prometheus'
    ``tls_config`` keys)."""

    ca_file: str | None = None
    """CA certificates to verify the server with; None: the system's."""
    cert_file: str | None = None
    """Client certificate, for servers that demand one (with ``key_file``)."""
    key_file: str | None = None
    server_name: str | None = None
    """Name the server certificate must carry (and SNI); None: the URL's host."""
    insecure_skip_verify: bool = False
    min_version: str | None = None
    """Oldest TLS version accepted (TLS10 … TLS13, Prometheus' spelling); None: TLS 1.2."""


# A limit of 0 is no limit. Prometheus' own limits on these (label_limit,
# label_name_length_limit, label_value_length_limit) also default to none: a proxy that starts
# refusing data after an upgrade would lose it, so each limit is opt-in.
NO_LIMIT = 0
# The one limit on by default, since it bounds memory rather than the shape of a request: the
# distinct input series the proxy holds at once. Two million is where the series cache used to
# start over (pipeline.MAX_CACHED_SERIES), about 650 MiB with the native engine and two views
# when series share their pods, up to 4.5 GiB when each brings a new one
# (docs/operations.md#sizing): far above a sidecar's working set, so only an explosion meets it,
# and then memory stops growing instead of the process being OOM-killed with every
# acknowledged sample it holds.
DEFAULT_MAX_INPUT_SERIES = 2_000_000


@dataclass(frozen=True)
class LimitsConfig:
    """Shapes of input a write may have; a request over one is answered 400 and not applied."""

    max_series_per_request: int = NO_LIMIT
    max_labels_per_series: int = NO_LIMIT
    max_label_name_length: int = NO_LIMIT
    """In bytes (UTF-8), as Prometheus counts them."""
    max_label_value_length: int = NO_LIMIT
    """In bytes (UTF-8)."""
    max_input_series: int = DEFAULT_MAX_INPUT_SERIES
    """Distinct input series held at once (the series cache, 0: no limit). A new series over it
    is neither cached nor aggregated: its samples are dropped and counted
    (``input_series_limit``), never the whole request, so the series already held keep
    flowing. Room comes back when inputs are forgotten (``aggregation.retention`` after their
    last sample)."""

    @property
    def checks_labels(self) -> bool:
        return bool(
            self.max_labels_per_series or self.max_label_name_length or self.max_label_value_length
        )


@dataclass(frozen=True)
class QueueConfig:
    """A destination's disk queue: batches wait there until the destination accepts them."""

    path: str
    max_bytes: int = 1024**3
    when_full: str = "block"
    """block: answer writes 503 (nothing lost; the sender retries); drop_oldest: make room by
    giving up the oldest batches, counted as dropped with reason queue_full."""


@dataclass(frozen=True)
class RemoteWriteConfig:
    url: str
    name: str
    timeout_ms: int = 30_000
    max_samples_per_send: int = 2_000
    shards: int = 4
    capacity: int = 200_000
    """Samples queued for this destination before writes are answered 503."""
    min_backoff_ms: int = 100
    max_backoff_ms: int = 10_000
    headers: tuple[tuple[str, str], ...] = ()
    queue: QueueConfig | None = None
    """A disk queue; without one, samples wait in memory (``capacity``)."""
    basic_auth: BasicAuthConfig | None = None
    bearer_token: Secret | None = None
    """The credentials of ``Authorization: <authorization_type> <credentials>``: from
    ``bearer_token(_file)`` or ``authorization.credentials(_file)``; at most one of it and
    ``basic_auth``."""
    authorization_type: str = "Bearer"
    tls_config: ClientTLSConfig | None = None
    views: tuple[str, ...] | None = None
    """The views whose output this destination receives; None: every view."""
    write_relabel_configs: tuple[RelabelConfig, ...] = ()
    """Applied, in order, to every output series sent to this destination (not to the views)."""
    retry_on_http_429: bool = True
    """False: a 429 drops the batch, as Prometheus does by default (its retry_on_http_429)."""
    proxy_url: str | None = None
    """An HTTP proxy requests go through."""
    follow_redirects: bool = True
    protobuf_message: str = "prometheus.WriteRequest"
    """The message sent, Prometheus' spelling: ``prometheus.WriteRequest`` (remote write 1.0)
    or ``io.prometheus.write.v2.Request`` (2.0; a 415 answer falls back to 1.0)."""

    def receives(self, view: str) -> bool:
        """Whether output of ``view`` goes to this destination."""
        return self.views is None or view in self.views


# A request body not complete after this long is given up (408, connection closed): a stuck
# sender must not hold a connection and its buffer for ever. Remote-write bodies are at most a
# few megabytes; a sender that cannot deliver one in 30 s is broken. Prometheus' own
# --web.read-timeout (5m) covers whole requests and idle connections, a coarser bound.
DEFAULT_BODY_READ_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:9201"
    log_level: str = "info"
    log_format: str = "logfmt"
    engine: str = "auto"
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    body_read_timeout_ms: int = DEFAULT_BODY_READ_TIMEOUT_MS
    """How long a write's body may take to arrive once its headers have."""
    metadata: MetadataConfig = MetadataConfig()
    views: tuple[ViewConfig, ...] = ()
    aggregation: AggregationConfig = AggregationConfig()
    remote_write: tuple[RemoteWriteConfig, ...] = ()
    shutdown_timeout_ms: int = 30_000
    auth: AuthConfig | None = None
    """Credentials inbound requests must carry; None: none (the listener is open)."""
    tls: ServerTLSConfig | None = None
    """Serve HTTPS with this certificate; None: plain HTTP."""
    limits: LimitsConfig = LimitsConfig()

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    def view_interval_ms(self, view: ViewConfig) -> int:
        return view.interval_ms or self.aggregation.interval_ms


# Remote-write headers that a user may not override (spec: senders must not let them).
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-length",
        "user-agent",
        "x-prometheus-remote-write-version",
    }
)

T = TypeVar("T")


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


class _Section:
    """Reads one YAML mapping, recording every problem with its path; unknown keys are errors."""

    def __init__(self, data: object, path: str, problems: _Problems, known: set[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            problems.add(path or "(top level)", f"must be a mapping, got {_kind(data)}")
            data = {}
        self.data: Mapping[str, Any] = data
        for key in data:
            if key not in known:
                problems.add(self.at(str(key)), unknown_key_message(str(key), known))

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: T, convert: Callable[[Any, str], T]) -> T:
        if key not in self.data or self.data[key] is None:
            return default
        try:
            return convert(self.data[key], self.at(key))
        except ValueError as exc:
            self.problems.add(self.at(key), str(exc))
            return default


# Keys of Prometheus' remote_write that enrichproxy does not implement, and why: a pasted block
# that uses one is refused with this reason instead of a bare "unknown key".
# remote_write[].protobuf_message: remote write 1.0 (the default, as in Prometheus) and 2.0.
PROTOBUF_MESSAGES = ("prometheus.WriteRequest", "io.prometheus.write.v2.Request")

UNSUPPORTED_REMOTE_WRITE_KEYS = {
    "oauth2": "OAuth 2.0 is not supported: use authorization or basic_auth",
    "sigv4": "AWS SigV4 signing is not supported",
    "azuread": "Azure AD authentication is not supported",
    "no_proxy": "is not supported: proxy_url applies to this destination only",
    "proxy_from_environment": "is not supported: set proxy_url",
    "proxy_connect_header": "is not supported",
}


def unknown_key_message(key: str, known: set[str] | frozenset[str]) -> str:
    """ "unknown key" with the nearest known ones, so a typo or another tool's spelling
    (``remote_timout``, ``log-level``) points at what to write instead."""
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    if close:
        return "unknown key (did you mean " + " or ".join(repr(name) for name in close) + "?)"
    return f"unknown key (known keys: {', '.join(sorted(known))})"


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _string(value: Any, _path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {_kind(value)}")
    return value


def _boolean(value: Any, _path: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _duration(value: Any, _path: str) -> int:
    if value == 0 and not isinstance(value, bool):
        return 0  # a bare 0, as Prometheus accepts it
    if not isinstance(value, str):
        raise ValueError(f"must be a duration string such as 15s, got {value!r}")
    return parse_duration_ms(value)


def _positive_duration(value: Any, path: str) -> int:
    ms = _duration(value, path)
    if ms <= 0:
        raise ValueError("must be greater than zero")
    return ms


def _positive_int(value: Any, _path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def _non_negative_int(value: Any, _path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be an integer, 0 or more (0: no limit), got {value!r}")
    return value


def _byte_size(value: Any, _path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _BYTES_RE.match(str(value).strip()) if isinstance(value, str) else None
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"must be a positive size such as 32MiB or 1048576, got {value!r}")
    return int(match.group(1)) * _BYTE_UNITS[match.group(2) or ""]


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def convert(value: Any, _path: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return convert


def _log_level(value: Any, path: str) -> str:
    return _choice(*LOG_LEVELS, *LOG_LEVEL_ALIASES)(LOG_LEVEL_ALIASES.get(value, value), path)


def _label_name(value: Any, _path: str) -> str:
    if not isinstance(value, str) or not LABEL_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid label name")
    return value


def _label_list(problems: _Problems, value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.add(path, f"must be a list of label names, got {_kind(value)}")
        return ()
    names: list[str] = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        try:
            name = _label_name(item, item_path)
        except ValueError as exc:
            problems.add(item_path, str(exc))
            continue
        if name in names:
            problems.add(item_path, f"label {name!r} is listed twice")
        names.append(name)
    return tuple(names)


def _selector(value: Any, _path: str) -> Selector:
    if not isinstance(value, str):
        raise ValueError(f"must be a series selector string, got {_kind(value)}")
    return parse_selector(value)


def _url(value: Any, _path: str) -> str:
    text = _string(value, _path)
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:
        # Not echoed: the URL holds a secret. The default destination name (the URL's netloc)
        # would also put it into every metric's labels.
        raise ValueError("credentials in the URL are not allowed: use basic_auth")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text


def _listen(value: Any, _path: str) -> str:
    text = _string(value, _path)
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} must be host:port, e.g. 127.0.0.1:9201")
    return text


_SINGLE_RULE_KEYS = (
    "collection",
    "key_label",
    "key_field",
    "fields",
    "drop_key_label",
    "on_missing",
)


def _enrichment_fields(problems: _Problems, value: Any, path: str) -> tuple[str, ...]:
    fields = _label_list(problems, value, path)
    for index, name in enumerate(fields):
        if name.startswith("__"):
            problems.add(
                f"{path}[{index}]", f"{name!r}: names starting with __ are reserved by Prometheus"
            )
    return fields


def _parse_rule(item: Any, path: str, database: str, problems: _Problems) -> EnrichRule:
    known = {
        "name",
        "database",
        "collection",
        "key_label",
        "key_labels",
        "key_field",
        "key_fields",
        "fields",
        "drop_key_label",
        "drop_key_labels",
        "on_missing",
    }
    section = _Section(item, path, problems, known)
    for single, plural in (
        ("key_label", "key_labels"),
        ("key_field", "key_fields"),
        ("drop_key_label", "drop_key_labels"),
    ):
        if single in section.data and plural in section.data:
            problems.add(section.at(single), f"give {single} or {plural}, not both")
    collection = section.get("collection", "", _string)
    if "collection" not in section.data:
        problems.add(section.at("collection"), "is required")
    key_labels: tuple[str, ...] = ()
    if "key_labels" in section.data:
        key_labels = _label_list(problems, section.data["key_labels"], section.at("key_labels"))
    elif "key_label" in section.data:
        key_labels = (section.get("key_label", "", _label_name),)
    if not key_labels or not all(key_labels):
        problems.add(section.at("key_labels"), "is required (the labels the join matches on)")
    key_fields = key_labels
    if "key_fields" in section.data:
        value = section.data["key_fields"]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.add(section.at("key_fields"), "must be a list of document field names")
        else:
            key_fields = tuple(value)
    elif "key_field" in section.data:
        key_fields = (section.get("key_field", "", _string),)
    if len(key_fields) != len(key_labels):
        problems.add(
            section.at("key_fields"),
            f"has {len(key_fields)} fields for {len(key_labels)} key labels: give one per label",
        )
    fields: tuple[str, ...] = ()
    if "fields" not in section.data:
        problems.add(section.at("fields"), "is required (the fields copied onto the series)")
    else:
        fields = _enrichment_fields(problems, section.data["fields"], section.at("fields"))
    drop_key = "drop_key_labels" if "drop_key_labels" in section.data else "drop_key_label"
    return EnrichRule(
        name=section.get("name", collection, _string),
        database=section.get("database", database, _string),
        collection=collection,
        key_labels=key_labels,
        key_fields=key_fields,
        fields=fields,
        drop_key_labels=section.get(drop_key, True, _boolean),
        on_missing=section.get("on_missing", "keep", _choice("keep", "drop")),
    )


def _parse_rules(
    data: Any, path: str, database: str, problems: _Problems
) -> tuple[EnrichRule, ...]:
    if not isinstance(data, list) or not data:
        problems.add(path, "must be a non-empty list of rules")
        return ()
    rules = tuple(
        _parse_rule(item, f"{path}[{index}]", database, problems) for index, item in enumerate(data)
    )
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.name in seen:
            problems.add(f"{path}[{index}].name", f"duplicate rule name {rule.name!r}")
        seen.add(rule.name)
    return rules


def _parse_metadata(data: Any, problems: _Problems) -> MetadataConfig:
    known = {
        "mongodb_uri",
        "database",
        *_SINGLE_RULE_KEYS,
        "rules",
        "refresh_interval",
        "watch",
        "snapshot_path",
        "on_conflict",
        "timeout",
    }
    section = _Section(data, "metadata", problems, known)
    default = MetadataConfig()
    fields = default.fields
    if section.data.get("fields") is not None:
        fields = _enrichment_fields(problems, section.data["fields"], section.at("fields"))
    uri = section.get("mongodb_uri", default.mongodb_uri, _string)
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        problems.add(section.at("mongodb_uri"), "must start with mongodb:// or mongodb+srv://")
    database = section.get("database", default.database, _string)
    rules: tuple[EnrichRule, ...] = ()
    if section.data.get("rules") is not None:
        rules = _parse_rules(section.data["rules"], section.at("rules"), database, problems)
        for key in _SINGLE_RULE_KEYS:
            if key in section.data:
                problems.add(
                    section.at(key), "cannot be combined with metadata.rules: set it in each rule"
                )
    return MetadataConfig(
        mongodb_uri=uri,
        database=database,
        collection=section.get("collection", default.collection, _string),
        key_label=section.get("key_label", default.key_label, _label_name),
        key_field=section.get("key_field", default.key_field, _string),
        fields=fields,
        drop_key_label=section.get("drop_key_label", default.drop_key_label, _boolean),
        on_missing=section.get("on_missing", default.on_missing, _choice("keep", "drop")),
        rules=rules,
        refresh_interval_ms=section.get(
            "refresh_interval", default.refresh_interval_ms, _positive_duration
        ),
        watch=section.get("watch", default.watch, _boolean),
        snapshot_path=section.get("snapshot_path", default.snapshot_path, _string),
        on_conflict=section.get("on_conflict", default.on_conflict, _choice("overwrite", "keep")),
        timeout_ms=section.get("timeout", default.timeout_ms, _positive_duration),
    )


def _parse_views(data: Any, problems: _Problems) -> tuple[ViewConfig, ...]:
    if data is None:
        problems.add("views", "at least one view is required")
        return ()
    if not isinstance(data, list):
        problems.add("views", f"must be a list of views, got {_kind(data)}")
        return ()
    views: list[ViewConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(data):
        path = f"views[{index}]"
        section = _Section(
            item,
            path,
            problems,
            {"name", "keep", "match", "interval", "max_series", "max_input_series"},
        )
        name = section.get("name", "", _label_value_name)
        if not name:
            if "name" not in section.data:
                problems.add(section.at("name"), "is required")
        elif name in seen:
            problems.add(section.at("name"), f"duplicate view name {name!r}")
        seen.add(name)
        keep: tuple[str, ...] = ()
        if "keep" not in section.data:
            problems.add(section.at("keep"), "is required (the labels this view keeps)")
        else:
            keep = _label_list(problems, section.data["keep"], section.at("keep"))
            for position, label in enumerate(keep):
                if label in (METRIC_NAME_LABEL, VIEW_LABEL):
                    problems.add(
                        f"{section.at('keep')}[{position}]",
                        f"{label!r} is always set by the view; do not list it",
                    )
        views.append(
            ViewConfig(
                name=name,
                keep=keep,
                match=section.get("match", None, _selector),
                interval_ms=section.get("interval", None, _positive_duration),
                max_series=section.get("max_series", 0, _non_negative_int),
                max_input_series=section.get("max_input_series", 0, _non_negative_int),
            )
        )
    if not data:
        problems.add("views", "at least one view is required")
    return tuple(views)


def _label_value_name(value: Any, path: str) -> str:
    text = _string(value, path)
    if not LABEL_NAME_RE.match(text):
        raise ValueError(f"{text!r} must be letters, digits and underscores (it becomes a label)")
    return text


def _parse_aggregation(data: Any, problems: _Problems) -> AggregationConfig:
    known = {
        "interval",
        "lateness",
        "stale_after",
        "retention",
        "idle_flush",
        "state_path",
        "checkpoint_interval",
    }
    section = _Section(data, "aggregation", problems, known)
    default = AggregationConfig()
    return AggregationConfig(
        interval_ms=section.get("interval", default.interval_ms, _positive_duration),
        lateness_ms=section.get("lateness", default.lateness_ms, _duration),
        stale_after_ms=section.get("stale_after", default.stale_after_ms, _positive_duration),
        retention_ms=section.get("retention", default.retention_ms, _positive_duration),
        idle_flush_ms=section.get("idle_flush", default.idle_flush_ms, _positive_duration),
        state_path=section.get("state_path", default.state_path, _string),
        checkpoint_interval_ms=section.get(
            "checkpoint_interval", default.checkpoint_interval_ms, _positive_duration
        ),
    )


def _parse_headers(value: Any, path: str, problems: _Problems) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        problems.add(path, f"must be a mapping of header names to values, got {_kind(value)}")
        return ()
    headers = []
    for name, header_value in value.items():
        if str(name).lower() in RESERVED_HEADERS:
            problems.add(f"{path}.{name}", "is a reserved remote-write header and cannot be set")
        elif not isinstance(header_value, str):
            problems.add(f"{path}.{name}", "must be a string")
        else:
            headers.append((str(name), header_value))
    return tuple(headers)


def _parse_queue(data: Any, path: str, problems: _Problems) -> QueueConfig | None:
    section = _Section(data, path, problems, {"path", "max_bytes", "when_full"})
    if "path" not in section.data:
        problems.add(section.at("path"), "is required (a directory for this destination only)")
        return None
    default = QueueConfig(path="")
    return QueueConfig(
        path=section.get("path", "", _string),
        max_bytes=section.get("max_bytes", default.max_bytes, _byte_size),
        when_full=section.get("when_full", default.when_full, _choice("block", "drop_oldest")),
    )


def _view_names(problems: _Problems, value: Any, path: str) -> tuple[str, ...]:
    """A destination's ``views`` list; that each name is a view is checked once all are read.

    Position for position with the YAML list (an invalid item becomes ``""``, and the whole
    configuration is refused), so that later check can name each item's path.
    """
    if not isinstance(value, list) or not value:
        problems.add(path, "must be a non-empty list of view names (leave it out for every view)")
        return ()
    names: list[str] = []
    for index, item in enumerate(value):
        name = item if isinstance(item, str) else ""
        if not name:
            problems.add(f"{path}[{index}]", f"must be a view name, got {_kind(item)}")
        elif name in names:
            problems.add(f"{path}[{index}]", f"view {name!r} is listed twice")
        names.append(name)
    return tuple(names)


_QUEUE_CONFIG_KEYS = frozenset(
    {
        "capacity",
        "max_shards",
        "min_shards",
        "max_samples_per_send",
        "batch_send_deadline",
        "min_backoff",
        "max_backoff",
        "retry_on_http_429",
    }
)
# Our flat key for each queue_config key that sets the same thing (queue_config.capacity is
# per shard, as in Prometheus; ``capacity`` is the destination's total).
_QUEUE_CONFIG_TWINS = {
    "max_shards": "shards",
    "capacity": "capacity",
    "max_samples_per_send": "max_samples_per_send",
    "min_backoff": "min_backoff",
    "max_backoff": "max_backoff",
}
_METADATA_CONFIG_KEYS = frozenset({"send", "send_interval", "max_samples_per_send"})
TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")


def _parse_queue_config(data: Any, path: str, problems: _Problems) -> _Section:
    """Prometheus' ``queue_config``, validated; the caller reads the values it uses.

    ``min_shards`` and ``batch_send_deadline`` are accepted and have no effect: enrichproxy runs
    ``max_shards`` shards from the start and sends a shard's samples as soon as it is free.
    """
    section = _Section(data, path, problems, set(_QUEUE_CONFIG_KEYS))
    for key in ("capacity", "max_shards", "min_shards", "max_samples_per_send"):
        section.get(key, 0, _positive_int)
    for key in ("batch_send_deadline", "min_backoff", "max_backoff"):
        section.get(key, 0, _positive_duration)
    section.get("retry_on_http_429", False, _boolean)
    return section


def _parse_metadata_config(data: Any, path: str, problems: _Problems) -> None:
    """Prometheus' ``metadata_config``, validated and otherwise without effect: enrichproxy's
    output carries no metric metadata."""
    section = _Section(data, path, problems, set(_METADATA_CONFIG_KEYS))
    section.get("send", True, _boolean)
    section.get("send_interval", 0, _positive_duration)
    section.get("max_samples_per_send", 0, _positive_int)


def _parse_relabel_configs(value: Any, path: str, problems: _Problems) -> tuple[RelabelConfig, ...]:
    if not isinstance(value, list):
        problems.add(path, f"must be a list of relabel configs, got {_kind(value)}")
        return ()
    configs = []
    for index, item in enumerate(value):
        section = _Section(item, f"{path}[{index}]", problems, set(RELABEL_KEYS))
        try:
            configs.append(parse_relabel_config(section.data))
        except RelabelProblems as exc:
            for key, message in exc.problems:
                problems.add(section.at(key) if key else section.path, message)
    return tuple(configs)


def _proxy_url(value: Any, path: str) -> str:
    text = _string(value, path)
    if urlsplit(text).scheme != "http" or not urlsplit(text).hostname:
        raise ValueError(f"{text!r} is not an http:// proxy URL (only HTTP proxies are supported)")
    return text


def _twin(
    section: _Section, queue: _Section | None, key: str, problems: _Problems
) -> tuple[_Section, str] | None:
    """Where the setting ``key`` (a flat key of ours) is given: the flat key or its
    queue_config twin; both at once is an error."""
    twin = next((q for q, flat in _QUEUE_CONFIG_TWINS.items() if flat == key), None)
    in_queue = queue is not None and twin is not None and queue.data.get(twin) is not None
    if section.data.get(key) is not None:
        if in_queue:
            assert queue is not None and twin is not None
            problems.add(queue.at(twin), f"sets what {section.at(key)} sets: give one of them")
        return section, key
    if in_queue:
        assert queue is not None and twin is not None
        return queue, twin
    return None


def _parse_remote_write(data: Any, problems: _Problems) -> tuple[RemoteWriteConfig, ...]:
    if data is None:
        problems.add("remote_write", "at least one destination is required")
        return ()
    if not isinstance(data, list):
        problems.add("remote_write", f"must be a list of destinations, got {_kind(data)}")
        return ()
    known = {
        "url",
        "name",
        "timeout",
        "remote_timeout",
        "max_samples_per_send",
        "shards",
        "capacity",
        "min_backoff",
        "max_backoff",
        "headers",
        "queue",
        "views",
        *_CREDENTIAL_KEYS,
        "tls_config",
        # Prometheus' remote_write keys (docs/configuration.md says what each does here).
        "queue_config",
        "metadata_config",
        "write_relabel_configs",
        "proxy_url",
        "follow_redirects",
        "enable_http2",
        "send_exemplars",
        "send_native_histograms",
        "protobuf_message",
        *UNSUPPORTED_REMOTE_WRITE_KEYS,
    }
    destinations: list[RemoteWriteConfig] = []
    names: set[str] = set()
    for index, item in enumerate(data):
        section = _Section(item, f"remote_write[{index}]", problems, known)
        for key, reason in UNSUPPORTED_REMOTE_WRITE_KEYS.items():
            if key in section.data:
                problems.add(section.at(key), reason)
        if "url" not in section.data:
            problems.add(section.at("url"), "is required")
        url = section.get("url", "", _url)
        name = section.get("name", urlsplit(url).netloc or f"remote_write_{index}", _string)
        if name in names:
            problems.add(section.at("name"), f"duplicate destination name {name!r}")
        names.add(name)
        default = RemoteWriteConfig(url=url, name=name)
        basic_auth, credentials, authorization_type = _destination_credentials(section, problems)
        tls_config = None
        if section.data.get("tls_config") is not None:
            tls_config = _parse_client_tls(
                section.data["tls_config"], section.at("tls_config"), problems
            )
            if url.startswith("http://"):
                problems.add(section.at("tls_config"), "is only used with an https:// url")
        queue_config = None
        if section.data.get("queue_config") is not None:
            queue_config = _parse_queue_config(
                section.data["queue_config"], section.at("queue_config"), problems
            )
        if section.data.get("metadata_config") is not None:
            _parse_metadata_config(
                section.data["metadata_config"], section.at("metadata_config"), problems
            )
        for key in ("enable_http2", "send_exemplars", "send_native_histograms"):
            section.get(key, False, _boolean)

        def setting(key: str, fallback: T, convert: Callable[[Any, str], T]) -> T:
            where = _twin(section, queue_config, key, problems)  # noqa: B023
            return fallback if where is None else where[0].get(where[1], fallback, convert)

        timeout_key = "remote_timeout" if "remote_timeout" in section.data else "timeout"
        if "remote_timeout" in section.data and "timeout" in section.data:
            problems.add(section.at("timeout"), "give timeout or remote_timeout, not both")
        shards = setting("shards", default.shards, _positive_int)
        capacity = setting("capacity", default.capacity, _positive_int)
        if (
            queue_config is not None
            and section.data.get("capacity") is None
            and queue_config.data.get("capacity") is not None
        ):
            capacity *= shards  # Prometheus' capacity is per shard
        config = RemoteWriteConfig(
            url=url,
            name=name,
            timeout_ms=section.get(timeout_key, default.timeout_ms, _positive_duration),
            max_samples_per_send=setting(
                "max_samples_per_send", default.max_samples_per_send, _positive_int
            ),
            shards=shards,
            capacity=capacity,
            min_backoff_ms=setting("min_backoff", default.min_backoff_ms, _positive_duration),
            max_backoff_ms=setting("max_backoff", default.max_backoff_ms, _positive_duration),
            basic_auth=basic_auth,
            bearer_token=credentials,
            authorization_type=authorization_type,
            tls_config=tls_config,
            headers=(
                _parse_headers(section.data["headers"], section.at("headers"), problems)
                if section.data.get("headers") is not None
                else ()
            ),
            queue=(
                _parse_queue(section.data["queue"], section.at("queue"), problems)
                if section.data.get("queue") is not None
                else None
            ),
            views=(
                _view_names(problems, section.data["views"], section.at("views"))
                if section.data.get("views") is not None
                else None
            ),
            write_relabel_configs=(
                _parse_relabel_configs(
                    section.data["write_relabel_configs"],
                    section.at("write_relabel_configs"),
                    problems,
                )
                if section.data.get("write_relabel_configs") is not None
                else ()
            ),
            retry_on_http_429=(
                default.retry_on_http_429
                if queue_config is None
                else queue_config.get("retry_on_http_429", default.retry_on_http_429, _boolean)
            ),
            proxy_url=section.get("proxy_url", None, _proxy_url),
            follow_redirects=section.get("follow_redirects", True, _boolean),
            protobuf_message=section.get(
                "protobuf_message", default.protobuf_message, _choice(*PROTOBUF_MESSAGES)
            ),
        )
        if config.min_backoff_ms > config.max_backoff_ms:
            problems.add(section.at("min_backoff"), "must not exceed max_backoff")
        destinations.append(config)
    if not data:
        problems.add("remote_write", "at least one destination is required")
    queue_paths: dict[str, int] = {}
    for index, destination in enumerate(destinations):
        if destination.queue is not None and destination.queue.path:
            other = queue_paths.setdefault(destination.queue.path, index)
            if other != index:
                problems.add(
                    f"remote_write[{index}].queue.path",
                    f"is also remote_write[{other}]'s queue: each destination needs its own",
                )
    return tuple(destinations)


# --- access control and limits ------------------------------------------------------------------


def _secret_file(value: Any, _path: str) -> Secret:
    """The secret in the file ``value`` names, without surrounding whitespace (editors end files
    with a newline; Prometheus trims credential files too). Problems name the file, never what
    it holds."""
    file_path = _string(value, _path)
    try:
        with open(file_path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {file_path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{file_path!r} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{file_path!r} is empty")
    return Secret(text)


def _secret_value(value: Any, path: str) -> Secret:
    return Secret(_string(value, path))  # _string's message names the type, not the value


def _readable_file(value: Any, _path: str) -> str:
    """A file path that can be opened now; its content is checked where it is used (ssl)."""
    file_path = _string(value, _path)
    try:
        with open(file_path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {file_path!r}: {exc.strerror}") from None
    return file_path


def _username(value: Any, path: str) -> str:
    text = _string(value, path)
    if ":" in text:
        raise ValueError("must not contain ':' (basic auth separates user and password by it)")
    return text


def _parse_basic_auth(
    data: Any, path: str, problems: _Problems, *, inline_password: bool
) -> BasicAuthConfig | None:
    """Outbound (``inline_password``) takes ``password`` or ``password_file``, as Prometheus
    does; inbound only ``password_file``, so the listener's secret never sits in the YAML."""
    sources = ("password", "password_file") if inline_password else ("password_file",)
    section = _Section(data, path, problems, {"username", *sources})
    if "username" not in section.data:
        problems.add(section.at("username"), "is required")
    username = section.get("username", "", _username)
    given = [key for key in sources if section.data.get(key) is not None]
    if len(given) != 1:
        problems.add(path, f"give exactly one of {', '.join(sources)}")
        return None
    convert = _secret_value if given[0] == "password" else _secret_file
    password = section.get(given[0], None, convert)
    if not username or password is None:
        return None
    return BasicAuthConfig(username=username, password=password)


def _parse_auth(data: Any, problems: _Problems) -> AuthConfig | None:
    if data is None:
        return None
    section = _Section(data, "auth", problems, {"bearer_token_file", "basic_auth"})
    given = [key for key in ("bearer_token_file", "basic_auth") if section.data.get(key)]
    if len(given) != 1:
        problems.add("auth", "give exactly one of bearer_token_file, basic_auth")
        return None
    if given[0] == "basic_auth":
        basic = _parse_basic_auth(
            section.data["basic_auth"], section.at("basic_auth"), problems, inline_password=False
        )
        return None if basic is None else AuthConfig(basic_auth=basic)
    token = section.get("bearer_token_file", None, _secret_file)
    return None if token is None else AuthConfig(bearer_token=token)


def _parse_server_tls(data: Any, problems: _Problems) -> ServerTLSConfig | None:
    if data is None:
        return None
    section = _Section(data, "tls", problems, {"cert_file", "key_file"})
    for key in ("cert_file", "key_file"):
        if key not in section.data:
            problems.add(section.at(key), "is required")
    cert_file = section.get("cert_file", "", _readable_file)
    key_file = section.get("key_file", "", _readable_file)
    if not cert_file or not key_file:
        return None
    return ServerTLSConfig(cert_file=cert_file, key_file=key_file)


def _parse_client_tls(data: Any, path: str, problems: _Problems) -> ClientTLSConfig:
    known = {
        "ca_file",
        "cert_file",
        "key_file",
        "server_name",
        "insecure_skip_verify",
        "min_version",
    }
    section = _Section(data, path, problems, known)
    if ("cert_file" in section.data) != ("key_file" in section.data):
        problems.add(path, "give cert_file and key_file together (the client certificate)")
    default = ClientTLSConfig()
    return ClientTLSConfig(
        ca_file=section.get("ca_file", default.ca_file, _readable_file),
        cert_file=section.get("cert_file", default.cert_file, _readable_file),
        key_file=section.get("key_file", default.key_file, _readable_file),
        server_name=section.get("server_name", default.server_name, _string),
        insecure_skip_verify=section.get(
            "insecure_skip_verify", default.insecure_skip_verify, _boolean
        ),
        min_version=section.get("min_version", default.min_version, _choice(*TLS_VERSIONS)),
    )


_CREDENTIAL_KEYS = ("basic_auth", "authorization", "bearer_token", "bearer_token_file")


def _parse_authorization(data: Any, path: str, problems: _Problems) -> tuple[Secret | None, str]:
    """Prometheus' ``authorization: {type, credentials | credentials_file}``."""
    section = _Section(data, path, problems, {"type", "credentials", "credentials_file"})
    kind = section.get("type", "Bearer", _string)
    if kind.lower() == "basic":
        problems.add(section.at("type"), 'cannot be "Basic": use basic_auth')
    given = [key for key in ("credentials", "credentials_file") if section.data.get(key)]
    if len(given) != 1:
        problems.add(path, "give exactly one of credentials, credentials_file")
        return None, kind
    convert = _secret_value if given[0] == "credentials" else _secret_file
    return section.get(given[0], None, convert), kind


def _destination_credentials(
    section: _Section, problems: _Problems
) -> tuple[BasicAuthConfig | None, Secret | None, str]:
    """A destination's ``basic_auth``, ``authorization`` or bearer token: at most one, and not
    together with an ``Authorization`` in ``headers`` (which one would be sent is not obvious).
    Returns the basic auth, or the credentials and scheme of the Authorization header."""
    given = [key for key in _CREDENTIAL_KEYS if section.data.get(key) is not None]
    if len(given) > 1:
        problems.add(section.at(given[1]), f"give at most one of {', '.join(_CREDENTIAL_KEYS)}")
        return None, None, "Bearer"
    headers = section.data.get("headers")
    if given and isinstance(headers, Mapping):
        for name in headers:
            if str(name).lower() == "authorization":
                problems.add(f"{section.at('headers')}.{name}", f"conflicts with {given[0]}")
    if not given:
        return None, None, "Bearer"
    if given[0] == "basic_auth":
        path = section.at("basic_auth")
        basic = _parse_basic_auth(section.data[given[0]], path, problems, inline_password=True)
        return basic, None, "Bearer"
    if given[0] == "authorization":
        credentials, kind = _parse_authorization(
            section.data["authorization"], section.at("authorization"), problems
        )
        return None, credentials, kind
    convert = _secret_value if given[0] == "bearer_token" else _secret_file
    return None, section.get(given[0], None, convert), "Bearer"


def _parse_limits(data: Any, problems: _Problems) -> LimitsConfig:
    known = {
        "max_series_per_request",
        "max_labels_per_series",
        "max_label_name_length",
        "max_label_value_length",
        "max_input_series",
    }
    section = _Section(data, "limits", problems, known)
    default = LimitsConfig()
    return LimitsConfig(
        max_series_per_request=section.get(
            "max_series_per_request", default.max_series_per_request, _non_negative_int
        ),
        max_labels_per_series=section.get(
            "max_labels_per_series", default.max_labels_per_series, _non_negative_int
        ),
        max_label_name_length=section.get(
            "max_label_name_length", default.max_label_name_length, _non_negative_int
        ),
        max_label_value_length=section.get(
            "max_label_value_length", default.max_label_value_length, _non_negative_int
        ),
        max_input_series=section.get(
            "max_input_series", default.max_input_series, _non_negative_int
        ),
    )


def _removed_key_labels(metadata: MetadataConfig) -> dict[str, str]:
    """Key labels an enriched series ends up without → which setting removes them.

    A rule with ``drop_key_labels`` removes its key labels on a hit, unless it adds them itself;
    a later rule that adds the label puts it back. So with pod → service, then service → owner,
    the second rule removes ``service`` although the first one added it: a view keeping
    ``service`` would have it only on series whose service has no owner document.
    """
    rules = metadata.enrich_rules
    removed: dict[str, str] = {}
    for index, rule in enumerate(rules):
        if not rule.drop_key_labels:
            continue
        added_later = {name for later in rules[index:] for name in later.fields}
        where = (
            f"metadata.rules[{index}] removes (drop_key_labels)"
            if metadata.rules
            else "metadata.drop_key_label removes"
        )
        for label in rule.key_labels:
            if label not in added_later:
                removed.setdefault(label, where)
    return removed


def parse_config(data: Any) -> Config:
    """Validate a decoded YAML document; ConfigError lists every problem with its path."""
    problems = _Problems()
    known = {
        "listen",
        "log_level",
        "log_format",
        "engine",
        "max_decoded_bytes",
        "body_read_timeout",
        "metadata",
        "views",
        "aggregation",
        "remote_write",
        "shutdown_timeout",
        "auth",
        "tls",
        "limits",
    }
    top = _Section(data, "", problems, known)
    default = Config()
    config = Config(
        listen=top.get("listen", default.listen, _listen),
        log_level=top.get("log_level", default.log_level, _log_level),
        log_format=top.get("log_format", default.log_format, _choice(*LOG_FORMATS)),
        engine=top.get("engine", default.engine, _choice(*ENGINES)),
        max_decoded_bytes=top.get("max_decoded_bytes", default.max_decoded_bytes, _byte_size),
        body_read_timeout_ms=top.get(
            "body_read_timeout", default.body_read_timeout_ms, _positive_duration
        ),
        metadata=_parse_metadata(top.data.get("metadata"), problems),
        views=_parse_views(top.data.get("views"), problems),
        aggregation=_parse_aggregation(top.data.get("aggregation"), problems),
        remote_write=_parse_remote_write(top.data.get("remote_write"), problems),
        shutdown_timeout_ms=top.get(
            "shutdown_timeout", default.shutdown_timeout_ms, _positive_duration
        ),
        auth=_parse_auth(top.data.get("auth"), problems),
        tls=_parse_server_tls(top.data.get("tls"), problems),
        limits=_parse_limits(top.data.get("limits"), problems),
    )
    removed = _removed_key_labels(config.metadata)
    for index, view in enumerate(config.views):
        for label in view.keep:
            if label in removed:
                problems.add(f"views[{index}].keep", f"keeps {label!r}, which {removed[label]}")
    view_names = {view.name for view in config.views}
    for index, destination in enumerate(config.remote_write):
        for position, name in enumerate(destination.views or ()):
            if name and name not in view_names:
                problems.add(f"remote_write[{index}].views[{position}]", f"no view named {name!r}")
    if problems.items:
        raise ConfigError(problems.items)
    return config


def load_config(path: str) -> Config:
    """Read and validate the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(data)
