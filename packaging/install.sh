#!/usr/bin/env bash
# Installs containerd-shim-vm on this host: the shim binary where containerd finds
# runtime shims (PATH), and the default config unless one exists already.
# Usage: packaging/install.sh [PATH_TO_BINARY]   (default: build it with build-shim.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-$(bash "$here/build-shim.sh")}
[ -x "$binary" ] || { echo "install.sh: no shim binary at $binary" >&2; exit 1; }
install -D -m 0755 "$binary" /usr/local/bin/containerd-shim-vm-v1
bash "$here/create-qemu-user.sh"
if [ ! -e /etc/containerd-shim-vm/config.toml ]; then
  install -D -m 0644 "$here/config.toml" /etc/containerd-shim-vm/config.toml
fi
echo "installed /usr/local/bin/containerd-shim-vm-v1 ($(/usr/local/bin/containerd-shim-vm-v1 --version | tr '\n' ' '))"
# containerd 2.x reads config version 3; 1.x reads version 2.
snippet=$here/containerd-config-v2.toml
if command -v containerd >/dev/null && containerd --version | awk '{print $3}' | grep -q '^v\?2\.'; then
  snippet=$here/containerd-config-v3.toml
fi
echo "for CRI, merge $snippet into /etc/containerd/config.toml and restart containerd"
