#!/usr/bin/env python3
"""network-tapfd.py: open a macvtap's character device, keep or clear IFF_VNET_HDR on the
descriptor, check the flags with TUNGETIFF, then exec a command (QEMU) that inherits it.

    network-tapfd.py --node /var/tmp/netbench/.../tap15 --fd 3 --vnet-hdr clear -- qemu-system-x86_64 ...

A macvtap queue is born with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR. TUNSETIFF on a macvtap
descriptor ignores the name and sets the queue's feature flags (IFF_VNET_HDR, IFF_MULTI_QUEUE)
from the flags given, which must otherwise be exactly IFF_TAP | IFF_NO_PI: so TUNSETIFF with
IFF_TAP | IFF_NO_PI clears IFF_VNET_HDR. QEMU probes the descriptor with TUNGETIFF and, finding
no IFF_VNET_HDR, offers the guest no checksum or segmentation offloads: what a runtime that
opens its tap without IFF_VNET_HDR gets (Virtlet's bug).

Prints one line to stderr before the exec:
    TAPFD node=PATH fd=N flags=0x.... vnet_hdr=on|off
and exits 1 (without exec) if the flags are not what was asked for.
"""
import argparse
import fcntl
import os
import struct
import sys

TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
IFREQ = "16sH22x"  # struct ifreq: name[IFNAMSIZ], short flags, padded to 40 bytes


def get_flags(fd):
    buf = fcntl.ioctl(fd, TUNGETIFF, bytes(struct.calcsize(IFREQ)))
    name, flags = struct.unpack(IFREQ, buf)
    return name.rstrip(b"\0").decode(), flags


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--node", required=True, help="the macvtap's character device node")
    ap.add_argument("--fd", type=int, required=True, help="descriptor number the command inherits")
    ap.add_argument("--vnet-hdr", choices=("keep", "clear"), required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command to run")
    if args.fd < 3:
        ap.error("--fd must be 3 or more")

    fd = os.open(args.node, os.O_RDWR | os.O_CLOEXEC)
    if args.vnet_hdr == "clear":
        _, flags = get_flags(fd)
        new = IFF_TAP | IFF_NO_PI | (flags & IFF_MULTI_QUEUE)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack(IFREQ, b"", new))
    name, flags = get_flags(fd)
    vnet = bool(flags & IFF_VNET_HDR)
    print(
        f"TAPFD node={args.node} dev={name} fd={args.fd} flags={flags:#06x} vnet_hdr={'on' if vnet else 'off'}",
        file=sys.stderr,
        flush=True,
    )
    if vnet != (args.vnet_hdr == "keep"):
        print(f"network-tapfd: IFF_VNET_HDR is {'set' if vnet else 'clear'}, asked to {args.vnet_hdr} it", file=sys.stderr)
        return 1
    if fd != args.fd:
        os.dup2(fd, args.fd)  # dup2's copy is inheritable
        os.close(fd)
    else:
        os.set_inheritable(fd, True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
