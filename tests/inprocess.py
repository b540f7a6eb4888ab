"""enrichproxy's app run in the test's own event loop, for component and metadata tests.

The app is the real one (create_app) behind aiohttp's TestServer on a free 127.0.0.1 port;
MongoDB and the downstream are whatever the test points the config at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient, WriteConcern

from enrichproxy.config.schema import Config, parse_config
from enrichproxy.server.app import PROXY, Proxy, create_app
from enrichproxy.server.telemetry import Telemetry
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request

HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
Client = TestClient[Any, Any]


def config_for(mongo_uri: str, database: str, sink_url: str, **sections: Any) -> Config:
    """A small valid config; each keyword replaces keys of that top-level section."""
    document: dict[str, Any] = {
        "metadata": {
            "mongodb_uri": mongo_uri,
            "database": database,
            "refresh_interval": "200ms",
            "timeout": "300ms",
        },
        "views": [{"name": "ops", "keep": ["service"]}],
        "aggregation": {"interval": "1s", "lateness": "0s"},
        "remote_write": [{"url": sink_url, "min_backoff": "10ms", "max_backoff": "50ms"}],
        "shutdown_timeout": "2s",
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            document[key] = {**document.get(key, {}), **value}
        else:
            document[key] = value
    return parse_config(document)


def write_body(pod: str, samples: list[tuple[int, float]], name: str = "jobs_total") -> bytes:
    labels = (("__name__", name), ("pod", pod))
    return compress(encode_write_request([(encode_labels(labels), samples)]))


async def seed(uri: str, database: str, documents: list[dict[str, Any]]) -> None:
    """Insert with a journaled write, so a SIGKILL of the server right after keeps them."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        collection = client[database].get_collection(
            "pod_metadata", write_concern=WriteConcern(j=True)
        )
        await collection.insert_many(documents)
    finally:
        await client.close()


async def start_app(config: Config, started: list[Client]) -> Client:
    """Start the app; ``started`` collects clients for the test's teardown to close."""
    client: Client = TestClient(TestServer(create_app(config, Telemetry())))
    await client.start_server()
    started.append(client)
    return client


async def wait_until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Poll ``check`` (sync or async) every 20 ms until true; TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            outcome = check()
            if await outcome if isinstance(outcome, Awaitable) else outcome:
                return
            await asyncio.sleep(0.02)


def proxy_of(client: Client) -> Proxy:
    app = client.app
    assert app is not None
    proxy: Proxy = app[PROXY]
    return proxy


def metric(client: Client, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for family in proxy_of(client).telemetry.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def is_ready(client: Client) -> bool:
    response = await client.get("/-/ready")
    return response.status == 200
