#!/bin/bash
# build-tiny.sh OUTDIR — build the "tiny" guest disks used by the integration tests.
#
# Outputs (in OUTDIR):
#   tiny.qcow2       FAT "superfloppy" (no partition table), bootable with SYSLINUX, compressed qcow2
#   tiny.raw         the same disk as a raw image
#   tiny-part.qcow2  an MBR-partitioned disk: FAT in partition 1, counter on /dev/vda1
#
# Everything comes from Debian packages (linux-image-cloud-amd64, busybox-static, syslinux,
# syslinux-common, mtools, fdisk, cpio, qemu-utils). Nothing is mounted and no loop device is
# used: the initramfs is a cpio archive of a staging directory, the FAT filesystem is written
# with mtools straight into the image file, and syslinux is the mtools variant.
#
# The guest (see the /init and /etc files written below):
#   * prints TINY-VM-BOOTED on ttyS0 as early as it can,
#   * mounts the FAT disk read-write, increments the file `bootcount` on it, prints BOOT-COUNT=<n>,
#   * loads virtio_net if the VM has a virtio NIC (the pod network),
#   * stands in for cloud-init when a seed is attached (a vfat or ISO 9660 disk labelled cidata
#     or config-2, any case, found by label among the virtio disks; looked for only when there is
#     more than one virtio disk, so boots without a seed do not wait): copies its files to
#     /run/seed; for a NoCloud seed (cidata), sets the
#     hostname from meta-data's local-hostname and prints "TINY-HOSTNAME <name>", then applies
#     network-config (version 2: match macaddress/name, set-name, mtu, addresses,
#     gateway4/gateway6, routes with to/via/on-link/scope/metric/table/from, nameservers into
#     /etc/resolv.conf; dhcp4 with busybox udhcpc, its lease's routes (option 121), MTU and
#     DNS applied) with busybox ip, and prints "TINY-NET-UP <ifname> <mac> <address>..." per
#     interface it configured, "TINY-NET-ERROR: <what>" per failure (`tiny-net` runs it again),
#   * runs Debian's qemu-ga (with the libraries it links) on the virtio-serial port named
#     org.qemu.guest_agent.0 when the VM has one, started once (log in /var/log/qemu-ga.log), so
#     exec works through the guest agent,
#   * runs busybox acpid so the ACPI power button (QMP system_powerdown) powers it off cleanly,
#   * gives a root shell on ttyS0 (prompt "tiny# "); `poweroff`, `reboot` work and unmount first,
#   * panics on `echo c > /proc/sysrq-trigger` with pvpanic loaded and panic=0 (no auto reboot).
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
export PATH=$PATH:/usr/sbin:/sbin   # sfdisk and modprobe live in sbin
need busybox busybox-static
need cpio cpio
need gzip gzip
need mformat mtools
need mcopy mtools
need syslinux syslinux
need sfdisk fdisk
need qemu-img qemu-utils
need modprobe kmod
need ldd libc-bin
QEMU_GA=/usr/sbin/qemu-ga
[ -x "$QEMU_GA" ] || { echo "build-tiny.sh: $QEMU_GA not found; install the Debian package 'qemu-guest-agent'" >&2; exit 1; }

# --- inputs -----------------------------------------------------------------------------------
use_host_kernel
BUSYBOX=$(readlink -f "$(command -v busybox)")
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
SYSLINUX_BIN=$(readlink -f "$(command -v syslinux)")   # carries ldlinux.sys/.c32 inside
for f in "$KERNEL" "$MODDIR/modules.dep" "$BUSYBOX" "$MBR_BIN"; do
    [ -r "$f" ] || { echo "build-tiny.sh: missing input $f" >&2; exit 1; }
done
INPUTS=("$KERNEL" "$MODDIR/modules.dep" "$BUSYBOX" "$MBR_BIN" "$SYSLINUX_BIN" "$QEMU_GA")
add_library_inputs "$QEMU_GA"
OUTPUTS=("$OUTDIR/tiny.qcow2" "$OUTDIR/tiny.raw" "$OUTDIR/tiny-part.qcow2")

# Modules the guest loads (everything else it needs is built in: see /boot/config-$KVER).
#   virtio_pci, virtio_blk         the boot disk (/dev/vda)
#   vfat + nls_cp437 + nls_ascii   mount the FAT disk (codepage 437, default iocharset "ascii")
#   button, evdev                  ACPI power button as /dev/input/event* for acpid
#   pvpanic_mmio, pvpanic_pci      report panics to QEMU (ISA "-device pvpanic" / "pvpanic-pci")
#   virtio_console                 the guest agent's virtio-serial port
#   isofs (+ cdrom)                an ISO 9660 seed (Rock Ridge names)
#   virtio_scsi, sd_mod            a root disk on virtio-scsi (Virtlet's VirtletDiskDriver=scsi)
MODULES="virtio_pci virtio_blk vfat nls_cp437 nls_ascii button evdev pvpanic_mmio pvpanic_pci virtio_console isofs virtio_scsi sd_mod"
# Loaded only when the VM has a virtio NIC, so that boots without one do not pay for them.
#   virtio_net (+ failover, net_failover)   the pod NIC; IPv4, IPv6 and packet sockets are built in
NET_MODULES="virtio_net"

