#!/usr/bin/env bash
# The README's first command: install what is needed, build, then boot the tiny VM
# through a private containerd with `ctr run --runtime io.containerd.vm.v1` and show
# its console. Nothing is left running afterwards. Run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
source integration/scripts/prepare.sh
prepare demo.sh
exec "$CARGO_TARGET_DIR/release/demo"
