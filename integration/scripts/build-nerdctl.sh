#!/usr/bin/env bash
# Builds nerdctl (github.com/containerd/nerdctl/v2/cmd/nerdctl, fetched through the Go module
# proxy) and keeps it under $SHIM_VM_CACHE/nerdctl-<version>/ (default
# /var/tmp/containerd-shim-vm/cache: outside git, so a machine that ran CI before reuses it from
# any clone). Go's module and build caches live beside it ($SHIM_VM_CACHE/nerdctl-go/), never in
# the clone or in ~/go.
# Usage: build-nerdctl.sh [VERSION]   VERSION: a v2.x tag such as v2.3.5; default: the pinned one.
# Prints the directory holding nerdctl; the version built is in VERSION two levels above it, as
# with build-containerd.sh.
set -euo pipefail
. "$(dirname "$0")/go-build.sh"
module=github.com/containerd/nerdctl/v2
# Pinned, not asked for: the Go module proxy refuses to list nerdctl's versions (`go list -m
# -versions github.com/containerd/nerdctl/v2` and .../@v/list answer 403 "This module version
# is not available"), though it serves single releases. v2.3.5 (2026-07-20) is the newest
# v2.x release tag in github.com/containerd/nerdctl; the proxy serves it
# (https://proxy.golang.org/github.com/containerd/nerdctl/v2/@v/v2.3.5.info). Its go.mod asks
# for Go 1.26.3 or newer.
pinned=v2.3.5
lock_cache nerdctl

version=${1:-$pinned}
case "$version" in
  v2.*) ;;
  *) echo "build-nerdctl.sh: $version is not a v2.x tag of $module" >&2; exit 2 ;;
esac

out=$root/nerdctl-$version
reuse_build "$out" nerdctl

use_go build-nerdctl.sh "$root/nerdctl-go"
echo "build-nerdctl.sh: building nerdctl $version with $("$go" version)" >&2
# The module's own tree, go.mod and go.sum: the dependency versions its release was tested with.
if ! info=$("$go" mod download -json "$module@$version"); then
  echo "$info" >&2
  echo "build-nerdctl.sh: cannot fetch $module@$version from the Go module proxy ($("$go" env GOPROXY))" >&2
  exit 1
fi
dir=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])' <<<"$info")
# The commit, for `nerdctl version` (the Makefile stamps `git rev-parse HEAD`).
revision=$(python3 -c 'import json, sys; print(json.load(sys.stdin).get("Origin", {}).get("Hash", ""))' <<<"$info")
rm -rf "$out.tmp" && mkdir -p "$out.tmp/usr/bin"
# Built in a copy (the module cache is not a place to build in; `go install pkg@version` refuses
# a module with replace directives, and nerdctl has one).
cp -r "$dir" "$out.tmp/src"
chmod -R u+w "$out.tmp/src"
(
  cd "$out.tmp/src"
  # go.mod replaces its test-only module github.com/containerd/nerdctl/mod/tigron by ./mod/tigron,
  # a nested module, which the module zip leaves out, and the proxy does not serve it on its
  # own. Only cmd/nerdctl/helpers/testing_linux.go brings it into the binary (through
  # pkg/testutil): test helpers that only _test.go files call. Without that file nothing loads
  # the missing module (go build fails, naming it, if a new release imports it elsewhere).
  rm -f cmd/nerdctl/helpers/testing_linux.go
  # As nerdctl's Makefile builds its release binaries: static (use_go), stripped, the version
  # and commit stamped in.
  "$go" build -o "$out.tmp/usr/bin/nerdctl" \
    -ldflags "-s -w -X $module/pkg/version.Version=$version -X $module/pkg/version.Revision=${revision:-unknown}" \
    ./cmd/nerdctl
) >&2
rm -rf "$out.tmp/src"
said=$("$out.tmp/usr/bin/nerdctl" --version)
[ "$said" = "nerdctl version ${version#v}" ] || [ "$said" = "nerdctl version $version" ] ||
  { echo "build-nerdctl.sh: the build says \"$said\", not $version" >&2; exit 1; }
publish_build build-nerdctl.sh "$out" "${version#v}"
