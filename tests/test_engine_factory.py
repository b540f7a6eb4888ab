"""Which engine runs (``engine`` in the configuration), and how the server says so: the start's
log line, ``enrichproxy_engine_info`` and ``enrichproxy_build_info``."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
import yaml

from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine.factory import make_engine
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.errors import ConfigError
from enrichproxy.server.app import create_app
from enrichproxy.server.telemetry import Telemetry

MINIMAL: dict[str, Any] = {
    "views": [{"name": "ops", "keep": ["service"]}],
    "remote_write": [{"url": "http://127.0.0.1:9090/api/v1/write"}],
}


def config_with(engine: str) -> Config:
    return parse_config(yaml.safe_load(yaml.safe_dump({**MINIMAL, "engine": engine})))


@pytest.fixture
def without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """The native extension as where it is not built: importing it fails."""
    monkeypatch.setitem(sys.modules, "enrichproxy.engine.native", None)


def test_python_is_the_reference_engine() -> None:
    engine, why = make_engine(config_with("python"))
    assert isinstance(engine, Pipeline)
    assert engine.name == "python"
    assert "engine: python" in why


@pytest.mark.usefixtures("without_native")
def test_auto_falls_back_to_python_and_says_why() -> None:
    engine, why = make_engine(config_with("auto"))
    assert engine.name == "python"
    assert "native extension is not built" in why


@pytest.mark.usefixtures("without_native")
def test_native_when_it_is_not_built_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as raised:
        make_engine(config_with("native"))
    (problem,) = raised.value.problems
    assert problem.startswith("engine: native is not available")


def test_the_server_logs_and_exports_the_engine_it_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="enrichproxy.server.app")
    telemetry = Telemetry()
    create_app(config_with("python"), telemetry)
    assert "engine=python (engine: python in the configuration)" in caplog.text
    exposition = telemetry.exposition().decode()
    assert 'enrichproxy_engine_info{engine="python"} 1.0' in exposition
    assert 'engine="python",python_version=' in exposition  # enrichproxy_build_info
