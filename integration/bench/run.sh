#!/usr/bin/env bash
# integration/bench/run.sh — containerd-shim-vm against bare QEMU, libvirt and the runc shim,
# side by side in one run. Prints medians (min/max) and ratios; never a timed assertion.
#
#   bash integration/bench/run.sh                       # as root; RUNS=5 INSTANCES=5
#   RUNS=9 SKIP_INSTALL=1 bash integration/bench/run.sh
#
# What it does:
#  1. installs what it needs (integration/scripts/install-deps.sh, then libvirt and strace),
#     unless SKIP_INSTALL=1;
#  2. builds the bench binary and the shim as it ships (packaging/build-shim.sh);
#  3. starts a private libvirtd + virtlogd (see below);
#  4. runs target/release/bench, which starts a private containerd (integration's rig) and
#     measures (a) control-plane start, (b) launch to first console line, (c) shim memory;
#  5. stops everything it started and removes every file it made, on success, error or ^C.
#
# The private libvirt. A privileged libvirtd reads its QEMU driver config from
# /etc/libvirt/qemu.conf and nowhere else (only the embedded driver, qemu:///embed, takes
# another root), so instead of editing the host's file the daemons run in their own mount
# namespace (unshare -m) in which a private directory is bind-mounted over /etc/libvirt,
# /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, and a tmpfs over /run. The
# private qemu.conf sets user = group = "root" (so the QEMU capability cache, probed once on
# the warm-up `virsh create`, stays valid for every later start) and turns dynamic ownership
# off (the VM runs as root; it would otherwise relabel the shared image file). libvirtd's
# socket is put in the bench directory (unix_sock_dir), where virsh reaches it with
# `qemu:///system?socket=...`. No network, nwfilter or storage definitions are visible, so
# nothing (bridges, dnsmasq) is autostarted. When the daemons exit, the namespace and its
# mounts go with them. (There is no systemd: the two daemons run as background processes of
# this script, in the foreground mode, so that it can stop and reap them.)
#
# Environment: RUNS, WARMUP, SETTLE_MS, INSTANCES, PROFILE, PROFILE_RUNS, WELL_UNDER (see the
# top of integration/src/bin/bench/main.rs), SKIP_INSTALL=1, NO_LIBVIRT=1 (no libvirt column),
# BENCH_RESULTS=FILE (a copy of the report, markdown).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: run as root (it starts containerd, libvirtd and QEMU)" >&2
    exit 1
fi

# --- 1. dependencies ---------------------------------------------------------------------------
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    bash integration/scripts/install-deps.sh
    # Bench-only: libvirt for the libvirt column, strace for the profile of the shim's start.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu strace
fi
export PATH=$PATH:/usr/sbin:/sbin

