//! QEMU: the command line for one VM, built from typed pieces.

pub mod args;

use std::ffi::OsString;
use std::path::PathBuf;

/// The descriptor QEMU finds its listening QMP socket on.
pub const QMP_FD: i32 = 3;

use args::{BaseFlags, Machine, Memory, PanicDevice, QemuArg, QmpSocket, RootDisk, SerialConsole, Smp};

/// Everything QEMU needs to start one VM.
pub struct LaunchSpec {
    pub name: String,
    pub machine: Machine,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub console_tty: PathBuf,
    pub root_disk: RootDisk,
}

impl LaunchSpec {
    /// The argument vector (without the binary).
    pub fn argv(&self) -> Vec<OsString> {
        let pieces: [&dyn QemuArg; 8] = [
            &BaseFlags { name: &self.name },
            &self.machine,
            &Smp { cpus: self.cpus },
            &Memory { bytes: self.memory_bytes },
            &QmpSocket { fd: QMP_FD },
            &SerialConsole { tty: self.console_tty.clone() },
            &PanicDevice,
            &self.root_disk,
        ];
        let mut argv = Vec::new();
        for piece in pieces {
            piece.push_args(&mut argv);
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;
    use crate::config::MachineType;
    use args::ImageFormat;

    #[test]
    fn full_argv_has_each_piece_once() {
        let spec = LaunchSpec {
            name: "vm1".into(),
            machine: Machine { kind: MachineType::Q35, accel: Accel::Tcg, tcg_translation_cache_mib: 64 },
            cpus: 2,
            memory_bytes: 256 << 20,
            console_tty: "/dev/pts/7".into(),
            root_disk: RootDisk {
                image: "/r/disk/x.qcow2".into(),
                image_format: ImageFormat::Qcow2,
                overlay: "/r/o.qcow2".into(),
            },
        };
        let argv: Vec<String> = spec.argv().into_iter().map(|a| a.into_string().unwrap()).collect();
        let count = |flag: &str| argv.iter().filter(|a| *a == flag).count();
        assert_eq!(count("-S"), 1);
        assert_eq!(count("-smp"), 1);
        assert_eq!(count("-m"), 1);
        assert_eq!(count("-blockdev"), 4);
        assert_eq!(count("-serial"), 1);
        assert!(argv.windows(2).any(|w| w[0] == "-smp" && w[1] == "2"));
        assert!(argv.windows(2).any(|w| w[0] == "-chardev" && w[1] == "serial,id=console,path=/dev/pts/7"));
    }
}
