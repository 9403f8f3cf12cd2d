//! QEMU's command line: a pure function of the VM plan and the few facts only the host
//! knows (the accelerator it can run, the console's tty). Every file QEMU uses arrives
//! as a descriptor at a fixed number.

pub mod args;

use std::ffi::OsString;

use args::{BaseFlags, Machine, Memory, PanicDevice, QemuArg, QmpSocket, RootDisk, Sandbox, SerialConsole, Smp};

use crate::accel::Accel;
use crate::disk::format::DiskFormat;
use crate::plan::VmPlan;

/// The descriptor QEMU finds its end of the QMP socketpair on.
pub const QMP_FD: i32 = 3;
/// The descriptor of the checked image file (read-only).
pub const IMAGE_FD: i32 = 4;
/// The descriptor of the overlay that takes the guest's writes (read-write).
pub const OVERLAY_FD: i32 = 5;
/// The descriptor of the console pty's slave.
pub const CONSOLE_FD: i32 = 6;

/// What the host decided for the VM at launch.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub accel: Accel,
    pub image_format: DiskFormat,
}

/// The argument vector (without the binary).
pub fn argv(plan: &VmPlan, host: &HostFacts) -> Vec<OsString> {
    let pieces: [&dyn QemuArg; 9] = [
        &BaseFlags { name: &plan.name },
        &Sandbox,
        &Machine { kind: plan.machine, accel: host.accel, tcg_translation_cache_mib: plan.tcg_translation_cache_mib },
        &Smp { cpus: plan.cpus },
        &Memory { bytes: plan.memory_bytes },
        &QmpSocket { fd: QMP_FD },
        &SerialConsole { fd: CONSOLE_FD },
        &PanicDevice,
        &RootDisk { image_fd: IMAGE_FD, image_format: host.image_format, overlay_fd: OVERLAY_FD },
    ];
    let mut argv = Vec::new();
    for piece in pieces {
        piece.push_args(&mut argv);
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{AccelSetting, DiskRequest, MachineType};

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
            terminal: false,
            cgroup: None,
        };
        let host = HostFacts { accel: Accel::Tcg, image_format: DiskFormat::Qcow2 };
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
    }
}
