# Two entry points: `make serve` and `make test`. Both create .venv and install idempotently.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000
PIPELINE ?= loans
PYTEST_ARGS ?=
# BentoML's usage analytics would try to reach the internet from every server start.
export BENTOML_DO_NOT_TRACK = true

.PHONY: install serve test lint bento bench soak bench-gpu tools proto grpc-front grpc-load k8s settings-doc

# torch first, pinned: the CPU wheel on local disk; an open range would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The native gRPC front (grpcfront/, Go): Debian's Go and gRPC packages, built offline. Without
# it the workers serve gRPC from Python's grpc.aio server, at under half the throughput per core.
FRONT := $(BIN)/gateway-grpc
$(FRONT): grpcfront/main.go | $(STAMP)
	command -v go >/dev/null && test -d /usr/share/gocode/src/google.golang.org/grpc \
		&& test -d /usr/share/gocode/src/golang.org/x/sys \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends golang-go golang-google-grpc-dev golang-golang-x-sys-dev)
	CGO_ENABLED=0 GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$(abspath build/go-cache)" \
		go build -o $@ ./grpcfront

grpc-front: $(FRONT)

# The bench's gRPC load generator (loadtests/grpcload/, Go): one core of it saturates a worker.
LOAD := $(BIN)/gateway-grpc-load
$(LOAD): loadtests/grpcload/main.go loadtests/grpcload/open.go | $(FRONT)
	CGO_ENABLED=0 GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$(abspath build/go-cache)" \
		go build -o $@ ./loadtests/grpcload

grpc-load: $(LOAD)

# The service and, beside it, the loop controller (drift, alerts, retrains; :3100), both on the
# embedded store: sqlite MLflow and gateway-state/predictions.db here.
serve: install
	$(MAKE) -o $(STAMP) grpc-front || echo "gateway-grpc was not built: gRPC is served by Python's grpc.aio"
	$(BIN)/trainers train $(PIPELINE) --unless-champion
	export GATEWAY_PIPELINE=$(PIPELINE) PATH="$(abspath $(BIN)):$$PATH"; \
		$(BIN)/gateway-controller & controller=$$!; \
		trap 'kill $$controller 2>/dev/null' EXIT; \
		$(BIN)/bentoml serve --port $(PORT)

# A self-contained bento: the champion imported into the BentoML model store and built in, with
# gateway-grpc beside the module that starts it (where it was built). DEVICE=cuda: CUDA torch.
BUNDLED_FRONT := gateway/oip/gateway-grpc
DEVICE ?= cpu
bento: install
	$(MAKE) -o $(STAMP) grpc-front || echo "gateway-grpc was not built: the bento serves gRPC from Python's grpc.aio"
	$(BIN)/trainers train $(PIPELINE) --unless-champion
	GATEWAY_PIPELINE=$(PIPELINE) $(BIN)/python -m gateway.bundle --out bentos/bundle.json
	if test -x $(FRONT); then cp $(FRONT) $(BUNDLED_FRONT); fi
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bentos.build --device $(DEVICE); status=$$?; \
		rm -f bentos/bundle.json $(BUNDLED_FRONT); exit $$status

# Not part of `make test`: throughput and latency against mlflow models serve and plain BentoML.
bench: install tools grpc-front grpc-load
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m loadtests.bench $(BENCH_ARGS)

# Not part of `make test`: locust at 80 % of the capacity it measures first, for SOAK_MINUTES
# (default 10), then a burst past it (loadtests/soak.py); exits non-zero when a bound fails.
soak: install tools grpc-front grpc-load
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m loadtests.soak \
		$(if $(SOAK_MINUTES),--minutes $(SOAK_MINUTES)) $(SOAK_ARGS)

# The reviews transformer at its GPU size, through the gateway, against the raw model and plain
# BentoML (loadtests/bench_gpu.py); on a machine without CUDA, a smoke run of a tiny model.
bench-gpu: install tools
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m loadtests.bench_gpu $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The PrometheusRule in deploy/k8s, made from deploy/rules/gateway.yml; a test fails while it is stale.
k8s: install
	$(BIN)/python deploy/k8s/generate.py

# What the tests start for real (Debian): Prometheus, promtool, Alertmanager; PostgreSQL (the
# shared store and the tracking server's backend); iproute2 (network namespaces as test hosts);
# wrk (the benchmarks' load generator, which the GPU bench's smoke test drives).
PG_BIN := /usr/lib/postgresql/15/bin
tools:
	command -v prometheus >/dev/null && command -v promtool >/dev/null \
		&& command -v prometheus-alertmanager >/dev/null \
		&& test -x $(PG_BIN)/initdb && test -x $(PG_BIN)/pg_ctl && command -v ip >/dev/null \
		&& command -v wrk >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus prometheus-alertmanager postgresql iproute2 wrk)

# The gRPC stubs of the Open Inference Protocol, checked in; a test fails when they are stale.
proto: install
	$(BIN)/python -m gateway.oip.proto

# The settings' tables of docs/settings.md and README.md, made from the docstrings in
# gateway/settings.py; a test fails while they are stale.
settings-doc: install
	$(BIN)/python -m gateway.settings_doc --write

test: lint tools grpc-front grpc-load
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)
