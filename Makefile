# lychee-grpc: `make demo` runs the service with its demo on the tiny model; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TINY := .cache/tiny-model
PORT ?= 50051
MODEL ?=
STAMP := $(VENV)/.installed

.PHONY: install proto tiny-model demo serve test test-python test-clients test-go test-java contract lint bench clean deploy-check

install: $(STAMP) lychee_grpc/proto/lychee_pb2.py

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

lychee_grpc/proto/lychee_pb2.py: proto/lychee.proto $(STAMP)
	$(PY) scripts/gen_proto.py

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

tiny-model: install
	$(VENV)/bin/lychee-grpc make-tiny-model $(TINY)

demo: tiny-model
	$(PY) scripts/demo.py --model $(TINY) --port $(PORT)

serve: install
	@test -n "$(MODEL)" || { echo "usage: make serve MODEL=vec-ai/lychee-rerank-mm (or a checkpoint folder)"; exit 2; }
	$(VENV)/bin/lychee-grpc serve --model "$(MODEL)" --port $(PORT)

lint: install
	$(VENV)/bin/ruff check lychee_grpc tests scripts bench

test-python: tiny-model lint
	$(PY) -m pytest -q

test: test-python

test-go: tiny-model
	$(MAKE) -C clients/go check-generated test

test-java: tiny-model
	cd clients/java && mvn -B -ntp test

contract:
	bash scripts/check_contract.sh

test-clients: test-go test-java contract

# Dockerfile consistency, helm lint, and rendered manifests decoded strictly into the Kubernetes types.
deploy-check: install
	PYTHON=$(PY) bash scripts/check_deploy.sh

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .cache lychee_grpc/proto .pytest_cache .ruff_cache clients/java/target