# FAT filesystem: 32 MiB as 32 cylinders x 64 heads x 32 sectors. The kernel (~14 MiB) and the
# initramfs (~2 MiB) fit with room to spare; FAT16 is what mformat picks for this size.
FAT_TRACKS=32 FAT_HEADS=64 FAT_SPT=32
FAT_SECTORS=$((FAT_TRACKS * FAT_HEADS * FAT_SPT))
PART_START=2048   # sectors (1 MiB), where partition 1 starts on the partitioned disk

exit_if_up_to_date

WORK=$(mktemp -d "$OUTDIR/.build-tiny.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- initramfs --------------------------------------------------------------------------------
ROOT=$WORK/initramfs
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,boot,mnt,etc/acpi/PWRF,var/log,lib/modules,lib/tiny,root}

add_busybox "$BUSYBOX"
cp "$QEMU_GA" "$ROOT/usr/sbin/qemu-ga"
add_libraries "$QEMU_GA"

# /etc/modules for MODULES, /etc/modules.net for what NET_MODULES need beyond them.
add_modules "$ROOT/etc/modules" $MODULES
add_modules "$ROOT/etc/modules.net" $NET_MODULES

# /init: runs as PID 1, does the boot-time work, then hands PID 1 over to busybox init, which
# gives the shell on ttyS0 and handles poweroff/reboot (running /etc/rc.shutdown first).
cat >"$ROOT/init" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
# The archive has no /dev/console node (it is built without root-owned device files), so the
# kernel started us without stdio: get it from devtmpfs first, then say we are alive.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo TINY-VM-BOOTED
mount -t proc proc /proc
mount -t sysfs sysfs /sys

while read -r m; do
    insmod "/lib/modules/$m" || echo "tiny: insmod $m failed"
done </etc/modules

# Count the virtio devices (virtio_pci has registered them all by now): NICs (device id 1) get
# their driver loaded, and only VMs with a second disk (id 2) look for a NoCloud seed.
nnet=0 nblk=0
for dev in /sys/bus/virtio/devices/*; do
    [ -e "$dev/device" ] && read -r id <"$dev/device" || continue
    case "$id" in 0x0001) nnet=$((nnet + 1)) ;; 0x0002) nblk=$((nblk + 1)) ;; esac
done
if [ $nnet -gt 0 ]; then
    while read -r m; do
        insmod "/lib/modules/$m" || echo "tiny: insmod $m failed"
    done </etc/modules.net
fi

# Which block device holds the FAT filesystem: tiny.disk=NAME on the kernel command line.
disk=vda
for arg in $(cat /proc/cmdline); do
    case "$arg" in tiny.disk=*) disk=${arg#tiny.disk=} ;; esac
done

# Devices appear asynchronously after insmod: poll (up to ~10 s) rather than sleep blindly.
wait_for() {
    i=0
    while [ ! -e "$1" ] && [ $i -lt 200 ]; do usleep 50000; i=$((i + 1)); done
    [ -e "$1" ]
}

# Boot counter on the boot disk itself: proves writes reach the disk and survive reboots.
if wait_for "/dev/$disk" && mount -t vfat -o rw "/dev/$disk" /boot; then
    n=$(cat /boot/bootcount 2>/dev/null || true)
    case "$n" in ''|*[!0-9]*) n=0 ;; esac
    n=$((n + 1))
    # A read-only disk gets mounted read-only (busybox mount falls back): say so.
    if echo "$n" >/boot/bootcount && sync; then
        echo "BOOT-COUNT=$n"
    else
        echo "BOOT-COUNT-ERROR: cannot write bootcount on /dev/$disk"
    fi
else
    echo "BOOT-COUNT-ERROR: cannot mount /dev/$disk"
fi

# The seed: the vfat or ISO 9660 disk labelled cidata (NoCloud) or config-2 (a config drive),
# any case, among the virtio disks. A VM with a single disk has none and does not wait;
# otherwise wait (up to ~3 s) until every virtio disk has its /dev node, then read the labels
# from the FAT boot sectors and the ISO volume descriptors. Its files are copied to /run/seed
# and the disk unmounted; tiny-net applies NoCloud's meta-data and network-config.
fat_label() { # fat_label DEV: the volume label in DEV's FAT boot sector, if it has one
    dd if="$1" bs=512 count=1 2>/dev/null | od -An -v -tx1 | awk '
        { for (i = 1; i <= NF; i++) b[n++] = $i }
        END {
            if (n < 512 || b[510] != "55" || b[511] != "aa") exit
            # extended boot signature 0x29, then the 11-byte label: at 38/43 on FAT12/16,
            # at 66/71 on FAT32 (where the 16-bit FAT size at 22 is 0)
            o = (b[22] b[23] == "0000") ? 66 : 38
            if (b[o] != "29") exit
            h = "0123456789abcdef"
            for (i = o + 5; i < o + 16; i++) {
                c = (index(h, substr(b[i], 1, 1)) - 1) * 16 + index(h, substr(b[i], 2, 1)) - 1
                if (c > 32) l = l sprintf("%c", c); else if (c == 32) l = l " "
            }
            sub(/ +$/, "", l); print l
        }'
}
iso_label() { # iso_label DEV: the volume id in DEV's ISO 9660 primary volume descriptor, if any
    [ "$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || return 0
    dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d '\000' | sed 's/ *$//'
}
if [ $nblk -gt 1 ]; then
    i=0
    while vd=0
        for b in /sys/block/vd*; do [ -b "/dev/${b##*/}" ] && vd=$((vd + 1)); done
        [ $vd -lt $nblk ] && [ $i -lt 60 ]
    do usleep 50000; i=$((i + 1)); done
    seed=
    for b in /sys/class/block/vd*; do
        case "$(fat_label "/dev/${b##*/}")$(iso_label "/dev/${b##*/}")" in
        [Cc][Ii][Dd][Aa][Tt][Aa] | [Cc][Oo][Nn][Ff][Ii][Gg]-2) seed=/dev/${b##*/}; break ;;
        esac
    done
    # A label only in the root directory, not in the boot sector: findfs (which matches exactly).
    [ -n "$seed" ] || seed=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null)
    if [ -z "$seed" ]; then
        echo "tiny: $nblk disks, none labelled cidata or config-2: no seed"
    elif mount -o ro "$seed" /mnt; then
        mkdir -p /run/seed
        cp -r /mnt/. /run/seed/
        umount /mnt
        tiny-net /run/seed
    else
        echo "TINY-NET-ERROR: cannot mount the seed $seed"
    fi
