#!/bin/bash
# build-iperf.sh OUTDIR — build the "iperf" guest of the network benchmark
# (integration/bench/network.sh): tiny's recipe (Debian cloud kernel + busybox initramfs) plus
# Debian's iperf3 and ethtool with the shared libraries they need, and virtio_net.
#
# Outputs (in OUTDIR):
#   vmlinuz          the kernel, for QEMU's -kernel (what network.sh boots)
#   iperf-initrd.gz  the initramfs, for QEMU's -initrd
#   iperf.qcow2      the same kernel + initramfs on a FAT "superfloppy" bootable with SYSLINUX,
#                    compressed qcow2, with the default parameters below on its command line
#                    (a containerDisk for the shim, as tiny.qcow2 is)
#
# Everything comes from Debian packages (linux-image-cloud-amd64, busybox-static, iperf3,
# ethtool, syslinux, syslinux-common, mtools, cpio, qemu-utils, kmod). Nothing is mounted and no
# loop device is used. iperf3 and ethtool are copied with every library `ldd` resolves for them
# and the dynamic loader, at the paths ldd names.
#
# The guest, PID 1 a shell script (no busybox init):
#   * prints IPERF-VM-BOOTED on ttyS0 as early as it can,
#   * loads virtio_pci and virtio_net, waits for eth0, brings lo and eth0 up with a static
#     address, and prints "IPERF-NET <ifname> <mac> <address> mtu <mtu>",
#   * prints the offload state: "IPERF-VIRTIO-FEATURES ..." (the virtio-net feature bits the
#     driver negotiated, from /sys/bus/virtio/devices/*/features) and "IPERF-OFFLOADS ..."
#     (`ethtool -k eth0`: what the guest's stack will actually do),
#   * waits until the server answers ping, runs `iperf3 -c SERVER -t SECS -O OMIT -J` (the guest
#     sends: guest → server), prints the JSON between IPERF-JSON-BEGIN and IPERF-JSON-END and
#     then "IPERF-BPS sent=<bit/s> received=<bit/s> retransmits=<n> cpu=<guest %> rc=<status>"
#     (received: what the server counted, the figure network.sh reports),
#   * prints IPERF-VM-DONE and powers off (QEMU exits 0); with iperf.shell=1 it gives a root
#     shell on ttyS0 instead.
#
# Parameters, from the kernel command line (defaults in brackets):
#   iperf.ip=ADDR/LEN [10.79.0.2/24]   the guest's address on eth0
#   iperf.gw=ADDR     [none]           a default route (not needed when the server is on-link)
#   iperf.server=ADDR [10.79.0.1]      the iperf3 server
#   iperf.port=N      [5201]
#   iperf.time=SECS   [10]             iperf3 -t
#   iperf.omit=SECS   [1]              iperf3 -O (slow start left out of the figure)
#   iperf.args=A,B,.. [none]           more iperf3 arguments, commas for spaces (e.g. -P,2)
#   iperf.shell=1                      a shell instead of the test and power-off
#
# Idempotent: if every output is newer than every input, it does nothing.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
SCRIPT=$(readlink -f "$0")
. "$(dirname "$SCRIPT")/common.sh"

# --- tools ------------------------------------------------------------------------------------
export PATH=$PATH:/usr/sbin:/sbin   # ethtool and modprobe live in sbin
need busybox busybox-static
need iperf3 iperf3
need ethtool ethtool
need ldd libc-bin
need cpio cpio
need gzip gzip
need mformat mtools
need mcopy mtools
need syslinux syslinux
need qemu-img qemu-utils
need modprobe kmod

# --- inputs -----------------------------------------------------------------------------------
use_host_kernel
BUSYBOX=$(readlink -f "$(command -v busybox)")
IPERF3=$(readlink -f "$(command -v iperf3)")
ETHTOOL=$(readlink -f "$(command -v ethtool)")
SYSLINUX_BIN=$(readlink -f "$(command -v syslinux)")
for f in "$KERNEL" "$MODDIR/modules.dep" "$BUSYBOX" "$IPERF3" "$ETHTOOL"; do
    [ -r "$f" ] || { echo "build-iperf.sh: missing input $f" >&2; exit 1; }
