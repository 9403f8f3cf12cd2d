# Sourced by demo.sh and test.sh: checks for root, installs what is missing (unless
# SKIP_INSTALL=1), builds the workspace's binaries and the shipped shim, and exports
# where they are.
# Usage: prepare WHAT [extra cargo build args...]
prepare() {
  local what=$1; shift
  if [ "$(id -u)" != 0 ]; then
    echo "$what: run as root (it starts its own containerd and QEMU)" >&2
    exit 1
  fi
  [ "${SKIP_INSTALL:-0}" = 1 ] || bash integration/scripts/install-deps.sh
  command -v cargo >/dev/null || { echo "$what: no cargo: install a Rust toolchain (rustup) first" >&2; exit 1; }
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
  cargo build --release --workspace --bins "$@"
  # The demo and the suites run the shim as it ships (packaging/build-shim.sh).
  local shim
  shim=$(bash packaging/build-shim.sh)
  export SHIM_VM_BIN_DIR=${shim%/*}
}
