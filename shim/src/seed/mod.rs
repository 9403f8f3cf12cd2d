//! The seed disk: a small image, attached read-only, from which cloud-init in the guest
//! reads its instance data, above all the pod's network identity (the pod IP moves from the
//! pod's veth into the guest, configured statically, or by the shim's DHCP answers where the
//! plan asks for them).
//!
//! Two layers, both pure (no host access but the image writer's caller-given `disk`):
//! - the image writers, [`write_vfat`] and [`write_iso`], turn a list of [`SeedFile`]s
//!   (paths may nest: `openstack/latest/...`) into a file system with a volume label;
//! - the datasources' renderers: NoCloud's (`meta-data`, `user-data`, `network-config`,
//!   `vendor-data`, label `cidata`) and the OpenStack config drive's (`openstack/latest/...`,
//!   label `config-2`), which [`Seed`] puts together as the plan asks.

mod config_drive;
mod iso;
mod network;
mod nocloud;
#[cfg(test)]
mod tests;
mod user_data;
mod vfat;

use std::io::{self, Read, Seek, Write};

use serde::{Deserialize, Serialize};

pub use iso::write_iso;
pub use network::{mac_text, Dns, GuestInterface, GuestNetwork, IpPrefix, Route};
pub use nocloud::{quote as yaml_quote, render_meta_data, render_network_config, EMPTY_USER_DATA};
pub use user_data::{environment_file, render_meta_data_with, render_user_data, render_vendor_data, ENVIRONMENT_FILE};
pub use vfat::{write_vfat, SeedFile, MAX_CONTENTS};

use crate::plan::guest::{CloudInit, GuestConfig, SeedFormat};

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

    /// What the seed writer, a child process (`host::seed_writer`), said.
    #[error("{0}")]
    Child(String),
}

/// A seed: the datasource and image format the guest's plan asks for, with the instance's
/// identity and network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// cloud-init runs its once-per-instance steps again when this changes. It names a
    /// directory in the guest (`/var/lib/cloud/instances/<id>`), hence the strict charset.
    pub instance_id: String,
    pub hostname: String,
    pub network: Option<GuestNetwork>,
    pub guest: GuestConfig,
}

impl Seed {
    /// Volume label NoCloud looks for (cloud-init matches it in either case).
    pub const NOCLOUD_LABEL: &'static str = "cidata";
    /// Volume label of a config drive, which cloud-init and cloudbase-init look for.
    pub const CONFIG_DRIVE_LABEL: &'static str = "config-2";

    /// The seed's files, after checking the instance id and the network; none with
    /// `cloud-init: none`.
    pub fn files(&self) -> Result<Vec<SeedFile>, SeedError> {
        if !valid_instance_id(&self.instance_id) {
            return Err(SeedError::InstanceId(self.instance_id.clone()));
        }
        if let Some(network) = &self.network {
            network.validate()?;
        }
        let guest = &self.guest;
        let user_data = render_user_data(guest);
        let vendor_data = render_vendor_data(guest, self.network.is_some());
        Ok(match guest.cloud_init {
            CloudInit::None => Vec::new(),
            CloudInit::NoCloud => {
                let meta_data = render_meta_data_with(
                    &self.instance_id,
                    &self.hostname,
                    &guest.ssh_keys,
                    guest.meta_data.as_deref(),
                );
                let mut files = vec![SeedFile::new("meta-data", meta_data), SeedFile::new("user-data", user_data)];
                if let Some(network) = &self.network {
                    files.push(SeedFile::new("network-config", render_network_config(network)));
                }
                if let Some(vendor_data) = vendor_data {
                    files.push(SeedFile::new("vendor-data", vendor_data));
                }
                files
            }
            CloudInit::ConfigDrive => {
                let meta_data = config_drive::render_meta_data(
                    &self.instance_id,
                    &self.hostname,
                    &guest.ssh_keys,
                    guest.meta_data.as_deref(),
                );
                let mut files = vec![
                    SeedFile::new(config_drive::META_DATA, meta_data),
                    SeedFile::new(config_drive::USER_DATA, user_data),
                ];
                if let Some(network) = &self.network {
                    files.push(SeedFile::new(config_drive::NETWORK_DATA, config_drive::render_network_data(network)?));
                }
                if let Some(vendor_data) = vendor_data {
                    files
                        .push(SeedFile::new(config_drive::VENDOR_DATA, config_drive::render_vendor_data(&vendor_data)));
                }
                files
            }
        })
    }

    /// The image's volume label.
    pub fn label(&self) -> &'static str {
        match self.guest.cloud_init {
            CloudInit::ConfigDrive => Self::CONFIG_DRIVE_LABEL,
            CloudInit::NoCloud | CloudInit::None => Self::NOCLOUD_LABEL,
        }
    }

    /// Writes the seed image into an empty `disk`; returns its size in bytes.
    pub fn write_image<D: Read + Write + Seek>(&self, disk: D) -> Result<u64, SeedError> {
        let files = self.files()?;
        match self.guest.seed_format {
            SeedFormat::Vfat => write_vfat(&files, self.label(), disk),
            SeedFormat::Iso => write_iso(&files, self.label(), disk),
        }
    }
}

fn valid_instance_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
