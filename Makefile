# Developer entry points. Needs only python3 (>= 3.11) and make: `make setup` builds .venv.
# Targets marked with `##` are listed by `make help` (the default).

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.install.stamp
# make run: fsync setting, store directory, gRPC address, embedded NATS port, and the
# handler modules to host (empty: every example; space- or comma-separated).
SYNC        ?= always
DATA        ?= ./data
LISTEN      ?= 127.0.0.1:50051
NATS_PORT   ?= 4222
MODULE      ?=
PYTEST_ARGS ?=
# make bench-scale: how many stored invocations to measure the control plane with.
SCALE_SIZES ?= 100000 1000000
# make chaos: seconds of chaos per phase, the seed (empty: a fresh one, printed), invocations
# per second, the phases, and where the JSON report goes (empty: beside the logs, printed).
CHAOS_SECONDS ?= 150
CHAOS_SEED    ?=
CHAOS_RATE    ?=
CHAOS_PHASES  ?= single,cluster
CHAOS_REPORT  ?=
# make fuzz: generated requests per property (make test runs 40).
FUZZ_EXAMPLES ?= 2000
STUB_DIRS   := sdk/durable/v1 sdk/durable/internal examples/v1

comma := ,

# grpc_tools.protoc finds its protoc-gen-mypy plugins on PATH; put the venv first.
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help venv setup run test test-fast chaos fuzz lint breaking proto check-proto bench bench-scale examples fmt clean distclean

help: ## List the targets
	@echo "Usage: make <target> [VAR=value ...]"
	@echo "  make run     DATA=$(DATA) LISTEN=$(LISTEN) NATS_PORT=$(NATS_PORT) SYNC=$(SYNC) MODULE=<modules>"
	@echo "  make test    PYTEST_ARGS=\"-k name\""
	@echo "  make chaos   CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SEED=<n> CHAOS_PHASES=$(CHAOS_PHASES)"
	@echo "  make fuzz    FUZZ_EXAMPLES=$(FUZZ_EXAMPLES)"
	@echo "Targets:"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls only when a pyproject.toml changes (or the venv is new). Both distributions,
# editable: sdk/ (durable-nats, with its worker extra) and server/ (durable-nats-server),
# plus the repository's dev tools (pyproject.toml's dependency group, pip >= 25.1).
$(STAMP): pyproject.toml sdk/pyproject.toml server/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e './sdk[worker,otel]' -e ./server --group dev
	@touch $@

venv: $(STAMP) ## Create .venv and install the project with dev extras (alias: setup)

setup: $(STAMP) ## Same as venv

run: setup ## Run the dev stack (embedded nats-server + control plane + worker hosting the examples)
	$(BIN)/durable dev --data $(DATA) --listen $(LISTEN) --nats-port $(NATS_PORT) --sync $(SYNC) \
		$(foreach m,$(subst $(comma), ,$(MODULE)),--module $(m))

test: setup ## Run the test suite; extra pytest flags via PYTEST_ARGS="..."
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: setup ## The suite without the slow tests (real processes killed, clusters, long waits): about a minute
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

chaos: setup ## Long chaos run (kills, freezes, nats and cluster leader kills); CHAOS_SECONDS, CHAOS_SEED, ...
	$(BIN)/python -m tests.chaos --seconds $(CHAOS_SECONDS) --phases $(CHAOS_PHASES) \
		$(if $(CHAOS_SEED),--seed $(CHAOS_SEED)) $(if $(CHAOS_RATE),--rate $(CHAOS_RATE)) \
		$(if $(CHAOS_REPORT),--report $(CHAOS_REPORT))

fuzz: setup ## Long property-based fuzz of every DurableControl RPC; FUZZ_EXAMPLES per property
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:randomly \
		tests/test_fuzz_control.py tests/test_api_edge.py

lint: setup ## ruff, ruff format --check, mypy, buf lint, stale stubs, buf breaking
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	@$(MAKE) --no-print-directory check-proto
	@$(MAKE) --no-print-directory breaking

