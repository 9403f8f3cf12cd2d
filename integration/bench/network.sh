#!/usr/bin/env bash
# integration/bench/network.sh — guest → host-namespace TCP throughput (iperf3) through the
# pod-network bindings a VM runtime can use, side by side in one run, alternating, with
# medians and ratios. Bare QEMU (no containerd, no shim): the point is the datapath.
# It never asserts on time; PASS/FAIL lines compare ratios of medians with the targets.
#
#   bash integration/bench/network.sh                   # as root; ROUNDS=3, 10 s per test
#   ROUNDS=5 IPERF_SECS=20 SKIP_INSTALL=1 bash integration/bench/network.sh
#
# The network, as a CNI bridge/ptp plugin leaves a pod's: a "host" namespace and a pod
# namespace joined by a veth; the pod's end is eth0 with the pod's MAC, 10.79.0.2/24 and a
# default route via the host end, 10.79.0.1, where an iperf3 server listens (one per test,
# `iperf3 -s -1`). Each test gets a fresh pod namespace, then one binding is put on its eth0:
#
#   macvtap   a passthru macvtap on eth0 (eth0's addresses removed), its character device
#             opened from a node made for its major:minor (read from the pod namespace's sysfs);
#             the descriptor has IFF_VNET_HDR from birth; QEMU gets it as
#             `-netdev tap,fd=N` + virtio-net-pci with eth0's MAC: what the shim does.
#   novnet    the same, with IFF_VNET_HDR cleared on the descriptor before QEMU gets it
#             (network-tapfd.py: TUNSETIFF IFF_TAP|IFF_NO_PI, checked with TUNGETIFF): QEMU
#             then offers the guest no checksum/TSO offload (Virtlet's bug).
#   bridge    KubeVirt's bridge binding: eth0's address removed and its MAC changed to a random
#             one, eth0 and a tap (`ip tuntap ... vnet_hdr`) enslaved to a bridge k6t-eth0
#             without an address; QEMU, in the pod namespace, opens the tap by name with
#             vnet_hdr=on; the guest has eth0's old MAC and the pod IP.
#   tcredirect  Kata's default ("tcfilter"): eth0 keeps its MAC, loses its address; a vnet_hdr
#             tap beside it; an ingress qdisc on each with a u32 filter matching everything
#             whose action is `mirred egress redirect` to the other; QEMU opens the tap by name
#             with vnet_hdr=on; the guest has eth0's MAC and the pod IP.
#
# Every binding boots the same guest (integration/images/build-iperf.sh: kernel + busybox
# initramfs with Debian's iperf3, booted with -kernel/-initrd) with the same QEMU command line
# but for -netdev: q35, TCG (the shim's `tcg,tb-size=64`), 1 vCPU, MEM_MIB, virtio-net-pci with
# host_mtu=MTU, vhost=off (this host has no vhost-net; the shim runs without it too). The guest
# runs `iperf3 -c 10.79.0.1 -t IPERF_SECS -O IPERF_OMIT -J` and powers off; the figure is what
# the server received. Rounds alternate the bindings, the order rotating each round. Also
# reported: the mean size of the frames the pod's eth0 sent on (its tx bytes / packets):
# ~44 KB when the guest's TSO segments cross the host whole, one MTU without offloads.
#
# Environment: ROUNDS (3), IPERF_SECS (10), IPERF_OMIT (1), MEM_MIB (512), MTU (1500),
# BINDINGS ("macvtap novnet bridge tcredirect"), IMAGE_DIR (/var/tmp/containerd-shim-vm/iperf),
# QEMU (qemu-system-x86_64), SKIP_INSTALL=1 (no apt-get), BENCH_RESULTS=FILE (a copy of the
# report, markdown), KEEP_LOGS=1 (keep the serial logs under /var/tmp/netbench/run.*).
# Scratch (device nodes, logs) goes under /var/tmp/netbench; everything it creates
# (namespaces, links, processes, files) is removed on success, error or ^C.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

if [ "$(id -u)" != 0 ]; then
    echo "network.sh: run as root (it makes network namespaces, macvtaps, bridges)" >&2
    exit 1
fi

