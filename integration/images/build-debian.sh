#!/bin/bash
# build-debian.sh OUTDIR — build a Debian 12 (bookworm) guest disk shaped like Debian's official
# "genericcloud" image: systemd, cloud-init, netplan + systemd-networkd + systemd-resolved, the
# cloud kernel. It is what users run, so it shows whether the shim's NoCloud seed configures a
# real distribution (the "tiny" image of build-tiny.sh only stands in for cloud-init).
#
# Output (in OUTDIR):
#   debian-12.qcow2   MBR-partitioned, compressed qcow2, 2 GiB virtual (DISK_MB):
#                       partition 1: FAT16, bootable: SYSLINUX, the kernel and its initramfs
#                       partition 2: ext4 labelled debian-root: the root filesystem
#   cache/            kept between runs so that a rerun is quick:
#                       rootfs/          the mmdebstrap tree, before the changes made below
#                       rootfs.recipe    what it was built from (rebuilt when that changes)
#                       packages.txt     its packages and versions
#
# Networking, as the official image: Debian's bookworm cloud images (debian-cloud-images,
# config_space/bookworm/package_config/SYSTEM_BOOT) install netplan.io, systemd-resolved and
# no ifupdown, enable systemd-resolved and point /etc/resolv.conf at
# /run/systemd/resolve/resolv.conf (scripts/SYSTEM_BOOT/20-enable-systemd-resolved). Without
# ifupdown cloud-init's eni renderer is unavailable and it picks netplan, which hands the
# network-config (version 2, passed through as it is) to systemd-networkd. This image does
# the same. Like the official build, Recommends are not installed.
#
# Differences from the official image, on purpose: SYSLINUX on a FAT partition instead of
# GRUB (nothing here is mounted, and SYSLINUX installs into an image file with mtools; a
# kernel upgrade inside the guest therefore does not reach the boot partition), no
# openssh-server, sudo, apparmor, chrony or unattended-upgrades (smaller, faster under TCG),
# no documentation, man pages or translations.
#
# For tests, on the serial console (ttyS0, the console the shim logs):
#   * root is logged in automatically on ttyS0 (serial-getty@ttyS0 with --autologin root),
#     so a test can type commands; the prompt is "root@<hostname>:~# ",
#   * debian-net-report.service runs once cloud-init is done (after cloud-final.service and
#     network-online.target) and prints, one fact a line, each line starting with a tag:
#       DEBIAN-REPORT-BEGIN <uptime seconds>
#       DEBIAN-HOSTNAME <hostname>
#       DEBIAN-LINK <ip -o link line>        DEBIAN-NET <ip -o addr line>
#       DEBIAN-ROUTES <ip -4 route line>     DEBIAN-ROUTES6 <ip -6 route line>
#       DEBIAN-RESOLV <line of /etc/resolv.conf>   DEBIAN-RESOLVECTL <resolvectl status line>
#       DEBIAN-CLOUDINIT-STATUS <cloud-init status --long line>
#       DEBIAN-CLOUDINIT-LOG <the renderer and network lines of /var/log/cloud-init.log>
#       DEBIAN-DSIDENTIFY <ds-identify's decision>
#       DEBIAN-NETPLAN <line of the netplan YAML cloud-init wrote>
#       DEBIAN-NETWORKD <line of the .network files netplan generated>
#       DEBIAN-NETWORKCTL <networkctl list line>     DEBIAN-FAILED <failed unit>
#       DEBIAN-REPORT-END
#   * debian-boot-report.service prints "DEBIAN-BOOT-TIME <systemd-analyze>" and
#     "DEBIAN-SYSTEM <is-system-running>" once the boot has finished.
#
# Everything comes from Debian: mmdebstrap (installed with apt-get if missing) fetches the
# packages from deb.debian.org (MIRROR, SECURITY_MIRROR override it); mkfs.ext4 -d fills the
# root filesystem from a directory, mtools writes the FAT partition and syslinux the boot code.
# Nothing is mounted, no loop device. Needs root (mmdebstrap's root mode, file ownership).
#
# Idempotent: does nothing when debian-12.qcow2 is newer than this script and the cached root;
# the cached root is rebuilt only when its recipe (suite, mirrors, packages, options) changes,
# or with REFRESH=1 (to pick up new package versions). A first build takes 2 to 5 minutes
# (mmdebstrap: ~200 packages, ~410 MB unpacked), a rebuild from the cache under a minute; the
# qcow2 is ~170 MB. Under TCG the guest prints its report 1.5 to 2 minutes after power-on.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-debian.sh: run as root (mmdebstrap root mode, root-owned files in the image)" >&2
    exit 1
