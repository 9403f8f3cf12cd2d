#!/usr/bin/env bash
# Makes the system user QEMU runs as (config `qemu_user`, default containerd-shim-vm): no
# home, no shell, in the kvm group so it can use /dev/kvm. A guest that escapes into QEMU
# is this user, not root. Idempotent.
set -euo pipefail
user=${1:-containerd-shim-vm}
if ! getent passwd "$user" >/dev/null; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group "$user"
fi
if getent group kvm >/dev/null; then
  usermod -a -G kvm "$user"
fi
