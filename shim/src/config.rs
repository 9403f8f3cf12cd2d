//! The shim's TOML configuration and where it is found.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub use crate::plan::{AccelSetting, MachineType};
use crate::plan::{Limits, NetworkLimits, MIN_MEMORY_BYTES};
pub use netns::MacvtapMode;

/// The kernel's limit on a macvtap's queues (MAX_TAP_QUEUES).
const MAX_TAP_QUEUES: u32 = 256;
use crate::{placement, quantity};

/// Environment variable naming a config file when containerd sends no ConfigPath.
pub const CONFIG_ENV: &str = "CONTAINERD_SHIM_VM_CONFIG";
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd-shim-vm/config.toml";
/// How a config that came in the runtime options' ConfigBody is named in messages.
pub const OPTIONS_BODY_SOURCE: &str = "<containerd runtime options>";
/// One for the host: every shim (one per pod) must see every other's placements.
pub const DEFAULT_PLACEMENT_LEDGER: &str = "/run/containerd-shim-vm/placements.json";

/// What containerd's runtime options say about the config (runtimeoptions.v1.Options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub path: Option<PathBuf>,
    pub body: Option<String>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("config {path}: {field} = {value:?}: {reason}")]
    Invalid { path: PathBuf, field: &'static str, value: String, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    accel: AccelSetting,
    state_dir: PathBuf,
    qemu: PathBuf,
    /// No longer used (the shim writes its overlay itself); accepted so that configs
    /// written for earlier releases keep working.
    qemu_img: Option<PathBuf>,
    machine: MachineType,
    default_cpus: u32,
    max_cpus: u32,
    default_memory: String,
    max_memory: String,
    memory_overhead: String,
    tcg_translation_cache: String,
    host_disk_dirs: Vec<PathBuf>,
    qemu_user: String,
    macvtap_mode: MacvtapMode,
    max_net_queues: u32,
    non_vm_containers: NonVmContainers,
    runc: PathBuf,
    numa_cpu_overcommit: f64,
    numa_memory_overcommit: f64,
    placement_ledger: PathBuf,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            accel: AccelSetting::Auto,
            state_dir: PathBuf::from("/run/containerd-shim-vm"),
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            qemu_img: None,
            machine: MachineType::Q35,
            default_cpus: 1,
            max_cpus: 240,
            default_memory: "512Mi".into(),
            max_memory: "1Ti".into(),
            memory_overhead: "128Mi".into(),
            tcg_translation_cache: "64Mi".into(),
            host_disk_dirs: Vec::new(),
            qemu_user: crate::host::qemu::DEFAULT_QEMU_USER.into(),
            macvtap_mode: MacvtapMode::Passthru,
            max_net_queues: 8,
            non_vm_containers: NonVmContainers::Run,
            runc: PathBuf::from("runc"),
            numa_cpu_overcommit: placement::Limits::default().cpu_overcommit,
            numa_memory_overcommit: placement::Limits::default().memory_overcommit,
            placement_ledger: PathBuf::from(DEFAULT_PLACEMENT_LEDGER),
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config came from ("defaults" when no file was found).
    pub source: String,
    pub accel: AccelSetting,
    /// Per-VM private directories (QMP socket, QEMU log) live below this.
    pub state_dir: PathBuf,
    pub qemu: PathBuf,
    pub machine: MachineType,
    pub default_cpus: u32,
    pub max_cpus: u32,
    pub default_memory_bytes: u64,
    /// The most guest memory a VM may ask for (annotation, limit or default).
    pub max_memory_bytes: u64,
    /// QEMU's own memory beside guest RAM, counted against the container's memory limit.
    pub memory_overhead_bytes: u64,
    /// TCG's translation cache: QEMU's default (1 GiB) would dwarf a small guest.
    pub tcg_translation_cache_bytes: u64,
    /// Host directories whose files `vm.containerd.io/disk` may name by absolute path.
    pub host_disk_dirs: Vec<PathBuf>,
    /// The user QEMU runs as ("root" to keep the shim's ids).
    pub qemu_user: String,
    /// How a VM's macvtaps share the pod's interfaces, unless annotated otherwise.
    pub macvtap_mode: MacvtapMode,
    /// The most queues a VM's NIC gets (one per vCPU up to this).
    pub max_net_queues: u32,
    /// What becomes of a container whose image carries no disk (an init container, a
    /// sidecar): run by runc as an ordinary container, or refused.
    pub non_vm_containers: NonVmContainers,
    /// The runc binary for the pod's sandbox and ordinary containers (looked up in PATH
    /// unless a path).
    pub runc: PathBuf,
    /// How far the VMs on one NUMA node may exceed it (vCPUs per CPU, memory).
    pub numa_limits: placement::Limits,
    /// The host-wide file every shim records its VMs' placements in.
    pub placement_ledger: PathBuf,
}

