"""Remote write 2.0 with the real parts: the load generator speaking 2.0 to a real enrichproxy,
which forwards to Debian's Prometheus 2.42 configured as a 2.0 destination.

No 2.0 sender or receiver installs on these machines: Prometheus 2.42 predates 2.0. As a
downstream it reads a 2.0 body as an empty 1.0 request and answers 204 without the written
counts a 2.0 receiver must send; the proxy must notice, fall back to 1.0 for that destination
and send the batch again, so that the views still arrive. What a 2.0 receiver sees is covered
against the official schema in tests/test_codec_v2.py and tests/test_forward_v2.py.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
from realparts import MongoServer, PrometheusProcess, ProxyProcess, sample_value

from enrichproxy.tools.loadgen import EXIT_OK, add_arguments, run
from enrichproxy.wire.v2 import MESSAGE_V2

pytestmark = pytest.mark.integration


def proxy_config(mongo_uri: str, database: str, downstream: str) -> dict[str, object]:
    return {
        "metadata": {"mongodb_uri": mongo_uri, "database": database, "timeout": "1s"},
        "views": [{"name": "business", "keep": ["service", "tier"]}],
        "aggregation": {"interval": "1s", "lateness": "1s"},
        "remote_write": [{"url": downstream, "name": "sink", "protobuf_message": MESSAGE_V2}],
    }


async def test_loadgen_2_0_through_the_proxy_to_a_prometheus_that_predates_2_0(
    tmp_path: Path,
    mongo: MongoServer,
    mongo_db_name: str,
    prometheus_receiver: PrometheusProcess,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    seed = ["--seed-metadata", mongo.uri, "--database", mongo_db_name, "--pods", "10"]
    assert await run(parser.parse_args(seed)) == EXIT_OK  # the table the proxy needs first
    proxy = ProxyProcess(
        tmp_path / "proxy", proxy_config(mongo.uri, mongo_db_name, prometheus_receiver.write_url)
    )
    await asyncio.to_thread(proxy.start)
    try:
        flags = ["--url", proxy.write_url, "--pods", "10", "--rate", "2000", "--duration", "3s"]
        code = await run(parser.parse_args([*flags, "--protocol", "2.0", "--quiet"]))
        out = capsys.readouterr().out
        assert code == EXIT_OK, out
        assert "requests by status: 204: " in out
        # Every lookup found its pod: the 2.0 labels were read right.
        assert (proxy.metric("enrichproxy_lookups_total", result="miss") or 0) == 0
        assert (proxy.metric("enrichproxy_lookups_total", result="hit") or 0) > 0
        result = await asyncio.to_thread(
            prometheus_receiver.wait_for,
            'sum(order_create_failed_total{view="business"})',
            lambda r: bool(r) and sample_value(r[0]) > 0,
            30,
        )
        assert sample_value(result[0]) > 0
        fallbacks = proxy.metric("enrichproxy_forward_protocol_fallbacks_total", destination="sink")
        assert fallbacks == 1
    finally:
        await asyncio.to_thread(proxy.stop)
    assert prometheus_receiver.rejection_lines() == []
