#!/usr/bin/env bash
# Builds crictl (sigs.k8s.io/cri-tools/cmd/crictl, fetched through the Go module proxy) and keeps
# it under $SHIM_VM_CACHE/crictl-<version>/ (default /var/tmp/containerd-shim-vm/cache: outside
# git, so a machine that ran CI before reuses it from any clone). Go's module and build caches
# live beside it ($SHIM_VM_CACHE/crictl-go/), never in the clone or in ~/go.
# Usage: build-crictl.sh [VERSION]   VERSION: a v1.x tag such as v1.37.0; default: the pinned one.
# Prints the directory holding crictl.
set -euo pipefail
. "$(dirname "$0")/go-build.sh"
module=sigs.k8s.io/cri-tools
# v1.37.0: the release the issue names; the proxy serves it (v1.35.0 it does not).
pinned=v1.37.0
lock_cache crictl

version=${1:-$pinned}
case "$version" in
  v1.*) ;;
  *) echo "build-crictl.sh: $version is not a v1.x tag of $module" >&2; exit 2 ;;
esac

out=$root/crictl-$version
reuse_build "$out" crictl

use_go build-crictl.sh "$root/crictl-go"
echo "build-crictl.sh: building crictl $version with $("$go" version)" >&2
rm -rf "$out.tmp" && mkdir -p "$out.tmp/usr/bin"
# As cri-tools' Makefile stamps it: the version crictl reports.
GOBIN=$out.tmp/usr/bin "$go" install \
  -ldflags "-s -w -X $module/pkg/version.Version=$version" "$module/cmd/crictl@$version" >&2
said=$("$out.tmp/usr/bin/crictl" --version)
case "$said" in
  *"${version#v}"*) ;;
  *) echo "build-crictl.sh: the build says \"$said\", not $version" >&2; exit 1 ;;
esac
publish_build build-crictl.sh "$out" "${version#v}"
