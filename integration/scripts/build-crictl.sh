#!/usr/bin/env bash
# Builds crictl (sigs.k8s.io/cri-tools/cmd/crictl, fetched through the Go module proxy) and keeps
# it under $SHIM_VM_CACHE/crictl-<version>/ (default /var/tmp/containerd-shim-vm/cache: outside
# git, so a machine that ran CI before reuses it from any clone). Go's module and build caches
# live beside it ($SHIM_VM_CACHE/crictl-go/), never in the clone or in ~/go.
# Usage: build-crictl.sh [VERSION]   VERSION: a v1.x tag such as v1.37.0; default: the pinned one.
# Prints the directory holding crictl.
set -euo pipefail
module=sigs.k8s.io/cri-tools
# v1.37.0: the release the issue names; the proxy serves it (v1.35.0 it does not).
pinned=v1.37.0
root=${SHIM_VM_CACHE:-/var/tmp/containerd-shim-vm/cache}
mkdir -p "$root"
root=$(cd "$root" && pwd)
# Clones share the cache: one build at a time.
exec 9>"$root/.crictl.lock"
flock 9

version=${1:-$pinned}
case "$version" in
  v1.*) ;;
  *) echo "build-crictl.sh: $version is not a v1.x tag of $module" >&2; exit 2 ;;
esac

out=$root/crictl-$version
bin=$out/usr/bin
if [ -x "$bin/crictl" ] && [ -f "$out/VERSION" ]; then
  echo "$bin"
  exit 0
fi

go=$(command -v go || true)
if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go; fi
[ -n "$go" ] || { echo "build-crictl.sh: no go on PATH nor in /usr/local/go/bin: install Go first" >&2; exit 1; }
gocache=$root/crictl-go
mkdir -p "$gocache"
export GOMODCACHE=$gocache/mod GOCACHE=$gocache/build GOPATH=$gocache/path
export GOFLAGS="-modcacherw -buildvcs=false" GOTOOLCHAIN=local GO111MODULE=on CGO_ENABLED=0
cd "$gocache"

start=$SECONDS
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
echo "${version#v}" > "$out.tmp/VERSION"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-crictl.sh: built crictl $version in $((SECONDS - start)) s" >&2
echo "$bin"
