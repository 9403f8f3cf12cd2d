//! Typed QEMU command-line pieces. Each renders its own arguments; nothing else
//! pastes strings, so quoting (`,` doubled in key=value options) lives in one place.

use std::ffi::OsString;

use serde_json::json;

use crate::accel::Accel;
use crate::disk::format::DiskFormat;
use crate::plan::{CpuModel, DiskBus, MachineType};

/// Something that contributes arguments to QEMU's command line.
pub trait QemuArg {
    fn push_args(&self, argv: &mut Vec<OsString>);
}

/// QEMU's key=value option syntax: a literal comma is written twice.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn push(argv: &mut Vec<OsString>, flag: &str, value: impl Into<OsString>) {
    argv.push(flag.into());
    argv.push(value.into());
}

/// Flags every VM gets: no implicit devices, no host config files, no display,
/// and the CPUs held (`-S`) until the shim has wired everything and says `cont`.
pub struct BaseFlags<'a> {
    pub name: &'a str,
}

impl QemuArg for BaseFlags<'_> {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        argv.extend(["-nodefaults", "-no-user-config", "-S"].map(OsString::from));
        push(argv, "-display", "none");
        push(argv, "-name", format!("guest={},debug-threads=on", escape(self.name)));
        push(argv, "-msg", "timestamp=on");
        push(argv, "-rtc", "base=utc");
    }
}

/// QEMU's seccomp sandbox: no obsolete syscalls, no privilege changes, no new processes,
/// no changes to its own scheduling or affinity (the shim does placement from outside).
/// A guest that escapes into QEMU meets these limits too.
pub struct Sandbox;

impl QemuArg for Sandbox {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    }
}

pub struct Machine {
    pub kind: MachineType,
    pub accel: Accel,
    /// TCG translation cache in MiB; QEMU's default of 1 GiB would outweigh a small guest.
    pub tcg_translation_cache_mib: u64,
    pub cpu_model: CpuModel,
    /// The SMBIOS system UUID.
    pub uuid: Option<String>,
}

impl QemuArg for Machine {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        let kind = match self.kind {
            MachineType::Q35 => "q35",
            MachineType::Pc => "pc",
        };
        push(argv, "-machine", kind);
        match self.accel {
            Accel::Kvm => {
                push(argv, "-accel", "kvm");
                push(argv, "-cpu", "host");
            }
            Accel::Tcg => {
                push(argv, "-accel", format!("tcg,tb-size={}", self.tcg_translation_cache_mib));
                if self.cpu_model == CpuModel::HostModel {
                    push(argv, "-cpu", "max");
                }
            }
        }
        if let Some(uuid) = &self.uuid {
            push(argv, "-uuid", uuid);
        }
    }
}

pub struct Smp {
    pub cpus: u32,
}

impl QemuArg for Smp {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-smp", self.cpus.to_string());
    }
}

/// Guest RAM; placed on host NUMA nodes, it is one backend per node bound there
/// (`policy=bind`: the guest's pages never come from another node). One node: the
/// machine's RAM is that backend. Several: one guest NUMA node each, with its vCPUs.
pub struct Memory<'a> {
    pub bytes: u64,
    pub nodes: &'a [crate::placement::NodePlacement],
}

impl QemuArg for Memory<'_> {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-m", format!("{}M", self.bytes.div_ceil(1 << 20)));
        for (index, node) in self.nodes.iter().enumerate() {
            let id = format!("ram-node{index}");
            push(
                argv,
                "-object",
                format!("memory-backend-ram,id={id},size={},host-nodes={},policy=bind", node.memory_bytes, node.node),
            );
            if self.nodes.len() == 1 {
                push(argv, "-machine", format!("memory-backend={id}"));
            } else {
                // A node given memory but no vCPU is a memory-only guest node (`cpus=` of
                // an empty range would be refused).
                let cpus = match node.vcpus.is_empty() {
                    true => String::new(),
                    false => format!("cpus={}-{},", node.vcpus.start, node.vcpus.end - 1),
                };
                push(argv, "-numa", format!("node,nodeid={index},{cpus}memdev={id}"));
            }
        }
    }
}