fi
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
SCRIPT=$(readlink -f "$0")
. "$(dirname "$SCRIPT")/common.sh"
CACHE=$OUTDIR/cache
mkdir -p "$CACHE"
export PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C

# --- tools ------------------------------------------------------------------------------------
if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "build-debian.sh: installing mmdebstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2
fi
need mmdebstrap mmdebstrap
need mkfs.ext4 e2fsprogs
need mformat mtools
need mcopy mtools
need syslinux syslinux
need sfdisk fdisk
need qemu-img qemu-utils
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
[ -r "$MBR_BIN" ] || { echo "build-debian.sh: missing $MBR_BIN; install syslinux-common" >&2; exit 1; }
SYSLINUX_BIN=$(readlink -f "$(command -v syslinux)")

# --- the root filesystem's recipe -------------------------------------------------------------
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DISK_MB=${DISK_MB:-2048}          # the disk's virtual size (the official image's is 2 GiB)
ROOT_LABEL=debian-root

# Besides Essential and apt (mmdebstrap's "apt" variant). Official bookworm genericcloud
# names most of these in its SYSTEM_BOOT/CLOUD/GENERIC classes; zstd is there because
# initramfs-tools compresses with it (else it falls back to gzip).
PACKAGES=(
    systemd systemd-sysv udev dbus libpam-systemd
    linux-image-cloud-amd64 initramfs-tools zstd
    cloud-init e2fsprogs qemu-guest-agent
    netplan.io systemd-resolved
    iproute2 iputils-ping netbase procps less
)
MMDEBSTRAP_ARGS=(
    --mode=root --format=directory --variant=apt
    --include="$(IFS=,; echo "${PACKAGES[*]}")"
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --aptopt='Acquire::Languages "none"'
    # Before any kernel is installed, so that update-initramfs sees it: no resume device (the
    # image has no swap), and fsck for ext4 in the initramfs, which checks the root before
    # mounting it (initramfs-tools would probe the root device for its type, and in a chroot
    # there is none: "fsck not present, so skipping root file system" at every boot).
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && printf "RESUME=none\nFSTYPE=ext4\n" >"$1/etc/initramfs-tools/conf.d/debian-guest"'
    "$SUITE"
)
MIRRORS=(
    "deb $MIRROR $SUITE main"
    "deb $MIRROR $SUITE-updates main"
    "deb $SECURITY_MIRROR $SUITE-security main"
)
RECIPE=$(printf '%s\n' "recipe 1" "${MMDEBSTRAP_ARGS[@]}" "${MIRRORS[@]}")

ROOTFS=$CACHE/rootfs
build_rootfs() {
    local new=$CACHE/rootfs.new start=$SECONDS
    rm -rf "$new" "$ROOTFS" "$CACHE/rootfs.recipe"
    echo "build-debian.sh: mmdebstrap $SUITE into $ROOTFS (a few minutes)" >&2
    mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" "$new" "${MIRRORS[@]}" >&2
    chroot "$new" dpkg-query -W -f '${Package} ${Version}\n' >"$CACHE/packages.txt"
    mv "$new" "$ROOTFS"
    printf '%s\n' "$RECIPE" >"$CACHE/rootfs.recipe"   # written last: the tree is complete
    echo "build-debian.sh: root filesystem built in $((SECONDS - start)) s" >&2
}
if [ "${REFRESH:-0}" = 1 ] || [ ! -d "$ROOTFS" ] || [ ! -f "$CACHE/rootfs.recipe" ] ||
    [ "$(cat "$CACHE/rootfs.recipe")" != "$RECIPE" ]; then
    build_rootfs
fi

# --- up to date? ------------------------------------------------------------------------------
OUTPUT=$OUTDIR/debian-12.qcow2
OUTPUTS=("$OUTPUT")
INPUTS=("$CACHE/rootfs.recipe" "$MBR_BIN" "$SYSLINUX_BIN")
exit_if_up_to_date