ROUNDS=${ROUNDS:-3}
IPERF_SECS=${IPERF_SECS:-10}
IPERF_OMIT=${IPERF_OMIT:-1}
MEM_MIB=${MEM_MIB:-512}
MTU=${MTU:-1500}
BINDINGS=${BINDINGS:-macvtap novnet bridge tcredirect}
IMAGE_DIR=${IMAGE_DIR:-/var/tmp/containerd-shim-vm/iperf}
QEMU=${QEMU:-qemu-system-x86_64}
TARGET_OFFLOAD=1.5   # macvtap ≥ 1.5 × novnet
TARGET_BRIDGE=1.0    # macvtap ≥ 1.0 × bridge

HOST_IP=10.79.0.1
POD_IP=10.79.0.2
PREFIX=24
POD_MAC=02:42:0a:4f:00:02
PORT=5201

# --- 1. dependencies ---------------------------------------------------------------------------
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    bash integration/scripts/install-deps.sh
    # Bench-only: the iperf3 server on the host and the guest's iperf3 and ethtool.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iperf3 ethtool
fi
export PATH=$PATH:/usr/sbin:/sbin
for c in ip tc iperf3 ss timeout "$QEMU"; do
    command -v "$c" >/dev/null || { echo "network.sh: '$c' not found (SKIP_INSTALL=1 without it?)" >&2; exit 1; }
done
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
TAPFD=$REPO/integration/bench/network-tapfd.py

# --- 2. the guest ------------------------------------------------------------------------------
bash integration/images/build-iperf.sh "$IMAGE_DIR" >&2
KERNEL=$IMAGE_DIR/vmlinuz
INITRD=$IMAGE_DIR/iperf-initrd.gz

# --- 3. scratch and cleanup --------------------------------------------------------------------
mkdir -p /var/tmp/netbench
SCR=$(mktemp -d /var/tmp/netbench/run.XXXXXX)
HOST_NS=netbench-host-$$
POD_NS=
POD_SEQ=0
HOST_VETH=nbveth0
QEMU_PID=
SERVER_PID=
# netns names made by this run (the pod's is new for every test)
NETNS_MADE=()