done
APPLETS=$("$BUSYBOX" --list)
if ! grep -qx ip <<<"$APPLETS" || ! grep -qx ping <<<"$APPLETS"; then
    echo "build-iperf.sh: $BUSYBOX has no ip or ping applet" >&2
    exit 1
fi
# The ELF files copied into the guest; their libraries count as inputs too.
ELFS=("$IPERF3" "$ETHTOOL")
INPUTS=("$KERNEL" "$MODDIR/modules.dep" "$BUSYBOX" "$SYSLINUX_BIN" "${ELFS[@]}")
add_library_inputs "${ELFS[@]}"
OUTPUTS=("$OUTDIR/vmlinuz" "$OUTDIR/iperf-initrd.gz" "$OUTDIR/iperf.qcow2")

# virtio_pci (the bus) and virtio_net (+ failover, net_failover); IPv4 and packet sockets are
# built into Debian's cloud kernel. No disk driver: the guest never reads its disk.
MODULES="virtio_pci virtio_net"

# The FAT disk: 32 MiB as 32 cylinders x 64 heads x 32 sectors (kernel ~14 MiB, initramfs ~5).
FAT_TRACKS=32 FAT_HEADS=64 FAT_SPT=32
FAT_SECTORS=$((FAT_TRACKS * FAT_HEADS * FAT_SPT))

exit_if_up_to_date

WORK=$(mktemp -d "$OUTDIR/.build-iperf.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- initramfs --------------------------------------------------------------------------------
ROOT=$WORK/initramfs
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,lib/modules,root}

add_busybox "$BUSYBOX"

# iperf3 and ethtool replace busybox applets of the same name, if any.
install_elf() { # install_elf SOURCE DEST
    rm -f "$ROOT$2"
    mkdir -p "$(dirname "$ROOT$2")"
    cp "$1" "$ROOT$2"
    chmod 755 "$ROOT$2"
}
install_elf "$IPERF3" /usr/bin/iperf3
install_elf "$ETHTOOL" /usr/sbin/ethtool
add_libraries "${ELFS[@]}"
add_modules "$ROOT/etc/modules" $MODULES

echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"
printf '127.0.0.1 localhost\n' >"$ROOT/etc/hosts"

cat >"$ROOT/init" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo IPERF-VM-BOOTED
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp

finish() { # finish: a shell (iperf.shell=1) or power off; never returns
    echo IPERF-VM-DONE
    if [ "$shell" = 1 ]; then
        setsid cttyhack sh -l
    fi
    sync
    poweroff -f
    sleep 10
}

ip=10.79.0.2/24 gw= server=10.79.0.1 port=5201 time=10 omit=1 args= shell=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    iperf.ip=*) ip=${arg#*=} ;;
    iperf.gw=*) gw=${arg#*=} ;;
    iperf.server=*) server=${arg#*=} ;;
    iperf.port=*) port=${arg#*=} ;;
    iperf.time=*) time=${arg#*=} ;;
    iperf.omit=*) omit=${arg#*=} ;;
    iperf.args=*) args=$(echo "${arg#*=}" | tr , ' ') ;;
    iperf.shell=*) shell=${arg#*=} ;;
    esac
done

while read -r m; do
    insmod "/lib/modules/$m" || echo "IPERF-ERROR: insmod $m failed"
done </etc/modules

i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do usleep 50000; i=$((i + 1)); done
if [ ! -e /sys/class/net/eth0 ]; then
    echo "IPERF-ERROR: no eth0"
    finish
fi
ip link set lo up
ip link set eth0 up
ip addr add "$ip" dev eth0 || echo "IPERF-ERROR: cannot add $ip to eth0"
[ -z "$gw" ] || ip route add default via "$gw" dev eth0 || echo "IPERF-ERROR: no route via $gw"
echo "IPERF-NET eth0 $(cat /sys/class/net/eth0/address) $ip mtu $(cat /sys/class/net/eth0/mtu)"

# Negotiated virtio-net features: /sys/.../features is one character per bit, bit 0 first.
# (VIRTIO_NET_F_*: CSUM 0 = the device takes partial checksums, i.e. the guest may offload its
# transmit checksum; GUEST_CSUM 1; GUEST_TSO4 7; HOST_TSO4 11 = the device takes TSO frames;
# HOST_TSO6 12; MRG_RXBUF 15; MTU 3.)
feat=$(cat /sys/class/net/eth0/device/features 2>/dev/null)
bit() { [ "$(echo "$feat" | cut -c $(($1 + 1)))" = 1 ] && echo on || echo off; }
echo "IPERF-VIRTIO-FEATURES csum=$(bit 0) guest_csum=$(bit 1) mtu=$(bit 3) guest_tso4=$(bit 7) host_tso4=$(bit 11) host_tso6=$(bit 12) mrg_rxbuf=$(bit 15)"
echo "IPERF-OFFLOADS $(ethtool -k eth0 2>&1 | awk -F': ' '
    /^(tx-checksumming|scatter-gather|tcp-segmentation-offload|generic-segmentation-offload|rx-checksumming|generic-receive-offload):/ {
        split($2, v, " "); printf "%s=%s ", $1, v[1] }')"

# The server is on-link: wait (up to ~20 s) until it answers, so the test does not start with
# ARP still unresolved.
i=0
until ping -c 1 -W 1 "$server" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -ge 20 ]; then echo "IPERF-ERROR: $server does not answer ping"; break; fi
done

