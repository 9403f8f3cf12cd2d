//! containerd-shim-vm: a containerd shim v2 that runs each container as a QEMU VM (and
//! the pod's sandbox and containers whose image is not a VM through runc).
//!
//! Data path: OCI spec + annotations + config → `plan` (pure, validated) → `qemu` argv
//! (pure) → `host` resources taken through one journal → `vm` launch → QMP session →
//! events → `lifecycle` state → `service` (containerd's Task API and events).

pub mod accel;
pub mod config;
pub mod console;
pub mod disk;
pub mod doctor;
pub mod host;
pub mod info;
pub mod kind;
pub mod lifecycle;
pub mod logger;
pub mod logging;
pub mod ordinary;
pub mod placement;
pub mod plan;
pub mod prepared;
pub mod qemu;
pub mod quantity;
pub mod runtime_options;
pub mod seed;
pub mod service;
#[cfg(test)]
mod test_support;
pub mod vm;

pub const RUNTIME_ID: &str = "io.containerd.vm.v1";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("SHIM_GIT_COMMIT");
/// This very binary, for the children the shim runs of itself (the KVM probe, the seed
/// writer): the file on disk may be a newer shim an upgrade put there since, which knows
/// nothing of this one's protocol.
pub const SELF_EXE: &str = "/proc/self/exe";