fi

# acpid opens the /dev/input/event* nodes that exist when it starts. It starts here, and init
# (and its shell, whose prompt tests wait for) only once acpid holds the power button's node:
# started from inittab beside the shell, acpid could miss a button pressed at the prompt.
if wait_for /dev/input/event0; then
    /sbin/acpid -l /var/log/acpid.log
    i=0
    while ! ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -q "/dev/input/event0" && [ $i -lt 200 ]; do
        usleep 50000; i=$((i + 1))
    done
else
    echo "tiny: no /dev/input/event0, power button will not work"
fi

exec /sbin/init
EOF
chmod 755 "$ROOT/init"

# tiny-net applies the NoCloud seed (hostname and network-config); netconf.awk parses the
# network-config YAML for it. /init runs it at boot; from the shell: `tiny-net /run/seed`.
cat >"$ROOT/sbin/tiny-net" <<'TINYNET_EOF'
#!/bin/sh
# tiny-net [DIR]: apply the NoCloud seed files in DIR (default /run/seed) the way cloud-init
# would, for the subset the shim writes: the hostname from meta-data's local-hostname, and
# network-config version 2 (netconf.awk turns it into a plan) with busybox ip. Prints
# "TINY-HOSTNAME <name>", "TINY-NET-UP <if> <mac> <addr>..." per configured interface and
# "TINY-NET-ERROR: <what>" per failure; exits 1 after a failure. Safe to run again.
dir=${1:-/run/seed}
NETCONF_AWK=${NETCONF_AWK:-/lib/tiny/netconf.awk}   # overridable to try it outside the guest
rc=0 ifrc=0
fail() { echo "TINY-NET-ERROR: $*"; rc=1 ifrc=1; }
ipdo() { # ipdo WHAT IP-ARGS...: run ip, report a failure as WHAT
    what=$1; shift
    ip "$@" && return 0
    fail "$what (ip $*)"
    return 1
}