/// The QMP control channel: one end of a socketpair whose other end the shim keeps,
/// handed to QEMU as descriptor `fd`: connected before QEMU starts, no socket file.
pub struct QmpSocket {
    pub fd: i32,
}

impl QemuArg for QmpSocket {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-chardev", format!("socket,id=qmp,fd={},server=off", self.fd));
        push(argv, "-mon", "chardev=qmp,mode=control");
    }
}

/// The first serial port, wired to the slave of the pty the shim owns, handed in as
/// descriptor `fd` (QEMU opens it as `/dev/fdset/N`, needing no access to /dev/pts).
pub struct SerialConsole {
    pub fd: i32,
}

const CONSOLE_FDSET: u32 = 3;

impl QemuArg for SerialConsole {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-add-fd", format!("fd={},set={CONSOLE_FDSET},opaque=console", self.fd));
        push(argv, "-chardev", format!("serial,id=console,path=/dev/fdset/{CONSOLE_FDSET}"));
        push(argv, "-serial", "chardev:console");
    }
}

/// The guest agent's channel: a virtio-serial port named `org.qemu.guest_agent.0` (the
/// name qemu-ga and its udev rules look for), whose host end is one end of a socketpair
/// the shim keeps the other end of, handed in as descriptor `fd`.
pub struct AgentChannel {
    pub fd: i32,
}

impl QemuArg for AgentChannel {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-chardev", format!("socket,id=agent,fd={},server=off", self.fd));
        push(argv, "-device", "virtio-serial-pci,id=agent-serial");
        push(argv, "-device", "virtserialport,bus=agent-serial.0,chardev=agent,name=org.qemu.guest_agent.0");
    }
}

/// Guest panics reach QEMU through pvpanic; QEMU pauses the guest and reports
/// GUEST_PANICKED so the shim can end the task with a failure status.
pub struct PanicDevice;

impl QemuArg for PanicDevice {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-device", "pvpanic");
        push(argv, "-action", "panic=pause");
    }
}

/// The root disk: the image opened read-only as the backing node, under a qcow2 overlay
/// that takes every write. Both files reach QEMU as descriptors the shim opened and
/// checked (`-add-fd`, opened by QEMU as `/dev/fdset/N`), so no path can be swapped
/// between the check and QEMU's open. Backings are named explicitly (and the image's is
/// `null`), so no backing file name recorded in a header is ever opened.
pub struct RootDisk {
    pub image_fd: i32,
    pub image_format: DiskFormat,
    pub overlay_fd: i32,
    pub bus: DiskBus,
}

/// fd sets of the root disk's files.
const IMAGE_FDSET: u32 = 1;
const OVERLAY_FDSET: u32 = 2;

impl QemuArg for RootDisk {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-add-fd", format!("fd={},set={IMAGE_FDSET},opaque=image", self.image_fd));
        push(argv, "-add-fd", format!("fd={},set={OVERLAY_FDSET},opaque=overlay", self.overlay_fd));
        let nodes = [
            json!({"driver": "file", "node-name": "image-file", "filename": format!("/dev/fdset/{IMAGE_FDSET}"),
                   "read-only": true}),
            match self.image_format {
                DiskFormat::Qcow2 => json!({"driver": "qcow2", "node-name": "image", "file": "image-file",
                                             "read-only": true, "backing": null}),
                DiskFormat::Raw => json!({"driver": "raw", "node-name": "image", "file": "image-file",
                                           "read-only": true}),
            },
            json!({"driver": "file", "node-name": "overlay-file", "filename": format!("/dev/fdset/{OVERLAY_FDSET}")}),
            json!({"driver": "qcow2", "node-name": "root", "file": "overlay-file", "backing": "image"}),
        ];
        for node in nodes {
            push(argv, "-blockdev", node.to_string());
        }
        match self.bus {
            DiskBus::VirtioBlk => push(argv, "-device", "virtio-blk-pci,drive=root,id=root-disk,bootindex=1"),
            DiskBus::VirtioScsi => {
                push(argv, "-device", "virtio-scsi-pci,id=scsi0");
                push(argv, "-device", "scsi-hd,drive=root,bus=scsi0.0,id=root-disk,bootindex=1");
            }
        }
    }
}

