"""The image and the compose stack, run for real with Podman (`make container-test`).

The session first prepares the machine with deploy/podman/prepare-host.sh (Podman from apt,
the host fixes it needs, stand-ins for the registry images, all cached), then builds the image
once with the README's command. The tests run it alone, with a bad configuration, and as the
compose stack (every service but Grafana, which has no stand-in here) on free ports of
127.0.0.1, and remove everything they started. They skip only where the machine cannot run
containers at all, and say why.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from containers import (
    IMAGE,
    CannotRunContainersError,
    ComposeProject,
    HealthDriver,
    build_image,
    container,
    container_inspect,
    health_report,
    http_get,
    image_inspect,
    logs,
    podman_api,
    prepare_host,
    run,
    wait_until,
)
from realparts import free_port

REPO = Path(__file__).resolve().parent.parent
METADATA_YAML = REPO / "conf" / "metadata.yaml"
LISTEN_PORT = 9201
NON_ROOT_USER = "10001:10001"
# Cold: Podman installed, base and stand-ins built, the image built (about 8 min on 2 cores).
SESSION_TIMEOUT_S = 1800
STACK_SERVICES = ["mongodb", "prometheus-sink", "enrichproxy", "demo-app", "prometheus-source"]
SKIPPED_SERVICES = {"grafana": "no stand-in image here (no registry; not in Debian, PyPI or npm)"}
PORT_VARIABLES = {
    "ENRICHPROXY_PORT": "enrichproxy",
    "PROMETHEUS_SINK_PORT": "prometheus-sink",
    "PROMETHEUS_SOURCE_PORT": "prometheus-source",
    "GRAFANA_PORT": "grafana",
}
START_TIMEOUT_S = 30.0
# up -d waits on each health check in turn: mongodb's start period is 20 s, the others' 10 s.
UP_TIMEOUT_S = 420.0
# A window of the views (aggregation.interval 15s) closes after the source's scrape (5 s) and
# batch (5 s); the first outputs reach the sink within about a minute.
SINK_TIMEOUT_S = 150.0
# A change stream applies a change within about 100 ms; "seconds" is the promise.
CHANGE_VISIBLE_S = 10.0
STOP_TIMEOUT_S = 60
SIGTERM_EXIT_S = 10.0
BAD_CONFIG_EXIT_S = 30.0

pytestmark = [pytest.mark.container, pytest.mark.timeout(SESSION_TIMEOUT_S)]


@pytest.fixture(scope="session")
def podman_ready() -> float:
    """The machine runs containers; the seconds its preparation took."""
    try:
        return prepare_host()
    except CannotRunContainersError as exc:
        pytest.skip(f"this machine cannot run containers: {exc}")


@pytest.fixture(scope="session")
def image(podman_ready: float) -> str:
    """The image, built once per session with the README's command."""
    seconds = build_image()
    print(f"\nhost prepared in {podman_ready:.1f} s, image built in {seconds:.1f} s")
    return IMAGE


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def query(port: int, promql: str) -> list[dict[str, Any]]:
    status, body = http_get(f"http://127.0.0.1:{port}/api/v1/query?{urlencode({'query': promql})}")
    assert status == 200, f"query {promql}: {status} {body}"
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


# --- the image alone ----------------------------------------------------------------------------


