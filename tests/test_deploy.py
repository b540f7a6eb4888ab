"""The deployment artefacts: compose.yaml, Containerfile, Prometheus and Grafana configuration,
alerting rules, the Kubernetes example and the documentation derived from the code.

Nothing here can run a container (no engine on the test machines), so each artefact is checked
by the real tool that reads it, where one is installed: ``docker-compose config`` (Compose 1.29
schema), ``promtool check config|rules`` and ``promtool test rules``, and a real Prometheus
that runs every dashboard query against data shaped by enrichproxy's own pipeline. The rest is
checked against the code: configs with ``parse_config``, metric names and labels with
``Telemetry``. A missing tool fails the test with the command that installs it; nothing skips.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from realparts import (
    Exporter,
    PrometheusFactory,
    free_port,
    post_remote_write,
    prometheus_config,
    scrape_config,
)

from enrichproxy.config.durations import format_duration_ms
from enrichproxy.config.schema import (
    AggregationConfig,
    ClientTLSConfig,
    Config,
    EnrichRule,
    LimitsConfig,
    MetadataConfig,
    RemoteWriteConfig,
    ViewConfig,
    parse_config,
)
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.forward.forwarder import encode_batch
from enrichproxy.metadata.table import build_table
from enrichproxy.model import OutputSample
from enrichproxy.server.telemetry import Telemetry
from enrichproxy.wire.codec import DecodedRequest, RawSeries, decode_write_request, decompress

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "compose.yaml"
CONTAINERFILE = REPO / "Containerfile"
EXAMPLE_CONFIG = REPO / "conf" / "enrichproxy.yaml"
COMPOSE_CONFIG = REPO / "conf" / "compose" / "enrichproxy.yaml"
METADATA_YAML = REPO / "conf" / "metadata.yaml"
MONGO_INIT = REPO / "conf" / "mongo-init"
MONGO_SEED_JSON = MONGO_INIT / "metadata.json"
MONGO_SEED_SCRIPT = MONGO_INIT / "10-seed-metadata.js"
PROMETHEUS_DIR = REPO / "conf" / "prometheus"
ALERT_RULES = PROMETHEUS_DIR / "rules" / "enrichproxy-alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "rules" / "enrichproxy-alerts.test.yml"
GRAFANA_DIR = REPO / "conf" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
PROVISIONING_DIR = GRAFANA_DIR / "provisioning"
DATASOURCE_FILE = PROVISIONING_DIR / "datasources" / "prometheus-sink.yml"
DASHBOARD_PROVIDER_FILE = PROVISIONING_DIR / "dashboards" / "enrichproxy.yml"
KUBERNETES_FILE = REPO / "deploy" / "kubernetes" / "prometheus-with-enrichproxy.yaml"
FIXTURES = REPO / "tests" / "fixtures"
DOCS = REPO / "docs"
RUNBOOK = DOCS / "runbook.md"
# Where the rules' runbook_url annotations point: docs/ of the repository (docs/runbook.md).
RUNBOOK_BASE = "https://github.com/enrichproxy/enrichproxy/blob/main/docs/"
RUNBOOK_PARTS = ("**What it means.**", "**What to check.**", "**What to do.**")

DOCKER_COMPOSE = "/usr/bin/docker-compose"
PROMTOOL = "/usr/bin/promtool"
APT_HINT = "apt-get install -y --no-install-recommends {package}"

COMPOSE_SERVICES = {
    "mongodb",
    "enrichproxy",
    "demo-app",
    "prometheus-source",
    "prometheus-sink",
    "grafana",
}
DASHBOARD_TITLES = {"enrichproxy", "Business view", "Operational view"}
LISTEN_PORT = 9201
DEMO_APP_PORT = 8000
# Grafana's built-in annotation source is the one data source a dashboard may name besides ours.
GRAFANA_BUILTIN_UID = "-- Grafana --"
DATASOURCE_VARIABLE = "datasource"
DATASOURCE_REFERENCE = {"type": "prometheus", "uid": "${datasource}"}
# What the test substitutes for Grafana's variables before asking Prometheus.
GRAFANA_INTERVAL_VARIABLES = ("$__rate_interval", "$__interval", "$__range")
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
METRIC_NAME_RE = re.compile(r"\benrichproxy_\w+")
LABEL_VALUES_RE = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.S)

# Config fields that are sections of their own, and keys whose default is not a constant.
CONFIG_SECTIONS = {"metadata", "views", "aggregation", "remote_write", "limits"}
DOCUMENTED_AS = {"remote_write[].authorization_type": "remote_write[].authorization.type"}
"""Fields whose configuration key is spelled otherwise (nested in the file, flat in the code)."""
UNCHECKED_DEFAULTS = {
    "metadata.rules[].name",
    "metadata.rules[].database",
    "metadata.rules[].collection",
    "metadata.rules[].key_labels",
    "metadata.rules[].key_fields",
    "metadata.rules[].fields",
    "views[].name",
    "views[].keep",
    "remote_write[].url",
    "remote_write[].name",
    "remote_write[].headers",
}

JSON = dict[str, Any]


# --- helpers ------------------------------------------------------------------------------------


def tool(path: str, package: str) -> str:
    """The installed tool at ``path`` (or on PATH); fails, never skips, when it is missing."""
    if os.access(path, os.X_OK):
        return path
    found = shutil.which(Path(path).name)
    if found is None:
        pytest.fail(f"{path} is not installed: {APT_HINT.format(package=package)}", pytrace=False)
    return found


def run_tool(argv: list[str], cwd: Path = REPO) -> str:
    """Run a checker; its output, or a test failure showing it."""
    completed = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> JSON:
    data: JSON = load_yaml(COMPOSE_FILE)
    return data


def bind_mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Container path → host path of a compose service's bind mounts (``./host:/target``)."""
    mounts = {}
    for volume in service.get("volumes", []):
        host, target, *_ = str(volume).split(":")
        if host.startswith("."):
            mounts[target] = (REPO / host).resolve()
    return mounts


