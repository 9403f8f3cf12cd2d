#!/usr/bin/env bash
# The test command (README and CI): installs what is missing, builds, and runs the
# unit tests and the end-to-end suite (a private containerd, real QEMU under TCG).
# Must run as root: the suite mounts images, creates cgroups and starts containerd.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run as root (the end-to-end suite starts containerd and QEMU)" >&2
  exit 1
fi
[ "${SKIP_INSTALL:-0}" = 1 ] || bash integration/scripts/install-deps.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --workspace --bins
export SHIM_VM_BIN_DIR=$CARGO_TARGET_DIR/release
# VMs boot under software emulation on small machines: two tests at a time.
cargo test --release --workspace -- --test-threads="${TEST_THREADS:-2}"
