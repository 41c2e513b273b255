#!/usr/bin/env bash
# Contract checks of proto/lychee.proto (package lychee.v1), with buf (config: buf.yaml):
#   1. buf lint      STANDARD rules, except PACKAGE_DIRECTORY_MATCH (the file sits at proto/lychee.proto)
#   2. buf format    the file is in canonical format
#   3. buf breaking  FILE rules against the released contract, proto/baseline/lychee.v1.binpb
#                    (a checked-in image, so that CI on a shallow clone needs no git history)
#
# Usage: scripts/check_contract.sh                    run the checks (CI)
#        scripts/check_contract.sh --write-baseline   rebuild the baseline from the current proto;
#                                                     only when releasing a new version of the contract
# buf is installed with a pinned `go install` (module proxy only) into $BUF_BIN_DIR
# (default: the first entry of `go env GOPATH`, /bin) when missing or of another version.
set -euo pipefail

BUF_VERSION=v1.75.0
BASELINE=proto/baseline/lychee.v1.binpb

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO=${GO:-go}
if [[ -z "${BUF_BIN_DIR:-}" ]]; then
  gopath=$("$GO" env GOPATH)
  BUF_BIN_DIR=${gopath%%:*}/bin
fi
BUF=$BUF_BIN_DIR/buf
if [[ ! -x "$BUF" || "$("$BUF" --version 2>/dev/null)" != "${BUF_VERSION#v}" ]]; then
  echo "== installing buf $BUF_VERSION into $BUF_BIN_DIR"
  GOBIN=$BUF_BIN_DIR "$GO" install "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
fi

if [[ "${1:-}" == "--write-baseline" ]]; then
  mkdir -p "$(dirname "$BASELINE")"
  "$BUF" build proto -o "$BASELINE"
  echo "wrote $BASELINE from proto/ (commit it with the release)"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--write-baseline]" >&2
  exit 2
fi

echo "== buf lint (STANDARD)"
"$BUF" lint proto
echo "== buf format"
"$BUF" format --diff --exit-code proto
echo "== buf breaking (FILE) against $BASELINE"
"$BUF" breaking proto --against "$BASELINE"
echo "contract checks passed"
