//! QEMU's command line: a pure function of the VM plan and the few facts only the host
//! knows (the accelerator it can run, the console's tty). Every file QEMU uses arrives
//! as a descriptor at a fixed number.

pub mod args;

use std::ffi::OsString;

use args::{
    AgentChannel, BaseFlags, HotplugPorts, Machine, Memory, Nic, PanicDevice, QemuArg, QmpSocket, RootDisk, Sandbox,
    SeedDisk, SerialConsole, Smp,
};

use crate::accel::Accel;
use crate::disk::format::DiskFormat;
use crate::plan::{MachineType, VmPlan};

/// The descriptor QEMU finds its end of the QMP socketpair on.
pub const QMP_FD: i32 = 3;
/// The descriptor of the checked image file (read-only).
pub const IMAGE_FD: i32 = 4;
/// The descriptor of the overlay that takes the guest's writes (read-write).
pub const OVERLAY_FD: i32 = 5;
/// The descriptor of the console pty's slave.
pub const CONSOLE_FD: i32 = 6;
/// The descriptor of the NoCloud seed image (read-only).
pub const SEED_FD: i32 = 7;
/// The descriptor of the host end of the guest agent's channel (a socketpair).
pub const AGENT_FD: i32 = 8;
/// The first of the NICs' queue and vhost descriptors, numbered on from here.
pub const FIRST_NIC_FD: i32 = 9;

/// What the host decided for the VM at launch.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub accel: Accel,
    pub image_format: DiskFormat,
    /// Whether a seed image is at SEED_FD.
    pub seed: bool,
    pub nics: Vec<NicFacts>,
    /// Empty PCIe ports for devices added before the guest runs (q35; `pc` takes
    /// them on its own bus).
    pub hotplug_ports: usize,
    /// The host NUMA node(s) the VM was given (none: the kernel decides).
    pub placement: crate::placement::Placement,
}

/// Ports a VM whose network comes after Create gets: the seed and up to three NICs.
pub const LATE_HOTPLUG_PORTS: usize = 4;

/// Where the devices added before the guest runs go: the hotplug ports on q35; on
/// `pc`, its own bus (`None`).
pub fn hotplug_buses(machine: MachineType, ports: usize) -> Vec<Option<String>> {
    (0..ports)
        .map(|n| match machine {
            MachineType::Q35 => Some(HotplugPorts::id(n)),
            MachineType::Pc => None,
        })
        .collect()
}

/// A NIC as the host made it: its MAC and MTU, how many queues, whether vhost-net.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicFacts {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub queues: usize,
    pub vhost: bool,
}

/// The descriptor numbers of each NIC's queues and vhost-net descriptors, in the
/// order `argv` uses them: from FIRST_NIC_FD on, NIC by NIC, queues then vhost.
pub fn nic_fds(nics: &[NicFacts]) -> Vec<(Vec<i32>, Vec<i32>)> {
    let mut next = FIRST_NIC_FD;
    let mut take = |n: usize| -> Vec<i32> {
        let fds: Vec<i32> = (next..next + n as i32).collect();
        next += n as i32;
        fds
    };
    nics.iter().map(|nic| (take(nic.queues), if nic.vhost { take(nic.queues) } else { Vec::new() })).collect()
}