WORK=$(mktemp -d "$OUTDIR/.build-debian.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
# cp -a keeps owners, modes, hard links and extended attributes (ping's file capability).
cp -a "$ROOTFS" "$ROOT"

# --- the guest's configuration ----------------------------------------------------------------
KVER=$(cd "$ROOT/boot" && ls vmlinuz-*-cloud-amd64 | sed 's/^vmlinuz-//' | sort -V | tail -n1)
[ -n "$KVER" ] && [ -f "$ROOT/boot/initrd.img-$KVER" ] ||
    { echo "build-debian.sh: no kernel and initramfs in $ROOTFS/boot" >&2; exit 1; }

cat >"$ROOT/etc/fstab" <<EOF
# <file system>    <mount point> <type> <options>                     <dump> <pass>
LABEL=$ROOT_LABEL  /             ext4   rw,discard,errors=remount-ro  0      1
EOF

# As the official image leaves them: the hostname comes from cloud-init (meta-data's
# local-hostname), the machine id is made at first boot.
: >"$ROOT/etc/hostname"
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
# LANG=C.UTF-8, as Debian's cloud images have it: without a system locale cloud-init's
# locale module sets en_US.UTF-8, which only exists once generated, and fails.
echo LANG=C.UTF-8 >"$ROOT/etc/default/locale"
cat >"$ROOT/etc/hosts" <<'EOF'
127.0.0.1       localhost
::1             localhost ip6-localhost ip6-loopback
ff02::1         ip6-allnodes
ff02::2         ip6-allrouters
EOF

# systemd-resolved owns DNS, as in the official image (which links the non-stub file); its
# package enables it.
ln -sfn /run/systemd/resolve/resolv.conf "$ROOT/etc/resolv.conf"
enable_unit() { # enable UNIT TARGET: what `systemctl enable` does, without a running systemd
    mkdir -p "$ROOT/etc/systemd/system/$2.wants"
    local path
    for path in "/etc/systemd/system/$1" "/lib/systemd/system/$1" "/usr/lib/systemd/system/$1"; do
        if [ -e "$ROOT$path" ]; then
            ln -sfn "$path" "$ROOT/etc/systemd/system/$2.wants/$1"
            return 0
        fi
    done
    echo "build-debian.sh: no unit $1 in the root filesystem" >&2
    exit 1
}
# systemd-networkd stays disabled, as Debian ships it: netplan starts it when it has written
# configuration for it (its boot-time generator enables it; `netplan generate`, which
# cloud-init runs after writing /etc/netplan/50-cloud-init.yaml on first boot, starts
# systemd-networkd.socket and .service with `systemctl start --no-block`).

# Root on the serial console without a password (a test types commands there).
mkdir -p "$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d"
cat >"$ROOT/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM
EOF

# The network report for tests (see the header).
cat >"$ROOT/usr/local/sbin/debian-net-report" <<'EOF'
#!/bin/sh
# Prints what the guest made of its NoCloud seed to the serial console, one tagged line each.
exec >/dev/ttyS0 2>&1
tag() { # tag TAG: prefix every line of stdin with TAG
    while IFS= read -r line; do printf '%s %s\n' "$1" "$line"; done
}
read -r up _ </proc/uptime
echo "DEBIAN-REPORT-BEGIN $up"
echo "DEBIAN-HOSTNAME $(hostname)"
ip -o link show | sed 's/\\ */ /g' | tag DEBIAN-LINK
ip -o addr show | sed 's/ *\\ .*$//' | tag DEBIAN-NET
ip -4 route show | tag DEBIAN-ROUTES
ip -6 route show | tag DEBIAN-ROUTES6
grep -v '^#' /etc/resolv.conf | grep -v '^$' | tag DEBIAN-RESOLV
resolvectl status 2>&1 | grep -E 'Link|DNS Servers|DNS Domain|Current DNS' | tag DEBIAN-RESOLVECTL
cloud-init status --long 2>&1 | tag DEBIAN-CLOUDINIT-STATUS
grep -E 'Selected renderer|renderer|Applying network configuration|network config|Generated|netplan|Found datasource|NoCloud|Setting up hostname|set_hostname|WARNING|ERROR' \
    /var/log/cloud-init.log 2>&1 | cut -c1-600 | tag DEBIAN-CLOUDINIT-LOG
grep -E '^(DSNAME|DSLIST|MODE|found=|policy|ISO9660_DEVS|FS_LABELS|[Ff]ound)' /run/cloud-init/ds-identify.log 2>&1 | tag DEBIAN-DSIDENTIFY
for f in /etc/netplan/*.yaml; do [ -e "$f" ] && sed "s|^|$f: |" "$f"; done | tag DEBIAN-NETPLAN
for f in /run/systemd/network/*; do [ -e "$f" ] && grep -v '^$' "$f" | sed "s|^|${f##*/}: |"; done | tag DEBIAN-NETWORKD
networkctl list --no-pager --no-legend 2>&1 | tag DEBIAN-NETWORKCTL
systemctl --failed --no-legend --no-pager --plain 2>&1 | tag DEBIAN-FAILED
echo "DEBIAN-REPORT-END"
EOF
chmod 755 "$ROOT/usr/local/sbin/debian-net-report"
cat >"$ROOT/etc/systemd/system/debian-net-report.service" <<'EOF'
[Unit]
Description=Print the guest's network (as cloud-init set it up) to ttyS0
# No default dependencies: multi-user.target would then order itself after this unit, and
# cloud-final.service orders itself after multi-user.target (a cycle).
DefaultDependencies=no
Wants=network-online.target
After=basic.target network-online.target cloud-init.service cloud-config.service cloud-final.service
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/debian-net-report

