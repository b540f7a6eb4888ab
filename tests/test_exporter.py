"""loadgen's exporter mode: the fleet as a scrape target (compose's demo-app)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from realparts import find_promtool, free_port

from enrichproxy.model import STALE_NAN
from enrichproxy.tools.exporter import families, serve
from enrichproxy.tools.loadgen import Fleet, PodMetadata

PODS = [PodMetadata("checkout-a", "checkout", "orders", "gold")]


def test_families_are_typed_and_leave_out_stale_markers() -> None:
    fleet = Fleet(pods_metadata=PODS)
    samples = fleet.scrape(1000).samples
    exposed = {family.name: family for family in families(samples)}
    assert exposed["order_create_failed"].type == "counter"
    assert exposed["checkout_inflight_requests"].type == "gauge"
    assert exposed["http_request_duration_seconds"].type == "histogram"
    assert sum(len(f.samples) for f in exposed.values()) == len(samples)
    for family in exposed.values():
        for sample in family.samples:
            assert "instance" not in sample.labels  # the scraper adds its own
    stale = [samples[0]._replace(value=STALE_NAN), *samples[1:]]
    assert sum(len(f.samples) for f in families(stale)) == len(samples) - 1


async def test_serves_a_valid_exposition_that_advances() -> None:
    port = free_port()
    task = asyncio.create_task(serve(Fleet(pods_metadata=PODS), "127.0.0.1", port, 0.05))
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        async def scrape() -> str:
            for _ in range(100):
                try:
                    response = await asyncio.to_thread(urllib.request.urlopen, url, timeout=2)
                    with response:
                        return bytes(response.read()).decode()
                except OSError:
                    await asyncio.sleep(0.05)
            raise AssertionError(f"{url} never answered")

        first = await scrape()
        checked = subprocess.run(
            [find_promtool(), "check", "metrics"],
            input=first,
            text=True,
            capture_output=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        totals = {
            f.name: sum(s.value for s in f.samples if s.name.endswith("_total"))
            for f in text_string_to_metric_families(first)
        }
        assert totals["order_create_failed"] >= 0
        await asyncio.sleep(0.3)
        later = await scrape()
        later_totals = {
            f.name: sum(s.value for s in f.samples if s.name.endswith("_total"))
            for f in text_string_to_metric_families(later)
        }
        assert later_totals["order_create_failed"] > totals["order_create_failed"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
