# Every target does its own set-up from a fresh clone.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROTO   := proto/shards/processmanager/v1/processmanager.proto
GEN_OUT := clients/python

.PHONY: install run run-ha web browser test lint proto proto-check bench clean ci

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: controller + worker + a watching client on the embedded store.
run: $(STAMP)
	$(BIN)/python -m examples.demo

## The web GUI demo: controller + sheep worker + `shards web` on the embedded store, until Ctrl-C.
## It prints the URL (default http://127.0.0.1:8080/; ARGS="--listen 127.0.0.1:8081" for another port).
web: $(STAMP)
	$(BIN)/python -m examples.web_demo $(ARGS)

## Failover by hand: FerretDB on PostgreSQL, two controllers (:50051, :50052) and a worker, until Ctrl-C.
run-ha: $(STAMP)
	scripts/install-postgresql.sh
	FERRETDB_BIN="$$(scripts/install-ferretdb.sh)" $(BIN)/python -m examples.ha

## The whole test suite, in parallel. FerretDB is built once from the Go module
## proxy (cached in ~/.cache/shards), PostgreSQL comes from Debian's packages, and
## each test session starts its own of both (FERRETDB_HANDLER=sqlite: SQLite instead);
## the web GUI's browser tests drive Debian's chromium (installed with apt-get when missing).
test: $(STAMP)
	scripts/install-chromium.sh
	scripts/install-postgresql.sh
	FERRETDB_BIN="$$(scripts/install-ferretdb.sh)" $(BIN)/python -m pytest -n 3

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  --python_out=$(GEN_OUT) --grpc_python_out=$(GEN_OUT) \
	  --mypy_out=$(GEN_OUT) --mypy_grpc_out=$(GEN_OUT) $(PROTO)

## Fails when the committed stubs differ from what `make proto` makes.
proto-check: proto
	git diff --exit-code -- $(GEN_OUT)/shards/processmanager

## Benchmarks side by side with Celery (installs Redis and FerretDB if missing); ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	bash bench/install.sh
	$(BIN)/python -m bench $(ARGS)

## The MongoDB store's figures (issue 14): embedded, FerretDB on PostgreSQL and on SQLite, Celery.
bench-mongo: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	bash bench/install.sh
	$(BIN)/python -m bench.mongo_side $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## What CI runs: generated code in sync, lint, then the tests.
ci: proto-check lint test