def mount_source(mounts: Mapping[str, Path], container_path: str) -> Path:
    """The host file behind ``container_path``, through whichever mount holds it."""
    for target, host in mounts.items():
        if container_path == target:
            return host
        if container_path.startswith(target.rstrip("/") + "/"):
            return host / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not inside any bind mount: {dict(mounts)}")


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined."""
    instructions = []
    current = ""
    for raw in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    return instructions


def python_snippet(argv: list[str]) -> str:
    """The code of a ``python -c CODE`` health check."""
    assert argv[:2] == ["python", "-c"], f"not a python -c command: {argv}"
    return argv[2]


def health_command(service: Mapping[str, Any]) -> list[str]:
    """The argv of a compose service's ``CMD-SHELL`` health check, as the shell splits it."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and len(test) == 2, f"not a CMD-SHELL health check: {test}"
    return shlex.split(test[1])


def published(variable: str, default: int, container_port: int) -> str:
    """A port compose.yaml publishes on 127.0.0.1, movable with ``variable``."""
    return f"127.0.0.1:${{{variable}:-{default}}}:{container_port}"


def telemetry_families() -> dict[str, tuple[str, frozenset[str]]]:
    """Every sample name enrichproxy exports → (family name, its label names).

    prometheus_client exposes a metric's label names only on the metric object (a labelled
    metric without children yields no samples), hence the private attributes.
    """
    telemetry = Telemetry()
    labels = {
        metric._name: frozenset(metric._labelnames)
        for metric in vars(telemetry).values()
        if isinstance(metric, MetricWrapperBase)
    }
    names: dict[str, tuple[str, frozenset[str]]] = {}
    for family in telemetry.registry.collect():
        # The process, platform and GC collectors are no metric objects: their samples say.
        family_labels = labels.get(family.name) or frozenset(
            name for sample in family.samples for name in sample.labels
        )
        if family.type == "counter":
            names[f"{family.name}_total"] = (family.name, family_labels)
        elif family.type == "histogram":
            names[f"{family.name}_bucket"] = (family.name, family_labels | {"le"})
            for suffix in ("_count", "_sum"):
                names[family.name + suffix] = (family.name, family_labels)
        else:
            names[family.name] = (family.name, family_labels)
    return names


def dashboards() -> dict[Path, JSON]:
    paths = sorted(DASHBOARD_DIR.glob("*.json"))
    assert paths, f"no dashboards in {DASHBOARD_DIR}"
    return {path: json.loads(path.read_text(encoding="utf-8")) for path in paths}


def walk_json(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk_json(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_json(item)


def dashboard_panels(board: Mapping[str, Any]) -> Iterator[JSON]:
    """Every panel that shows data (rows are containers, not panels)."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries(board: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every variable of ``board``."""
    queries = []
    for panel in dashboard_panels(board):
        for target in panel["targets"]:
            queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "datasource":
            continue  # its query is a data source type, not PromQL
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES_RE.match(text.strip())
        assert match, f"variable {variable['name']}: only label_values(selector, label) is used"
        queries.append((f"variable {variable['name']!r}", match["selector"]))
    return queries


def as_prometheus_query(expr: str) -> str:
    """A Grafana expression as Prometheus takes it: intervals 1m, every variable ``.*``.

    Variables only ever stand in regex matchers (``service=~"$service"``), where ``.*`` is
    what Grafana's "All" sends.
    """
    for name in GRAFANA_INTERVAL_VARIABLES:
        expr = expr.replace(name, "1m")
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)


def alert_rules() -> list[JSON]:
    data: JSON = load_yaml(ALERT_RULES)
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def promql_nodes(node: Any) -> Iterator[Any]:
    """Every node of a promql_parser expression tree."""
    yield node
    for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None:
            yield from promql_nodes(child)
    arguments = getattr(node, "args", None)
    if isinstance(arguments, list):
        for argument in arguments:
            yield from promql_nodes(argument)


def view_keep() -> dict[str, frozenset[str]]:
    config = parse_config(load_yaml(COMPOSE_CONFIG))
    return {view.name: frozenset({*view.keep, "view", "le"}) for view in config.views}


def label_problems(
    expr: str,
    families: Mapping[str, tuple[str, frozenset[str]]],
    views: Mapping[str, frozenset[str]],
) -> list[str]:
    """Metric names and label names in ``expr`` that enrichproxy never writes."""
    tree = promql_parser.parse(expr)
    problems = []
    for node in promql_nodes(tree):
        if not isinstance(node, promql_parser.AggregateExpr) and not isinstance(
            node, promql_parser.VectorSelector
        ):
            continue
        selectors = [n for n in promql_nodes(node) if isinstance(n, promql_parser.VectorSelector)]
        allowed: set[str] = set()
        for selector in selectors:
            name = selector.name or ""
            matchers = {m.name: m.value for m in selector.matchers.matchers}
            if name.startswith("enrichproxy_"):
                if name not in families:
                    problems.append(f"{name} is not a metric of server/telemetry.py")
                    continue
                allowed |= families[name][1] | TARGET_LABELS | {"__name__"}
            elif matchers.get("view") in views:
                allowed |= views[matchers["view"]] | {"__name__"}
            else:
                allowed = set()  # a series we do not know the labels of: no check
                break
        if not allowed:
            continue
        if isinstance(node, promql_parser.VectorSelector):
            used = {m.name for m in node.matchers.matchers}
        elif node.modifier is not None and str(node.modifier.type).endswith("By"):
            used = set(node.modifier.labels)
        else:
            continue
        unknown = used - allowed
        if unknown:
            problems.append(f"labels {sorted(unknown)} do not exist on {sorted(allowed)}")
    return problems


# --- compose.yaml -------------------------------------------------------------------------------


@pytest.mark.integration
def test_compose_file_passes_docker_compose_config() -> None:
    """The Compose 1.29 schema accepts the file (no newer keys such as start_interval)."""
    docker_compose = tool(DOCKER_COMPOSE, "docker-compose")
    run_tool([docker_compose, "-f", str(COMPOSE_FILE), "config", "-q"])


def test_compose_services_are_pinned_healthy_and_wait_for_each_other() -> None:
    services: JSON = compose()["services"]
    assert set(services) == COMPOSE_SERVICES
    for name, service in services.items():
        image = str(service["image"])
        repository, _, tag = image.rpartition(":")
        assert "/" not in tag and repository, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: pin the image, not {image}"
        assert service.get("healthcheck", {}).get("test"), f"{name}: no health check"
        # Podman's Docker API splits list-form arguments at spaces; podman-compose mis-quotes.
        assert service["healthcheck"]["test"][0] == "CMD-SHELL", f"{name}: use CMD-SHELL"
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name}: {mapping} not on loopback"
        assert "start_interval" not in service["healthcheck"], "not in the Compose 1.29 schema"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} → {dependency}"
            assert "healthcheck" in services[dependency], f"{dependency} has no health check"
        for target, host in bind_mounts(service).items():
            assert host.exists(), f"{name}: {host} (mounted at {target}) does not exist"
    for name in ("enrichproxy", "demo-app"):
        assert services[name]["build"] == {"context": ".", "dockerfile": "Containerfile"}
    assert services["enrichproxy"]["image"] == services["demo-app"]["image"]


