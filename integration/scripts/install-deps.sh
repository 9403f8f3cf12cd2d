#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a Debian 12 host.
# Idempotent; safe on a machine that already has everything.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# qemu-utils must match qemu-system-x86's version: a newer qemu-utils from
# backports conflicts with bookworm's qemu-system-common, so pin both together.
qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
apt-get install -y -q --no-install-recommends --allow-downgrades \
  "qemu-system-x86=${qemu_version}" "qemu-utils=${qemu_version}" \
  containerd runc containernetworking-plugins \
  busybox-static syslinux syslinux-common mtools dosfstools genisoimage fdisk cpio kmod \
  mmdebstrap e2fsprogs \
  linux-image-cloud-amd64 \
  protobuf-compiler iproute2 procps ca-certificates git python3 gcc libc6-dev \
  cloud-init qemu-guest-agent util-linux iputils-ping openssl
# QEMU runs as this unprivileged user (config qemu_user), as it does once installed.
bash "$(dirname "$0")/../../packaging/create-qemu-user.sh"