pid_alive() { [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

stop_pid() { # stop_pid PID NAME: SIGTERM, wait up to 5 s, then SIGKILL; reaps it
    local pid=$1 i
    [ -n "$pid" ] || return 0
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do pid_alive "$pid" || break; sleep 0.1; done
        if pid_alive "$pid"; then
            echo "network.sh: $2 ($pid) ignored SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

drop_pod() { # drop_pod: the pod namespace and what is in it (the veth's host end goes with it)
    [ -n "$POD_NS" ] || return 0
    local l
    for l in tap0 k6t-eth0 nbmvt0; do
        ip -n "$POD_NS" link del "$l" 2>/dev/null || true
    done
    ip -n "$HOST_NS" link del "$HOST_VETH" 2>/dev/null || true
    ip netns del "$POD_NS" 2>/dev/null || true
    rm -f "$SCR"/tapdev-*
    POD_NS=
}

cleanup() {
    local status=$? p
    set +e
    trap - EXIT INT TERM
    stop_pid "$QEMU_PID" QEMU
    stop_pid "$SERVER_PID" "iperf3 server"
    # A QEMU of this run still alive (its command line names our scratch directory).
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = $$ ] && continue
        if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "qemu-system.*$SCR/"; then
            echo "network.sh: killing leftover ${p#/proc/}" >&2
            kill -KILL "${p#/proc/}" 2>/dev/null
        fi
    done
    # Anything else still running in our namespaces (only this run puts processes there).
    for ns in "${NETNS_MADE[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            echo "network.sh: killing leftover $p in $ns" >&2
            kill -KILL "$p" 2>/dev/null
        done
    done
    drop_pod
    for ns in "${NETNS_MADE[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    if [ "${KEEP_LOGS:-0}" = 1 ] || [ "$status" != 0 ]; then
        rm -f "$SCR"/tapdev-*
        echo "network.sh: logs kept in $SCR" >&2
    else
        rm -rf "$SCR"
    fi
    rmdir /var/tmp/netbench 2>/dev/null
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 4. the namespaces -------------------------------------------------------------------------
ip netns add "$HOST_NS"
NETNS_MADE+=("$HOST_NS")
ip -n "$HOST_NS" link set lo up

make_pod() { # make_pod: a fresh pod namespace, eth0 as a CNI plugin leaves it
    POD_SEQ=$((POD_SEQ + 1))
    POD_NS=netbench-pod-$$-$POD_SEQ
    ip netns add "$POD_NS"
    NETNS_MADE+=("$POD_NS")
    ip link add eth0 netns "$POD_NS" mtu "$MTU" type veth peer name "$HOST_VETH" netns "$HOST_NS" mtu "$MTU"
    ip -n "$HOST_NS" addr add "$HOST_IP/$PREFIX" dev "$HOST_VETH"
    ip -n "$HOST_NS" link set "$HOST_VETH" up
    ip -n "$POD_NS" link set lo up
    ip -n "$POD_NS" link set eth0 address "$POD_MAC" up
    ip -n "$POD_NS" addr add "$POD_IP/$PREFIX" dev eth0
    ip -n "$POD_NS" route add default via "$HOST_IP" dev eth0
}

random_mac() { printf '02:%02x:%02x:%02x:%02x:%02x\n' $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)); }

# bind BINDING: puts the binding on the pod's eth0; sets NETDEV (QEMU's -netdev) and LAUNCH
# (what runs QEMU inside the pod namespace) and TAP_NODE.
bind() {
    local dev node
    case "$1" in
    macvtap | novnet)
        # As the shim does: the addresses go (the guest has them), a passthru macvtap takes
        # eth0 (inheriting its MAC), and its queue is opened through a node of our own.
        ip -n "$POD_NS" addr flush dev eth0
        ip -n "$POD_NS" link add link eth0 name nbmvt0 type macvtap mode passthru
        ip -n "$POD_NS" link set nbmvt0 mtu "$MTU" up
        dev=$(ip netns exec "$POD_NS" sh -c 'cat /sys/class/net/nbmvt0/macvtap/tap*/dev')
        node=$SCR/tapdev-$POD_SEQ
        mknod "$node" c "${dev%%:*}" "${dev##*:}"
        NETDEV="tap,id=n0,fd=3,vhost=off"
        local vh=keep
        [ "$1" = macvtap ] || vh=clear
        LAUNCH=("$PYTHON" "$TAPFD" --node "$node" --fd 3 --vnet-hdr "$vh" --)
        ;;
    bridge)
        # As KubeVirt's bridge binding (virt-launcher) does: the pod IP and MAC move to the
        # guest; eth0 gets a random MAC and, with a vnet_hdr tap, joins an address-less bridge.
        ip -n "$POD_NS" addr flush dev eth0
        ip -n "$POD_NS" link set eth0 down
        ip -n "$POD_NS" link set eth0 address "$(random_mac)"
        ip -n "$POD_NS" link add k6t-eth0 mtu "$MTU" type bridge
        ip -n "$POD_NS" link set eth0 master k6t-eth0
        ip -n "$POD_NS" tuntap add dev tap0 mode tap vnet_hdr
        ip -n "$POD_NS" link set tap0 mtu "$MTU" master k6t-eth0 up
        ip -n "$POD_NS" link set eth0 up
        ip -n "$POD_NS" link set k6t-eth0 up
        NETDEV="tap,id=n0,ifname=tap0,script=no,downscript=no,vnet_hdr=on,vhost=off"
        LAUNCH=()
        ;;
    tcredirect)
        # As Kata's tcfilter model does: every frame arriving on either link leaves by the
        # other, before any bridge or IP layer sees it. u32 matching everything (what Kata
        # installs; cls_matchall is not in every kernel).
        ip -n "$POD_NS" addr flush dev eth0
        ip -n "$POD_NS" tuntap add dev tap0 mode tap vnet_hdr
        ip -n "$POD_NS" link set tap0 mtu "$MTU" up
        for dev in eth0:tap0 tap0:eth0; do
            tc -n "$POD_NS" qdisc add dev "${dev%%:*}" ingress
            tc -n "$POD_NS" filter add dev "${dev%%:*}" parent ffff: protocol all \
                u32 match u8 0 0 action mirred egress redirect dev "${dev##*:}"
        done
        NETDEV="tap,id=n0,ifname=tap0,script=no,downscript=no,vnet_hdr=on,vhost=off"
        LAUNCH=()
        ;;
    *)
        echo "network.sh: unknown binding '$1' (macvtap, novnet, bridge, tcredirect)" >&2
        return 1
        ;;
    esac
}

