//! containerd-shim-vm: a containerd shim v2 that runs each container as a QEMU VM.
//!
//! Data path: OCI spec + annotations + config → `plan` (pure, validated) → `qemu`
//! argv (pure) → `vm` launch → QMP session → events → `task` state → containerd events.

pub mod accel;
pub mod cgroup;
pub mod config;
pub mod console;
pub mod disk;
pub mod disk_format;
pub mod info;
pub mod logger;
pub mod logging;
pub mod overlay_image;
pub mod plan;
pub mod qemu;
pub mod quantity;
pub mod runtime_options;
pub mod service;
pub mod task;
#[cfg(test)]
mod test_support;
pub mod vm;

pub const RUNTIME_ID: &str = "io.containerd.vm.v1";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("SHIM_GIT_COMMIT");
