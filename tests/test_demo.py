"""``make demo``: the worked example literally, then the load, and links that work.

Each test runs the demo as ``make demo`` does (``python -m enrichproxy demo`` with the shipped
conf/), with its real parts: secantusdb, a downstream Prometheus, the proxy and the load
generator. Only the load is shorter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from realparts import poll_until

from enrichproxy.tools.demo import KEEP_RUNNING_HINT

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
DEMO = [
    sys.executable,
    "-m",
    "enrichproxy",
    "demo",
    "--config",
    str(REPO / "conf" / "enrichproxy.yaml"),
    "--metadata",
    str(REPO / "conf" / "metadata.yaml"),
    "--duration",
    "3s",
    "--rate",
    "1000",
]

# The worked example of the design, each line as the demo must print it: the input, the row
# of the table, the enriched series, and both views as the downstream Prometheus holds them.
WORKED_EXAMPLE = [
    "input, remote-written as Prometheus sends it:",
    '  order_create_failed_total{pod="checkout-6c8f9",endpoint="/orders",error_type="timeout"} 37',
    "table row (MongoDB metrics.pod_metadata):",
    "  {pod: checkout-6c8f9, service: checkout-service, team: ecommerce, tier: critical}",
    "enriched series (the proxy's /debug/explain):",
    '  order_create_failed_total{endpoint="/orders",error_type="timeout",'
    'service="checkout-service",team="ecommerce",tier="critical"} 37',
    "views, as the downstream Prometheus holds them:",
    '  order_create_failed_total{endpoint="/orders",error_type="timeout",'
    'service="checkout-service",view="operational"} 37',
    '  order_create_failed_total{service="checkout-service",tier="critical",view="business"} 37',
]


def assert_tells_the_story(out: str) -> None:
    lines = out.splitlines()
    start = lines.index("== The worked example: one series through enrichproxy")
    assert lines[start + 1 : start + 1 + len(WORKED_EXAMPLE)] == WORKED_EXAMPLE, out
    load = lines.index(
        "== The load: the pods of " + str(REPO / "conf" / "metadata.yaml") + " for 3s"
    )
    assert load > start
    report = "\n".join(lines[load:])
    assert "target:             1,000 samples/s, achieved " in report
    assert "limited by:" in report
    assert "nan" not in out.lower()


@pytest.mark.timeout(180)
def test_demo_replays_the_worked_example_then_the_load_and_says_how_to_stay(
    tmp_path: Path,
) -> None:
    completed = subprocess.run(
        DEMO, cwd=tmp_path, capture_output=True, text=True, timeout=170, check=False
    )
    out = completed.stdout
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert_tells_the_story(out)
    # What the load made of the failure counters, per view, after the proxy emitted its windows.
    assert "== view=business: " in out and 'tier="standard",view="business"}' in out
    # The stack stops at the end: no link to it, but how to keep it running.
    tail = out[out.index("The stack stops now") :]
    assert KEEP_RUNNING_HINT in tail
    assert "http://" not in tail
    assert "/graph" not in out
    # The demo keeps its files in its own temporary directory, not in ./data.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(180)
def test_kept_running_the_printed_link_works_until_ctrl_c(tmp_path: Path) -> None:
    output = tmp_path / "demo.out"
    with output.open("w") as sink:
        # Its own process group: if the test fails, the stack it started goes with it.
        process = subprocess.Popen(
            [*DEMO, "--keep-running"],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        poll_until(
            lambda: "== Running until Ctrl-C" in output.read_text() or process.poll() is not None,
            150,
            "the demo to say it keeps running",
            interval=0.5,
        )
        out = output.read_text()
        assert process.poll() is None, out
        assert_tells_the_story(out)
        lines = out.splitlines()
        link = lines[lines.index("== Running until Ctrl-C, the load going on; look around:") + 1]
        link = link.strip()
        assert link.startswith("http://127.0.0.1:") and "/graph?" in link, link
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(link, timeout=5) as response:
            assert response.status == 200
            assert b"Prometheus" in response.read()
        # The load goes on meanwhile: the business view keeps growing downstream.
        base = link.split("/graph?")[0]
        query = (
            base + "/api/v1/query?query=sum(order_create_failed_total%7Bview%3D%22business%22%7D)"
        )

        def business_total() -> float:
            with opener.open(query, timeout=5) as response:
                import json

                result = json.load(response)["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0

        first = business_total()
        poll_until(lambda: business_total() > first, 20, "the business view to grow", 0.5)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    out = output.read_text()
    assert process.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert "interrupted after " in out  # the load's report, printed at Ctrl-C
    assert out.rstrip().endswith("stopping …"), out[-2000:]
    time.sleep(0.5)
    with pytest.raises(OSError):  # and the stack is gone with it
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(link, timeout=2)
