# Sourced by the build-*.sh scripts, which build a Go program fetched through the Go module
# proxy into a directory of the cache outside git. What they share: finding Go, keeping Go's
# caches beside the build, and publishing a finished build.

# lock_cache NAME: sets $root to the cache (SHIM_VM_CACHE, default
# /var/tmp/containerd-shim-vm/cache: outside git, so a machine that ran CI before reuses its
# builds from any clone) and holds its lock NAME until the script ends: clones share the cache,
# one build of a kind at a time.
lock_cache() {
  root=${SHIM_VM_CACHE:-/var/tmp/containerd-shim-vm/cache}
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
  exec 9>"$root/.$1.lock"
  flock 9
}

# use_go SCRIPT GOCACHE: sets $go, keeps Go's module and build caches under GOCACHE, never in
# the clone or in ~/go, and works there: outside any Go module (and outside the clone), as
# `go mod download` and `go list -m` need. Starts the clock publish_build reads.
use_go() {
  local script=$1 gocache=$2
  go=$(command -v go || true)
  if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go; fi
  [ -n "$go" ] || { echo "$script: no go on PATH nor in /usr/local/go/bin: install Go first" >&2; exit 1; }
  mkdir -p "$gocache"
  export GOMODCACHE=$gocache/mod GOCACHE=$gocache/build GOPATH=$gocache/path
  # -modcacherw: the module cache can be removed with rm -rf like the rest of the cache.
  # GOTOOLCHAIN=local: no toolchain download behind our back; a Go too old for the module's
  # go.mod is an error. CGO_ENABLED=0: static, as the projects' own release builds are, and
  # no C toolchain or headers needed.
  export GOFLAGS="-modcacherw -buildvcs=false" GOTOOLCHAIN=local GO111MODULE=on CGO_ENABLED=0
  cd "$gocache"
  start=$SECONDS
}

# reuse_build OUT PROGRAM...: if OUT holds a finished build of every PROGRAM, prints the
# directory holding them and ends the script.
reuse_build() {
  local out=$1 program
  shift
  [ -f "$out/VERSION" ] || return 0
  for program in "$@"; do
    [ -x "$out/usr/bin/$program" ] || return 0
  done
  echo "$out/usr/bin"
  exit 0
}

# publish_build SCRIPT OUT VERSION_TEXT: OUT.tmp, finished and checked, becomes OUT, with
# VERSION_TEXT in OUT/VERSION; prints the directory holding the programs.
publish_build() {
  local script=$1 out=$2 version_text=$3
  echo "$version_text" > "$out.tmp/VERSION"
  rm -rf "$out" # an incomplete one left by hand, which reuse_build did not take
  mv "$out.tmp" "$out"
  echo "$script: built $(basename "$out") in $((SECONDS - start)) s" >&2
  echo "$out/usr/bin"
}