[Install]
WantedBy=multi-user.target
EOF
cat >"$ROOT/etc/systemd/system/debian-boot-report.service" <<'EOF'
[Unit]
Description=Print the boot time to ttyS0 once the boot has finished

[Service]
Type=simple
ExecStart=/bin/sh -c 'systemctl is-system-running --wait >/dev/null 2>&1; \
    echo "DEBIAN-SYSTEM $(systemctl is-system-running)" >/dev/ttyS0; \
    echo "DEBIAN-BOOT-TIME $(systemd-analyze time | head -n1)" >/dev/ttyS0'

[Install]
WantedBy=multi-user.target
EOF
enable_unit debian-net-report.service multi-user.target
enable_unit debian-boot-report.service multi-user.target

# What an image build leaves behind (the official build's LAST/10-cleanup removes the same).
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
    "$ROOT"/var/log/apt "$ROOT"/var/log/dpkg.log "$ROOT"/var/log/alternatives.log \
    "$ROOT"/var/log/bootstrap.log "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/etc/ssh/ssh_host_*
: >"$ROOT/var/lib/dpkg/available"

# --- the disk -----------------------------------------------------------------------------------
KERNEL=$ROOT/boot/vmlinuz-$KVER
INITRD=$ROOT/boot/initrd.img-$KVER
# FAT partition: the kernel and initramfs plus 16 MiB, in whole MiB; mformat's geometry is
# FAT_MB cylinders x 64 heads x 32 sectors (1 MiB a cylinder).
boot_bytes=$(($(stat -c %s "$KERNEL") + $(stat -c %s "$INITRD")))
FAT_MB=$(((boot_bytes + (1 << 20) - 1) / (1 << 20) + 16))
FAT_SECTORS=$((FAT_MB * 2048))
PART_START=2048                           # sectors: partition 1 at 1 MiB
ROOT_START=$((PART_START + FAT_SECTORS))  # partition 2 right after it, MiB-aligned
ROOT_SECTORS=$((DISK_MB * 2048 - ROOT_START))
[ $ROOT_SECTORS -gt 0 ] || { echo "build-debian.sh: DISK_MB=$DISK_MB is too small" >&2; exit 1; }

# ext4 straight from the directory (mke2fs -d), as big as partition 2.
mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$ROOT" "$WORK/root.img" $((ROOT_SECTORS / 2))k >/dev/null

# Console on ttyS0 last (it becomes /dev/console); the official image's GRUB line is
# "console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0". no_timer_check
# as in build-tiny.sh: an emulated CPU on a busy host fails the kernel's IO-APIC timer check.
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND root=LABEL=$ROOT_LABEL ro console=tty0 console=ttyS0,115200 consoleblank=0 no_timer_check
EOF

RAW=$WORK/debian-12.raw
truncate -s $((DISK_MB * 1024 * 1024)) "$RAW"
printf '%s\n' "start=$PART_START, size=$FAT_SECTORS, type=e, bootable" "start=$ROOT_START, type=83" |
    sfdisk --quiet --label dos "$RAW"
FAT="$RAW@@$((PART_START * 512))"
mformat -i "$FAT" -t $FAT_MB -h 64 -n 32 -H $PART_START -v DEBBOOT ::
mcopy -i "$FAT" "$KERNEL" ::/vmlinuz
mcopy -i "$FAT" "$INITRD" ::/initrd.img
mcopy -i "$FAT" "$WORK/syslinux.cfg" ::/syslinux.cfg
syslinux --offset $((PART_START * 512)) --install "$RAW"
dd if="$MBR_BIN" of="$RAW" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/root.img" of="$RAW" bs=1M seek=$((ROOT_START / 2048)) conv=notrunc,sparse status=none

qemu-img convert -c -m 4 -W -f raw -O qcow2 "$RAW" "$WORK/debian-12.qcow2"
mv -f "$WORK/debian-12.qcow2" "$OUTPUT"
echo "build-debian.sh: kernel $KVER, boot partition $FAT_MB MiB, root $((ROOT_SECTORS / 2048)) MiB" >&2
record_build
ls -l "$OUTPUT"
