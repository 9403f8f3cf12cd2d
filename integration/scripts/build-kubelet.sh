#!/usr/bin/env bash
# Builds kubelet (k8s.io/kubernetes/cmd/kubelet, fetched through the Go module proxy) and keeps
# it under $SHIM_VM_CACHE/kubelet-<version>/ (default /var/tmp/containerd-shim-vm/cache: outside
# git, so a machine that ran CI before reuses it from any clone). Go's module and build caches
# live beside it ($SHIM_VM_CACHE/kubelet-go/), never in the clone or in ~/go.
# Usage: build-kubelet.sh [VERSION]   VERSION: a v1.x tag such as v1.34.4; default: the pinned one.
# Prints the directory holding kubelet.
set -euo pipefail
# v1.34: the newest minor release whose kubelet still runs on a cgroup v1 host (with
# failCgroupV1: false); these test machines have cgroup v1. The proxy serves v1.34.4.
pinned=v1.34.4
root=${SHIM_VM_CACHE:-/var/tmp/containerd-shim-vm/cache}
mkdir -p "$root"
root=$(cd "$root" && pwd)
# Clones share the cache: one build at a time.
exec 9>"$root/.kubelet.lock"
flock 9

version=${1:-$pinned}
case "$version" in
  v1.*) ;;
  *) echo "build-kubelet.sh: $version is not a v1.x tag of k8s.io/kubernetes" >&2; exit 2 ;;
esac
out=$root/kubelet-$version
bin=$out/usr/bin
if [ -x "$bin/kubelet" ] && [ -f "$out/VERSION" ]; then
  echo "$bin"
  exit 0
fi

go=$(command -v go || true)
if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go; fi
[ -n "$go" ] || { echo "build-kubelet.sh: no go on PATH nor in /usr/local/go/bin: install Go first" >&2; exit 1; }
gocache=$root/kubelet-go
mkdir -p "$gocache"
export GOMODCACHE=$gocache/mod GOCACHE=$gocache/build GOPATH=$gocache/path
export GOFLAGS="-modcacherw -buildvcs=false" GOTOOLCHAIN=local GO111MODULE=on CGO_ENABLED=0

start=$SECONDS
echo "build-kubelet.sh: building kubelet $version with $("$go" version)" >&2
rm -rf "$out.tmp" && mkdir -p "$out.tmp/usr/bin" "$out.tmp/build"
cd "$out.tmp/build"
# k8s.io/kubernetes requires its staging modules (k8s.io/api, client-go, ...) at v0.0.0 and
# replaces them with ./staging/src/..., which its module zip leaves out; a module of our own
# requires kubernetes and replaces each with its published release of the same minor
# (v1.34.4 -> v0.34.4), as the issue describes.
info=$("$go" mod download -json "k8s.io/kubernetes@$version")
gomod=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])' <<<"$info")
staging=v0.${version#v1.}
{
  echo "module kubeletbuild"
  echo
  echo "go $(awk '$1 == "go" { print $2; exit }' "$gomod")"
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  echo "replace ("
  awk -v v="$staging" '$2 == "=>" && $3 ~ /^\.\/staging\// { print "\t" $1 " => " $1 " " v }' "$gomod"
  echo ")"
} > go.mod
"$go" get "k8s.io/kubernetes/cmd/kubelet@$version" >&2
# As Kubernetes' release builds stamp it, so `kubelet --version` says the version.
"$go" build -o "$out.tmp/usr/bin/kubelet" \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitVersion=$version" \
  k8s.io/kubernetes/cmd/kubelet >&2
cd "$root"
rm -rf "$out.tmp/build"
said=$("$out.tmp/usr/bin/kubelet" --version)
[ "$said" = "Kubernetes $version" ] || { echo "build-kubelet.sh: the build says \"$said\", not $version" >&2; exit 1; }
echo "${version#v}" > "$out.tmp/VERSION"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-kubelet.sh: built kubelet $version in $((SECONDS - start)) s" >&2
echo "$bin"
