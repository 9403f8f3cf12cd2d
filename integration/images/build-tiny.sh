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

# --- tools ------------------------------------------------------------------------------------
export PATH=$PATH:/usr/sbin:/sbin   # sfdisk and modprobe live in sbin
need() { # need COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 ||
        { echo "build-tiny.sh: '$1' not found; install the Debian package '$2'" >&2; exit 1; }
}
need busybox busybox-static
need cpio cpio
need gzip gzip
need mformat mtools
need mcopy mtools
need syslinux syslinux
need sfdisk fdisk
need qemu-img qemu-utils
need modprobe kmod

# --- inputs -----------------------------------------------------------------------------------
# The newest installed cloud kernel, unless KVER says which one.
if [ -z "${KVER:-}" ]; then
    KVER=$(cd /boot && ls vmlinuz-*-cloud-amd64 2>/dev/null | sed 's/^vmlinuz-//' | sort -V | tail -n1)
    [ -n "$KVER" ] || { echo "build-tiny.sh: no /boot/vmlinuz-*-cloud-amd64; install linux-image-cloud-amd64" >&2; exit 1; }
fi
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
BUSYBOX=$(readlink -f "$(command -v busybox)")
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
SYSLINUX_BIN=$(readlink -f "$(command -v syslinux)")   # carries ldlinux.sys/.c32 inside
for f in "$KERNEL" "$MODDIR/modules.dep" "$BUSYBOX" "$MBR_BIN"; do
    [ -r "$f" ] || { echo "build-tiny.sh: missing input $f" >&2; exit 1; }
done
INPUTS=("$SCRIPT" "$KERNEL" "$MODDIR/modules.dep" "$BUSYBOX" "$MBR_BIN" "$SYSLINUX_BIN")
OUTPUTS=("$OUTDIR/tiny.qcow2" "$OUTDIR/tiny.raw" "$OUTDIR/tiny-part.qcow2")

# Modules the guest loads (everything else it needs is built in: see /boot/config-$KVER).
#   virtio_pci, virtio_blk         the boot disk (/dev/vda)
#   vfat + nls_cp437 + nls_ascii   mount the FAT disk (codepage 437, default iocharset "ascii")
#   button, evdev                  ACPI power button as /dev/input/event* for acpid
#   pvpanic_mmio, pvpanic_pci      report panics to QEMU (ISA "-device pvpanic" / "pvpanic-pci")
MODULES="virtio_pci virtio_blk vfat nls_cp437 nls_ascii button evdev pvpanic_mmio pvpanic_pci"

# FAT filesystem: 32 MiB as 32 cylinders x 64 heads x 32 sectors. The kernel (~14 MiB) and the
# initramfs (~2 MiB) fit with room to spare; FAT16 is what mformat picks for this size.
FAT_TRACKS=32 FAT_HEADS=64 FAT_SPT=32
FAT_SECTORS=$((FAT_TRACKS * FAT_HEADS * FAT_SPT))
PART_START=2048   # sectors (1 MiB), where partition 1 starts on the partitioned disk

# --- up to date? ------------------------------------------------------------------------------
up_to_date() {
    local out in
    for out in "${OUTPUTS[@]}"; do
        [ -f "$out" ] || return 1
        for in in "${INPUTS[@]}"; do
            [ "$out" -nt "$in" ] || return 1
        done
    done
}
if up_to_date; then
    echo "build-tiny.sh: $OUTDIR is up to date"
    exit 0
fi

WORK=$(mktemp -d "$OUTDIR/.build-tiny.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- initramfs --------------------------------------------------------------------------------
ROOT=$WORK/initramfs
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,boot,etc/acpi/PWRF,var/log,lib/modules,root}

cp "$BUSYBOX" "$ROOT/bin/busybox"
# One symlink per applet, made here so the guest does not spend boot time on `busybox --install`.
for applet in $(busybox --list-full); do
    [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done

# Copy the modules flat and record the insmod order, dependencies first, as modprobe resolves
# it for the target kernel (so the guest needs neither depmod data nor modprobe).
: >"$ROOT/etc/modules"
for m in $MODULES; do
    modprobe -S "$KVER" -d / --show-depends "$m" | while read -r kind path _; do
        [ "$kind" = insmod ] || continue        # "builtin ..." lines need nothing
        name=$(basename "$path")
        if [ ! -e "$ROOT/lib/modules/$name" ]; then
            cp "$path" "$ROOT/lib/modules/$name"
            echo "$name" >>"$ROOT/etc/modules"
        fi
    done
done

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

# acpid opens the /dev/input/event* nodes that exist when it starts.
wait_for /dev/input/event0 || echo "tiny: no /dev/input/event0, power button will not work"

exec /sbin/init
EOF
chmod 755 "$ROOT/init"

cat >"$ROOT/etc/inittab" <<'EOF'
::respawn:/sbin/acpid -f -l /var/log/acpid.log
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

# newc archive of the staging dir, everything owned by root, timestamps not recorded.
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$WORK/initrd.gz"

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
ls -l "${OUTPUTS[@]}"
