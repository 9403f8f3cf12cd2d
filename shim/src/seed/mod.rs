//! The seed disk: a small vfat image, attached read-only, from which cloud-init in the guest
//! reads its instance data, above all the pod's network identity (the pod IP moves from the
//! pod's veth into the guest, configured statically: there is no DHCP).
//!
//! Two layers, both pure (no host access but the image writer's caller-given `disk`):
//! - [`write_vfat`] turns a list of [`SeedFile`]s (paths may nest: `openstack/latest/...`)
//!   into a FAT image with a volume label;
//! - the NoCloud renderers ([`render_meta_data`], [`render_network_config`]) and
//!   [`NoCloudSeed`], which puts them together under the label `cidata`.
//!
//! A config drive (label `config-2`, `openstack/latest/...`) or user-data and vendor-data
//! are further lists of [`SeedFile`]s for the same writer.

mod network;
mod nocloud;
#[cfg(test)]
mod tests;
mod user_data;
mod vfat;

use std::io::{self, Read, Seek, Write};

use serde::{Deserialize, Serialize};

pub use network::{mac_text, Dns, GuestInterface, GuestNetwork, IpPrefix, Route};
pub use nocloud::{quote as yaml_quote, render_meta_data, render_network_config, EMPTY_USER_DATA};
pub use user_data::{environment_file, render_meta_data_with, render_user_data, ENVIRONMENT_FILE};
pub use vfat::{write_vfat, SeedFile, MAX_CONTENTS};

/// Why a seed could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("invalid IP prefix {text:?}: {reason}")]
    Prefix { text: String, reason: &'static str },

    #[error("guest network: {0}")]
    Network(String),

    #[error("seed: instance id {0:?} must be 1 to 128 characters from A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'")]
    InstanceId(String),

    #[error("seed image: volume label {0:?} must be 1 to 11 characters from A-Z, a-z, 0-9, '_' and '-'")]
    Label(String),

    #[error("seed image: file path {path:?}: {reason}")]
    Path { path: String, reason: &'static str },

    #[error("seed image: the files need {bytes} bytes, more than the {max} a seed image may hold")]
    TooLarge { bytes: u64, max: u64 },

    #[error("seed image: the disk already holds {0} bytes; the image is written to an empty one")]
    DiskNotEmpty(u64),

    #[error("seed image: {what}: {source}")]
    Io { what: String, source: io::Error },

    #[error("seed image: {0}")]
    Image(String),
}

/// A NoCloud seed (label `cidata`): `meta-data`, `user-data` (the user's and the shim's),
/// and `network-config` when there is a network to configure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoCloudSeed {
    /// cloud-init runs its once-per-instance steps again when this changes. It names a
    /// directory in the guest (`/var/lib/cloud/instances/<id>`), hence the strict charset.
    pub instance_id: String,
    pub hostname: String,
    pub network: Option<GuestNetwork>,
    pub guest: crate::plan::guest::GuestConfig,
}

impl NoCloudSeed {
    /// Volume label NoCloud looks for; cloud-init matches it in either case, the image
    /// carries it upper case as FAT stores it.
    pub const LABEL: &'static str = "cidata";

    /// The seed's files, after checking the instance id and the network.
    pub fn files(&self) -> Result<Vec<SeedFile>, SeedError> {
        if !valid_instance_id(&self.instance_id) {
            return Err(SeedError::InstanceId(self.instance_id.clone()));
        }
        let mut files = vec![
            SeedFile::new(
                "meta-data",
                render_meta_data_with(&self.instance_id, &self.hostname, self.guest.meta_data.as_deref()),
            ),
            SeedFile::new("user-data", render_user_data(&self.guest)),
        ];
        if let Some(network) = &self.network {
            network.validate()?;
            files.push(SeedFile::new("network-config", render_network_config(network)));
            // The same container (same instance id) may start again in a pod with another
            // address: cloud-init applies network-config on every boot only if told so.
            files.push(SeedFile::new("vendor-data", NETWORK_ON_EVERY_BOOT));
        }
        Ok(files)
    }

    /// Writes the seed image into an empty `disk`; returns its size in bytes.
    pub fn write_image<D: Read + Write + Seek>(&self, disk: D) -> Result<u64, SeedError> {
        write_vfat(&self.files()?, Self::LABEL, disk)
    }
}

/// vendor-data that has cloud-init apply network-config at every boot, not only an
/// instance's first (cloud-init 22.4 honours it from the boot after it first reads it).
pub const NETWORK_ON_EVERY_BOOT: &str = "#cloud-config\nupdates:\n  network:\n    when: [boot-new-instance, boot]\n";

fn valid_instance_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