def test_compose_services_find_each_other() -> None:
    """Host names and ports in every config are compose services and their ports."""
    services: JSON = compose()["services"]
    proxy = services["enrichproxy"]
    config_path = mount_source(bind_mounts(proxy), proxy["environment"]["ENRICHPROXY_CONFIG"])
    assert config_path == COMPOSE_CONFIG
    config = parse_config(load_yaml(config_path))
    assert config.listen_host_port == ("0.0.0.0", LISTEN_PORT)
    assert config.metadata.mongodb_uri.startswith("mongodb://mongodb:27017/")
    # Change streams need a replica set; its one member names itself localhost (the seed
    # script), so the proxy connects directly.
    assert "--replSet" in services["mongodb"]["command"]
    assert "directConnection=true" in config.metadata.mongodb_uri
    assert [d.url for d in config.remote_write] == ["http://prometheus-sink:9090/api/v1/write"]
    assert proxy["ports"] == [published("ENRICHPROXY_PORT", LISTEN_PORT, LISTEN_PORT)]
    assert f":{LISTEN_PORT}/-/healthy" in python_snippet(health_command(proxy))

    demo = services["demo-app"]
    command = demo["command"]
    assert command[:2] == ["enrichproxy", "loadgen"]
    assert command[command.index("--exporter-port") + 1] == str(DEMO_APP_PORT)
    pods_from = command[command.index("--pods-from") + 1]
    assert mount_source(bind_mounts(demo), pods_from) == METADATA_YAML
    assert f":{DEMO_APP_PORT}/metrics" in python_snippet(health_command(demo))

    configs = {}
    for name in ("prometheus-source", "prometheus-sink"):
        service = services[name]
        flag = next(a for a in service["command"] if a.startswith("--config.file="))
        path = mount_source(bind_mounts(service), flag.partition("=")[2])
        configs[name] = load_yaml(path)
    assert "--web.enable-remote-write-receiver" in services["prometheus-sink"]["command"]
    source = configs["prometheus-source"]
    assert source["scrape_configs"][0]["static_configs"][0]["targets"] == [
        f"demo-app:{DEMO_APP_PORT}"
    ]
    assert source["scrape_configs"][0]["scrape_interval"] == "5s"
    assert [w["url"] for w in source["remote_write"]] == [
        f"http://enrichproxy:{LISTEN_PORT}/api/v1/write"
    ]
    sink_targets = [
        t
        for s in configs["prometheus-sink"]["scrape_configs"]
        for t in s["static_configs"][0]["targets"]
    ]
    assert f"enrichproxy:{LISTEN_PORT}" in sink_targets

    grafana = services["grafana"]
    grafana_mounts = bind_mounts(grafana)
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mount_source(grafana_mounts, home).is_file()
    provider = load_yaml(DASHBOARD_PROVIDER_FILE)["providers"][0]
    assert mount_source(grafana_mounts, provider["options"]["path"]) == DASHBOARD_DIR
    assert mount_source(grafana_mounts, "/etc/grafana/provisioning") == PROVISIONING_DIR
    datasource = load_yaml(DATASOURCE_FILE)["datasources"][0]
    assert datasource["url"] == "http://prometheus-sink:9090"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"


