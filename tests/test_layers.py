"""The data path's pure core imports no I/O library (docs/style: pure core, thin shells)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "enrichproxy"
PURE = [
    "aggregation",
    "aggregation_state",
    "codec",
    "durations",
    "enrich",
    "errors",
    "explain",
    "limits",
    "metadata_table",
    "metric_types",
    "model",
    "pipeline",
    "selector",
    "views",
]
IO_LIBRARIES = {
    "aiohttp",
    "asyncio",
    "prometheus_client",
    "pymongo",
    "socket",
    "ssl",
    "time",
    "urllib",
    "subprocess",
    "requests",
    "httpx",
}
# Which shell owns which library (the only data-path module that may import it).
OWNERS = {"pymongo": "metadata_store", "prometheus_client": "telemetry"}
DATA_PATH = [*PURE, "config", "metadata_store", "forwarder", "telemetry", "state_store", "app"]


def imported_modules(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io_library(module: str) -> None:
    assert imported_modules(module) & IO_LIBRARIES == set()


@pytest.mark.parametrize(("library", "owner"), sorted(OWNERS.items()))
def test_each_library_has_one_owner_on_the_data_path(library: str, owner: str) -> None:
    importers = {module for module in DATA_PATH if library in imported_modules(module)}
    assert importers == {owner}