if [ -f "$dir/meta-data" ]; then
    # "local-hostname: name" (YAML) or "local-hostname": "name" (JSON, which is YAML too)
    h=$(awk 'match($0, /(^|[ \t{,])["'\'']?local-hostname["'\'']?[ \t]*:[ \t]*/) {
            v = substr($0, RSTART + RLENGTH); q = substr(v, 1, 1)
            if (q == "\"" || q == "'\''") { v = substr(v, 2); sub(q ".*", "", v) }
            else sub(/[ \t,}#\r].*/, "", v)
            print v; exit
        }' "$dir/meta-data")
    if [ -n "$h" ]; then
        if hostname "$h"; then
            echo "$h" >/etc/hostname
            echo "TINY-HOSTNAME $h"
        else
            fail "cannot set the hostname to $h"
        fi
    fi
fi

[ -f "$dir/network-config" ] || exit $rc
plan=/run/tiny-net.plan
awk -f "$NETCONF_AWK" "$dir/network-config" >$plan || { fail "cannot parse network-config"; exit 1; }

read -r kind v <$plan
[ "$v" = 2 ] || { fail "network-config version $v is not supported (only 2)"; exit 1; }
grep -qx disabled $plan && exit $rc

# The interface a plan entry means: by MAC (waiting up to ~3 s for it to show up), by name
# (a shell pattern, as netplan's match.name) or, without match, the entry's ID. Sets dev.
find_dev() { # find_dev MAC NAME ID
    dev=
    if [ "$1" != - ]; then
        i=0
        while :; do
            for a in /sys/class/net/*/address; do
                read -r m <"$a" && [ "$m" = "$1" ] || continue
                dev=${a%/address}; dev=${dev##*/}
                return 0
            done
            [ $i -lt 60 ] || return 1
            usleep 50000; i=$((i + 1))
        done
    elif [ "$2" != - ]; then
        for n in /sys/class/net/*; do
            n=${n##*/}
            case "$n" in lo) continue ;; $2) dev=$n; return 0 ;; esac
        done
        return 1
    else
        [ -e "/sys/class/net/$3" ] && dev=$3
    fi
}

# Pass 1: find every interface and rename it to its set-name, via a temporary name when another
# interface holds that name now (it may be the next one to rename: swapped names).
set -f   # plan fields are data: no pathname expansion of a match.name pattern
k=0
while read -r kind id mac mname setname _; do
    [ "$kind" = iface ] || continue
    k=$((k + 1))
    set +f; find_dev "$mac" "$mname" "$id"; set -f
    if [ -z "$dev" ]; then
        if [ "$mac" != - ]; then fail "$id: no interface with MAC $mac"
        elif [ "$mname" != - ]; then fail "$id: no interface matches name $mname"
        else fail "$id: no interface named $id"; fi
        dev=-
    elif [ "$setname" != - ] && [ "$setname" != "$dev" ]; then
        ip link set dev "$dev" down
        if [ -e "/sys/class/net/$setname" ]; then tmp=tnet$k; else tmp=$setname; fi
        ipdo "$id: cannot rename $dev to $setname" link set dev "$dev" name "$tmp" && dev=$tmp
    fi
    eval "dev_$k=\$dev"
done <$plan

# Pass 2: configure each interface; resolv.conf from all of them.
up() { # the summary line of the interface just done
    [ -n "$dev" ] && [ "$dev" != - ] && [ $ifrc = 0 ] || return 0
    read -r m <"/sys/class/net/$dev/address"
    echo "TINY-NET-UP $dev $m$addrs"
}
fam() { case "$1" in *:*) echo -6 ;; *) echo -4 ;; esac }
k=0 dev= dns= search=
while read -r kind a b c d e f g; do
    case "$kind" in
    warn) echo "tiny: network-config: $a $b $c $d $e $f $g" ;;
    iface)
        up
        k=$((k + 1)) ifrc=0 addrs=
        eval "dev=\$dev_$k"
        [ "$dev" != - ] || continue
        if [ "$d" != - ] && [ "$dev" != "$d" ]; then   # renamed to a temporary name in pass 1
            ipdo "$a: cannot rename $dev to $d" link set dev "$dev" name "$d" && dev=$d
        fi
        # Down first if it is up (tiny-net run again): that drops the routes of the last run.
        read -r x <"/sys/class/net/$dev/flags"
        [ $((x & 1)) = 0 ] || ip link set dev "$dev" down
        [ "$e" = - ] || ipdo "$a: cannot set mtu $e" link set dev "$dev" mtu "$e"
        # The addresses are the pod's own: skip IPv6 duplicate address detection (which would
        # keep them tentative, unusable, for a second or more).
        [ -w "/proc/sys/net/ipv6/conf/$dev/accept_dad" ] && echo 0 >"/proc/sys/net/ipv6/conf/$dev/accept_dad"
        ipdo "$a: cannot bring $dev up" link set dev "$dev" up
        ;;
    dhcp4) # udhcpc's script configures the lease; its address goes in the summary
        [ "$dev" != - ] || continue
        if udhcpc -i "$dev" -n -q -f -t 10 -T 2 -s /lib/tiny/udhcpc.script >/run/udhcpc.log 2>&1; then
            a=$(ip -4 -o addr show dev "$dev" | awk '{ print $4; exit }')
            echo "TINY-DHCP $dev $a"
            addrs="$addrs $a"
        else
            fail "$dev: no DHCP lease ($(tail -n 1 /run/udhcpc.log))"
        fi
        ;;
    addr)
        [ "$dev" != - ] || continue
        ipdo "cannot add address $a to $dev" addr replace "$a" dev "$dev" && addrs="$addrs $a"
        ;;
    route) # route TO VIA METRIC ONLINK SCOPE TABLE FROM
        [ "$dev" != - ] || continue
        if [ "$a" = - ]; then fail "$dev: a route without \"to\""; continue; fi
        x=$a; [ "$x" != default ] || x=$b
        set -- "$(fam "$x")" route add "$a"
        [ "$b" = - ] || set -- "$@" via "$b"
        set -- "$@" dev "$dev"
        [ "$d" = 0 ] || set -- "$@" onlink
        [ "$c" = - ] || set -- "$@" metric "$c"
        [ "$e" = - ] || set -- "$@" scope "$e"
        [ "$f" = - ] || set -- "$@" table "$f"
        [ "$g" = - ] || set -- "$@" src "$g"
        ipdo "$dev: cannot add route to $a" "$@"
        ;;
    gw4|gw6) # a default route; on-link when the gateway is in none of the interface's subnets
        [ "$dev" != - ] || continue
        x=-4; [ "$kind" = gw4 ] || x=-6
        ip $x route add default via "$a" dev "$dev" 2>/dev/null ||
            ipdo "$dev: cannot add default route via $a" $x route add default via "$a" dev "$dev" onlink
        ;;
    ns) case " $dns " in *" $a "*) ;; *) dns="$dns $a" ;; esac ;;
    search) case " $search " in *" $a "*) ;; *) search="$search $a" ;; esac ;;
    esac