def test_compose_enrichproxy_config_is_the_example_with_container_addresses() -> None:
    """conf/compose/enrichproxy.yaml must stay a copy of conf/enrichproxy.yaml."""
    example = parse_config(load_yaml(EXAMPLE_CONFIG))
    container = parse_config(load_yaml(COMPOSE_CONFIG))
    assert container.listen == f"0.0.0.0:{LISTEN_PORT}"
    same_addresses = replace(
        container,
        listen=example.listen,
        metadata=replace(
            container.metadata,
            mongodb_uri=example.metadata.mongodb_uri,
            snapshot_path=example.metadata.snapshot_path,
        ),
        aggregation=replace(container.aggregation, state_path=example.aggregation.state_path),
        remote_write=example.remote_write,
    )
    assert same_addresses == example, (
        "conf/compose/enrichproxy.yaml drifted from conf/enrichproxy.yaml: apply the change to "
        "both (they may differ only in listen, metadata.mongodb_uri, remote_write and the "
        "paths of their files)"
    )
    assert len(container.remote_write) == len(example.remote_write)
    for ours, theirs in zip(container.remote_write, example.remote_write, strict=True):
        assert ours.queue is not None and theirs.queue is not None
        assert replace(ours, url=theirs.url, name=theirs.name, queue=theirs.queue) == theirs
        assert replace(ours.queue, path=theirs.queue.path) == theirs.queue


def kubernetes_enrichproxy_config() -> tuple[Config, JSON]:
    """The Kubernetes example's enrichproxy.yaml, parsed, and its StatefulSet."""
    documents = kubernetes_documents()
    maps = config_maps(documents)
    config = parse_config(yaml.safe_load(maps["enrichproxy-config"]["enrichproxy.yaml"]))
    workload = next(d for d in documents if d["kind"] == "StatefulSet")
    return config, workload