# --- 2. build ----------------------------------------------------------------------------------
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p integration --bin bench
# The shim as it ships (packaging/build-shim.sh), unless SHIM_VM_BIN_DIR names another.
if [ -z "${SHIM_VM_BIN_DIR:-}" ]; then
    shim=$(bash packaging/build-shim.sh)
    export SHIM_VM_BIN_DIR=${shim%/*}
fi

# --- 3. scratch directory and cleanup ----------------------------------------------------------
BENCH_DIR=$(mktemp -d /tmp/vmbench.XXXXXX)
export BENCH_DIR
LV=$BENCH_DIR/libvirt
LIBVIRTD_PID=
VIRTLOGD_PID=
HOLDER_PID=
LV_URI=
# cgroup directories libvirt may create (it has no systemd here): removed at the end only if
# they did not exist before, and only if empty.
CGROUP_NEW=()
for d in /sys/fs/cgroup /sys/fs/cgroup/*; do
    [ -d "$d" ] && [ ! -L "$d" ] && [ ! -e "$d/machine" ] && CGROUP_NEW+=("$d/machine")
done

pid_alive() { [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

stop_pid() { # stop_pid PID NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 i
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do pid_alive "$pid" || return 0; sleep 0.1; done
    echo "run.sh: $2 ($pid) ignored SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 50); do pid_alive "$pid" || return 0; sleep 0.1; done
}

cleanup() {
    local status=$?
    set +e
    if [ -n "$LV_URI" ] && pid_alive "$LIBVIRTD_PID"; then
        # Domains a failed bench left running: libvirtd leaves QEMU running when it stops.
        for dom in $(virsh -q -c "$LV_URI" list --name 2>/dev/null); do
            echo "run.sh: destroying leftover domain $dom" >&2
            virsh -q -c "$LV_URI" destroy "$dom" >/dev/null 2>&1
        done
    fi
    stop_pid "$LIBVIRTD_PID" libvirtd
    stop_pid "$VIRTLOGD_PID" virtlogd
    [ -n "$HOLDER_PID" ] && wait "$HOLDER_PID" 2>/dev/null
    # Any QEMU still running from a failed run (its command line names our directory).
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = $$ ] && continue
        if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "qemu-system.*$BENCH_DIR/"; then
            echo "run.sh: killing leftover ${p#/proc/}" >&2
            kill -KILL "${p#/proc/}" 2>/dev/null
        fi
    done
    for d in "${CGROUP_NEW[@]}"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    rm -rf "$BENCH_DIR"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 4. private libvirtd -----------------------------------------------------------------------
start_libvirt() {
    mkdir -p "$LV"/{etc,lib,cache,log,sock}
    cat >"$LV/etc/libvirtd.conf" <<EOF
unix_sock_dir = "$LV/sock"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$LV/log/libvirtd.log"
EOF
    cat >"$LV/etc/qemu.conf" <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
EOF
    cat >"$LV/etc/virtlogd.conf" <<EOF
log_outputs = "3:file:$LV/log/virtlogd.log"
EOF
    # The daemons run in the foreground under one bash that holds the namespace and reaps
    # them; it and its mounts vanish when both have exited.
    unshare --mount --propagation private -- bash -ec '
        LV=$1
        mount --bind "$LV/etc" /etc/libvirt
        mount -t tmpfs -o mode=0755 tmpfs /run
        mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
        mount --bind "$LV/lib" /var/lib/libvirt
        mount --bind "$LV/cache" /var/cache/libvirt
        mount --bind "$LV/log" /var/log/libvirt
        virtlogd --config /etc/libvirt/virtlogd.conf </dev/null >>"$LV/virtlogd.out" 2>&1 &
        echo $! >"$LV/virtlogd.pid"
        libvirtd --config /etc/libvirt/libvirtd.conf </dev/null >>"$LV/libvirtd.out" 2>&1 &
        echo $! >"$LV/libvirtd.pid"
        wait
    ' bash "$LV" &
    HOLDER_PID=$!
    local i
    for i in $(seq 50); do
        [ -s "$LV/libvirtd.pid" ] && [ -s "$LV/virtlogd.pid" ] && break
        sleep 0.1
    done
    VIRTLOGD_PID=$(cat "$LV/virtlogd.pid")
    LIBVIRTD_PID=$(cat "$LV/libvirtd.pid")
    LV_URI="qemu:///system?socket=$LV/sock/libvirt-sock"
    for i in $(seq 100); do
        virsh -q -c "$LV_URI" version >/dev/null 2>&1 && break
        pid_alive "$LIBVIRTD_PID" || break
        sleep 0.1
    done
    if ! virsh -q -c "$LV_URI" version >/dev/null 2>&1; then
        echo "run.sh: the private libvirtd does not answer; its log:" >&2
        tail -n 30 "$LV/log/libvirtd.log" >&2 || true
        return 1
    fi
    echo "run.sh: private libvirtd $LIBVIRTD_PID, virtlogd $VIRTLOGD_PID (config $LV/etc)" >&2
}

if [ "${NO_LIBVIRT:-0}" != 1 ]; then
    start_libvirt
    export BENCH_LIBVIRT_URI=$LV_URI BENCH_LIBVIRT_DIR=$LV
else
    unset BENCH_LIBVIRT_URI
fi

# --- 5. measure --------------------------------------------------------------------------------
"$CARGO_TARGET_DIR/release/bench"
