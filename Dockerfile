# syntax=docker/dockerfile:1
# lychee-grpc, the gRPC reranking service, on a CUDA base:  docker build -t lychee-grpc .
# Run (deploy/README.md has the rest):
#   docker run --gpus all -v /srv/models/lychee-rerank-mm:/models/lychee:ro -e LYCHEE_MODEL=/models/lychee \
#     -p 50051:50051 -p 8080:8080 -p 9000:9000 lychee-grpc
# Every setting is an environment variable LYCHEE_<FLAG> (see `lychee-grpc serve --help`).
# scripts/check_dockerfile.py (CI) checks this file against .dockerignore, pyproject.toml and the CLI.

# The torch wheel from PyPI (cu130) carries its own CUDA user-space libraries as nvidia-* wheels, so the
# base only has to provide the CUDA container plumbing; the node's driver must support CUDA 13.0 (>= 580).
ARG CUDA_BASE=nvidia/cuda:13.0.0-base-ubuntu24.04

FROM ${CUDA_BASE} AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Unset by default. `make image-check` bind-mounts a folder of wheels and passes PIP_FIND_LINKS=/wheels
# PIP_NO_INDEX=1, so that a rebuild does not download torch again (pip reads both from the environment).
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
RUN python3 -m venv "$VIRTUAL_ENV"
WORKDIR /src
# Dependencies first, read from pyproject.toml alone, so that a code change (or a README edit) does not
# re-install torch.
COPY pyproject.toml ./
COPY clients/python/pyproject.toml clients/python/
RUN python -c "import tomllib; print('\n'.join(d for f in ('pyproject.toml', 'clients/python/pyproject.toml') for d in tomllib.load(open(f, 'rb'))['project']['dependencies'] if not d.startswith('lychee-grpc-client')))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY README.md ./
COPY clients/python/README.md clients/python/
COPY proto/lychee.proto proto/
COPY scripts/gen_proto.py scripts/
COPY clients/python/lychee_client/ clients/python/lychee_client/
COPY lychee_grpc/ lychee_grpc/
# The protobuf stubs are generated here (grpcio-tools is a dependency); .dockerignore keeps a checkout's
# own generated stubs out of the context so that they can never be stale.
RUN python scripts/gen_proto.py \
 && pip install --no-deps ./clients/python . \
 && lychee-grpc serve --help > /dev/null

FROM ${CUDA_BASE}
ARG DEBIAN_FRONTEND=noninteractive
# gcc and the Python headers stay: Triton compiles its kernel launchers on the node at first use.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev gcc ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/lychee --shell /usr/sbin/nologin lychee \
 && mkdir -p /models /cache/huggingface \
 && chown lychee:lychee /models /cache/huggingface
COPY --from=build /opt/venv /opt/venv
# Compiler caches go under /tmp (an emptyDir in the Helm chart, so the root filesystem can be read-only);
# setting them also spares torch from looking the user up, which fails under an arbitrary runAsUser.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/lychee \
    HF_HOME=/cache/huggingface \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    PYTHONUNBUFFERED=1 \
    LYCHEE_HOST=0.0.0.0 \
    LYCHEE_PORT=50051
USER 10001:10001
WORKDIR /home/lychee
# gRPC, HTTP (REST API and console), Prometheus metrics.
EXPOSE 50051 8080 9000
# Exec form: the server is PID 1 and receives SIGTERM itself, which starts its drain (--grace-seconds).
ENTRYPOINT ["lychee-grpc", "serve"]
