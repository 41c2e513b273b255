# lychee-grpc: `make demo` runs the service with its demo on the tiny model; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TINY := .cache/tiny-model
PORT ?= 50051
MODEL ?=
STAMP := $(VENV)/.installed

.PHONY: install proto tiny-model demo serve test test-python test-python-client test-clients test-http-clients test-go test-java test-java-search contract lint bench clean deploy-check image-check test-load test-reliability

STUBS := clients/python/lychee_client/proto/lychee_pb2.py

install: $(STAMP) $(STUBS)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e clients/python -e ".[dev]"
	touch $(STAMP)

$(STUBS): proto/lychee.proto $(STAMP)
	$(PY) scripts/gen_proto.py

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

tiny-model: install
	$(VENV)/bin/lychee-grpc make-tiny-model $(TINY)

demo: tiny-model
	$(PY) scripts/demo.py --model $(TINY) --port $(PORT) $(DEMO_ARGS)

serve: install
	@test -n "$(MODEL)" || { echo "usage: make serve MODEL=vec-ai/lychee-rerank-mm (or a checkpoint folder)"; exit 2; }
	$(VENV)/bin/lychee-grpc serve --model "$(MODEL)" --port $(PORT)

lint: install
	$(VENV)/bin/ruff check lychee_grpc tests scripts bench
	$(VENV)/bin/pyright

test-python: tiny-model lint
	$(PY) -m pytest -q -rs

test: test-python

# The Python client in an environment of its own (no torch), against a live server.
CLIENT_VENV := .cache/client-venv
test-python-client: tiny-model
	test -x $(CLIENT_VENV)/bin/python || $(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install -q --upgrade "./clients/python[test]"
	cd clients/python && LYCHEE_CLI=$(abspath $(VENV))/bin/lychee-grpc LYCHEE_TINY_MODEL=$(abspath $(TINY)) \
		$(abspath $(CLIENT_VENV))/bin/python -m pytest -q -p no:cacheprovider

# The real HTTP clients rerank users run (Cohere's SDK v1/v2 sync and async, LangChain's and
# LlamaIndex's Cohere rerankers, vLLM- and TEI-shaped requests) against a live server, each suite in
# its own environment built from PyPI with every version pinned (tests/sdk/*/requirements.txt),
# kept in .cache/sdk-venv/ and rebuilt only when its pins change.
SDK_VENV := .cache/sdk-venv
SDK_SUITES := cohere integrations
test-http-clients: tiny-model $(STUBS)
	@for suite in $(SDK_SUITES); do \
		venv=$(SDK_VENV)/$$suite; pins=tests/sdk/$$suite/requirements.txt; \
		if ! cmp -s $$pins $$venv/pins.txt; then \
			rm -rf $$venv && $(PYTHON) -m venv $$venv && \
			$$venv/bin/python -m pip install -q --upgrade pip && \
			$$venv/bin/python -m pip install -q --no-deps -r $$pins && \
			$$venv/bin/python -m pip install -q --no-deps ./clients/python && \
			cp $$pins $$venv/pins.txt || exit 1; \
		fi; \
		LYCHEE_CLI=$(abspath $(VENV))/bin/lychee-grpc LYCHEE_TINY_MODEL=$(abspath $(TINY)) \
			$$venv/bin/python -m pytest -q -c tests/sdk/pytest.ini tests/sdk/$$suite || exit 1; \
	done

# The Go and Java clients against live servers, token auth and Explain included. The servers they
# start take their settings from the environment too: no HTTP or metrics port, so several can run.
LIVE_ENV := LYCHEE_LIVE_AUTH=1 LYCHEE_LIVE_EXPLAIN=1 LYCHEE_HTTP=false LYCHEE_METRICS_PORT=0
test-go: tiny-model
	$(LIVE_ENV) $(MAKE) -C clients/go check-generated test

# `install` runs the tests, then puts the client (and its test helpers) where examples/java-search finds them.
test-java: tiny-model
	cd clients/java && $(LIVE_ENV) mvn -B -ntp install

# The search example (Lucene BM25 + the fail-open reranker) against a live, a stopped and a slowed server.
test-java-search: test-java
	cd examples/java-search && $(LIVE_ENV) mvn -B -ntp test

contract:
	bash scripts/check_contract.sh

test-clients: test-python-client test-http-clients test-go test-java test-java-search contract

# Dockerfile consistency, helm lint, and rendered manifests decoded strictly into the Kubernetes types.
deploy-check: install
	PYTHON=$(PY) bash scripts/check_deploy.sh

# The real Dockerfile built with buildah on a local Debian base, the tiny model served from the image and checked
# from outside (gRPC health, a rerank, /health, /metrics, SIGTERM). Root; caches in .cache/image and buildah's store.
image-check: tiny-model
	PYTHON=$(PY) LYCHEE_CLI=$(VENV)/bin/lychee-grpc LYCHEE_TINY_MODEL=$(TINY) bash scripts/image_check.sh

bench: install
	$(PY) -m bench.run

# Load and soak with ghz (built from the Go module proxy into .cache/bin) against a server process.
test-load: tiny-model
	PYTHON=$(PY) LYCHEE_TINY_MODEL=$(TINY) bash scripts/load_test.sh

# The attack suites alone (they also run in `make test`), then load and soak. RELIABILITY.md.
test-reliability: tiny-model
	$(PY) -m pytest -q tests/fuzz tests/e2e/test_faults.py tests/e2e/test_status_rules.py \
		tests/unit/engine/test_prompt_injection.py
	$(MAKE) test-load

clean:
	rm -rf $(VENV) .cache clients/python/lychee_client/proto .pytest_cache .ruff_cache clients/java/target examples/java-search/target