/// `non_vm_containers`: whether containers that are not VMs run (the pod sandbox always does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonVmContainers {
    #[default]
    Run,
    Refuse,
}

impl Default for Config {
    fn default() -> Self {
        validate(RawConfig::default(), Path::new("defaults")).expect("built-in defaults are valid")
    }
}

impl Config {
    /// Finds the config: the runtime options' ConfigPath, else their ConfigBody (containerd
    /// 2.x sends the runtime's whole `options` table as TOML when it has no ConfigPath),
    /// else $CONTAINERD_SHIM_VM_CONFIG, else /etc/containerd-shim-vm/config.toml, else the
    /// built-in defaults. A path that is named explicitly must exist; the well-known path
    /// may be absent.
    pub fn find(options: &RuntimeConfig) -> Result<Config, ConfigError> {
        if let Some(path) = options.path.as_deref().filter(|p| !p.as_os_str().is_empty()) {
            return Self::load(path);
        }
        if let Some(body) = options.body.as_deref().filter(|b| !b.trim().is_empty()) {
            return Self::parse_options_body(body);
        }
        if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            return Self::load(Path::new(&path));
        }
        let default_path = Path::new(DEFAULT_CONFIG_PATH);
        if default_path.exists() {
            return Self::load(default_path);
        }
        Ok(Config::default())
    }

    /// The runtime's `options` table as containerd 2.x sends it: the shim's keys, beside
    /// the runtimeoptions fields themselves, which are not the shim's and are left out.
    fn parse_options_body(body: &str) -> Result<Config, ConfigError> {
        let path = Path::new(OPTIONS_BODY_SOURCE);
        let mut table: toml::Table =
            toml::from_str(body).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        for key in ["ConfigPath", "TypeUrl", "ConfigBody"] {
            table.remove(key);
        }
        let raw = RawConfig::deserialize(toml::Value::Table(table))
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        validate(raw, path)
    }

    /// What the VM plan needs of the config.
    pub fn limits(&self) -> Limits {
        Limits {
            accel: self.accel,
            machine: self.machine,
            tcg_translation_cache_bytes: self.tcg_translation_cache_bytes,
            default_cpus: self.default_cpus,
            max_cpus: self.max_cpus,
            default_memory_bytes: self.default_memory_bytes,
            max_memory_bytes: self.max_memory_bytes,
            memory_overhead_bytes: self.memory_overhead_bytes,
            network: NetworkLimits { macvtap_mode: self.macvtap_mode, max_queues: self.max_net_queues },
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        validate(raw, path)
    }
}

fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |field: &'static str, value: String, reason: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        field,
        value,
        reason,
    };
    let bytes = |field: &'static str, value: &str| {
        quantity::parse_bytes(value).map_err(|e| invalid(field, value.to_string(), e.reason.to_string()))
    };
    if raw.max_cpus == 0 {
        return Err(invalid("max_cpus", "0".into(), "must be at least 1".into()));
    }
    if raw.default_cpus == 0 || raw.default_cpus > raw.max_cpus {
        return Err(invalid(
            "default_cpus",
            raw.default_cpus.to_string(),
            format!("must be between 1 and max_cpus ({})", raw.max_cpus),
        ));
    }
    for (field, p) in [("state_dir", &raw.state_dir), ("qemu", &raw.qemu), ("placement_ledger", &raw.placement_ledger)]
    {
        if !p.is_absolute() {
            return Err(invalid(field, p.display().to_string(), "must be an absolute path".into()));
        }
    }
    if let Some(dir) = raw.host_disk_dirs.iter().find(|d| !d.is_absolute()) {
        return Err(invalid("host_disk_dirs", dir.display().to_string(), "must be absolute paths".into()));
    }
    if raw.max_net_queues == 0 || raw.max_net_queues > MAX_TAP_QUEUES {
        return Err(invalid(
            "max_net_queues",
            raw.max_net_queues.to_string(),
            format!("must be between 1 and {MAX_TAP_QUEUES}"),
        ));
    }
    for (field, value) in
        [("numa_cpu_overcommit", raw.numa_cpu_overcommit), ("numa_memory_overcommit", raw.numa_memory_overcommit)]
    {
        if !(value.is_finite() && value > 0.0) {
            return Err(invalid(field, value.to_string(), "must be a number above 0 (1.0: no overcommit)".into()));
        }
    }
    if raw.runc.as_os_str().is_empty() {
        return Err(invalid(
            "runc",
            String::new(),
            "must name the runc binary (a path, or a name looked up in PATH)".into(),
        ));
    }
    if raw.qemu_user.trim().is_empty() {
        return Err(invalid("qemu_user", raw.qemu_user.clone(), "must name a user (or \"root\")".into()));
    }
    if raw.qemu_img.is_some() {
        tracing::warn!(config = %path.display(), "config key qemu_img is no longer used and is ignored");
    }
    let default_memory_bytes = bytes("default_memory", &raw.default_memory)?;
    if default_memory_bytes < MIN_MEMORY_BYTES {
        return Err(invalid(
            "default_memory",
            raw.default_memory.clone(),
            format!("below the minimum {}", quantity::format_bytes(MIN_MEMORY_BYTES)),
        ));
    }
    let max_memory_bytes = bytes("max_memory", &raw.max_memory)?;
    if max_memory_bytes < default_memory_bytes {
        return Err(invalid(
            "max_memory",
            raw.max_memory.clone(),
            format!("below default_memory ({})", raw.default_memory),
        ));
    }
    Ok(Config {
        source: path.display().to_string(),
        accel: raw.accel,
        state_dir: raw.state_dir,
        qemu: raw.qemu,
        machine: raw.machine,
        default_cpus: raw.default_cpus,
        max_cpus: raw.max_cpus,
        default_memory_bytes,
        max_memory_bytes,
        memory_overhead_bytes: bytes("memory_overhead", &raw.memory_overhead)?,
        tcg_translation_cache_bytes: bytes("tcg_translation_cache", &raw.tcg_translation_cache)?,
        host_disk_dirs: raw.host_disk_dirs,
        qemu_user: raw.qemu_user,
        macvtap_mode: raw.macvtap_mode,
        max_net_queues: raw.max_net_queues,
        non_vm_containers: raw.non_vm_containers,
        runc: raw.runc,
        numa_limits: placement::Limits {
            cpu_overcommit: raw.numa_cpu_overcommit,
            memory_overcommit: raw.numa_memory_overcommit,
        },
        placement_ledger: raw.placement_ledger,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("/x.toml")).unwrap();
        assert_eq!(c.accel, AccelSetting::Auto);
        assert_eq!(c.default_memory_bytes, 512 << 20);
        assert_eq!(c.machine, MachineType::Q35);
    }

    #[test]
    fn reads_keys() {
        let c = Config::parse(
            "accel = \"tcg\"\nstate_dir = \"/tmp/s\"\nmachine = \"pc\"\ndefault_memory = \"1Gi\"\nhost_disk_dirs = [\"/var/lib/vms\"]\n",
            Path::new("/x.toml"),
        )
        .unwrap();
        assert_eq!(c.accel, AccelSetting::Tcg);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.machine, MachineType::Pc);
        assert_eq!(c.default_memory_bytes, 1 << 30);
        assert_eq!(c.host_disk_dirs, vec![PathBuf::from("/var/lib/vms")]);
    }

    #[test]
    fn errors_name_file_field_and_value() {
        let e = Config::parse("accel = \"xen\"", Path::new("/etc/c.toml")).unwrap_err().to_string();
        assert!(e.contains("/etc/c.toml") && e.contains("xen"), "{e}");
        let e = Config::parse("default_memory = \"lots\"", Path::new("/c.toml")).unwrap_err().to_string();
        assert!(e.contains("default_memory") && e.contains("lots"), "{e}");
        let e = Config::parse("state_dir = \"rel\"", Path::new("/c.toml")).unwrap_err().to_string();
        assert!(e.contains("state_dir") && e.contains("absolute"), "{e}");
        let e = Config::parse("max_memory = \"256Mi\"", Path::new("/c.toml")).unwrap_err().to_string();
        assert!(e.contains("max_memory") && e.contains("256Mi") && e.contains("default_memory"), "{e}");
        assert!(
            Config::parse("qemu_img = \"/usr/bin/qemu-img\"", Path::new("/c.toml")).is_ok(),
            "an earlier release's key"
        );
        let e = Config::parse("bogus = 1", Path::new("/c.toml")).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn explicit_missing_path_is_an_error() {
        let options = RuntimeConfig { path: Some("/nonexistent/shim.toml".into()), body: None };
        let e = Config::find(&options).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/shim.toml"), "{e}");
    }

    #[test]
    fn options_body_is_read_when_there_is_no_path() {
        let body = "ConfigPath = \"\"\nTypeUrl = \"io.containerd.vm.v1\"\naccel = \"tcg\"\ndefault_memory = \"1Gi\"\n";
        let c = Config::find(&RuntimeConfig { path: None, body: Some(body.into()) }).unwrap();
        assert_eq!((c.accel, c.default_memory_bytes), (AccelSetting::Tcg, 1 << 30));
        assert_eq!(c.source, OPTIONS_BODY_SOURCE);
        let e = Config::find(&RuntimeConfig { path: None, body: Some("accel = \"xen\"".into()) }).unwrap_err();
        assert!(e.to_string().contains(OPTIONS_BODY_SOURCE) && e.to_string().contains("xen"), "{e}");
        // a path wins over a body
        let e = Config::find(&RuntimeConfig { path: Some("/nonexistent/c.toml".into()), body: Some(body.into()) });
        assert!(e.unwrap_err().to_string().contains("/nonexistent/c.toml"));
    }
}