def test_image_runs_non_root_healthy_native_and_stops_on_sigterm(image: str) -> None:
    config = image_inspect(image)
    assert config["Config"]["User"] == NON_ROOT_USER
    healthcheck = config.get("Healthcheck") or {}
    assert healthcheck.get("Test"), (
        "the image has no HEALTHCHECK: build it with --format docker (the OCI format drops it)"
    )

    port = free_port()
    with container(["-p", f"127.0.0.1:{port}:{LISTEN_PORT}", image], unique("ep-image")) as name:
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: http_get(f"{base}/-/healthy")[0] == 200,
            START_TIMEOUT_S,
            "/-/healthy",
            interval=0.2,
            explain=lambda: health_report(name),
        )
        # No MongoDB at the default configuration's address: served, but not ready.
        status, body = http_get(f"{base}/-/ready")
        assert status == 503 and "metadata" in body, (status, body)
        assert run(["podman", "exec", name, "id", "-u"]).stdout.strip() == "10001"
        check = run(["podman", "healthcheck", "run", name], check=False)
        assert check.returncode == 0, f"the image's health check fails:\n{health_report(name)}"
        assert "engine=native" in logs(name), logs(name)
        status, metrics = http_get(f"{base}/metrics")
        assert 'enrichproxy_engine_info{engine="native"} 1.0' in metrics

        started = time.monotonic()
        run(["podman", "stop", "--time", str(STOP_TIMEOUT_S), name])
        stopped_in = time.monotonic() - started
        state = container_inspect(name)["State"]
        assert state["ExitCode"] == 0, f"SIGTERM: exit code {state['ExitCode']}\n{logs(name)}"
        assert stopped_in < SIGTERM_EXIT_S, f"SIGTERM took {stopped_in:.1f} s"
        assert "received SIGTERM" in logs(name)


def test_image_exits_with_the_error_on_a_bad_configuration(image: str, tmp_path: Path) -> None:
    bad = tmp_path / "enrichproxy.yaml"
    bad.write_text(
        "listen: 0.0.0.0:9201\nviews:\n  - name: broken\n    keep: [service, 1bad]\n",
        encoding="utf-8",
    )
    bad.chmod(0o644)
    mount = f"{bad}:/etc/enrichproxy/enrichproxy.yaml:ro,z"
    with container(["-v", mount, image], unique("ep-badconfig")) as name:
        wait_until(
            lambda: container_inspect(name)["State"]["Status"] == "exited",
            BAD_CONFIG_EXIT_S,
            "the container to exit on a bad configuration",
            interval=0.2,
            explain=lambda: logs(name),
        )
        state = container_inspect(name)["State"]
        output = logs(name)
        assert state["ExitCode"] != 0, output
        assert "views[0].keep[1]" in output and "1bad" in output, output


# --- the compose stack --------------------------------------------------------------------------


@pytest.fixture
def stack(image: str, tmp_path: Path) -> Iterator[ComposeProject]:
    """compose.yaml up (but Grafana) on free ports, health checks passed; removed afterwards."""
    for service, reason in SKIPPED_SERVICES.items():
        print(f"\ncompose service {service} left out: {reason}")
    with podman_api(tmp_path / "podman.sock") as docker_host:
        project = ComposeProject(
            name=unique("eptest"),
            docker_host=docker_host,
            ports={variable: free_port() for variable in PORT_VARIABLES},
        )
        try:
            with HealthDriver(project.containers):
                started = time.monotonic()
                project.compose("up", "-d", "--no-build", *STACK_SERVICES, timeout=UP_TIMEOUT_S)
                print(f"stack up and healthy in {time.monotonic() - started:.1f} s")
                unhealthy = [
                    name
                    for name in project.containers()
                    if (container_inspect(name)["State"].get("Health") or {}).get("Status")
                    != "healthy"
                ]
                # prometheus-source, last in line, is started but not waited on by compose.
                wait_until(
                    lambda: all(
                        (container_inspect(n)["State"].get("Health") or {}).get("Status")
                        == "healthy"
                        for n in unhealthy
                    ),
                    60,
                    f"health checks of {unhealthy}",
                    explain=project.report,
                )
                yield project
        finally:
            project.down()


def port(project: ComposeProject, service: str) -> int:
    variable = next(v for v, s in PORT_VARIABLES.items() if s == service)
    return project.ports[variable]


