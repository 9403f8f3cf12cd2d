#!/usr/bin/env bash
# Builds one Kubernetes component from k8s.io/kubernetes (fetched through the Go module proxy)
# and keeps it under $SHIM_VM_CACHE/<component>-<version>/ (default
# /var/tmp/containerd-shim-vm/cache: outside git, so a machine that ran CI before reuses it from
# any clone). Go's module and build caches live beside it ($SHIM_VM_CACHE/kubernetes-go/, one
# for every component: they share most packages), never in the clone or in ~/go.
# Usage: build-kubernetes.sh COMPONENT [VERSION]
#   COMPONENT: kubelet, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, or
#              etcd (the release k8s.io/kubernetes VERSION requires, its API server's tested one)
#   VERSION:   a v1.x tag such as v1.34.4; default: the pinned one.
# Prints the directory holding the component.
set -euo pipefail
. "$(dirname "$0")/go-build.sh"
# v1.34: the newest minor release whose kubelet still runs on a cgroup v1 host (with
# failCgroupV1: false); these test machines have cgroup v1. The proxy serves v1.34.4.
pinned=v1.34.4
component=${1:?usage: build-kubernetes.sh COMPONENT [VERSION]}
version=${2:-$pinned}
case "$component" in
  kubelet | kube-apiserver | kube-controller-manager | kube-scheduler | kubectl | etcd) ;;
  *) echo "build-kubernetes.sh: $component is not one of kubelet kube-apiserver kube-controller-manager kube-scheduler kubectl etcd" >&2; exit 2 ;;
esac
case "$version" in
  v1.*) ;;
  *) echo "build-kubernetes.sh: $version is not a v1.x tag of k8s.io/kubernetes" >&2; exit 2 ;;
esac
# The components share Go's cache: one build of any at a time.
lock_cache kubernetes

out=$root/$component-$version
reuse_build "$out" "$component"

use_go build-kubernetes.sh "$root/kubernetes-go"
echo "build-kubernetes.sh: building $component for Kubernetes $version with $("$go" version)" >&2
rm -rf "$out.tmp" && mkdir -p "$out.tmp/usr/bin" "$out.tmp/build"
cd "$out.tmp/build"
# k8s.io/kubernetes requires its staging modules (k8s.io/api, client-go, ...) at v0.0.0 and
# replaces them with ./staging/src/..., which its module zip leaves out; a module of our own
# requires kubernetes and replaces each with its published release of the same minor
# (v1.34.4 -> v0.34.4).
info=$("$go" mod download -json "k8s.io/kubernetes@$version")
gomod=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])' <<<"$info")
staging=v0.${version#v1.}
{
  echo "module kubernetesbuild"
  echo
  echo "go $(awk '$1 == "go" { print $2; exit }' "$gomod")"
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  echo "replace ("
  awk -v v="$staging" '$2 == "=>" && $3 ~ /^\.\/staging\// { print "\t" $1 " => " $1 " " v }' "$gomod"
  echo ")"
} > go.mod
case "$component" in
  etcd)
    # etcd's server module is in kubernetes' module graph (its integration tests embed it); its
    # root package is the etcd binary. Built at the version kubernetes requires.
    package=go.etcd.io/etcd/server/v3
    etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$gomod")
    [ -n "$etcd_version" ] || { echo "build-kubernetes.sh: k8s.io/kubernetes $version requires no etcd server" >&2; exit 1; }
    "$go" get "k8s.io/kubernetes@$version" "$package@$etcd_version" >&2
    "$go" build -o "$out.tmp/usr/bin/etcd" -ldflags "-s -w" "$package" >&2
    said=$("$out.tmp/usr/bin/etcd" --version | sed -n 1p)
    expected="etcd Version: ${etcd_version#v}"
    ;;
  *)
    package=k8s.io/kubernetes/cmd/$component
    "$go" get "$package@$version" >&2
    # As Kubernetes' release builds stamp it, so the binary says its version.
    "$go" build -o "$out.tmp/usr/bin/$component" \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitVersion=$version" \
      "$package" >&2
    if [ "$component" = kubectl ]; then
      said=$("$out.tmp/usr/bin/kubectl" version --client | sed -n 1p)
      expected="Client Version: $version"
    else
      said=$("$out.tmp/usr/bin/$component" --version)
      expected="Kubernetes $version"
    fi
    ;;
esac
cd "$root"
rm -rf "$out.tmp/build"
[ "$said" = "$expected" ] || { echo "build-kubernetes.sh: the build says \"$said\", not \"$expected\"" >&2; exit 1; }
publish_build build-kubernetes.sh "$out" "$said"