def test_every_shipped_config_keeps_state_and_a_disk_queue_on_a_volume() -> None:
    """Nothing lost by default: each shipped configuration checkpoints its aggregation state,
    keeps a metadata snapshot and gives every destination a disk queue, and in the container
    layouts those files lie on a volume that outlives the container (a named compose volume,
    a Kubernetes volume claim), not on the container's own layer or an emptyDir."""
    data_dir = "/var/lib/enrichproxy"
    kubernetes, statefulset = kubernetes_enrichproxy_config()
    configs = {
        "conf/enrichproxy.yaml": parse_config(load_yaml(EXAMPLE_CONFIG)),
        "conf/compose/enrichproxy.yaml": parse_config(load_yaml(COMPOSE_CONFIG)),
        "deploy/kubernetes": kubernetes,
    }
    for where, config in configs.items():
        paths = [config.aggregation.state_path, config.metadata.snapshot_path]
        paths += [d.queue.path if d.queue is not None else None for d in config.remote_write]
        assert all(paths), f"{where}: state_path, snapshot_path and a disk queue: {paths}"
        if where != "conf/enrichproxy.yaml":
            assert all(str(path).startswith(f"{data_dir}/") for path in paths), (where, paths)
    # The local example's files land in data/ of the working directory, kept out of git.
    assert "/data/" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()

    enrichproxy = compose()["services"]["enrichproxy"]
    named = [v for v in enrichproxy["volumes"] if not v.startswith((".", "/"))]
    assert f"enrichproxy-data:{data_dir}" in named
    assert "enrichproxy-data" in compose()["volumes"]

    pod = statefulset["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "enrichproxy")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == data_dir)
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims, "the data directory must be a volume claim, not an emptyDir"
    assert mount["name"] not in {v["name"] for v in pod.get("volumes", [])}


def test_shipped_views_take_only_the_application_metrics() -> None:
    """A Prometheus that scrapes itself sends up, scrape_* and prometheus_*: no shipped view
    may sum those into its output (the operational view once summed `up` to 2)."""
    kubernetes, _ = kubernetes_enrichproxy_config()
    application = [
        "order_create_failed_total",
        "checkout_inflight_requests",
        "http_request_duration_seconds_bucket",
        "payment_amount_sum",
    ]
    unrelated = [
        "up",
        "scrape_duration_seconds",
        "prometheus_tsdb_head_series",
        "go_goroutines",
        "process_cpu_seconds_total",
    ]
    for config in (
        parse_config(load_yaml(EXAMPLE_CONFIG)),
        parse_config(load_yaml(COMPOSE_CONFIG)),
        kubernetes,
    ):
        for view in config.views:
            assert view.match is not None, f"view {view.name} has no match"
            for name in unrelated:
                assert not view.match.matches((("__name__", name),)), (view.name, name)
        operational = next(v for v in config.views if v.name == "operational")
        assert operational.match is not None
        for name in application:
            assert operational.match.matches((("__name__", name),)), name


def test_mongo_seed_json_agrees_with_metadata_yaml() -> None:
    regenerate = (
        ".venv/bin/python -c 'import json, yaml; print(json.dumps(yaml.safe_load("
        'open("conf/metadata.yaml")), indent=2))\' > conf/mongo-init/metadata.json'
    )
    seed = json.loads(MONGO_SEED_JSON.read_text(encoding="utf-8"))
    assert seed == load_yaml(METADATA_YAML), f"metadata.json is stale; run: {regenerate}"
    # The seed script writes where enrichproxy reads, and reads the file compose mounts.
    script = MONGO_SEED_SCRIPT.read_text(encoding="utf-8")
    spec = parse_config(load_yaml(COMPOSE_CONFIG)).metadata
    for name, value in {
        "DATABASE": spec.database,
        "COLLECTION": spec.collection,
        "KEY_FIELD": spec.key_field,
    }.items():
        assert f'const {name} = "{value}";' in script
    mongodb = compose()["services"]["mongodb"]
    seed_path = re.search(r'const SEED_FILE = "([^"]+)";', script)
    assert seed_path is not None
    assert mount_source(bind_mounts(mongodb), seed_path[1]) == MONGO_SEED_JSON
    assert mount_source(bind_mounts(mongodb), "/docker-entrypoint-initdb.d") == MONGO_INIT


# --- Containerfile ------------------------------------------------------------------------------


def test_containerfile_builds_a_small_non_root_image() -> None:
    instructions = containerfile_instructions()
    arguments: dict[str, str] = {}
    for keyword, value in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = value.partition("=")
            arguments[name] = default
    bases = []
    for keyword, value in instructions:
        if keyword == "FROM":
            image = value.split()[0]
            for name, default in arguments.items():
                image = image.replace(f"${{{name}}}", default)
            bases.append(image)
    assert len(bases) >= 2, "multi-stage: a builder and a runtime stage"
    for base in bases:
        assert base.startswith("python:3.11-slim"), base
    runs = [value for keyword, value in instructions if keyword == "RUN"]
    # The locked dependencies with their hashes, then the package alone, built against them.
    locked = [i for i, run in enumerate(runs) if "pip install --require-hashes -r " in run]
    package = [i for i, run in enumerate(runs) if re.search(r"pip install (--\S+ )*\.(\s|$)", run)]
    assert len(locked) == 1 and len(package) == 1 and locked[0] < package[0], runs
    assert re.search(r"-r requirements\.lock(\s|$)", runs[locked[0]])
    assert {"--no-deps", "--no-build-isolation"} <= set(runs[package[0]].split())
    assert "COPY --from=builder /opt/enrichproxy /opt/enrichproxy" in [
        f"{k} {v}" for k, v in instructions
    ]

    users = [value for keyword, value in instructions if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, "numeric non-root USER (runAsNonRoot checks it)"
    assert not group or (group.isdigit() and int(group) != 0)
    expose = [value for keyword, value in instructions if keyword == "EXPOSE"]
    assert str(LISTEN_PORT) in " ".join(expose).split()
    volumes = " ".join(value for keyword, value in instructions if keyword == "VOLUME")
    assert "/var/lib/enrichproxy" in volumes
    env = " ".join(value for keyword, value in instructions if keyword == "ENV")
    assert "ENRICHPROXY_CONFIG=/etc/enrichproxy/enrichproxy.yaml" in env
    assert f"ENRICHPROXY_LISTEN=0.0.0.0:{LISTEN_PORT}" in env
    health = [value for keyword, value in instructions if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "/-/healthy" in health[0]

    # Everything copied from the build context exists and is let through by the ignore file.
    ignore = (REPO / ".containerignore").read_text(encoding="utf-8")
    assert ignore == (REPO / ".dockerignore").read_text(encoding="utf-8")
    allowed = {line[1:] for line in ignore.splitlines() if line.startswith("!")}
    for keyword, value in instructions:
        if keyword != "COPY" or value.startswith("--from"):
            continue
        *sources, _destination = value.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: missing from the source tree"
            assert source in allowed, f"COPY {source}: excluded by .containerignore"


def healthcheck_argv() -> list[str]:
    health = next(v for k, v in containerfile_instructions() if k == "HEALTHCHECK")
    _options, _, command = health.partition(" CMD ")
    argv: list[str] = json.loads(command)
    return argv


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/-/healthy" else 404)
        self.end_headers()
        self.wfile.write(b"enrichproxy is healthy.\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_containerfile_healthcheck_follows_the_listen_port() -> None:
    """The image's HEALTHCHECK passes against a serving port and fails against a closed one."""
    argv = healthcheck_argv()
    code = python_snippet(argv)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = int(server.server_address[1])
        for listen, healthy in ((f"0.0.0.0:{port}", True), (f"0.0.0.0:{free_port()}", False)):
            completed = subprocess.run(
                [sys.executable, "-c", code],
                env={**os.environ, "ENRICHPROXY_LISTEN": listen},
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert (completed.returncode == 0) is healthy, (listen, completed.stderr)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_every_python_health_check_compiles() -> None:
    snippets = {"Containerfile": python_snippet(healthcheck_argv())}
    for name, service in compose()["services"].items():
        command = health_command(service)
        if command[:2] == ["python", "-c"]:
            snippets[f"compose {name}"] = python_snippet(command)
    for document in yaml.safe_load_all(KUBERNETES_FILE.read_text(encoding="utf-8")):
        for node in walk_json(document):
            if isinstance(node, dict) and "exec" in node and "command" in node["exec"]:
                command = node["exec"]["command"]
                if command[:1] == ["python"]:
                    snippets["kubernetes probe"] = python_snippet(command)
    assert len(snippets) >= 4
    for where, code in snippets.items():
        compile(code, where, "exec")


# --- Prometheus configuration and alerts --------------------------------------------------------


def prometheus_configs() -> list[Path]:
    return sorted(PROMETHEUS_DIR.glob("*.yml"))


@pytest.mark.integration
@pytest.mark.parametrize("path", prometheus_configs(), ids=lambda p: p.name)
def test_promtool_accepts_prometheus_config(path: Path) -> None:
    promtool = tool(PROMTOOL, "prometheus")
    run_tool([promtool, "check", "config", str(path)])


@pytest.mark.integration
def test_promtool_accepts_alert_rules() -> None:
    output = run_tool([tool(PROMTOOL, "prometheus"), "check", "rules", str(ALERT_RULES)])
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


@pytest.mark.integration
def test_alert_rules_pass_their_unit_tests() -> None:
    run_tool([tool(PROMTOOL, "prometheus"), "test", "rules", ALERT_TESTS.name], ALERT_TESTS.parent)


def test_alert_unit_tests_cover_firing_and_quiet_cases_of_every_alert() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert len(names) == len(rules), "alert names are unique"
    assert names - firing == set(), "alerts without a test where they fire"
    assert names - quiet == set(), "alerts without a test where they do not fire"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]


def markdown_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation other than
    ``-`` and ``_`` removed, spaces as ``-``."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return anchors


def test_every_alert_links_its_runbook_section() -> None:
    """Each alert's runbook_url points at a section of docs/ that exists and says what the
    alert means, what to check and what to do; and every runbook section is an alert's."""
    linked: dict[str, set[str]] = {}
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url", "")
        assert url.startswith(RUNBOOK_BASE), f"{rule['alert']}: runbook_url {url!r}"
        page, _, anchor = url.removeprefix(RUNBOOK_BASE).partition("#")
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: anchor {anchor!r}"
        linked.setdefault(page, set()).add(anchor)
    assert set(linked) == {RUNBOOK.name}
    text = RUNBOOK.read_text(encoding="utf-8")
    assert linked[RUNBOOK.name] <= markdown_anchors(text), "alerts without a runbook section"
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert {section.split("\n", 1)[0].strip().lower() for section in sections} == linked[
        RUNBOOK.name
    ], "runbook sections without an alert"
    for section in sections:
        name = section.split("\n", 1)[0]
        for part in RUNBOOK_PARTS:
            assert part in section, f"runbook.md {name}: no {part}"


def test_alert_rules_use_metrics_and_labels_enrichproxy_exports() -> None:
    families = telemetry_families()
    views = view_keep()
    problems = []
    for rule in alert_rules():
        problems += [f"{rule['alert']}: {p}" for p in label_problems(rule["expr"], families, views)]
    text = ALERT_RULES.read_text(encoding="utf-8")
    problems += [
        f"{n}: not in server/telemetry.py"
        for n in METRIC_NAME_RE.findall(text)
        if n not in families
    ]
    assert not problems, "\n".join(problems)


# --- Grafana ------------------------------------------------------------------------------------


def test_dashboards_parse_and_take_a_datasource_variable() -> None:
    """Every panel, query and variable reads the data source the ``datasource`` variable picks,
    so a dashboard imports into any Grafana with any Prometheus data source; provisioned, the
    variable starts on prometheus-sink."""
    datasource = load_yaml(DATASOURCE_FILE)["datasources"]
    assert len(datasource) == 1
    provisioned = datasource[0]
    boards = dashboards()
    assert {board["title"] for board in boards.values()} == DASHBOARD_TITLES
    assert len({board["uid"] for board in boards.values()}) == len(boards)
    for path, board in boards.items():
        assert board.get("id") is None, f"{path.name}: provisioned dashboards carry no id"
        variables = board["templating"]["list"]
        selectors = [v for v in variables if v["type"] == "datasource"]
        assert len(selectors) == 1, f"{path.name}: one datasource variable"
        (selector,) = selectors
        assert selector["name"] == DATASOURCE_VARIABLE, path.name
        assert selector["query"] == "prometheus", path.name
        assert not selector.get("multi") and not selector.get("includeAll"), path.name
        assert selector["current"]["value"] == provisioned["uid"] == provisioned["name"]
        assert variables.index(selector) == 0, f"{path.name}: the other variables query it"
        references = [
            node["datasource"]
            for node in walk_json(board)
            if isinstance(node, dict) and "datasource" in node and node is not selector
        ]
        assert references, path.name
        for reference in references:
            if isinstance(reference, dict) and reference.get("uid") == GRAFANA_BUILTIN_UID:
                continue
            assert reference == DATASOURCE_REFERENCE, f"{path.name}: {reference}"
        readers = [*dashboard_panels(board), *(v for v in variables if v is not selector)]
        for reader in readers:
            where = f"{path.name}: {reader.get('title') or reader['name']!r}"
            assert reader.get("datasource") == DATASOURCE_REFERENCE, where
            for target in reader.get("targets", []):
                assert target.get("datasource") == DATASOURCE_REFERENCE, where
        panel_ids = [
            node["id"]
            for node in walk_json(board["panels"])
            if isinstance(node, dict) and "gridPos" in node
        ]
        assert len(panel_ids) == len(set(panel_ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard_panels(board):
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"


def test_dashboards_use_metrics_and_labels_enrichproxy_writes() -> None:
    """Self-metrics exist in server/telemetry.py; view series carry only the labels their view
    keeps."""
    families = telemetry_families()
    views = view_keep()
    problems = []
    for path, board in dashboards().items():
        for where, expr in dashboard_queries(board):
            query = as_prometheus_query(expr)
            problems += [
                f"{path.name} {where}: {p}" for p in label_problems(query, families, views)
            ]
        text = json.dumps(board)
        problems += [
            f"{path.name}: {name} is not in server/telemetry.py"
            for name in METRIC_NAME_RE.findall(text)
            if name not in families
        ]
    assert not problems, "\n".join(problems)
    text = (DASHBOARD_DIR / "business.json").read_text(encoding="utf-8")
    assert 'order_create_failed_total{view=\\"business\\"' in text
    text = (DASHBOARD_DIR / "operational.json").read_text(encoding="utf-8")
    assert 'order_create_failed_total{view=\\"operational\\"' in text


def populate(telemetry: Telemetry, views: list[str], destination: str, rules: list[str]) -> None:
    """One child of every metric, as a busy enrichproxy has them."""
    t = telemetry
    t.record_build("native")
    t.record_config_loaded(time.time())
    for code, count in (("204", 100), ("400", 1), ("503", 2)):
        t.requests.labels(code).inc(count)
    t.request_duration.observe(0.004)
    t.received_bytes.inc(100_000)
    t.received_series.inc(7_400)
    t.received_samples.inc(7_400)
    t.received_metadata.inc(4)
    t.samples_dropped.labels("unsummable_quantile").inc(3)
    t.exemplars_dropped.inc(1)
    t.label_conflicts.inc(1)
    t.series_cache_entries.set(74)
    t.input_series_limit.set(2_000_000)
    for rule in rules:
        for result, count in (("hit", 60), ("miss", 2), ("no_key", 5)):
            t.lookups.labels(rule, result).inc(count)
        t.metadata_documents.labels(rule).set(3)
        t.metadata_last_success.labels(rule).set(time.time())
        t.metadata_age.labels(rule).set(4.2)
        t.metadata_reloads.labels(rule, "success").inc(3)
        t.metadata_reloads.labels(rule, "failure").inc(1)
        t.metadata_changes.labels(rule, "update").inc(2)
        for state in ("starting", "following", "polling", "down"):
            t.metadata_follow_state.labels(rule, state).set(state == "following")
        t.metadata_stale.labels(rule).set(0)
        t.metadata_rejected.labels(rule, "missing_key").inc(1)
    for view in views:
        t.view_samples_dropped.labels(view, "late").inc(1)
        t.output_series.labels(view).set(12)
        t.aggregation_input_limit.labels(view).set(0)
        t.aggregation_inputs.labels(view).set(74)
        t.open_windows.labels(view).set(2)
        t.aggregation_lag.labels(view).set(1.5)
        t.output_samples.labels(view).inc(240)
    for code, count in (("204", 40), ("503", 3), ("error", 1)):
        t.forward_requests.labels(destination, code).inc(count)
    t.forward_retries.labels(destination).inc(4)
    t.forward_samples.labels(destination).inc(480)
    t.forward_dropped.labels(destination, "400").inc(2)
    t.forward_duration.labels(destination).observe(0.02)
    t.queue_samples.labels(destination).set(10)
    t.queue_capacity.labels(destination).set(200_000)
    t.ready.set(1)


def view_outputs(config: Config, now_ms: int) -> list[OutputSample]:
    """What enrichproxy writes for the last minutes of the captured scrape of the demo's pods.

    The payload is a real Prometheus request (tests/fixtures): its series are replayed every
    5 s with rising values through enrichproxy's own pipeline and conf/metadata.yaml's table.
    """
    pipeline = Pipeline(config)
    documents = load_yaml(METADATA_YAML)
    pipeline.set_table(
        build_table(documents, config.metadata.enrich_rules[0], 1, now_ms / 1000).table
    )
    types = decode_write_request(decompress((FIXTURES / "metadata-only.snappy").read_bytes()))
    scrape = decode_write_request(decompress((FIXTURES / "scrape-74-series.snappy").read_bytes()))
    pipeline.apply(types, now_ms)
    step_ms, steps = 5_000, 48
    outputs: list[OutputSample] = []
    for step in range(steps):
        timestamp = now_ms - (steps - step) * step_ms
        request = DecodedRequest(
            series=[
                RawSeries(series.label_bytes, [(timestamp, series.samples[0][1] + step)])
                for series in scrape.series
            ]
        )
        pipeline.apply(request, now_ms)
        for output in pipeline.flush(timestamp):
            outputs += output.samples
    for output in pipeline.flush(now_ms, final=True):
        outputs += output.samples
    return outputs


@pytest.mark.integration
def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    prometheus_factory: PrometheusFactory,
) -> None:
    """Prometheus accepts every panel and variable query, and each one finds series.

    The Prometheus plays prometheus-sink: it scrapes an exposition of enrichproxy's telemetry
    (one child of every metric) and receives the views of the compose configuration.
    """
    config = parse_config(load_yaml(COMPOSE_CONFIG))
    telemetry = Telemetry()
    populate(
        telemetry,
        [view.name for view in config.views],
        config.remote_write[0].name,
        [rule.name for rule in config.metadata.enrich_rules],
    )
    with Exporter(telemetry.registry) as exporter:
        sink = prometheus_factory(
            prometheus_config(scrape_configs=[scrape_config("enrichproxy", [exporter.target])]),
            receiver=True,
            name="sink",
        )
        outputs = view_outputs(config, int(time.time() * 1000))
        assert outputs
        for start in range(0, len(outputs), 2_000):
            status, answer = post_remote_write(
                sink.write_url, encode_batch(outputs[start : start + 2_000])
            )
            assert status == 204, answer
        sink.wait_for('count_over_time(enrichproxy_ready{job="enrichproxy"}[1m]) >= 3')
        problems = []
        for path, board in dashboards().items():
            for where, expr in dashboard_queries(board):
                query = as_prometheus_query(expr)
                try:
                    result = sink.query(query)
                except Exception as exc:  # PrometheusAPIError names the query and the reason
                    problems.append(f"{path.name} {where}: {exc}")
                    continue
                if not result:
                    problems.append(f"{path.name} {where}: no series for {query}")
        assert not problems, "\n".join(problems)


# --- Kubernetes ---------------------------------------------------------------------------------


def kubernetes_documents() -> list[JSON]:
    documents = [d for d in yaml.safe_load_all(KUBERNETES_FILE.read_text(encoding="utf-8")) if d]
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document), document
    return documents


def kubernetes_pod(documents: list[JSON]) -> JSON:
    workloads = [d for d in documents if d["kind"] in ("StatefulSet", "Deployment")]
    assert len(workloads) == 1
    pod: JSON = workloads[0]["spec"]["template"]["spec"]
    return pod


def config_maps(documents: list[JSON]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}


def test_kubernetes_example_runs_enrichproxy_beside_prometheus() -> None:
    documents = kubernetes_documents()
    pod = kubernetes_pod(documents)
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"prometheus", "enrichproxy"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {
        t["metadata"]["name"]
        for d in documents
        for t in d.get("spec", {}).get("volumeClaimTemplates", [])
    }
    for container in containers.values():
        image = container["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes or mount["name"] in claims, mount

    maps = config_maps(documents)
    proxy = containers["enrichproxy"]
    env = {e["name"]: e["value"] for e in proxy["env"]}
    config_file = Path(env["ENRICHPROXY_CONFIG"])
    mount = next(m for m in proxy["volumeMounts"] if m["mountPath"] == str(config_file.parent))
    config_map = volumes[mount["name"]]["configMap"]["name"]
    config = parse_config(yaml.safe_load(maps[config_map][config_file.name]))
    assert config.listen == env["ENRICHPROXY_LISTEN"] == f"127.0.0.1:{LISTEN_PORT}"
    assert f"127.0.0.1:{LISTEN_PORT}/-/healthy" in " ".join(
        proxy["livenessProbe"]["exec"]["command"]
    )

    prometheus = yaml.safe_load(maps["prometheus-config"]["prometheus.yml"])
    assert [w["url"] for w in prometheus["remote_write"]] == [
        f"http://127.0.0.1:{LISTEN_PORT}/api/v1/write"
    ]
    flags = containers["prometheus"]["args"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in flags


@pytest.mark.integration
def test_kubernetes_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes service discovery ("field
    kubernetes_sd_configs not found"), so those entries are checked here and swapped for a
    static target before promtool checks the rest (relabelling, remote write, rule files)."""
    promtool = tool(PROMTOOL, "prometheus")
    maps = config_maps(kubernetes_documents())
    prometheus = yaml.safe_load(maps["prometheus-config"]["prometheus.yml"])
    for scrape in prometheus["scrape_configs"]:
        for discovery in scrape.pop("kubernetes_sd_configs", []):
            assert set(discovery) <= {"role", "namespaces", "selectors", "api_server"}
            assert discovery["role"] in ("pod", "service", "endpoints", "node", "ingress")
            scrape.setdefault("static_configs", []).append({"targets": ["10.0.0.1:8080"]})
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(prometheus), encoding="utf-8")
    run_tool([promtool, "check", "config", str(path)])


# --- documentation ------------------------------------------------------------------------------


def documented_default(value: object, field_name: str) -> str:
    """How docs/configuration.md spells a default."""
    if field_name.endswith("_ms"):
        assert isinstance(value, int)
        return format_duration_ms(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if field_name == "max_decoded_bytes":
        assert isinstance(value, int)
        return f"{value // 1024**2}MiB"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def config_keys() -> list[tuple[str, str | None]]:
    """(YAML path, documented default) of every configuration key, from config/schema.py's
    dataclasses.

    YAML keys are the field names without ``_ms``. The default is None where there is none to
    check: required keys, optional keys without a default, and derived ones.
    """
    sections: list[tuple[str, Any]] = [
        ("", Config()),
        ("metadata.", MetadataConfig()),
        (
            "metadata.rules[].",
            EnrichRule(
                name="", database="", collection="", key_labels=(), key_fields=(), fields=()
            ),
        ),
        ("views[].", ViewConfig(name="", keep=())),
        ("aggregation.", AggregationConfig()),
        ("remote_write[].", RemoteWriteConfig(url="", name="")),
        ("remote_write[].tls_config.", ClientTLSConfig()),
        ("limits.", LimitsConfig()),
    ]
    keys: list[tuple[str, str | None]] = []
    for prefix, instance in sections:
        for field in fields(instance):
            if not prefix and field.name in CONFIG_SECTIONS:
                continue
            key = prefix + field.name.removesuffix("_ms")
            key = DOCUMENTED_AS.get(key, key)
            value = getattr(instance, field.name)
            if value is None or key in UNCHECKED_DEFAULTS:
                keys.append((key, None))
            else:
                keys.append((key, documented_default(value, field.name)))
    return keys


def exported_metric_names() -> set[str]:
    """Metric names as a user queries them (counters with _total, histograms by base name)."""
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in Telemetry().registry.collect()
    }


def test_configuration_doc_lists_every_key_with_its_default() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\|\s*`([\w.\[\]]+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if match:
            rows[match[1]] = match[3].strip()
    missing = []
    for key, default in config_keys():
        if key not in rows:
            missing.append(f"{key}: no table row")
        elif default is not None and rows[key] != f"`{default}`":
            missing.append(f"{key}: documented default {rows[key]}, code says `{default}`")
    assert not missing, "\n".join(missing)
    # The complete example parses.
    examples = re.findall(r"```yaml\n(# enrichproxy\.yaml.*?)```", text, re.S)
    assert examples, "docs/configuration.md needs a complete example starting '# enrichproxy.yaml'"
    for example in examples:
        parse_config(yaml.safe_load(example))


def test_operations_doc_lists_every_metric_and_alert() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    undocumented = sorted(name for name in exported_metric_names() if f"`{name}`" not in text)
    assert undocumented == [], "metrics missing from docs/operations.md"
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in text, f"{rule['alert']} is not in docs/operations.md"
