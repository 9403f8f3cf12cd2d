#!/usr/bin/env bash
# The README's first command: install what is needed, build, then boot the tiny VM
# through a private containerd with `ctr run --runtime io.containerd.vm.v1` and show
# its console. Nothing is left running afterwards. Run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: run as root (it starts its own containerd)" >&2
  exit 1
fi
[ "${SKIP_INSTALL:-0}" = 1 ] || bash integration/scripts/install-deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --workspace --bins
export SHIM_VM_BIN_DIR=$CARGO_TARGET_DIR/release
exec "$CARGO_TARGET_DIR/release/demo"
