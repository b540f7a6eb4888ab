"""What ``pip install .`` brings, what the extras add, the lock file the image installs from, and
a build without warnings.

The dependency lists are checked against the code itself: the third-party imports of
src/enrichproxy are exactly the runtime dependencies, the imports of tests/ and benchmarks/ are
covered by the extras, and a process that imports every run-time module loads neither protobuf
nor a test tool.
"""

from __future__ import annotations

import ast
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Iterator
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "enrichproxy"
GENERATED = PACKAGE / "wire" / "proto"
LOCK = REPO / "requirements.lock"
PROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

# Installed by the extras only: none of them may reach `pip install .` or the image.
EXTRA_ONLY = {"secantusdb", "protobuf", "pytest", "hypothesis", "atheris", "mypy", "ruff"}
# What a build may print that is no warning about the package: pip's notes about this
# machine's package indexes.
FOREIGN_WARNING = re.compile(r"WARNING: Location '.*' is ignored")


def requirement_names(requirements: Iterable[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def runtime_dependencies() -> set[str]:
    return requirement_names(PROJECT["project"]["dependencies"])


def extra(name: str) -> list[Requirement]:
    return [Requirement(text) for text in PROJECT["project"]["optional-dependencies"][name]]


def extra_names(name: str) -> set[str]:
    """An extra's distributions, with the extras of enrichproxy it names folded in."""
    names: set[str] = set()
    for requirement in extra(name):
        if canonicalize_name(requirement.name) == "enrichproxy":
            for nested in requirement.extras:
                names |= extra_names(nested)
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def python_files(root: Path, skip: Path | None = None) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if skip is None or not path.is_relative_to(skip):
            yield path


def imported_modules(paths: Iterable[Path]) -> dict[str, set[str]]:
    """Top-level module name → the files importing it (every import, also inside functions)."""
    imports: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imports.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return imports


def third_party(imports: dict[str, set[str]], local: set[str]) -> dict[str, set[str]]:
    """Module name → the distributions that provide it, for every import that is neither the
    standard library, enrichproxy, nor one of ``local``; an unknown module fails."""
    providers = packages_distributions()
    found: dict[str, set[str]] = {}
    for module, files in imports.items():
        if module in sys.stdlib_module_names or module == "enrichproxy" or module in local:
            continue
        assert module in providers, f"no installed distribution provides {module} ({files})"
        found[module] = {canonicalize_name(name) for name in providers[module]}
    return found


def locked() -> dict[str, tuple[Version, list[str]]]:
    """requirements.lock as name → (pinned version, hashes)."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    current: str | None = None
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if not text:
            continue
        if text.startswith("--hash="):
            assert current is not None, line
            pins[current][1].append(text.removeprefix("--hash="))
            continue
        assert not text.startswith("-"), f"requirements.lock: an option, not a pin: {line}"
        name, separator, version = text.partition("==")
        assert separator, f"requirements.lock: not pinned with ==: {line}"
        current = str(canonicalize_name(name))
        pins[current] = (Version(version), [])
    return pins


# --- pyproject.toml -----------------------------------------------------------------------------


def test_runtime_dependencies_are_exactly_what_the_package_imports() -> None:
    """Generated protobuf classes aside (nothing imports them at run time), every third-party
    import of src/enrichproxy is a runtime dependency, and every runtime dependency is
    imported: nothing is installed for nothing."""
    imports = third_party(imported_modules(python_files(PACKAGE, skip=GENERATED)), set())
    providers = set().union(*imports.values())
    dependencies = runtime_dependencies()
    unlisted = {m: p for m, p in imports.items() if not p & dependencies}
    assert not unlisted, f"imported, not in project.dependencies: {unlisted}"
    assert dependencies - providers == set(), "in project.dependencies, never imported"


def test_extras_cover_the_tests_and_benchmarks_and_stay_out_of_the_runtime() -> None:
    local = {path.stem for path in python_files(REPO / "tests")} | {
        path.stem for path in python_files(REPO / "benchmarks")
    }
    imports = imported_modules([*python_files(REPO / "tests"), *python_files(REPO / "benchmarks")])
    # The generated classes are test material too: their imports belong to the test extra.
    imports |= imported_modules(python_files(GENERATED))
    available = runtime_dependencies() | extra_names("test")
    missing = {m: p for m, p in third_party(imports, local).items() if not p & available}
    assert not missing, f"imported by tests, benchmarks or generated code, in no extra: {missing}"
    assert extra_names("demo") == {"secantusdb"}, "the demo needs its MongoDB server only"
    assert extra_names("demo") <= extra_names("test"), "the tests start the demo's server"
    assert extra_names("test") >= EXTRA_ONLY
    assert runtime_dependencies() & EXTRA_ONLY == set()


def test_license_is_an_spdx_expression_the_build_backend_understands() -> None:
    assert PROJECT["project"]["license"] == "Apache-2.0"
    (backend,) = [Requirement(text) for text in PROJECT["build-system"]["requires"]]
    assert backend.name == "setuptools"
    # PEP 639 license expressions arrived in setuptools 77: an older one must not be allowed.
    assert not backend.specifier.contains("76.9"), backend
    assert backend.specifier.contains("77.0")


def test_run_time_modules_load_no_protobuf_and_no_test_tool() -> None:
    """Every module of the package but the generated classes, imported in a fresh process."""
    modules = sorted(
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in python_files(PACKAGE, skip=GENERATED)
        if path.name != "__main__.py"
    )
    forbidden = ("google.protobuf", "secantus", "pytest", "hypothesis", "promql_parser")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({forbidden!r})))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]", f"loaded at run time: {completed.stdout}"


# --- requirements.lock --------------------------------------------------------------------------


def test_lock_pins_the_runtime_and_the_build_backend_with_hashes() -> None:
    pins = locked()
    requirements = [
        Requirement(text)
        for text in [*PROJECT["project"]["dependencies"], *PROJECT["build-system"]["requires"]]
    ]
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, pyproject.toml asks {requirement}: "
            "run `make lock`"
        )
    for pinned, (version, hashes) in pins.items():
        assert hashes, f"{pinned}=={version} has no hash: pip --require-hashes would refuse it"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), pinned
    assert set(pins) & EXTRA_ONLY == set(), "the lock is for the image: no extras"


def test_makefile_regenerates_the_lock_as_its_header_says() -> None:
    header = LOCK.read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert "make lock" in header
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^lock:", makefile, re.M)
    recipe = makefile.split("\nlock:", 1)[1]
    for option in ("--generate-hashes", "--output-file requirements.lock", "pyproject.toml"):
        assert option in recipe


# --- the build ----------------------------------------------------------------------------------


def build_context(destination: Path) -> None:
    """What the Containerfile's builder copies: package metadata and sources, nothing built."""
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, destination / name)
    shutil.copytree(
        REPO / "src",
        destination / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"),
    )


@pytest.mark.integration
def test_wheel_builds_without_warnings_and_carries_the_dependencies(tmp_path: Path) -> None:
    """The build the image runs (no network: the backend is this environment's setuptools, which
    the test extra keeps at the version build-system.requires asks for), verbose, so every
    warning of setuptools and of the C compiler shows."""
    source = tmp_path / "source"
    source.mkdir()
    build_context(source)
    out = tmp_path / "wheels"
    # Byte-compiling is off in this environment (PYTHONDONTWRITEBYTECODE), which setuptools
    # reports as a warning about the environment, not about the package.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--verbose",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=environment,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    # The test's own directory may be named after it; only the build's words count.
    lines = output.replace(str(tmp_path), "<tmp>").splitlines()
    warnings = [
        line
        for line in lines
        if re.search(r"warn", line, re.I) and not FOREIGN_WARNING.search(line)
    ]
    assert not warnings, "the build warns:\n" + "\n".join(warnings)

    (wheel,) = out.glob("enrichproxy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "License" not in metadata, "the deprecated License field is not written"
    requires = metadata.get_all("Requires-Dist") or []
    unconditional = requirement_names(r for r in requires if "extra ==" not in r)
    assert unconditional == runtime_dependencies()
    assert set(metadata.get_all("Provides-Extra") or []) == {"demo", "test"}
    assert any(re.match(r"enrichproxy/engine/_native\..*\.so$", n) for n in names), names
    assert not [n for n in names if n.startswith("tests/")]
