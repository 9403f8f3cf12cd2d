#!/usr/bin/env bash
# Builds the newest containerd release from its Go module (github.com/containerd/containerd/v2,
# fetched through the Go module proxy) and keeps it under
# $SHIM_VM_CACHE/containerd/go-<version>/ (default /var/tmp/containerd-shim-vm/cache: outside
# git, so a machine that ran CI before reuses it from any clone). Go's module and build caches
# live beside it ($SHIM_VM_CACHE/containerd/go/), never in the clone or in ~/go.
# Usage: build-containerd.sh [VERSION]   VERSION: a tag such as v2.4.2; default: the newest
#        v2.x release the proxy serves (if the proxy cannot be asked, the newest one built here
#        before, with a warning).
# Prints the directory holding containerd, ctr and containerd-shim-runc-v2; the version built
# is in VERSION two levels above it, as with fetch-containerd.sh.
set -euo pipefail
. "$(dirname "$0")/go-build.sh"
module=github.com/containerd/containerd/v2
cache=${SHIM_VM_CACHE:-/var/tmp/containerd-shim-vm/cache}/containerd
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# Clones share the cache: one fetch or build at a time.
exec 9>"$cache/.lock"
flock 9

use_go build-containerd.sh "$cache/go"

version=${1:-}
if [ -z "$version" ]; then
  if versions=$("$go" list -m -versions "$module" 2>/dev/null); then
    # Releases only (no -rc, -beta), highest last.
    version=$(tr ' ' '\n' <<<"$versions" | grep -E '^v2\.[0-9]+\.[0-9]+$' | sort -V | tail -n 1 || true)
    [ -n "$version" ] || { echo "build-containerd.sh: the Go module proxy lists no v2.x release of $module" >&2; exit 1; }
  else
    built=$(find "$cache" -maxdepth 1 -name 'go-v2.*' -type d -printf '%f\n' | sed 's/^go-//' | grep -vE '\.tmp$' | sort -V | tail -n 1 || true)
    [ -n "$built" ] || { echo "build-containerd.sh: cannot ask the Go module proxy ($("$go" env GOPROXY)) for $module's versions, and nothing was built before" >&2; exit 1; }
    echo "build-containerd.sh: cannot ask the Go module proxy for $module's versions; using $built, built before" >&2
    version=$built
  fi
fi
case "$version" in
  v2.*) ;;
  *) echo "build-containerd.sh: $version is not a v2.x tag of $module" >&2; exit 2 ;;
esac

out=$cache/go-$version
reuse_build "$out" containerd ctr containerd-shim-runc-v2

echo "build-containerd.sh: building containerd $version with $("$go" version)" >&2
# The module's own tree, go.mod and go.sum: the dependency versions its release was tested with.
dir=$("$go" mod download -json "$module@$version" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
rm -rf "$out.tmp" && mkdir -p "$out.tmp/usr/bin"
# Built in a copy (the module cache is not a place to build in; a release with replace
# directives cannot be built with `go install pkg@version`).
cp -r "$dir" "$out.tmp/src"
chmod -R u+w "$out.tmp/src"
# As containerd's Makefile builds its release binaries: the version stamped in (the suites and
# `ctr version` check it), urfave_cli_no_docs, no_grpc for the shim, stripped; static (use_go),
# as the Makefile builds the shim: the btrfs snapshotter, which needs cgo, is left out (the
# tests disable it anyway).
ldflags="-X $module/version.Version=$version -X $module/version.Package=$module -s -w"
(
  cd "$out.tmp/src"
  "$go" build -o "$out.tmp/usr/bin/containerd" -tags urfave_cli_no_docs -ldflags "$ldflags" ./cmd/containerd
  "$go" build -o "$out.tmp/usr/bin/ctr" -tags urfave_cli_no_docs -ldflags "$ldflags" ./cmd/ctr
  "$go" build -o "$out.tmp/usr/bin/containerd-shim-runc-v2" -tags "urfave_cli_no_docs no_grpc" \
    -ldflags "$ldflags" ./cmd/containerd-shim-runc-v2
) >&2
rm -rf "$out.tmp/src"
said=$("$out.tmp/usr/bin/containerd" --version)
[ "$(awk '{print $3}' <<<"$said")" = "$version" ] || { echo "build-containerd.sh: the build says \"$said\", not $version" >&2; exit 1; }
publish_build build-containerd.sh "$out" "${version#v}"
