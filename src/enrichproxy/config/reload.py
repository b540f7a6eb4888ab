"""What a configuration reload changes, decided from the running and the newly loaded config.

Pure: the app (``app.reload_config``) reads the file and applies the plan. Most of the
configuration applies live; what is bound to resources made once at start (the listening
socket, the request size limit, the state file, and any key added later that is not listed
in ``LIVE_KEYS``) keeps its running value until the next restart. The plan names those keys so
that the reload can say so instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from enrichproxy.config.schema import Config

LIVE_KEYS = frozenset(
    {"log_level", "metadata", "views", "aggregation", "remote_write", "shutdown_timeout_ms"}
)
"""Top-level Config fields a reload applies. Every other one needs a restart: a key the reload
was not taught about is safer kept than half applied."""


@dataclass(frozen=True)
class ReloadPlan:
    config: Config
    """The configuration to run: the loaded one, with the running value of every key that
    needs a restart."""
    changed: tuple[str, ...] = ()
    """Top-level YAML keys applied now whose value changed."""
    restart_needed: tuple[str, ...] = ()
    """YAML keys that changed in the file but apply only at the next start."""
    metadata_changed: bool = False
    """The metadata store must start over: its connection, rules or way of following them
    changed (``on_conflict`` alone does not need that: the engine applies it)."""

    @property
    def remote_write_changed(self) -> bool:
        return "remote_write" in self.changed


def _yaml_key(field_name: str) -> str:
    return field_name.removesuffix("_ms")


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """What applying ``loaded`` over ``running`` takes (both already validated)."""
    kept: dict[str, Any] = {}
    restart_needed: list[str] = []
    for field in fields(Config):
        running_value = getattr(running, field.name)
        if field.name not in LIVE_KEYS and getattr(loaded, field.name) != running_value:
            restart_needed.append(_yaml_key(field.name))
            kept[field.name] = running_value
    aggregation = loaded.aggregation
    if aggregation.state_path != running.aggregation.state_path:
        restart_needed.append("aggregation.state_path")
        aggregation = replace(aggregation, state_path=running.aggregation.state_path)
    config = replace(loaded, aggregation=aggregation, **kept)
    changed = tuple(
        _yaml_key(field.name)
        for field in fields(Config)
        if field.name in LIVE_KEYS and getattr(config, field.name) != getattr(running, field.name)
    )
    metadata_changed = replace(running.metadata, on_conflict="") != replace(
        config.metadata, on_conflict=""
    )
    return ReloadPlan(config, changed, tuple(restart_needed), metadata_changed)