start_server() { # start_server LOG: a one-off iperf3 server in the host namespace, listening
    ip netns exec "$HOST_NS" iperf3 -s -1 -B "$HOST_IP" -p "$PORT" >"$1" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 100); do
        ip netns exec "$HOST_NS" ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && return 0
        pid_alive "$SERVER_PID" || break
        sleep 0.05
    done
    echo "network.sh: the iperf3 server did not start:" >&2
    cat "$1" >&2
    return 1
}

# run_test BINDING ROUND: one VM, one iperf3 test; appends a line to $SCR/results
run_test() {
    local b=$1 round=$2 log=$SCR/$1-$2.serial out=$SCR/$1-$2.qemu t0 t1 rc=0
    make_pod
    bind "$b"
    start_server "$SCR/$b-$round.server"
    local qemu=("$QEMU" -nodefaults -no-user-config -no-reboot -display none
        -machine q35 -accel tcg,tb-size=64 -smp 1 -m "${MEM_MIB}M"
        -kernel "$KERNEL" -initrd "$INITRD"
        -append "console=ttyS0 quiet loglevel=4 panic=-1 no_timer_check iperf.ip=$POD_IP/$PREFIX iperf.server=$HOST_IP iperf.port=$PORT iperf.time=$IPERF_SECS iperf.omit=$IPERF_OMIT"
        -serial "file:$log"
        -netdev "$NETDEV" -device "virtio-net-pci,netdev=n0,mac=$POD_MAC,host_mtu=$MTU")
    t0=$(date +%s.%N)
    timeout -k 5 $((IPERF_SECS + IPERF_OMIT + 120)) \
        ip netns exec "$POD_NS" "${LAUNCH[@]}" "${qemu[@]}" </dev/null >"$out" 2>&1 &
    QEMU_PID=$!
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=
    t1=$(date +%s.%N)
    stop_pid "$SERVER_PID" "iperf3 server"
    SERVER_PID=
    # The mean size of the frames the pod's eth0 sent on (a TSO frame counts once): whether
    # the guest's segments crossed the host whole.
    local frame
    frame=$(ip netns exec "$POD_NS" sh -c 'cd /sys/class/net/eth0/statistics && echo $(cat tx_bytes) $(cat tx_packets)' |
        awk '$2 > 0 { printf "%.0f", $1 / $2 }')
    drop_pod
    local bps
    bps=$(grep -a '^IPERF-BPS ' "$log" | tail -n1 | tr -d '\r' || true)
    local recv sent retr cpu irc
    recv=$(sed -n 's/.* received=\([^ ]*\).*/\1/p' <<<"$bps")
    sent=$(sed -n 's/.* sent=\([^ ]*\).*/\1/p' <<<"$bps")
    retr=$(sed -n 's/.* retransmits=\([^ ]*\).*/\1/p' <<<"$bps")
    cpu=$(sed -n 's/.* cpu=\([^ ]*\).*/\1/p' <<<"$bps")
    irc=$(sed -n 's/.* rc=\([^ ]*\).*/\1/p' <<<"$bps")
    if [ "$rc" != 0 ] || [ -z "$recv" ] || [ "$recv" = - ] || awk -v r="$recv" 'BEGIN { exit !(r + 0 <= 0) }' || [ "$irc" != 0 ]; then
        echo "network.sh: $b round $round failed (QEMU status $rc, guest: ${bps:-no IPERF-BPS line}); QEMU's output:" >&2
        tail -n 20 "$out" >&2
        echo "--- serial console:" >&2
        awk '/^IPERF-JSON-BEGIN/ { j = 1; next } /^IPERF-JSON-END/ { j = 0; next } !j || /"error"/' "$log" | tail -n 30 >&2
        return 1
    fi
    # binding round received-bit/s sent-bit/s retransmits guest-cpu% vm-seconds frame-bytes
    printf '%s %s %s %s %s %s %s %s\n' "$b" "$round" "$recv" "$sent" "$retr" "$cpu" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" "${frame:-0}" >>"$SCR/results"
    # The guest's offload state and the descriptor's flags, once per binding.
    if [ ! -e "$SCR/state-$b" ]; then
        { grep -a '^IPERF-NET \|^IPERF-VIRTIO-FEATURES \|^IPERF-OFFLOADS ' "$log" || true
          grep -a '^TAPFD ' "$out" || true; } | tr -d '\r' >"$SCR/state-$b"
    fi
    awk -v b="$b" -v r="$round" -v x="$recv" -v s="$sent" -v t="$retr" -v c="$cpu" \
        'BEGIN { printf "  round %s  %-8s %8.3f Gbit/s received (sent %.3f, retransmits %s, guest CPU %.1f %%)\n", r, b, x / 1e9, s / 1e9, t, c }' >&2
}

