#!/usr/bin/env bash
# Builds the shim binary that ships (cargo profile `dist`: size-optimised, whole-program
# LTO, glibc linked in statically) and prints its path. One shim runs per pod, so its
# resident memory is paid on every node many times over: a static, small binary maps no
# shared libraries and touches fewer pages (BENCHMARKS.md has the figures).
# crt-static needs an explicit --target, so that build scripts and proc-macros (host
# artifacts) are still linked the usual way.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
  cargo build -q --profile dist --target "$target" -p containerd-shim-vm --bin containerd-shim-vm-v1 >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/$target/dist/containerd-shim-vm-v1"
