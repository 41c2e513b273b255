#!/usr/bin/env bash
# A small local base image for the Dockerfile's CUDA_BASE argument, where no image registry can be
# reached (the CUDA base cannot be pulled): a minimal Debian bookworm made by mmdebstrap from Debian's
# packages and imported into buildah's storage as $BASE_IMAGE. It has no CUDA plumbing, so the image built
# on it runs on the CPU (the torch wheel still carries its CUDA libraries; nothing loads them without a GPU).
#
#   deploy/image/build_base.sh            # once; the rootfs tarball is kept in .cache/image/ for next time
#
# Needs root, mmdebstrap and buildah (Debian: apt-get install -y mmdebstrap buildah).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BASE_IMAGE=${BASE_IMAGE:-localhost/lychee-base:bookworm}
SUITE=${SUITE:-bookworm}
CACHE=.cache/image
TARBALL=$CACHE/base-$SUITE.tar
mkdir -p "$CACHE"

if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "base image $BASE_IMAGE is there"
  exit 0
fi
if [[ ! -s $TARBALL ]]; then
  echo "== mmdebstrap $SUITE (minbase + ca-certificates) -> $TARBALL"
  # minbase: apt, dpkg, passwd (useradd) and coreutils; apt-get in the Dockerfile adds Python and gcc.
  mmdebstrap --variant=minbase --format=tar --include=ca-certificates --aptopt='Acquire::Retries "3"' \
    "$SUITE" "$TARBALL.partial"
  mv "$TARBALL.partial" "$TARBALL"
fi
echo "== importing $TARBALL as $BASE_IMAGE"
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah add "$ctr" "$TARBALL" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
buildah commit --quiet "$ctr" "$BASE_IMAGE" >/dev/null
echo "base image $BASE_IMAGE: $(buildah inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE" 2>/dev/null | cut -c1-12)"