# Compares proto/ with what it was before its latest change: the working tree against HEAD
# when proto/ has uncommitted edits, else the newest commit that touched proto/ against its
# parent (so CI, on a clean clone of main, checks the change it is given). BREAKING_AGAINST
# overrides the baseline (any git ref). Skipped when there is no earlier proto/ to compare.
breaking: setup ## buf breaking: proto/ against its state before its latest change
	@ref="$(BREAKING_AGAINST)"; \
	if [ -z "$$ref" ]; then \
		if [ -n "$$(git status --porcelain -- proto 2>/dev/null)" ]; then ref=HEAD; \
		else last=$$(git log -n1 --format=%H -- proto 2>/dev/null); \
			[ -n "$$last" ] && git rev-parse -q --verify "$$last^" >/dev/null 2>&1 && ref="$$last^"; \
		fi; \
	fi; \
	if [ -z "$$ref" ] || ! git ls-tree -r --name-only "$$ref" -- proto 2>/dev/null | grep -q '\.proto$$'; then \
		echo "buf breaking: skipped (no earlier proto/ to compare against)"; \
	elif git cat-file -e "$$ref:buf.yaml" 2>/dev/null; then \
		echo "buf breaking against $$ref"; \
		$(BIN)/buf breaking --against ".git#ref=$$ref"; \
	else \
		echo "buf breaking against $$ref (subdir proto)"; \
		$(BIN)/buf breaking proto --against ".git#ref=$$ref,subdir=proto"; \
	fi

proto: setup ## Regenerate the Python stubs in sdk/durable from proto/
	PY="$(abspath $(BIN))/python" bash scripts/gen_proto.sh

# Regenerates into a scratch copy and diffs it with the tree: fails on stale, missing or
# leftover stubs. Once the repo tracks files, generated stubs must be tracked too.
check-proto: setup ## Fail if the committed stubs differ from what proto/ generates
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -p "$$tmp/scripts" "$$tmp/sdk/durable" "$$tmp/examples"; \
	cp -R proto "$$tmp/proto"; cp scripts/gen_proto.sh "$$tmp/scripts/"; \
	for d in $(STUB_DIRS); do if [ -d "$$d" ]; then cp -R "$$d" "$$tmp/$$d"; fi; done; \
	PY="$(abspath $(BIN))/python" bash "$$tmp/scripts/gen_proto.sh" >"$$tmp/gen.log" 2>&1 || \
		{ cat "$$tmp/gen.log" >&2; exit 1; }; \
	status=0; \
	for d in $(STUB_DIRS); do \
		diff -r -x __pycache__ "$$tmp/$$d" "$$d" || status=1; \
	done; \
	if [ $$status -ne 0 ]; then \
		echo "check-proto: generated stubs are stale or missing; run 'make proto' and commit them" >&2; \
		exit 1; \
	fi; \
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ -n "$$(git ls-files | head -n 1)" ]; then \
		untracked=$$(cd "$$tmp" && find $(STUB_DIRS) -type f ! -path '*/__pycache__/*' | sort | \
			while read -r f; do git -C "$(CURDIR)" ls-files --error-unmatch "$$f" >/dev/null 2>&1 || echo "$$f"; done); \
		if [ -n "$$untracked" ]; then \
			echo "check-proto: generated stubs not tracked by git (git add them):" >&2; \
			echo "$$untracked" >&2; exit 1; \
		fi; \
	fi; \
	echo "check-proto: stubs are up to date"

bench: setup ## Run the benchmark; SYNC=always|2m is reported with every figure
	$(BIN)/python -m durable_server.bench --sync $(SYNC)

bench-scale: setup ## Costs with 100k/1M stored invocations, long journals, 1-4 workers (SCALE_SIZES)
	$(BIN)/python -m durable_server.bench_scale --sync $(SYNC) --sizes $(SCALE_SIZES)

# The examples tour (examples/README.md): each runs against `make run` in another terminal.
TOUR := simple async typed local multi-service concurrent-workflows retry-failures \
	pause-cancel ticket-cart delayed-execution approval-workflow query-api \
	grpcurl-invocation direct-grpc-call restate-style

examples: ## List the example targets (make example-<name>, against `make run`) and their knobs
	@echo "Each runs against \`make run\` in another terminal (examples/README.md):"
	@for t in $(TOUR); do echo "  make example-$$t"; done
	@echo "Knobs: example-concurrent-workflows N=100 IN_FLIGHT=50; example-delayed-execution DELAY=5;"
	@echo "       example-restate-style EXPIRY=3; all: DURABLE_TARGET=host:port"

example-grpcurl-invocation: setup
	bash examples/tour/grpcurl_invocation.sh

example-async: setup
	$(BIN)/python -m examples.tour.async_start

example-%: setup
	$(BIN)/python -m examples.tour.$(subst -,_,$*)

fmt: setup ## Format and auto-fix: ruff format, ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## Remove caches and build output (keeps .venv and ./data; see distclean)
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and also remove .venv and the dev data in ./data
	rm -rf $(VENV) $(DATA)
