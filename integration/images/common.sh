# Sourced by the build-*.sh image builders: what they share. A builder sets SCRIPT (its own
# path) and OUTDIR, and fills the arrays INPUTS (the host's files it reads) and OUTPUTS before
# it asks exit_if_up_to_date, sets ROOT (the staging directory of a guest's initramfs) before
# add_busybox, add_modules or add_libraries, and calls record_build once its outputs are in
# place.

BUILDER=$(basename "$0")
COMMON_SH=$(readlink -f "${BASH_SOURCE[0]}")

need() { # need COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 ||
        { echo "$BUILDER: '$1' not found; install the Debian package '$2'" >&2; exit 1; }
}

# use_host_kernel: KVER (the newest installed cloud kernel, unless KVER says which one),
# KERNEL and MODDIR.
use_host_kernel() {
    if [ -z "${KVER:-}" ]; then
        KVER=$(cd /boot && ls vmlinuz-*-cloud-amd64 2>/dev/null | sed 's/^vmlinuz-//' | sort -V | tail -n1)
        [ -n "$KVER" ] || { echo "$BUILDER: no /boot/vmlinuz-*-cloud-amd64; install linux-image-cloud-amd64" >&2; exit 1; }
    fi
    KERNEL=/boot/vmlinuz-$KVER
    MODDIR=/lib/modules/$KVER
}

# The builder's own recipe: its text and this file's, hashed. The cache outside git is shared
# by clones whose files all carry their checkout time, so the scripts count by content.
build_stamp() {
    cat "$SCRIPT" "$COMMON_SH" | sha256sum | cut -d' ' -f1
}

# exit_if_up_to_date: ends the builder if the outputs were built by this very builder (its
# stamp) and each exists and is newer than every input; else forgets the stamp, so that a
# build that fails halfway leaves outputs no builder takes for its own.
exit_if_up_to_date() {
    local stamp=$OUTDIR/.$BUILDER.stamp
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(build_stamp)" ] && outputs_newer_than_inputs; then
        echo "$BUILDER: ${OUTPUTS[*]} up to date"
        exit 0
    fi
    rm -f "$stamp"
}

outputs_newer_than_inputs() {
    local out in
    for out in "${OUTPUTS[@]}"; do
        [ -f "$out" ] || return 1
        for in in "${INPUTS[@]}"; do
            [ "$out" -nt "$in" ] || return 1
        done
    done
}

# record_build: the outputs now in place are this builder's.
record_build() {
    build_stamp >"$OUTDIR/.$BUILDER.stamp.tmp"
    mv -f "$OUTDIR/.$BUILDER.stamp.tmp" "$OUTDIR/.$BUILDER.stamp"
}

# libraries_of ELF...: the shared libraries the ELF files link, as ldd resolves them, and the
# dynamic loader, one a line.
libraries_of() {
    ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u
}

# add_library_inputs ELF...: the files of those libraries (symlinks resolved) as INPUTS;
# none found is an error.
add_library_inputs() {
    local libraries
    libraries=$(libraries_of "$@")
    [ -n "$libraries" ] || { echo "$BUILDER: ldd found no libraries for $*" >&2; exit 1; }
    mapfile -t -O ${#INPUTS[@]} INPUTS < <(xargs readlink -f <<<"$libraries")
}

# add_libraries ELF...: each library the ELF files link, at the path ldd named (where the
# guest's loader looks), as a regular file (the symlink dereferenced).
add_libraries() {
    local lib
    libraries_of "$@" | while read -r lib; do
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done
}

# add_busybox BUSYBOX: busybox with one symlink per applet, made here so that the guest does
# not spend boot time on `busybox --install`.
add_busybox() {
    local applet
    cp "$1" "$ROOT/bin/busybox"
    for applet in $("$1" --list-full); do
        [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
    done
}

# add_modules LIST-FILE MODULE...: copies the modules, and those they need, flat into
# $ROOT/lib/modules, and writes in LIST-FILE the insmod order of those not copied before,
# dependencies first, as modprobe resolves it for the target kernel (so the guest needs neither
# depmod data nor modprobe).
add_modules() {
    local list=$1 m kind path name
    shift
    : >"$list"
    for m in "$@"; do
        modprobe -S "$KVER" -d / --show-depends "$m" | while read -r kind path _; do
            [ "$kind" = insmod ] || continue    # "builtin ..." lines need nothing
            name=$(basename "$path")
            if [ ! -e "$ROOT/lib/modules/$name" ]; then
                cp "$path" "$ROOT/lib/modules/$name"
                echo "$name" >>"$list"
            fi
        done
    done
}

# pack_initramfs OUT: a gzip'd newc archive of ROOT, everything owned by root, timestamps not
# recorded.
pack_initramfs() {
    (cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$1"
}