done <$plan
up

if [ -n "$dns$search" ]; then
    {
        for a in $dns; do echo "nameserver $a"; done
        [ -z "$search" ] || echo "search${search}"
    } >/etc/resolv.conf
fi
exit $rc
TINYNET_EOF
chmod 755 "$ROOT/sbin/tiny-net"

# udhcpc.script: what busybox udhcpc runs with a lease (bound) or none (deconfig): the
# address, the MTU, the routes (option 121's "staticroutes" when given, else the routers) and
# DNS, with busybox ip.
cat >"$ROOT/lib/tiny/udhcpc.script" <<'UDHCPC_EOF'
#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
bound|renew)
    [ -z "$mtu" ] || ip link set dev "$interface" mtu "$mtu"
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface" || exit 1
    if [ -n "$staticroutes" ]; then
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            if [ "$2" = 0.0.0.0 ]; then ip route replace "$1" dev "$interface"
            else ip route replace "$1" via "$2" dev "$interface" onlink; fi
            shift 2
        done
    else
        for r in $router; do ip route replace default via "$r" dev "$interface" onlink; break; done
    fi
    if [ -n "$dns" ]; then
        { for s in $dns; do echo "nameserver $s"; done; [ -z "$search$domain" ] || echo "search ${search:-$domain}"; } >/etc/resolv.conf
    fi
    ;;
esac
exit 0
UDHCPC_EOF
chmod 755 "$ROOT/lib/tiny/udhcpc.script"