/// The seed: a small vfat or ISO 9660 image the shim wrote, read-only to the guest,
/// handed in as descriptor `fd`.
pub struct SeedDisk {
    pub fd: i32,
}

const SEED_FDSET: u32 = 4;

impl QemuArg for SeedDisk {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        push(argv, "-add-fd", format!("fd={},set={SEED_FDSET},opaque=seed", self.fd));
        let nodes = [
            json!({"driver": "file", "node-name": "seed-file", "filename": format!("/dev/fdset/{SEED_FDSET}"),
                   "read-only": true}),
            json!({"driver": "raw", "node-name": "seed", "file": "seed-file", "read-only": true}),
        ];
        for node in nodes {
            push(argv, "-blockdev", node.to_string());
        }
        push(argv, "-device", "virtio-blk-pci,drive=seed,id=seed-disk");
    }
}

/// Empty PCIe root ports on q35's root complex (which itself takes no hotplug), for
/// NICs and the seed added before the guest first runs.
pub struct HotplugPorts {
    pub count: usize,
}

impl HotplugPorts {
    pub fn id(n: usize) -> String {
        format!("hotplug{n}")
    }
}

impl QemuArg for HotplugPorts {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        for n in 0..self.count {
            // Chassis numbers must be unique per port; 0 is the root complex's.
            push(argv, "-device", format!("pcie-root-port,id={},bus=pcie.0,chassis={}", Self::id(n), n + 1));
        }
    }
}

/// One NIC on a macvtap: its queues' descriptors (and vhost-net's, when the host has
/// it), the pod interface's MAC and MTU. The descriptors carry IFF_VNET_HDR, which QEMU
/// finds itself and then enables the offloads the guest negotiates; `vnet_hdr=` is not
/// given (QEMU refuses it beside `fds=`).
pub struct Nic {
    /// Index among the VM's NICs: names its netdev and device.
    pub index: usize,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub queue_fds: Vec<i32>,
    /// Empty without vhost-net; else one per queue.
    pub vhost_fds: Vec<i32>,
}

/// MSI-X vectors a multiqueue virtio-net NIC needs: one per queue each way, one for
/// config changes, one for the control queue. `None`: one queue, no multiqueue.
pub fn multiqueue_vectors(queues: usize) -> Option<usize> {
    (queues > 1).then_some(2 * queues + 2)
}

fn fd_list(fds: &[i32]) -> String {
    // QEMU splits fds= on ':' (',' would end the option).
    fds.iter().map(i32::to_string).collect::<Vec<_>>().join(":")
}

