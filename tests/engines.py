"""Which engine the suite runs against: ``pytest --engine=native|python`` (conftest.py).

``make test`` runs the whole suite once per engine. Tests that build an engine themselves call
``new_engine``; apps started in process or as a ``serve`` subprocess get the same engine
through conftest (a patched factory, and ``ENRICHPROXY_ENGINE`` in the environment). Tests of
the reference's internals (its plan cache, its aggregator objects) build ``Pipeline`` directly.
"""

from __future__ import annotations

import os

from enrichproxy.config.schema import Config
from enrichproxy.engine.native import NativeEngine
from enrichproxy.engine.pipeline import Pipeline

ENGINE_VARIABLE = "ENRICHPROXY_ENGINE"


def engine_kind() -> str:
    return os.environ.get(ENGINE_VARIABLE, "native")


def new_engine(config: Config) -> EngineUnderTest:
    """A fresh engine of the kind this run tests."""
    return NativeEngine(config) if engine_kind() == "native" else Pipeline(config)


EngineUnderTest = Pipeline | NativeEngine
"""What ``new_engine`` returns: either engine, both with the Engine interface plus ``apply`` and
``cached_series``."""