def test_compose_stack_enriches_aggregates_and_follows_mongodb(stack: ComposeProject) -> None:
    proxy = f"http://127.0.0.1:{port(stack, 'enrichproxy')}"
    sink = port(stack, "prometheus-sink")

    status, body = http_get(f"{proxy}/-/ready")
    assert status == 200, f"enrichproxy not ready: {body}\n{stack.report()}"
    status, metrics = http_get(f"{proxy}/metrics")
    assert 'enrichproxy_engine_info{engine="native"} 1.0' in metrics
    assert re.search(
        r'enrichproxy_metadata_follow_state\{[^}]*state="following"[^}]*\} 1\.0', metrics
    ), "enrichproxy does not follow MongoDB with a change stream:\n" + "\n".join(
        line for line in metrics.splitlines() if "follow_state" in line
    )

    # Remote-write traffic of the demo's pods straight from the host, next to the source's.
    loadgen = run(
        [
            str(REPO / ".venv" / "bin" / "python"),
            "-m",
            "enrichproxy",
            "loadgen",
            "--url",
            f"{proxy}/api/v1/write",
            "--pods-from",
            str(METADATA_YAML),
            "--rate",
            "500",
            "--duration",
            "3s",
            "--json",
        ]
    )
    report = json.loads(loadgen.stdout.strip().splitlines()[-1])
    assert report["requests"] and set(report["requests"]) == {"204"}, report

    def views_arrived() -> bool:
        views = {
            str(item["metric"]["view"])
            for item in query(sink, 'count by (view) (order_create_failed_total{view!=""})')
        }
        return {"business", "operational"} <= views

    wait_until(views_arrived, SINK_TIMEOUT_S, "both views in prometheus-sink", explain=stack.report)
    for item in query(sink, 'order_create_failed_total{view="business"}'):
        labels = item["metric"]
        assert "pod" not in labels and {"service", "tier"} <= set(labels), labels
    operational = query(sink, 'order_create_failed_total{view="operational"}')
    assert {str(item["metric"]["service"]) for item in operational} >= {
        table_service("checkout-6c8f9"),
        table_service("payment-5b4c3"),
    }

    # The proxy's alerts are loaded in the sink, and it scrapes the proxy.
    status, body = http_get(f"http://127.0.0.1:{sink}/api/v1/rules")
    alerts = {
        rule["name"]
        for group in json.loads(body)["data"]["groups"]
        for rule in group["rules"]
        if rule["type"] == "alerting"
    }
    assert {"EnrichproxyDown", "EnrichproxyNotReady"} <= alerts, alerts
    wait_until(
        lambda: bool(query(sink, 'up{job="enrichproxy"} == 1')),
        60,
        "prometheus-sink scraping enrichproxy",
    )

    # A metadata change reaches the output within seconds, through the change stream.
    tier = unique("tier")
    mongodb = stack.container_of("mongodb")
    run(
        [
            "podman",
            "exec",
            mongodb,
            "mongosh",
            "--quiet",
            "metrics",
            "--eval",
            f'db.pod_metadata.updateOne({{pod: "payment-5b4c3"}}, {{$set: {{tier: "{tier}"}}}})',
        ]
    )
    changed = time.monotonic()
    series = (
        'order_create_failed_total{pod="payment-5b4c3",endpoint="/orders",error_type="timeout"}'
    )

    def explained_tier() -> str | None:
        status, body = http_get(
            f"{proxy}/debug/explain?{urlencode({'series': series})}", accept="application/json"
        )
        assert status == 200, body
        enriched = json.loads(body)["enriched"] or {}
        return enriched.get("tier")

    wait_until(
        lambda: explained_tier() == tier,
        CHANGE_VISIBLE_S,
        f"the new tier {tier} in enrichproxy's table",
        interval=0.2,
        explain=lambda: health_report(stack.container_of("enrichproxy")),
    )
    print(f"metadata change applied in {time.monotonic() - changed:.2f} s")
    wait_until(
        lambda: bool(
            query(
                sink,
                f'{{view="business",service="{table_service("payment-5b4c3")}",tier="{tier}"}}',
            )
        ),
        SINK_TIMEOUT_S,
        f"business series with tier {tier} in prometheus-sink",
        explain=stack.report,
    )


def table_service(pod: str) -> str:
    """The service conf/metadata.yaml (the stack's seeded table) gives ``pod``."""
    rows: list[dict[str, str]] = yaml.safe_load(METADATA_YAML.read_text())
    [service] = [row["service"] for row in rows if row["pod"] == pod]
    return service
