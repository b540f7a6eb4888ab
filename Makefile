# Everything runs from a project-local virtualenv so a fresh machine needs only python3, pip and apt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# One stamp per set of extras, each made when what the install reads changes. They nest, as the
# extras do (test includes demo, demo includes the runtime), so making one touches the smaller
# ones too: `make demo` after `make test` installs nothing again. `make` alone installs only
# what the proxy runs on (no test tools, no demo server).
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
# setup.py and the C sources: the editable install builds the native engine in place.
INSTALL_INPUTS := pyproject.toml setup.py $(wildcard src/enrichproxy/engine/_native_src/*)

.PHONY: install demo test container-test lint fmt bench bench-instructions check clean system-deps test-deps proto fuzz lock

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(INSTALL_INPUTS) | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(STAMP)

$(DEMO_STAMP): $(INSTALL_INPUTS) | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $(DEMO_STAMP) $(STAMP)

$(TEST_STAMP): $(INSTALL_INPUTS) | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(TEST_STAMP) $(DEMO_STAMP) $(STAMP)

# Debian's prometheus is the real upstream/downstream in the demo and the tests; the tests also
# validate compose.yaml with Debian's docker-compose (v1, no engine needed).
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	$$SUDO apt-get install -y -qq --no-install-recommends

system-deps:
	@command -v prometheus >/dev/null || { $(APT_INSTALL) prometheus; }

# apache2-utils' htpasswd makes the bcrypt hashes of a Prometheus receiver that demands basic auth.
test-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null \
	  && command -v docker-compose >/dev/null && command -v htpasswd >/dev/null \
	  || { $(APT_INSTALL) prometheus docker-compose apache2-utils; }

# The worked example, then the load, then what arrived; DEMO_ARGS=--keep-running keeps the
# stack up (and the load going) until Ctrl-C, to look around in the downstream's UI.
demo: $(DEMO_STAMP) system-deps
	$(BIN)/python -m enrichproxy demo --config conf/enrichproxy.yaml --metadata conf/metadata.yaml $(DEMO_ARGS)

# The whole suite runs against each engine (tests/engines.py); the differential, fuzz and
# AddressSanitizer tests compare the two in both passes.
test: $(TEST_STAMP) test-deps
	$(BIN)/python -m pytest --engine=native -m "not container"
	$(BIN)/python -m pytest --engine=python -m "not container"

# The image and the compose stack for real, with Podman (tests/test_containers.py). As root it
# prepares the machine itself (deploy/podman/prepare-host.sh: apt, host fixes, stand-in images
# kept in Podman's storage); it skips, saying why, where containers cannot run. The image
# always runs the native engine, so one pass.
container-test: $(TEST_STAMP) test-deps
	$(BIN)/python -m pytest --engine=native -m container -s tests/test_containers.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

fmt: $(TEST_STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The C decoders against the Python ones for a minute each (tests/fuzz/fuzz_decoder*.py; `make test`
# runs it briefly). A difference stops it and leaves the input as crash-* in this directory.
fuzz: $(TEST_STAMP)
	$(BIN)/python tests/fuzz/fuzz_decoder.py -max_total_time=60 -print_final_stats=1
	$(BIN)/python tests/fuzz/fuzz_decoder_v2.py -max_total_time=60 -print_final_stats=1

# Both engines side by side (benchmarks/README.md). The instruction counts run under valgrind
# (about two minutes more), so they have their own target.
bench: $(DEMO_STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/queue_bench.py

bench-instructions: $(DEMO_STAMP)
	$(BIN)/python benchmarks/run.py --only instructions

check: lint test

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Generated code is committed so an install needs no protoc; this regenerates it.
proto: $(TEST_STAMP)
	$(BIN)/pip install -q grpcio-tools mypy-protobuf
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=src/enrichproxy/wire/proto --mypy_out=src/enrichproxy/wire/proto proto/remote.proto proto/write_v2.proto

# requirements.lock: the runtime dependencies and the build backend, pinned with the hashes of
# every file PyPI has for them, for the Containerfile (`pip install --require-hashes`). Run it
# after changing `dependencies` or `build-system.requires` in pyproject.toml, with the Python
# the image uses (3.11). The extras are not locked: they are never in the image.
lock: $(BIN)/python
	$(BIN)/pip install -q pip-tools
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
	  --allow-unsafe --strip-extras --build-deps-for=wheel --no-emit-index-url \
	  --no-emit-find-links --output-file requirements.lock pyproject.toml
