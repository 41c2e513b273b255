#!/usr/bin/env bash
# Load and soak (RELIABILITY.md): builds ghz from the Go module proxy into .cache/bin once, then
# runs the pytest suite tests/load (ghz against a server process on loopback; skipped without
# LYCHEE_GHZ). Sizes from the environment (e.g. LYCHEE_SOAK_REQUESTS=100000 for a nightly run);
# extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
GHZ_VERSION=v0.121.0
PYTHON=${PYTHON:-.venv/bin/python}
export LYCHEE_TINY_MODEL=${LYCHEE_TINY_MODEL:-$PWD/.cache/tiny-model}
if [ ! -x .cache/bin/ghz ]; then
  GOBIN="$PWD/.cache/bin" GOFLAGS=-mod=mod go install "github.com/bojand/ghz/cmd/ghz@${GHZ_VERSION}"
fi
if [ ! -f "$LYCHEE_TINY_MODEL/config.json" ]; then
  "$PYTHON" -m lychee_grpc.cli make-tiny-model "$LYCHEE_TINY_MODEL"
fi
LYCHEE_GHZ="$PWD/.cache/bin/ghz" exec "$PYTHON" -m pytest -q -p no:cacheprovider tests/load "$@"
