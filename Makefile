# Everything runs from a project-local virtualenv so a fresh machine needs only python3, pip and apt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt bench bench-instructions check clean system-deps test-deps proto fuzz

# setup.py and the C sources: the editable install builds the native engine in place.
$(STAMP): pyproject.toml setup.py $(wildcard src/enrichproxy/engine/_native_src/*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

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

demo: $(STAMP) system-deps
	$(BIN)/python -m enrichproxy demo --config conf/enrichproxy.yaml --metadata conf/metadata.yaml

# The whole suite runs against each engine (tests/engines.py); the differential, fuzz and
# AddressSanitizer tests compare the two in both passes.
test: $(STAMP) test-deps
	$(BIN)/python -m pytest --engine=native
	$(BIN)/python -m pytest --engine=python

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The C decoder against the Python one for a minute (tests/fuzz/fuzz_decoder.py; `make test`
# runs it briefly). A difference stops it and leaves the input as crash-* in this directory.
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/fuzz_decoder.py -max_total_time=60 -print_final_stats=1

# Both engines side by side (benchmarks/README.md). The instruction counts run under valgrind
# (about two minutes more), so they have their own target.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/queue_bench.py

bench-instructions: $(STAMP)
	$(BIN)/python benchmarks/run.py --only instructions

check: lint test

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Generated code is committed so an install needs no protoc; this regenerates it.
proto: $(STAMP)
	$(BIN)/pip install -q grpcio-tools mypy-protobuf
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=src/enrichproxy/wire/proto --mypy_out=src/enrichproxy/wire/proto proto/remote.proto