cat >"$ROOT/lib/tiny/netconf.awk" <<'NETCONF_EOF'
# netconf.awk: cloud-init network-config version 2 (the subset the shim renders) -> a plan
# for tiny-net, one instruction a line, fields separated by spaces, "-" for "not given":
#   version V
#   iface ID MAC MATCH-NAME SET-NAME MTU     (then, for that interface:)
#   dhcp4                                    (IPv4 by DHCP)
#   addr CIDR
#   route TO VIA METRIC ONLINK(0|1) SCOPE TABLE FROM
#   gw4 IP / gw6 IP                          (default routes, given in the order to apply them)
#   ns IP / search DOMAIN
#   warn TEXT
# YAML subset: block mappings and "- " sequences by indentation (any consistent width), inline
# [a, b] sequences and {k: v} mappings (one line or continued over lines), quoted or plain
# scalars, comments, an optional top-level "network:" wrapper. No anchors, tags, multi-line
# strings or multi-document streams.
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
function unquote(s,    q) {
    s = trim(s)
    q = substr(s, 1, 1)
    if (length(s) >= 2 && (q == "\"" || q == "'") && substr(s, length(s)) == q) {
        s = substr(s, 2, length(s) - 2)
        if (q == "'") gsub(/''/, "'", s)
        else { gsub(/\\"/, "\"", s); gsub(/\\\\/, "\\", s) }
    }
    return s
}
# s without a trailing comment (" #..." outside quotes)
function uncomment(s,    i, c, q, prev) {
    q = ""; prev = " "
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (q != "") { if (c == q) q = "" }
        else if (c == "\"" || c == "'") q = c
        else if (c == "#" && (prev == " " || prev == "\t")) return substr(s, 1, i - 1)
        prev = c
    }
    return s
}
# Position of the ":" ending a mapping key in s (": " or ":" at the end, outside quotes), 0 if none.
function keyend(s,    i, c, q) {
    q = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (q != "") { if (c == q) q = "" }
        else if ((c == "\"" || c == "'") && i == 1) q = c
        else if (c == ":" && (i == length(s) || substr(s, i + 1, 1) == " " || substr(s, i + 1, 1) == "\t")) return i
        else if ((c == "[" || c == "{") && i == 1) return 0
    }
    return 0
}
# Split the inside of a flow collection at top-level commas into parts[1..n]; returns n.
function splitflow(s, parts,    i, c, q, depth, n, cur) {
    n = 0; cur = ""; q = ""; depth = 0
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (q != "") { if (c == q) q = ""; cur = cur c; continue }
        if (c == "\"" || c == "'") q = c
        else if (c == "[" || c == "{") depth++
        else if (c == "]" || c == "}") depth--
        else if (c == "," && depth == 0) { if (trim(cur) != "") parts[++n] = trim(cur); cur = ""; continue }
        cur = cur c
    }
    if (trim(cur) != "") parts[++n] = trim(cur)
    return n
}
function path(    i, p) {
    p = ""
    for (i = 1; i <= depth; i++) p = p (i > 1 ? SEP : "") skey[i]
    return p
}
# A value at path p: a scalar, an inline sequence (each element a value at p) or an inline
# mapping (each k: v a value at p/k).
function value(p, v,    parts, n, i, k) {
    v = trim(v)
    if (v ~ /^\[/) {
        sub(/^\[/, "", v); sub(/\][ \t]*$/, "", v)
        n = splitflow(v, parts)
        for (i = 1; i <= n; i++) value(p, parts[i])
    } else if (v ~ /^\{/) {
        sub(/^\{/, "", v); sub(/\}[ \t]*$/, "", v)
        n = splitflow(v, parts)
        for (i = 1; i <= n; i++) {
            k = keyend(parts[i])
            if (k) value(p SEP unquote(substr(parts[i], 1, k - 1)), substr(parts[i], k + 1))
        }
    } else if (v != "" && v != "~" && v != "null") {
        leaf(p, unquote(v))
    }
}
# Flow collections may go on over several lines: complete when brackets balance.
function balanced(s,    i, c, q, d) {
    q = ""; d = 0
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (q != "") { if (c == q) q = ""; continue }
        if (c == "\"" || c == "'") q = c
        else if (c == "[" || c == "{") d++
        else if (c == "]" || c == "}") d--
    }
    return d <= 0
}
# "key: value" or "key:" at indentation ind
function mapping(ind, s,    k) {
    k = keyend(s)
    if (!k) return 0
    while (depth > 0 && sind[depth] >= ind) depth--
    depth++; sind[depth] = ind; skey[depth] = unquote(substr(s, 1, k - 1))
    if ((depth == 1 || (depth == 2 && skey[1] == "network")) && skey[depth] !~ /^(network|version|ethernets|renderer|config)$/)
        warn("ignoring " skey[depth])
    pending = trim(substr(s, k + 1))
    pendpath = path()
    return 1
}
function flush() {
    if (pending != "") value(pendpath, pending)
    pending = ""
}

BEGIN { SEP = "\t"; depth = 0; pending = "" }
{
    sub(/\r$/, "")
    line = uncomment($0)
    if (pending != "" && !balanced(pending)) { pending = pending " " trim(line); next }
    flush()
    if (line ~ /^[ \t]*$/ || line ~ /^(---|\.\.\.)/ || line ~ /^%/) next
    match(line, /^ */); ind = RLENGTH; s = substr(line, ind + 1)
    # "- item" (possibly "- - item" or "- key: value"): one level per dash
    while (s ~ /^-([ \t]|$)/) {
        while (depth > 0 && (sind[depth] > ind || (sind[depth] == ind && skey[depth] ~ /^#/))) depth--
        p = path(); count[p]++
        depth++; sind[depth] = ind; skey[depth] = "#" count[p]
        s = substr(s, 2); match(s, /^[ \t]*/); ind += 1 + RLENGTH; s = substr(s, RLENGTH + 1)
    }
    if (s == "") next
    if (!mapping(ind, s)) {
        # a scalar (or inline collection) list item: its value belongs to the sequence itself
        # (an inline {k: v} item is a mapping item, like "- k: v")
        if (depth > 0 && skey[depth] ~ /^#/) {
            pending = s; pendpath = path()
            if (s !~ /^\{/) { sub(SEP "#[0-9]+$", "", pendpath); sub(/^#[0-9]+$/, "", pendpath) }
        } else warn("cannot parse line " NR ": " $0)
    }
}
END {
    flush()
    emit()
}

function warn(s) { warnings[++nwarn] = s }

# ---- network-config version 2 semantics ----
function leaf(p, v,    a, n, id, r, k) {
    gsub(/[ \t]+/, "_", v)      # values are single words; keep the plan's fields intact
    n = split(p, a, SEP)
    if (a[1] == "network") { for (k = 1; k < n; k++) a[k] = a[k + 1]; n-- }
    if (n == 1 && a[1] == "version") { version = v; return }
    if (n == 1 && a[1] == "config" && v == "disabled") { disabled = 1; return }
    if (a[1] != "ethernets") return
    if (n < 3) return
    id = a[2]
    if (!(id in idx)) { idx[id] = ++nif; ids[nif] = id }
    k = a[3]
    if (n == 4 && k == "match" && a[4] == "macaddress") mac[id] = tolower(v)
    else if (n == 4 && k == "match" && a[4] == "name") mname[id] = v
    else if (n == 3 && k == "set-name") setname[id] = v
    else if (n == 3 && k == "mtu") mtu[id] = v
    else if (n == 3 && k == "addresses") addrs[id] = addrs[id] " " v
    else if (n >= 5 && k == "addresses" && a[4] ~ /^#/) { if (index(addrs[id] " ", " " a[5] " ") == 0) addrs[id] = addrs[id] " " a[5] }
    else if (n == 3 && k == "gateway4") gw4[id] = v
    else if (n == 3 && k == "gateway6") gw6[id] = v
    else if (n == 4 && k == "nameservers" && a[4] == "addresses") ns[id] = ns[id] " " v
    else if (n == 4 && k == "nameservers" && a[4] == "search") search[id] = search[id] " " v
    else if (n == 5 && k == "routes" && a[4] ~ /^#/) {
        r = id SUBSEP a[4]
        if (!(r in rseen)) { rseen[r] = 1; nr[id]++; rid[id, nr[id]] = a[4] }
        route[r, a[5]] = v
    }
    else if (n == 3 && k == "dhcp4" && v ~ /^(true|yes|on)$/) dhcp4[id] = 1
    else if (k == "dhcp6" && v ~ /^(true|yes|on)$/) warn(id ": dhcp6 is not supported")
    else if (n == 4 && k == "match" && a[4] == "driver") warn(id ": match.driver is not supported")
}
function d(v) { return v == "" ? "-" : v }
function onlink(v) { return v ~ /^(true|yes|on|True|TRUE)$/ ? 1 : 0 }
function printroute(r) {
    print "route " d(route[r, "to"]) " " d(route[r, "via"]) " " d(route[r, "metric"]) " " onlink(route[r, "on-link"]) " " d(route[r, "scope"]) " " d(route[r, "table"]) " " d(route[r, "from"])
}
function emit(    i, j, id, n, list, r, def4, def6) {
    print "version " d(version)
    if (disabled) { print "disabled"; return }
    for (i = 1; i <= nwarn; i++) print "warn " warnings[i]
    for (i = 1; i <= nif; i++) {
        id = ids[i]
        print "iface " id " " d(mac[id]) " " d(mname[id]) " " d(setname[id]) " " d(mtu[id])
        if (dhcp4[id]) print "dhcp4"
        n = split(addrs[id], list, " "); for (j = 1; j <= n; j++) print "addr " list[j]
        # Routes without a gateway first (an on-link gateway may need one), then the default
        # routes from gateway4/6, then routes via gateways (which win over gateway4/6).
        for (j = 1; j <= nr[id]; j++) if (route[id SUBSEP rid[id, j], "via"] == "") printroute(id SUBSEP rid[id, j])
        # An explicit default route wins over gateway4/6 (both would make two default routes).
        def4 = def6 = 0
        for (j = 1; j <= nr[id]; j++) {
            r = id SUBSEP rid[id, j]
            if (route[r, "to"] == "0.0.0.0/0" || (route[r, "to"] == "default" && route[r, "via"] !~ /:/)) def4 = 1
            if (route[r, "to"] == "::/0" || (route[r, "to"] == "default" && route[r, "via"] ~ /:/)) def6 = 1
        }
        if (gw4[id] != "" && def4) print "warn " id ": gateway4 " gw4[id] " ignored, routes have a default route"
        else if (gw4[id] != "") print "gw4 " gw4[id]
        if (gw6[id] != "" && def6) print "warn " id ": gateway6 " gw6[id] " ignored, routes have a default route"
        else if (gw6[id] != "") print "gw6 " gw6[id]
        for (j = 1; j <= nr[id]; j++) if (route[id SUBSEP rid[id, j], "via"] != "") printroute(id SUBSEP rid[id, j])
        n = split(ns[id], list, " "); for (j = 1; j <= n; j++) print "ns " list[j]
        n = split(search[id], list, " "); for (j = 1; j <= n; j++) print "search " list[j]
    }
}
NETCONF_EOF

# tiny-agent: qemu-ga on the port named org.qemu.guest_agent.0 (devtmpfs has its node as
# /dev/vportNpM; the name is in sysfs). The port appears once virtio_console is loaded.
cat >"$ROOT/sbin/tiny-agent" <<'EOF'
#!/bin/sh
i=0
while [ $i -lt 100 ]; do
    for port in /sys/class/virtio-ports/*; do
        [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
        mkdir -p /run/qga
        exec /usr/sbin/qemu-ga --method=virtio-serial --path="/dev/${port##*/}" --statedir=/run/qga \
            --logfile=/var/log/qemu-ga.log
    done
    usleep 50000; i=$((i + 1))
done
echo "tiny: no virtio-serial port org.qemu.guest_agent.0: no guest agent"
EOF
chmod 755 "$ROOT/sbin/tiny-agent"

cat >"$ROOT/etc/inittab" <<'EOF'
::once:/sbin/tiny-agent
ttyS0::respawn:-/bin/sh
::shutdown:/etc/rc.shutdown
::ctrlaltdel:/sbin/reboot
EOF

# busybox acpid maps the power button to /etc/acpi/PWRF/00000080. `poweroff` signals init,
# which runs /etc/rc.shutdown and then powers off (QEMU exits with status 0).
cat >"$ROOT/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "tiny: power button"
exec poweroff
EOF
chmod 755 "$ROOT/etc/acpi/PWRF/00000080"

cat >"$ROOT/etc/rc.shutdown" <<'EOF'
#!/bin/sh
# Run by busybox init before poweroff/reboot: leave the FAT filesystem clean.
sync
umount /boot 2>/dev/null || mount -o remount,ro /boot 2>/dev/null
sync
echo TINY-VM-SHUTDOWN
EOF
chmod 755 "$ROOT/etc/rc.shutdown"

cat >"$ROOT/etc/profile" <<'EOF'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
PS1='tiny# '
cd /root
EOF
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"

pack_initramfs "$WORK/initrd.gz"

# --- FAT filesystems --------------------------------------------------------------------------
# syslinux.cfg: boot straight into the kernel. console=ttyS0 for the serial console; quiet and
# loglevel=4 keep the boot fast under TCG; panic=0 so a panic stays a panic (no auto reboot);
# no_timer_check, as cloud images set for VMs: on a busy host an emulated CPU is too slow for
# the kernel's IO-APIC timer check, which then panics at boot ("IO-APIC + timer doesn't work").
syslinux_cfg() { # syslinux_cfg DISKNAME
    cat <<EOF
DEFAULT tiny
PROMPT 0
TIMEOUT 0
LABEL tiny
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 quiet loglevel=4 panic=0 no_timer_check tiny.disk=$1
EOF
}

# fill_fat IMAGE-SPEC DISKNAME HIDDEN-SECTORS: format a FAT at IMAGE-SPEC (mtools "-i" syntax:
# FILE or FILE@@OFFSET), copy kernel, initramfs and config, make it bootable.
fill_fat() {
    local spec=$1 disk=$2 hidden=$3
    mformat -i "$spec" -t $FAT_TRACKS -h $FAT_HEADS -n $FAT_SPT -H "$hidden" -v TINY ::
    syslinux_cfg "$disk" >"$WORK/syslinux.cfg.$disk"
    mcopy -i "$spec" "$KERNEL" ::/vmlinuz
    mcopy -i "$spec" "$WORK/initrd.gz" ::/initrd.gz
    mcopy -i "$spec" "$WORK/syslinux.cfg.$disk" ::/syslinux.cfg
}

# 1. Superfloppy: the whole disk is the FAT filesystem; its boot sector is the SYSLINUX VBR.
truncate -s $((FAT_SECTORS * 512)) "$WORK/tiny.raw"
fill_fat "$WORK/tiny.raw" vda 0
syslinux --install "$WORK/tiny.raw"

# 2. Partitioned: MBR with one bootable FAT16 (LBA) partition at 1 MiB; SYSLINUX's MBR code
#    (first 440 bytes only, so the partition table stays) chain-loads the partition's VBR.
truncate -s $(((PART_START + FAT_SECTORS) * 512)) "$WORK/tiny-part.raw"
echo "start=$PART_START, size=$FAT_SECTORS, type=e, bootable" |
    sfdisk --quiet --label dos "$WORK/tiny-part.raw"
fill_fat "$WORK/tiny-part.raw@@$((PART_START * 512))" vda1 $PART_START
syslinux --offset $((PART_START * 512)) --install "$WORK/tiny-part.raw"
dd if="$MBR_BIN" of="$WORK/tiny-part.raw" bs=440 count=1 conv=notrunc status=none

# --- outputs ----------------------------------------------------------------------------------
qemu-img convert -c -f raw -O qcow2 "$WORK/tiny.raw" "$WORK/tiny.qcow2"
qemu-img convert -c -f raw -O qcow2 "$WORK/tiny-part.raw" "$WORK/tiny-part.qcow2"
# Move into place (same filesystem, so each output appears whole or not at all).
mv -f "$WORK/tiny.raw" "$OUTDIR/tiny.raw"
mv -f "$WORK/tiny.qcow2" "$OUTDIR/tiny.qcow2"
mv -f "$WORK/tiny-part.qcow2" "$OUTDIR/tiny-part.qcow2"
record_build
ls -l "${OUTPUTS[@]}"