# --- 5. measure --------------------------------------------------------------------------------
read -r -a BL <<<"$BINDINGS"
STARTED=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "network.sh: $ROUNDS rounds of ${BL[*]}, ${IPERF_SECS} s iperf3 each (+${IPERF_OMIT} s omitted)" >&2
: >"$SCR/results"
for round in $(seq "$ROUNDS"); do
    n=${#BL[@]}
    for i in $(seq 0 $((n - 1))); do
        run_test "${BL[$(((i + round - 1) % n))]}" "$round"
    done
done
ELAPSED=$(($(date +%s) - STARTED))

# --- 6. report ---------------------------------------------------------------------------------
stats() { # stats BINDING COLUMN: median min max n
    awk -v b="$1" -v c="$2" '$1 == b { print $c }' "$SCR/results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "- - - 0"; exit }
             m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
             print m, v[1], v[NR], NR }'
}
median_of() { stats "$1" "$2" | awk '{ print $1 }'; }
has() { [[ " ${BL[*]} " == *" $1 "* ]]; }
describe() {
    case "$1" in
    macvtap) echo 'macvtap passthru, IFF_VNET_HDR (offloads negotiated)' ;;
    novnet) echo 'macvtap passthru, IFF_VNET_HDR cleared (no offloads)' ;;
    bridge) echo 'tap (vnet_hdr) on a Linux bridge (KubeVirt bridge binding)' ;;
    tcredirect) echo 'tap (vnet_hdr) joined to eth0 by tc mirred (Kata tcfilter)' ;;
    esac
}