iperf3 -c "$server" -p "$port" -t "$time" -O "$omit" -J $args >/tmp/iperf.json 2>&1
rc=$?
echo IPERF-JSON-BEGIN
cat /tmp/iperf.json
echo IPERF-JSON-END
# end.sum_sent / end.sum_received / end.cpu_utilization_percent.host_total, one key a line
# in iperf3's JSON.
awk -v rc=$rc '
    /"sum_sent"/ { sect = "sent" } /"sum_received"/ { sect = "received" } /"cpu_utilization_percent"/ { sect = "cpu" }
    sect == "sent" && /"bits_per_second"/ { gsub(/[^0-9.e+]/, "", $2); sent = $2 }
    sect == "sent" && /"retransmits"/ { gsub(/[^0-9]/, "", $2); retr = $2 }
    sect == "received" && /"bits_per_second"/ { gsub(/[^0-9.e+]/, "", $2); recv = $2; sect = "" }
    sect == "cpu" && /"host_total"/ { gsub(/[^0-9.e+]/, "", $2); cpu = $2; sect = "" }
    END { printf "IPERF-BPS sent=%s received=%s retransmits=%s cpu=%s rc=%s\n",
          sent == "" ? "-" : sent, recv == "" ? "-" : recv, retr == "" ? "-" : retr, cpu == "" ? "-" : cpu, rc }
' /tmp/iperf.json
finish
EOF
chmod 755 "$ROOT/init"

pack_initramfs "$WORK/iperf-initrd.gz"

# --- the FAT disk -----------------------------------------------------------------------------
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT iperf
PROMPT 0
TIMEOUT 0
LABEL iperf
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 quiet loglevel=4 panic=0 no_timer_check iperf.ip=10.79.0.2/24 iperf.server=10.79.0.1
EOF
truncate -s $((FAT_SECTORS * 512)) "$WORK/iperf.raw"
mformat -i "$WORK/iperf.raw" -t $FAT_TRACKS -h $FAT_HEADS -n $FAT_SPT -v IPERF ::
mcopy -i "$WORK/iperf.raw" "$KERNEL" ::/vmlinuz
mcopy -i "$WORK/iperf.raw" "$WORK/iperf-initrd.gz" ::/initrd.gz
mcopy -i "$WORK/iperf.raw" "$WORK/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$WORK/iperf.raw"
qemu-img convert -c -f raw -O qcow2 "$WORK/iperf.raw" "$WORK/iperf.qcow2"

# --- outputs ----------------------------------------------------------------------------------
cp "$KERNEL" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$WORK/iperf-initrd.gz" "$OUTDIR/iperf-initrd.gz"
mv -f "$WORK/iperf.qcow2" "$OUTDIR/iperf.qcow2"
record_build
ls -l "${OUTPUTS[@]}"
