"""Fixtures for integration tests against real parts (helpers live in realparts.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from engines import ENGINE_VARIABLE, engine_kind
from realparts import (
    Exporter,
    MissingBinaryError,
    MongoProcess,
    MongoServer,
    PrometheusFactory,
    PrometheusProcess,
    find_prometheus,
)
from sinks import RecordingSink


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        choices=["native", "python"],
        default="native",
        help="the engine every test runs against (make test runs both)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Before test modules are imported: they and every `serve` child read it.
    os.environ[ENGINE_VARIABLE] = config.getoption("--engine")


def pytest_report_header(config: pytest.Config) -> str:
    return f"engine: {engine_kind()}"


@pytest.fixture(autouse=True, scope="session")
def engine_under_test() -> Iterator[str]:
    """Apps created in process run the engine under test where their config says ``auto``."""
    from enrichproxy.engine import factory
    from enrichproxy.server import app

    kind = engine_kind()
    make_engine = factory.make_engine

    def make_engine_under_test(config: Any) -> Any:
        if config.engine == "auto":
            config = replace(config, engine=kind)
        return make_engine(config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app, "make_engine", make_engine_under_test)
        yield kind


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the prometheus binary; fails (never skips) when it is not installed."""
    try:
        return find_prometheus()
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """secantusdb in this process for the whole session; use ``mongo_db_name`` per test."""
    server = MongoServer(tmp_path_factory.mktemp("secantus"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_db_name(mongo: MongoServer) -> Iterator[str]:
    """A database name no other test uses on ``mongo``; dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    yield name
    mongo.drop_database(name)


@pytest.fixture
def mongo_process(tmp_path: Path) -> Iterator[MongoProcess]:
    """secantusdb as a started child process, for tests that kill and restart MongoDB."""
    process = MongoProcess(tmp_path / "secantusd")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def prometheus_receiver(tmp_path: Path, prometheus_bin: str) -> Iterator[PrometheusProcess]:
    """A started Prometheus with the remote-write receiver on (``.write_url``)."""
    process = PrometheusProcess(
        tmp_path / "prometheus-receiver", receiver=True, binary=prometheus_bin, name="receiver"
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path, prometheus_bin: str) -> Iterator[PrometheusFactory]:
    """``prometheus_factory(config, receiver=False, name="sender")`` starts one more Prometheus."""
    factory = PrometheusFactory(tmp_path / "prometheus", binary=prometheus_bin)
    yield factory
    factory.close()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    """A started exporter with an empty registry (``.registry``, ``.target``)."""
    with Exporter() as started:
        yield started


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    """A started in-process remote-write receiver that records what it accepts."""
    receiver = RecordingSink()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[TestClient[Any, Any]]]:
    """In-process apps started by a test (tests/inprocess.py start_app); closed afterwards."""
    started: list[TestClient[Any, Any]] = []
    yield started
    for client in started:
        await client.close()
