#!/usr/bin/env bash
# integration/bench/pods.sh — pod start through CRI (crictl), a VM pod against a runc pod side
# by side, and the overhead figure for the RuntimeClass (shim + QEMU beside the guest's RAM).
# Prints medians and ratios; never a timed assertion.
#
#   bash integration/bench/pods.sh                 # as root; RUNS=5
#   RUNS=9 SKIP_INSTALL=1 bash integration/bench/pods.sh
#
# It installs what it needs (unless SKIP_INSTALL=1), builds crictl (scripts/build-crictl.sh,
# cached outside git) and the shim as it ships (packaging/build-shim.sh), then runs the
# podbench binary (integration/src/bin/podbench.rs: what is measured and how), which starts
# a private containerd with CRI in a network namespace of its own. BENCH_RESULTS=FILE keeps
# a copy of the report (markdown).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
    echo "pods.sh: run as root (it starts containerd, pods and QEMU)" >&2
    exit 1
fi
[ "${SKIP_INSTALL:-0}" = 1 ] || bash integration/scripts/install-deps.sh
export CRICTL_BIN_DIR=${CRICTL_BIN_DIR:-$(bash integration/scripts/build-crictl.sh)}
target=${CARGO_TARGET_DIR:-$PWD/target}
shim=$(CARGO_TARGET_DIR=$target bash packaging/build-shim.sh)
export SHIM_VM_BIN_DIR=${SHIM_VM_BIN_DIR:-$(dirname "$shim")}
CARGO_TARGET_DIR=$target cargo build --release -q -p integration --bin podbench
exec "$target/release/podbench"