/// The argument vector (without the binary).
pub fn argv(plan: &VmPlan, host: &HostFacts) -> Vec<OsString> {
    let pieces: [&dyn QemuArg; 10] = [
        &BaseFlags { name: &plan.name },
        &Sandbox,
        &Machine {
            kind: plan.machine,
            accel: host.accel,
            tcg_translation_cache_mib: plan.tcg_translation_cache_mib,
            cpu_model: plan.hardware.cpu_model,
            uuid: plan.hardware.system_uuid.clone(),
        },
        &Smp { cpus: plan.cpus },
        &Memory { bytes: plan.memory_bytes, nodes: &host.placement.nodes },
        &QmpSocket { fd: QMP_FD },
        &SerialConsole { fd: CONSOLE_FD },
        &AgentChannel { fd: AGENT_FD },
        &PanicDevice,
        &RootDisk {
            image_fd: IMAGE_FD,
            image_format: host.image_format,
            overlay_fd: OVERLAY_FD,
            bus: plan.hardware.disk_bus,
        },
    ];
    let mut argv = Vec::new();
    for piece in pieces {
        piece.push_args(&mut argv);
    }
    if host.seed {
        SeedDisk { fd: SEED_FD }.push_args(&mut argv);
    }
    if plan.machine == MachineType::Q35 {
        HotplugPorts { count: host.hotplug_ports }.push_args(&mut argv);
    }
    for (index, (nic, (queue_fds, vhost_fds))) in host.nics.iter().zip(nic_fds(&host.nics)).enumerate() {
        Nic { index, mac: nic.mac, mtu: nic.mtu, queue_fds, vhost_fds }.push_args(&mut argv);
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{AccelSetting, DiskRequest};

    #[test]
    fn full_argv_has_each_piece_once() {
        let plan = VmPlan {
            name: "vm1".into(),
            machine: MachineType::Q35,
            accel: AccelSetting::Auto,
            tcg_translation_cache_mib: 64,
            cpus: 2,
            memory_bytes: 256 << 20,
            root_disk: DiskRequest::ImageDiskDir,
            root_size_bytes: None,
            hardware: Default::default(),
            terminal: false,
            cgroup: None,
            network: crate::plan::NetworkPlan::None { own_namespace: false },
            hostname: "vm1".into(),
            placement: Default::default(),
            guest: Default::default(),
            ignored_annotations: Vec::new(),
        };
        let host = HostFacts {
            accel: Accel::Tcg,
            image_format: DiskFormat::Qcow2,
            seed: false,
            nics: Vec::new(),
            hotplug_ports: 0,
            placement: crate::placement::Placement::none(),
        };
        let argv: Vec<String> = argv(&plan, &host).into_iter().map(|a| a.into_string().unwrap()).collect();
        let count = |flag: &str| argv.iter().filter(|a| *a == flag).count();
        assert_eq!(count("-S"), 1);
        assert_eq!(count("-smp"), 1);
        assert_eq!(count("-m"), 1);
        assert_eq!(count("-blockdev"), 4);
        assert_eq!(count("-serial"), 1);
        assert!(argv.windows(2).any(|w| w[0] == "-sandbox" && w[1].starts_with("on,") && w[1].contains("spawn=deny")));
        assert!(argv.windows(2).any(|w| w[0] == "-smp" && w[1] == "2"));
        assert!(argv.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg,tb-size=64"));
        assert!(argv.windows(2).any(|w| w[0] == "-chardev" && w[1] == "serial,id=console,path=/dev/fdset/3"));
        assert_eq!(count("-add-fd"), 3);
        assert!(argv.windows(2).any(|w| w[0] == "-chardev" && w[1] == "socket,id=qmp,fd=3,server=off"));
        assert_eq!(count("-netdev"), 0, "no network: no NIC");
        assert!(argv.windows(2).any(|w| w[0] == "-chardev" && w[1] == "socket,id=agent,fd=8,server=off"));
        assert!(argv.iter().any(|a| a.contains("name=org.qemu.guest_agent.0")));
    }

    #[test]
    fn nic_descriptors_are_numbered_nic_by_nic() {
        let nic = |queues, vhost| NicFacts { mac: [2, 0, 0, 0, 0, 1], mtu: 1500, queues, vhost };
        assert_eq!(nic_fds(&[nic(1, false)]), [(vec![9], vec![])]);
        assert_eq!(nic_fds(&[nic(2, true), nic(1, false)]), [(vec![9, 10], vec![11, 12]), (vec![13], vec![])]);
    }
}
