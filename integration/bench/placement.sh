#!/usr/bin/env bash
# integration/bench/placement.sh — what NUMA placement costs: the decision on a synthetic
# 8-node host with 500 VMs placed, the ledger's read-modify-write with as many, and 50
# processes placing at once (shim/examples/placement-bench.rs). The start latency a
# placed VM adds over `vm.containerd.io/numa=none` is a row of integration/bench/run.sh.
# Never asserts on time; prints a markdown report (BENCH_RESULTS=FILE keeps a copy).
#
#   bash integration/bench/placement.sh                 # PLACED=500 NODES=8 SHIMS=50
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/containerd-shim-vm/target}
cargo build --release -q -p containerd-shim-vm --example placement-bench
BIN=$CARGO_TARGET_DIR/release/examples/placement-bench
SCRATCH=$(mktemp -d /tmp/placement-bench.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
REPORT=$SCRATCH/report.md
echo "load average at the start $(cut -d' ' -f1-3 /proc/loadavg)" >"$REPORT"
"$BIN" --placed "${PLACED:-500}" --nodes "${NODES:-8}" --shims "${SHIMS:-50}" --dir "$SCRATCH" >>"$REPORT"
cat "$REPORT"
[ -z "${BENCH_RESULTS:-}" ] || cp "$REPORT" "$BENCH_RESULTS"