impl QemuArg for Nic {
    fn push_args(&self, argv: &mut Vec<OsString>) {
        let id = format!("net{}", self.index);
        let mut netdev = format!("tap,id={id}");
        let queues = self.queue_fds.len();
        if queues == 1 {
            netdev.push_str(&format!(",fd={}", self.queue_fds[0]));
        } else {
            netdev.push_str(&format!(",fds={}", fd_list(&self.queue_fds)));
        }
        match self.vhost_fds.as_slice() {
            [] => netdev.push_str(",vhost=off"),
            [one] if queues == 1 => netdev.push_str(&format!(",vhost=on,vhostfd={one}")),
            many => netdev.push_str(&format!(",vhost=on,vhostfds={}", fd_list(many))),
        }
        push(argv, "-netdev", netdev);
        let mac = crate::seed::mac_text(&self.mac);
        let mut device = format!("virtio-net-pci,netdev={id},id=nic{},mac={mac},host_mtu={}", self.index, self.mtu);
        if let Some(vectors) = multiqueue_vectors(queues) {
            device.push_str(&format!(",mq=on,vectors={vectors}"));
        }
        push(argv, "-device", device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(arg: &dyn QemuArg) -> Vec<String> {
        let mut argv = Vec::new();
        arg.push_args(&mut argv);
        argv.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn commas_are_doubled() {
        assert_eq!(escape("a,b"), "a,,b");
        let console = render(&SerialConsole { fd: 6 });
        assert_eq!(
            console,
            [
                "-add-fd",
                "fd=6,set=3,opaque=console",
                "-chardev",
                "serial,id=console,path=/dev/fdset/3",
                "-serial",
                "chardev:console"
            ]
        );
        let qmp = render(&QmpSocket { fd: 3 });
        assert_eq!(qmp[1], "socket,id=qmp,fd=3,server=off");
        let base = render(&BaseFlags { name: "evil,id=x" });
        assert!(base.contains(&"guest=evil,,id=x,debug-threads=on".to_string()));
    }

    #[test]
    fn base_holds_cpus_and_has_no_defaults() {
        let base = render(&BaseFlags { name: "vm1" });
        for flag in ["-nodefaults", "-no-user-config", "-S"] {
            assert!(base.contains(&flag.to_string()), "{flag} missing in {base:?}");
        }
    }

    #[test]
    fn machine_and_accel() {
        let machine = |kind, accel, cpu_model, uuid: Option<&str>| Machine {
            kind,
            accel,
            tcg_translation_cache_mib: 64,
            cpu_model,
            uuid: uuid.map(str::to_string),
        };
        let tcg = render(&machine(MachineType::Q35, Accel::Tcg, CpuModel::Default, None));
        assert_eq!(tcg, ["-machine", "q35", "-accel", "tcg,tb-size=64"]);
        let kvm = render(&machine(MachineType::Pc, Accel::Kvm, CpuModel::HostModel, None));
        assert_eq!(kvm, ["-machine", "pc", "-accel", "kvm", "-cpu", "host"]);
        let tcg_host = render(&machine(
            MachineType::Q35,
            Accel::Tcg,
            CpuModel::HostModel,
            Some("53e1d0f4-3b7a-4c1e-9c5d-2a6b8f0e1d2c"),
        ));
        assert_eq!(
            tcg_host,
            [
                "-machine",
                "q35",
                "-accel",
                "tcg,tb-size=64",
                "-cpu",
                "max",
                "-uuid",
                "53e1d0f4-3b7a-4c1e-9c5d-2a6b8f0e1d2c"
            ]
        );
    }

    #[test]
    fn memory_in_mib_rounded_up() {
        assert_eq!(render(&Memory { bytes: 256 << 20, nodes: &[] }), ["-m", "256M"]);
        assert_eq!(render(&Memory { bytes: (256 << 20) + 1, nodes: &[] }), ["-m", "257M"]);
    }

    #[test]
    fn placed_memory_is_bound_to_its_nodes() {
        let node = |node, memory_bytes, vcpus| crate::placement::NodePlacement {
            node,
            cpus: "0-3".parse().unwrap(),
            memory_bytes,
            vcpus,
        };
        assert_eq!(
            render(&Memory { bytes: 512 << 20, nodes: &[node(1, 512 << 20, 0..2)] }),
            [
                "-m",
                "512M",
                "-object",
                "memory-backend-ram,id=ram-node0,size=536870912,host-nodes=1,policy=bind",
                "-machine",
                "memory-backend=ram-node0"
            ]
        );
        let memory_only = render(&Memory { bytes: 3 << 30, nodes: &[node(0, 2 << 30, 0..1), node(1, 1 << 30, 1..1)] });
        assert_eq!(memory_only[5], "node,nodeid=0,cpus=0-0,memdev=ram-node0");
        assert_eq!(memory_only[9], "node,nodeid=1,memdev=ram-node1");
        let spanning = render(&Memory { bytes: 3 << 30, nodes: &[node(2, 2 << 30, 0..4), node(3, 1 << 30, 4..6)] });
        assert_eq!(
            spanning[2..],
            [
                "-object",
                "memory-backend-ram,id=ram-node0,size=2147483648,host-nodes=2,policy=bind",
                "-numa",
                "node,nodeid=0,cpus=0-3,memdev=ram-node0",
                "-object",
                "memory-backend-ram,id=ram-node1,size=1073741824,host-nodes=3,policy=bind",
                "-numa",
                "node,nodeid=1,cpus=4-5,memdev=ram-node1"
            ]
        );
    }

    #[test]
    fn root_disk_is_opened_from_descriptors_and_names_its_backing_explicitly() {
        let argv =
            render(&RootDisk { image_fd: 4, image_format: DiskFormat::Qcow2, overlay_fd: 5, bus: DiskBus::VirtioBlk });
        let fdsets: Vec<&String> = argv.chunks(2).filter(|c| c[0] == "-add-fd").map(|c| &c[1]).collect();
        assert_eq!(fdsets, ["fd=4,set=1,opaque=image", "fd=5,set=2,opaque=overlay"]);
        let blockdevs: Vec<serde_json::Value> =
            argv.chunks(2).filter(|c| c[0] == "-blockdev").map(|c| serde_json::from_str(&c[1]).unwrap()).collect();
        assert_eq!(blockdevs.len(), 4);
        assert_eq!(blockdevs[0]["filename"], "/dev/fdset/1");
        assert_eq!(blockdevs[0]["read-only"], true);
        assert_eq!(blockdevs[1]["driver"], "qcow2");
        assert_eq!(blockdevs[1]["read-only"], true);
        assert!(
            blockdevs[1]["backing"].is_null() && blockdevs[1].get("backing").is_some(),
            "image must not follow a backing file"
        );
        assert_eq!(blockdevs[2]["filename"], "/dev/fdset/2");
        assert_eq!(blockdevs[3]["backing"], "image");
        assert_eq!(argv.last().unwrap(), "virtio-blk-pci,drive=root,id=root-disk,bootindex=1");
        let raw =
            render(&RootDisk { image_fd: 4, image_format: DiskFormat::Raw, overlay_fd: 5, bus: DiskBus::VirtioScsi });
        assert!(raw.iter().any(|a| a.contains(r#""driver":"raw""#)), "{raw:?}");
        assert_eq!(
            raw[raw.len() - 4..],
            [
                "-device",
                "virtio-scsi-pci,id=scsi0",
                "-device",
                "scsi-hd,drive=root,bus=scsi0.0,id=root-disk,bootindex=1"
            ]
        );
    }

    #[test]
    fn the_seed_is_read_only() {
        let argv = render(&SeedDisk { fd: 7 });
        assert_eq!(argv[..2], ["-add-fd", "fd=7,set=4,opaque=seed"]);
        assert!(argv.iter().filter(|a| a.contains(r#""read-only":true"#)).count() == 2, "{argv:?}");
        assert_eq!(argv.last().unwrap(), "virtio-blk-pci,drive=seed,id=seed-disk");
    }

    #[test]
    fn nics_take_their_queues_and_vhost_descriptors() {
        let mac = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x05];
        let one = render(&Nic { index: 0, mac, mtu: 1450, queue_fds: vec![8], vhost_fds: vec![] });
        assert_eq!(
            one,
            [
                "-netdev",
                "tap,id=net0,fd=8,vhost=off",
                "-device",
                "virtio-net-pci,netdev=net0,id=nic0,mac=02:42:0a:58:00:05,host_mtu=1450"
            ]
        );
        let one_vhost = render(&Nic { index: 0, mac, mtu: 1500, queue_fds: vec![8], vhost_fds: vec![9] });
        assert_eq!(one_vhost[1], "tap,id=net0,fd=8,vhost=on,vhostfd=9");
        let multi = render(&Nic { index: 1, mac, mtu: 9000, queue_fds: vec![8, 9, 10], vhost_fds: vec![11, 12, 13] });
        assert_eq!(multi[1], "tap,id=net1,fds=8:9:10,vhost=on,vhostfds=11:12:13");
        assert_eq!(multi[3], "virtio-net-pci,netdev=net1,id=nic1,mac=02:42:0a:58:00:05,host_mtu=9000,mq=on,vectors=8");
        let multi_no_vhost = render(&Nic { index: 0, mac, mtu: 1500, queue_fds: vec![8, 9], vhost_fds: vec![] });
        assert_eq!(multi_no_vhost[1], "tap,id=net0,fds=8:9,vhost=off");
        assert!(!multi_no_vhost.iter().any(|a| a.contains("vnet_hdr")));
    }
}
