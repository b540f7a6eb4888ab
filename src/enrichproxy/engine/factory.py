"""Which engine runs: the ``engine`` key of the configuration, and what is built on this machine.

``auto`` (the default) prefers the native engine and falls back to the Python reference when
the native extension cannot be imported (not built, or built for another Python); ``native``
insists on it, ``python`` never tries it. Both engines produce the same outputs, counters and
state (the reference is the specification), so the choice changes speed, not results.
"""

from __future__ import annotations

from enrichproxy.config.schema import Config
from enrichproxy.engine.interface import Engine
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.errors import ConfigError


def make_engine(config: Config) -> tuple[Engine, str]:
    """The engine ``config.engine`` asks for, and why it is that one (for the start's log)."""
    if config.engine == "python":
        return Pipeline(config), "engine: python in the configuration"
    try:
        from enrichproxy.engine.native import NativeEngine
    except ImportError as exc:
        if config.engine == "native":
            raise ConfigError(
                [f"engine: native is not available on this machine ({exc}); build it or use auto"]
            ) from None
        return Pipeline(config), f"engine: auto, and the native extension is not built ({exc})"
    return NativeEngine(config), f"engine: {config.engine}"
