"""The package's layering, checked over every module under src/enrichproxy (docs/style: a pure
core, thin shells, and a module imports only from layers below it).

Nothing here is a hand-kept module list: a new module is placed by its path, so it is checked
the moment it exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "enrichproxy"
ROOT = "enrichproxy"

LAYERS: tuple[tuple[str, ...], ...] = (
    # The vocabulary every stage shares: the exception tree, value types, the version.
    ("enrichproxy", "enrichproxy.errors", "enrichproxy.model"),
    ("enrichproxy.wire",),
    ("enrichproxy.config",),
    ("enrichproxy.metadata.table",),
    ("enrichproxy.engine",),
    # Durable files (framing, checksums, damage reports, disk faults): every shell that keeps
    # something on disk builds on it, the metadata snapshot included.
    ("enrichproxy.durability",),
    # The shells around the engine. The forwarder sends with the credentials, TLS contexts and
    # metrics the server receives with, so those three server modules sit below it; the app
    # that wires everything together sits above.
    (
        "enrichproxy.metadata",
        "enrichproxy.server.auth",
        "enrichproxy.server.tls",
        "enrichproxy.server.telemetry",
    ),
    ("enrichproxy.forward",),
    ("enrichproxy.server",),
    ("enrichproxy.tools",),
    ("enrichproxy.cli",),
    ("enrichproxy.__main__",),
)
"""Lowest first. A module belongs to the stage with the longest matching prefix (the package
root only to itself); it may import its own stage and the stages of lower layers."""

PURE_STAGES = (
    "enrichproxy",
    "enrichproxy.errors",
    "enrichproxy.model",
    "enrichproxy.wire",
    "enrichproxy.config",
    "enrichproxy.metadata.table",
    "enrichproxy.engine",
)
IO_LIBRARIES = frozenset(
    {
        "aiohttp",
        "asyncio",
        "httpx",
        "prometheus_client",
        "pymongo",
        "requests",
        "socket",
        "ssl",
        "subprocess",
        "time",
        "urllib",
    }
)
PURE_EXCEPTIONS = {
    # urlsplit checks the syntax of remote_write URLs; nothing is requested.
    ("enrichproxy.config.schema", "urllib.parse"),
}
"""(module, import) pairs a pure stage may have, each with its reason."""

OWNERS = {
    "pymongo": ("enrichproxy.metadata.store", "enrichproxy.metadata.admin", "enrichproxy.tools"),
    "prometheus_client": ("enrichproxy.server.telemetry", "enrichproxy.tools.exporter"),
    "aiohttp": (
        "enrichproxy.forward",
        "enrichproxy.server",
        "enrichproxy.tools",
        "enrichproxy.cli",  # serve runs the app: web.run_app
    ),
}
"""Library → the only stages that import it (the tools have their own client and exporter)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def imports_of(module: str) -> list[str]:
    """Every module ``module`` imports, anywhere in it (function-level and TYPE_CHECKING
    imports too), as absolute dotted names; ``from x import y`` gives ``x.y``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def _within(module: str, prefix: str) -> bool:
    if prefix == ROOT:
        return module == ROOT
    return module == prefix or module.startswith(prefix + ".")


def stage_of(module: str) -> tuple[int, str]:
    """(layer index, stage prefix) of a module of ours."""
    matches = [
        (len(prefix), index, prefix)
        for index, layer in enumerate(LAYERS)
        for prefix in layer
        if _within(module, prefix)
    ]
    assert matches, f"{module} is in no layer of tests/test_layers.py: place it there"
    _, index, prefix = max(matches)
    return index, prefix


def _ours(name: str) -> str | None:
    """The module of ours ``name`` refers to (``from x import y`` also names attributes)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer(module: str) -> None:
    stage_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_stage_imports_only_from_itself_and_lower_layers(module: str) -> None:
    layer, stage = stage_of(module)
    violations = set()
    for name in imports_of(module):
        target = _ours(name)
        if target is None or not target.startswith(ROOT):
            continue
        target_layer, target_stage = stage_of(target)
        if target_stage != stage and target_layer >= layer:
            violations.add(f"{module} (layer {layer}) imports {target} (layer {target_layer})")
    assert not violations, "\n".join(sorted(violations))


@pytest.mark.parametrize(
    "module", [m for m in sorted(MODULES) if any(_within(m, p) for p in PURE_STAGES)]
)
def test_the_pure_core_imports_no_io_library(module: str) -> None:
    forbidden = {
        f"{module} imports {name}"
        for name in imports_of(module)
        if name.split(".")[0] in IO_LIBRARIES
        and not any(m == module and _within(name, allowed) for m, allowed in PURE_EXCEPTIONS)
    }
    assert not forbidden, "\n".join(sorted(forbidden))


@pytest.mark.parametrize(("library", "owners"), sorted(OWNERS.items()))
def test_each_library_is_imported_only_by_its_owners(library: str, owners: tuple[str, ...]) -> None:
    forbidden = {
        f"{module} imports {name}: only {', '.join(owners)} may"
        for module in MODULES
        for name in imports_of(module)
        if name.split(".")[0] == library and not any(_within(module, o) for o in owners)
    }
    assert not forbidden, "\n".join(sorted(forbidden))


ENGINE = "enrichproxy.engine"
ENGINE_SEAM = ("enrichproxy.engine.interface", "enrichproxy.engine.factory")
"""What the rest of the package may import of the engine: the Engine interface and the factory
that picks one. ``explain`` reads engines only through the interface, so the server may call it
too."""
ENGINE_PUBLIC = (*ENGINE_SEAM, "enrichproxy.engine.explain")
ENGINE_INTERNALS = frozenset(
    {"Pipeline", "AggregatedView", "ViewAggregator", "InputSeries", "OutputGroup", "aggregators"}
)
"""Names of one engine's insides (the Python reference's): nothing outside engine/ uses them."""


@pytest.mark.parametrize("module", [m for m in sorted(MODULES) if not _within(m, ENGINE)])
def test_outside_the_engine_only_its_interface_is_used(module: str) -> None:
    forbidden = {
        f"{module} imports {name}: outside engine/ only {', '.join(ENGINE_PUBLIC)} may be"
        for name in imports_of(module)
        if (target := _ours(name)) is not None
        and _within(target, ENGINE)
        and target != ENGINE
        and target not in ENGINE_PUBLIC
    }
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used = node.id
        elif isinstance(node, ast.Attribute):
            used = node.attr
        else:
            continue
        if used in ENGINE_INTERNALS:
            forbidden.add(f"{module} line {node.lineno}: uses {used}, an engine's insides")
    assert not forbidden, "\n".join(sorted(forbidden))


def test_the_layer_rules_catch_a_violation() -> None:
    """The checks above would fail if the code broke the rules (they are not vacuous)."""
    assert stage_of("enrichproxy.engine.pipeline")[0] < stage_of("enrichproxy.server.app")[0]
    assert "enrichproxy.wire.codec.decode_labels" in imports_of("enrichproxy.engine.pipeline")
    assert "pymongo" in imports_of("enrichproxy.metadata.store")
