#!/usr/bin/env bash
# Builds the Debian package of the shim as it ships (packaging/build-shim.sh) with cargo-deb
# (installed from crates.io on first use, cached outside git) and prints the .deb's path.
# Install with `dpkg -i`, remove with `dpkg -r` (or `dpkg -P` to drop the config and user).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${SHIM_VM_CACHE:-/var/tmp/containerd-shim-vm/cache}
# 3.8.0: the newest release on crates.io when this was written; it builds with Rust 1.85.
version=3.8.0
tool=$cache/cargo-deb-$version
if [ ! -x "$tool/bin/cargo-deb" ]; then
  cargo install -q cargo-deb --version "$version" --locked --root "$tool" >&2
fi
bash packaging/build-shim.sh >/dev/null
target=$(rustc -vV | sed -n 's/^host: //p')
out=${CARGO_TARGET_DIR:-$PWD/target}/debian
mkdir -p "$out"
# --no-build: the binary is the one build-shim.sh made (profile dist, this target), which
# cargo-deb finds where its asset path says target/release.
"$tool/bin/cargo-deb" -q --no-build --no-strip -p containerd-shim-vm --profile dist --target "$target" \
  --output "$out" >&2
ls -t "$out"/containerd-shim-vm_*.deb | head -n1
