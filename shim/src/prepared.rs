//! What every kind of task starts from once Create has begun: its config and spec, its
//! journal, and its image mounted.

use std::path::PathBuf;

use crate::config::Config;
use crate::console::Stdio;
use crate::host::journal::Journal;

/// What every kind of task starts from: its config and spec, its journal, and its image
/// mounted (the mount the journal's first entry).
pub struct Prepared {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    pub config: Config,
    pub spec: oci_spec::runtime::Spec,
    pub rootfs: PathBuf,
    pub stdio: Stdio,
    pub journal: Journal,
}
