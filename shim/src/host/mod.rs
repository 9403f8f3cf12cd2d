//! The host resources a task takes, one module each, all taken and released through
//! the task's journal; and what is read of them (cgroup metrics).

pub mod cgroup;
pub mod dhcp;
pub mod hooks;
pub mod journal;
pub mod legacy;
pub mod metrics;
pub mod network;
pub mod oom;
pub mod placement;
pub mod process;
pub mod qemu;
pub mod rootfs;
pub mod runc;
pub mod seed_writer;
pub mod state_dir;