REPORT=$SCR/report.md
{
    qv=$("$QEMU" --version | head -n1)
    echo "ROUNDS=$ROUNDS IPERF_SECS=$IPERF_SECS (-O $IPERF_OMIT) MEM_MIB=$MEM_MIB MTU=$MTU; $(nproc) cores; $qv; host kernel $(uname -r); guest kernel ${KVER:-$(cd /boot && ls vmlinuz-*-cloud-amd64 | sed 's/^vmlinuz-//' | sort -V | tail -n1)}; $(iperf3 --version | head -n1 | cut -d' ' -f1-2); TCG, 1 vCPU, vhost=off; run took ${ELAPSED} s; load average at the start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "**TCG figures.** The guest's CPU is emulated, so absolute throughput says nothing about a KVM host; the ratio of offload to no offload is what carries over (on KVM, without offloads the guest also segments and checksums every packet itself)."
    echo
    echo "| guest → host TCP (iperf3, received by the server) | median | min | max | n |"
    echo "|---|---:|---:|---:|---:|"
    for b in "${BL[@]}"; do
        read -r m lo hi n < <(stats "$b" 3)
        awk -v d="$(describe "$b")" -v m="$m" -v lo="$lo" -v hi="$hi" -v n="$n" \
            'BEGIN { printf "| %s | %.3f Gbit/s | %.3f | %.3f | %d |\n", d, m / 1e9, lo / 1e9, hi / 1e9, n }'
    done
    for b in "${BL[@]}"; do
        read -r m lo hi n < <(stats "$b" 6)
        awk -v d="$b" -v m="$m" -v lo="$lo" -v hi="$hi" -v n="$n" \
            'BEGIN { printf "| context: guest CPU during the test, %s | %.1f %% | %.1f | %.1f | %d |\n", d, m, lo, hi, n }'
    done
    for b in "${BL[@]}"; do
        read -r m lo hi n < <(stats "$b" 8)
        awk -v d="$b" -v m="$m" -v lo="$lo" -v hi="$hi" -v n="$n" \
            'BEGIN { printf "| context: mean frame the pod eth0 sent, %s (bytes) | %d | %d | %d | %d |\n", d, m, lo, hi, n }'
    done
    for b in "${BL[@]}"; do
        read -r m lo hi n < <(stats "$b" 5)
        awk -v d="$b" -v m="$m" -v lo="$lo" -v hi="$hi" -v n="$n" \
            'BEGIN { printf "| context: TCP retransmits per test, %s | %g | %g | %g | %d |\n", d, m, lo, hi, n }'
    done
    echo
    echo "Per round (Gbit/s received, in the order run):"
    echo
    echo '```'
    awk '{ printf "round %s  %-8s %8.3f  (%s s VM)\n", $2, $1, $3 / 1e9, $7 }' "$SCR/results"
    echo '```'
    echo
    echo "Offload state in the guest (first test of each binding) and the tap descriptor's flags:"
    echo
    echo '```'
    for b in "${BL[@]}"; do
        [ -e "$SCR/state-$b" ] || continue
        sed "s/^/$b: /" "$SCR/state-$b"
    done
    echo '```'
    echo
    verdicts=()
    if has macvtap; then
        mv=$(median_of macvtap 3)
        echo "| ratio (of medians) | value |"
        echo "|---|---:|"
        if has novnet; then
            nv=$(median_of novnet 3)
            r1=$(awk -v a="$mv" -v b="$nv" 'BEGIN { printf "%.2f", a / b }')
            echo "| macvtap (vnet_hdr) / macvtap without vnet_hdr | $r1 |"
            verdicts+=("$(awk -v r="$r1" -v t="$TARGET_OFFLOAD" -v a="$mv" -v b="$nv" 'BEGIN {
                printf "- %s: offload %.3f Gbit/s ≥ %.1f × no offload %.3f Gbit/s = %.3f Gbit/s (ratio %s)",
                (r + 0 >= t) ? "PASS" : "FAIL", a / 1e9, t, b / 1e9, t * b / 1e9, r }')")
        fi
        if has bridge; then
            bv=$(median_of bridge 3)
            r2=$(awk -v a="$mv" -v b="$bv" 'BEGIN { printf "%.2f", a / b }')
            echo "| macvtap (vnet_hdr) / bridge + tap (KubeVirt) | $r2 |"
            verdicts+=("$(awk -v r="$r2" -v t="$TARGET_BRIDGE" -v a="$mv" -v b="$bv" 'BEGIN {
                printf "- %s: macvtap %.3f Gbit/s ≥ %.1f × bridge %.3f Gbit/s (ratio %s)",
                (r + 0 >= t) ? "PASS" : "FAIL", a / 1e9, t, b / 1e9, r }')")
        fi
        if has tcredirect; then
            tv=$(median_of tcredirect 3)
            echo "| macvtap (vnet_hdr) / tap + tc redirect (Kata; no target) | $(awk -v a="$mv" -v b="$tv" 'BEGIN { printf "%.2f", a / b }') |"
        fi
        # Paired: each round's ratio (its tests ran back to back, so drift in the host's load
        # between rounds cancels out), and their median.
        for pair in "novnet:without vnet_hdr" "bridge:bridge" "tcredirect:tc redirect"; do
            other=${pair%%:*}
            has "$other" || continue
            per=$(awk -v o="$other" '$1 == "macvtap" { m[$2] = $3 } $1 == o { x[$2] = $3 }
                END { for (r in m) if (r in x) printf "%s %.2f\n", r, m[r] / x[r] }' "$SCR/results" | sort -n)
            med=$(awk '{ print $2 }' <<<"$per" | sort -g | awk '{ v[NR] = $1 } END {
                if (NR) printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
            echo "| context: macvtap / ${pair#*:}, median of per-round ratios (rounds: $(awk '{ printf "%s%s", sep, $2; sep = ", " }' <<<"$per")) | $med |"
        done
        echo
        printf '%s\n' "${verdicts[@]}"
    fi
} >"$REPORT"
cat "$REPORT"
[ -z "${BENCH_RESULTS:-}" ] || cp "$REPORT" "$BENCH_RESULTS"
