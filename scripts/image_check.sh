#!/usr/bin/env bash
# `make image-check`: builds the real Dockerfile with buildah (no Docker engine needed) on a small local
# Debian base (deploy/image/build_base.sh, since no image registry can be reached), then serves the tiny
# model from the image and checks it from outside: gRPC health, a rerank, HTTP /health and /metrics, and a
# clean SIGTERM drain.
#
# Caches: .cache/image/ in the clone (the base's rootfs tarball, the wheels the image's pip installs from,
# with no download on a rebuild) and buildah's layer cache (/var/lib/containers: the base, this image and
# its build stage stay tagged; older layers are pruned at the end), so a warm run rebuilds only what
# changed. Needs root; installs buildah and mmdebstrap from Debian when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
IMAGE=${IMAGE:-localhost/lychee-grpc:check}
export BASE_IMAGE=${BASE_IMAGE:-localhost/lychee-base:bookworm}
CACHE=.cache/image
PY=${PYTHON:-.venv/bin/python}
CLI=${LYCHEE_CLI:-.venv/bin/lychee-grpc}
MODEL=${LYCHEE_TINY_MODEL:-.cache/tiny-model}
t0=$SECONDS
step() { echo "== [$((SECONDS - t0)) s] $*"; }
mkdir -p "$CACHE/wheels"

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [[ ${#need[@]} -gt 0 ]]; then
  step "apt-get install ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

step "base image $BASE_IMAGE"
bash deploy/image/build_base.sh

# The wheels of the image's dependencies, read from pyproject.toml as the Dockerfile reads them, plus the
# build backend; rebuilt only when that list changes. Built here with this machine's Python 3.11, the
# version of the Debian base's python3.
step "wheels in $CACHE/wheels"
"$PY" -c "import tomllib; print('\n'.join(d for f in ('pyproject.toml', 'clients/python/pyproject.toml') for d in tomllib.load(open(f, 'rb'))['project']['dependencies'] if not d.startswith('lychee-grpc-client')))" \
  > "$CACHE/requirements.new"
echo "setuptools>=68" >> "$CACHE/requirements.new"
if ! cmp -s "$CACHE/requirements.new" "$CACHE/requirements.txt" || [[ ! -f $CACHE/wheels/.complete ]]; then
  rm -f "$CACHE/wheels/.complete"
  "$PY" -m pip wheel -q -w "$CACHE/wheels" -r "$CACHE/requirements.new"
  mv "$CACHE/requirements.new" "$CACHE/requirements.txt"
  touch "$CACHE/wheels/.complete"
fi
rm -f "$CACHE/requirements.new"

step "buildah bud $IMAGE (CUDA_BASE=$BASE_IMAGE)"
bud=(buildah bud --isolation chroot --layers --quiet
  --build-arg "CUDA_BASE=$BASE_IMAGE" --build-arg PIP_FIND_LINKS=/wheels --build-arg PIP_NO_INDEX=1
  --volume "$ROOT/$CACHE/wheels:/wheels:ro" -f Dockerfile)
# The build stage is tagged too, so that its cached layers (the dependencies) survive the prune below.
"${bud[@]}" --target build -t "$IMAGE-build" . >/dev/null
"${bud[@]}" -t "$IMAGE" . >/dev/null
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"

read -r PORT HTTP_PORT METRICS_PORT < <("$PY" -c "
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*(s.getsockname()[1] for s in socks))")
# The image runs as user 10001, as in a pod: hand it a world-readable copy of the model (a checkpoint
# folder written by root may hold files only root can read).
rm -rf "$CACHE/model"
cp -r "$MODEL" "$CACHE/model"
chmod -R a+rX "$CACHE/model"
step "serving the tiny model from the image: gRPC $PORT, HTTP $HTTP_PORT, metrics $METRICS_PORT"
ctr=$(buildah from --quiet "$IMAGE")
server=
cleanup() {
  if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
    kill -KILL "$server" 2>/dev/null || true
  fi
  buildah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
# The image's entrypoint command as the image's user (10001), its environment, the model mounted read-only.
buildah run --isolation chroot --network host \
  --volume "$ROOT/$CACHE/model:/models/tiny:ro" "$ctr" -- \
  lychee-grpc serve --model /models/tiny --host 127.0.0.1 --port "$PORT" \
    --http-host 127.0.0.1 --http-port "$HTTP_PORT" --metrics-host 127.0.0.1 --metrics-port "$METRICS_PORT" \
  > "$CACHE/serve.log" 2>&1 &
server=$!

"$PY" - "$PORT" "$server" <<'PY'
import os, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 600
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service="lychee.v1.RerankService"), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                print("gRPC health: SERVING")
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline or not os.path.exists(f"/proc/{pid}"):
            sys.exit("the server in the image did not become SERVING; see .cache/image/serve.log")
        time.sleep(1)
PY
step "rerank over gRPC"
"$CLI" rerank --target "127.0.0.1:$PORT" --query "retro denim jacket" \
  --doc "Vintage wash denim jacket, women" --doc "Organic green tea"
step "HTTP /health and /metrics"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/health")
[[ $code == 200 ]] || { echo "/health answered $code" >&2; exit 1; }
echo "/health: 200"
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" > "$CACHE/metrics.txt"
grep -E '^lychee_requests_total\{.*method="Rerank".*\} [1-9]' "$CACHE/metrics.txt" \
  || { echo "/metrics does not count the rerank" >&2; exit 1; }

step "SIGTERM: drain and exit 0"
# The server runs under buildah's chroot helper, in the host's PID namespace (chroot isolation): find it by
# its unique command line (this run's port) and signal it alone, as the kubelet signals PID 1.
pid=
for p in $(pgrep -f -- "serve --model /models/tiny --host 127.0.0.1 --port $PORT "); do
  [[ $(cat "/proc/$p/comm" 2>/dev/null) == lychee-grpc ]] && pid=$p  # not buildah's own processes
done
[[ -n $pid ]] || { echo "cannot find the server process" >&2; exit 1; }
kill -TERM "$pid"
rc=0
wait "$server" || rc=$?
[[ $rc == 0 ]] || { echo "the server exited with $rc" >&2; tail -20 "$CACHE/serve.log" >&2; exit 1; }
grep -q "stopped" "$CACHE/serve.log"
server=
# Bound the disk: each code change leaves a few GB of layers behind; drop those no tagged image uses (this
# build's image and its build stage stay, as the cache of the next run).
buildah rm "$ctr" >/dev/null
buildah rmi --prune >/dev/null 2>&1 || true
step "image check passed"
