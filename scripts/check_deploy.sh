#!/usr/bin/env bash
# CI checks of the deployment files (no cluster, no Docker engine):
#   1. scripts/check_dockerfile.py     the Dockerfile against its build context, pyproject and the CLI
#   2. helm lint                       deploy/helm/lychee-grpc, default values and each ci/*.yaml
#   3. helm template | validator       every rendered document decoded strictly into the Kubernetes API types
#                                      and the chart's invariants (deploy/k8s/validate, a Go test module)
#   4. go test of the validator        its own fixtures: it must catch the breakages it claims to
# Helm is built once with a pinned `go install` (Go module proxy only) into .cache/bin/; the validator's test
# binary is rebuilt only when its sources change. Go's module and build caches are the machine's defaults.
set -euo pipefail

HELM_VERSION=v3.22.0
KUBE_VERSION=1.31.0
CHART=deploy/helm/lychee-grpc
VALIDATE=deploy/k8s/validate

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BIN=$ROOT/.cache/bin
GO=${GO:-go}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$BIN"

echo "== Dockerfile against its build context"
"$PYTHON" scripts/check_dockerfile.py

HELM=$BIN/helm
if [[ ! -x "$HELM" ]] || ! "$GO" version -m "$HELM" 2>/dev/null | grep -q "mod[[:space:]]*helm.sh/helm/v3[[:space:]]*$HELM_VERSION\b"; then
  echo "== installing helm $HELM_VERSION into $BIN (once; a few minutes)"
  GOBIN=$BIN "$GO" install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

# The validator's test binary, rebuilt when a source file is newer than it.
VALIDATOR=$BIN/lychee-k8s-validate.test
if [[ ! -x "$VALIDATOR" ]] || [[ -n "$(find "$VALIDATE" -newer "$VALIDATOR" -type f | head -1)" ]]; then
  echo "== building the manifest validator"
  (cd "$VALIDATE" && "$GO" test -c -o "$VALIDATOR" .)
fi
echo "== validator self-test (it catches the breakages it claims to)"
(cd "$VALIDATE" && "$VALIDATOR" -test.run 'TestFixturePasses|TestBreakages|TestMutualTLSProbesUseTheHealthPort')

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# value set -> GPU limit its Deployment must ask for
declare -A GPUS=([default]=1)
for f in "$CHART"/ci/*.yaml; do
  name=$(basename "$f" .yaml)
  GPUS[$name]=$(sed -n 's/^  count: *\([0-9]*\).*/\1/p' "$f" | head -1)
  [[ -n "${GPUS[$name]}" ]] || GPUS[$name]=1
done
for name in "${!GPUS[@]}"; do
  args=()
  [[ $name == default ]] || args=(-f "$CHART/ci/$name.yaml")
  echo "== $name values: helm lint, helm template, strict decode (want ${GPUS[$name]} GPU)"
  "$HELM" lint --quiet --strict "$CHART" "${args[@]}" --kube-version "$KUBE_VERSION" >/dev/null
  "$HELM" template lychee "$CHART" "${args[@]}" --namespace ci --kube-version "$KUBE_VERSION" > "$OUT/$name.yaml"
  (cd "$VALIDATE" && LYCHEE_RENDERED="$OUT/$name.yaml" LYCHEE_EXPECT_GPUS="${GPUS[$name]}" \
    "$VALIDATOR" -test.run '^TestRendered$')
done
echo "deploy checks passed"
