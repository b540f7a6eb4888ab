"""enrichproxy's own metrics as an operator scrapes them: the process and platform collectors,
``enrichproxy_build_info``, the configuration-reload gauges, and an exposition that
``promtool check metrics`` (Debian's, the linter Prometheus ships) finds nothing to say about.

The promtool check reads ``GET /metrics`` of the real app after real traffic (a MongoDB table,
writes, a forwarded window, a refused request and a failed reload), so every labelled family
has children when it is linted.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from inprocess import HEADERS, proxy_of, seed, wait_until, write_body
from prometheus_client.parser import text_string_to_metric_families
from realparts import MongoServer
from sinks import RecordingSink

from enrichproxy import __version__
from enrichproxy.config.schema import load_config
from enrichproxy.server.app import create_app
from enrichproxy.server.telemetry import Telemetry

PROMTOOL = "/usr/bin/promtool"
APT_HINT = "apt-get install -y --no-install-recommends prometheus"

Client = TestClient[Any, Any]
Samples = dict[str, list[tuple[dict[str, str], float]]]

# What the process and platform collectors must add: memory is the first thing to read for a
# proxy whose whole state lives in memory.
PROCESS_METRICS = (
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)


def promtool() -> str:
    """Debian's promtool; fails, never skips, when it is missing."""
    if os.access(PROMTOOL, os.X_OK):
        return PROMTOOL
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(f"promtool is not installed: {APT_HINT}", pytrace=False)
    return found


def promtool_check_metrics(exposition: bytes) -> None:
    """promtool exits 0 and prints nothing for a clean exposition; one line per problem
    (and exit status 3 for lint problems) otherwise."""
    completed = subprocess.run(
        [promtool(), "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (completed.stdout + completed.stderr).decode()
    assert completed.returncode == 0 and not output.strip(), f"promtool check metrics:\n{output}"


def samples(exposition: bytes) -> Samples:
    """Sample name → (labels, value) of a text exposition, parsed by prometheus_client."""
    parsed: Samples = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            parsed.setdefault(sample.name, []).append((sample.labels, sample.value))
    return parsed


def test_a_fresh_registry_has_the_process_and_platform_collectors() -> None:
    telemetry = Telemetry()
    found = samples(telemetry.exposition())
    for name in PROCESS_METRICS:
        assert name in found, f"{name} is not exported"
    ((_, resident),) = found["process_resident_memory_bytes"]
    assert resident > 1024**2  # a Python process with aiohttp loaded: megabytes, not zero
    ((_, started),) = found["process_start_time_seconds"]
    assert abs(started - time.time()) < 24 * 3600
    ((labels, value),) = found["python_info"]
    assert value == 1
    assert labels["version"] == platform.python_version()
    assert "python_gc_collections_total" in found
    # Each Telemetry has collectors of its own: a second one does not collide with the first.
    assert "process_resident_memory_bytes" in samples(Telemetry().exposition())


def test_build_info_names_the_version_python_and_engine() -> None:
    telemetry = Telemetry()
    assert "enrichproxy_build_info" not in samples(telemetry.exposition()), "set at start only"
    telemetry.record_build("native")
    found = samples(telemetry.exposition())
    assert found["enrichproxy_build_info"] == [
        (
            {
                "version": __version__,
                "python_version": platform.python_version(),
                "engine": "native",
            },
            1.0,
        )
    ]
    assert found["enrichproxy_engine_info"] == [({"engine": "native"}, 1.0)]


def test_a_failed_reload_keeps_the_success_timestamp() -> None:
    telemetry = Telemetry()
    telemetry.record_config_loaded(1_000.0)
    telemetry.record_reload(False, 2_000.0)
    found = samples(telemetry.exposition())
    assert found["enrichproxy_config_last_reload_successful"] == [({}, 0.0)]
    assert found["enrichproxy_config_last_reload_success_timestamp_seconds"] == [({}, 1_000.0)]
    telemetry.record_reload(True, 3_000.0)
    found = samples(telemetry.exposition())
    assert found["enrichproxy_config_last_reload_successful"] == [({}, 1.0)]
    assert found["enrichproxy_config_last_reload_success_timestamp_seconds"] == [({}, 3_000.0)]
    assert ({"result": "failure"}, 1.0) in found["enrichproxy_config_reloads_total"]


def test_promtool_finds_a_lint_problem() -> None:
    """The check can fail: a counter without ``_total`` is what promtool lints."""
    bad = b"# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n"
    with pytest.raises(AssertionError, match="counter metrics should have"):
        promtool_check_metrics(bad)


@pytest.mark.integration
async def test_metrics_of_a_running_proxy_pass_promtool_check_metrics(
    tmp_path: Path, mongo: MongoServer, mongo_db_name: str, sink: RecordingSink
) -> None:
    await seed(mongo.uri, mongo_db_name, [{"pod": "a", "service": "checkout"}])
    path = tmp_path / "enrichproxy.yaml"
    document = {
        "metadata": {"mongodb_uri": mongo.uri, "database": mongo_db_name, "timeout": "300ms"},
        "views": [{"name": "ops", "keep": ["service"]}],
        "aggregation": {"interval": "1s", "lateness": "0s"},
        "remote_write": [{"url": sink.url, "min_backoff": "10ms", "max_backoff": "50ms"}],
        "shutdown_timeout": "2s",
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    started = time.time()
    client: Client = TestClient(
        TestServer(create_app(load_config(str(path)), Telemetry(), config_path=str(path)))
    )
    await client.start_server()
    try:
        await wait_until(lambda: proxy_of(client).ready)
        now = int(time.time() * 1000)
        for pod in ("a", "unknown"):
            body = write_body(pod, [(now - 3000, 1), (now - 1000, 2)])
            answer = await client.post("/api/v1/write", data=body, headers=HEADERS)
            assert answer.status == 204, await answer.text()
        refused = await client.post("/api/v1/write", data=b"not snappy", headers=HEADERS)
        assert refused.status == 400
        await wait_until(lambda: bool(sink.accepted_samples()))
        path.write_text("views: [", encoding="utf-8")  # the file is broken: the reload fails
        reload = await client.post("/-/reload")
        assert reload.status >= 400

        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain;")
        exposition = await response.read()
    finally:
        await client.close()

    promtool_check_metrics(exposition)
    found = samples(exposition)
    for name in PROCESS_METRICS:
        assert name in found, f"{name} is not exported"
    ((labels, value),) = found["enrichproxy_build_info"]
    assert value == 1
    assert labels == {
        "version": __version__,
        "python_version": platform.python_version(),
        "engine": proxy_of(client).engine.name,
    }
    assert found["enrichproxy_engine_info"] == [({"engine": labels["engine"]}, 1.0)]
    assert found["enrichproxy_config_last_reload_successful"] == [({}, 0.0)]
    ((_, loaded),) = found["enrichproxy_config_last_reload_success_timestamp_seconds"]
    assert started <= loaded <= time.time(), "the start's load, not the failed reload"
    assert ({"result": "failure"}, 1.0) in found["enrichproxy_config_reloads_total"]
