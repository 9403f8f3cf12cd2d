//! containerd's configuration, described once and rendered in the format each release
//! reads: version 2 for containerd 1.6 and 1.7, version 3 for 2.x. The rig's private
//! containerd and the snippets shipped in `packaging/` both come from here.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The config file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVersion {
    /// containerd 1.6, 1.7
    V2,
    /// containerd 2.x
    V3,
}

impl ConfigVersion {
    /// The format a containerd release reads natively.
    pub fn for_release(major: u32) -> ConfigVersion {
        if major >= 2 {
            ConfigVersion::V3
        } else {
            ConfigVersion::V2
        }
    }

    /// From `CONTAINERD_CONFIG_VERSION` ("2" or "3").
    pub fn parse(value: &str) -> Option<ConfigVersion> {
        match value.trim() {
            "2" => Some(ConfigVersion::V2),
            "3" => Some(ConfigVersion::V3),
            _ => None,
        }
    }

    pub fn number(self) -> u32 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }

    /// The plugin whose table holds CRI's runtime settings.
    fn cri_runtime_plugin(self) -> &'static str {
        match self {
            ConfigVersion::V2 => "\"io.containerd.grpc.v1.cri\"",
            ConfigVersion::V3 => "'io.containerd.cri.v1.runtime'",
        }
    }

    /// The plugins that make up CRI.
    fn cri_plugins(self) -> &'static [&'static str] {
        match self {
            ConfigVersion::V2 => &["io.containerd.grpc.v1.cri"],
            ConfigVersion::V3 => {
                &["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
            }
        }
    }
}

/// The VM runtime as CRI sees it: a handler a RuntimeClass names.
#[derive(Debug, Clone)]
pub struct VmRuntime {
    pub handler: String,
    pub config_path: Option<PathBuf>,
    /// Annotations CRI passes on to the shim: glob patterns, which containerd (1.6 to 2.x)
    /// matches against each annotation key with Go's `path.Match`, so `*` is any run of
    /// characters but `/` and `.` is a dot (a regular expression like `.*` matches nothing).
    pub annotations: Vec<String>,
}

impl VmRuntime {
    /// The handler `vm` as packaging ships it.
    pub fn packaged() -> VmRuntime {
        VmRuntime {
            handler: "vm".into(),
            config_path: Some("/etc/containerd-shim-vm/config.toml".into()),
            // Virtlet's own annotations too: a Virtlet user's pod works unchanged.
            annotations: vec!["vm.containerd.io/*".into(), "Virtlet*".into()],
        }
    }
}

/// One description of a containerd configuration.
#[derive(Debug, Clone, Default)]
pub struct ContainerdConfig {
    pub header: Vec<String>,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    /// The gRPC socket; the ttrpc socket goes beside it.
    pub address: Option<PathBuf>,
    pub debug_level: Option<String>,
    /// `Some(0)`: leave containerd's oom_score_adj alone (lowering it needs CAP_SYS_RESOURCE).
    pub oom_score: Option<i32>,
    pub opt_dir: Option<PathBuf>,
    /// Run without CRI (tests that only use ctr).
    pub disable_cri: bool,
    /// CRI leaves the OOM score of a container at or above containerd's own, since
    /// lowering it needs CAP_SYS_RESOURCE (which a sandbox like this one lacks).
    pub restrict_oom_score_adj: bool,
    /// Snapshotters and other plugins that cannot work on the host.
    pub disabled_plugins: Vec<String>,
    pub vm_runtime: Option<VmRuntime>,
    /// The image CRI runs each pod's sandbox from (tests pin a local one: no registry).
    pub sandbox_image: Option<String>,
    /// Where CRI finds CNI plugins and its network config.
    pub cni: Option<CniDirs>,
    /// The handler CRI runs pods with when they name no RuntimeClass (a standalone
    /// kubelet cannot resolve one).
    pub cri_default_runtime: Option<String>,
    /// NRI's socket, for containerd 2.x (NRI is on there by default): a private
    /// containerd's own, since two of them on the host-wide /var/run/nri/nri.sock take it
    /// from each other ("bind: address already in use" at start). 1.7 has NRI off.
    pub nri_socket: Option<PathBuf>,
}

/// CRI's CNI directories.
#[derive(Debug, Clone)]
pub struct CniDirs {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// Write the plugin directory as `bin_dirs`, a list: containerd 2.2 and later read only
    /// that, and 2.1 refuses it.
    pub bin_dirs_list: bool,
}

impl ContainerdConfig {
    /// The snippet `packaging/` ships: the VM runtime registered for CRI.
    pub fn packaging() -> ContainerdConfig {
        ContainerdConfig {
            header: vec![
                "Registers containerd-shim-vm for CRI under the handler \"vm\"; pods select it with".into(),
                "a RuntimeClass (runtimeclass.yaml). `ctr run --runtime io.containerd.vm.v1` needs".into(),
                "no containerd config at all. Merge it into /etc/containerd/config.toml; if that".into(),
                "already has a runtimes.runc table, keep yours and leave this one's out.".into(),
                "Generated by integration::containerd_config.".into(),
            ],
            vm_runtime: Some(VmRuntime::packaged()),
            ..Default::default()
        }
    }

    pub fn render(&self, version: ConfigVersion) -> String {
        let mut out = String::new();
        let release = match version {
            ConfigVersion::V2 => "containerd 1.6 and 1.7",
            ConfigVersion::V3 => "containerd 2.x",
        };
        let _ = writeln!(out, "# containerd config version {} ({release}).", version.number());
        for line in &self.header {
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(out, "version = {}", version.number());
        let quoted = |p: &PathBuf| format!("{:?}", p.display().to_string());
        if let Some(root) = &self.root {
            let _ = writeln!(out, "root = {}", quoted(root));
        }
        if let Some(state) = &self.state {
            let _ = writeln!(out, "state = {}", quoted(state));
        }
        let mut disabled: Vec<String> = Vec::new();
        if self.disable_cri {
            disabled.extend(version.cri_plugins().iter().map(|p| p.to_string()));
        }
        disabled.extend(self.disabled_plugins.iter().cloned());
        if !disabled.is_empty() {
            let list: Vec<String> = disabled.iter().map(|p| format!("  {p:?},")).collect();
            let _ = writeln!(out, "disabled_plugins = [\n{}\n]", list.join("\n"));
        }
        if let Some(score) = self.oom_score {
            let _ = writeln!(out, "oom_score = {score}");
        }
        if let Some(address) = &self.address {
            let _ = writeln!(out, "\n[grpc]\n  address = {}", quoted(address));
            let _ = writeln!(out, "\n[ttrpc]\n  address = \"{}.ttrpc\"", address.display());
        }
        if let Some(level) = &self.debug_level {
            let _ = writeln!(out, "\n[debug]\n  address = \"\"\n  level = {level:?}");
            let _ = writeln!(out, "\n[metrics]\n  address = \"\"");
        }
        if let Some(opt) = &self.opt_dir {
            let _ = writeln!(out, "\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}", quoted(opt));
        }
        let runtime_plugin = version.cri_runtime_plugin();
        let sandbox_here = version == ConfigVersion::V2 && self.sandbox_image.is_some();
        if self.restrict_oom_score_adj || sandbox_here {
            let _ = writeln!(out, "\n[plugins.{runtime_plugin}]");
            if self.restrict_oom_score_adj {
                let _ = writeln!(out, "  restrict_oom_score_adj = true");
            }
            if let (true, Some(image)) = (sandbox_here, &self.sandbox_image) {
                let _ = writeln!(out, "  sandbox_image = {image:?}");
            }
        }
        if let (ConfigVersion::V3, Some(image)) = (version, &self.sandbox_image) {
            let _ = writeln!(out, "\n[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = {image:?}");
        }
        if let Some(cni) = &self.cni {
            let _ = writeln!(out, "\n[plugins.{runtime_plugin}.cni]\n  conf_dir = {}", quoted(&cni.conf_dir));
            if cni.bin_dirs_list {
                let _ = writeln!(out, "  bin_dirs = [{}]", quoted(&cni.bin_dir));
            } else {
                let _ = writeln!(out, "  bin_dir = {}", quoted(&cni.bin_dir));
            }
        }
        if let Some(default) = &self.cri_default_runtime {
            let _ = writeln!(out, "\n[plugins.{runtime_plugin}.containerd]\n  default_runtime_name = {default:?}");
        }
        if let (ConfigVersion::V3, Some(socket)) = (version, &self.nri_socket) {
            let _ = writeln!(out, "\n[plugins.'io.containerd.nri.v1.nri']\n  socket_path = {}", quoted(socket));
        }
        if let Some(vm) = &self.vm_runtime {
            // containerd 1.x replaces its built-in runtimes table with a config's own, and
            // CRI then refuses to load without its default handler: name runc too.
            let runtimes = format!("plugins.{}.containerd.runtimes", version.cri_runtime_plugin());
            let _ = writeln!(out, "\n[{runtimes}.runc]\n  runtime_type = \"io.containerd.runc.v2\"");
            let table = format!("{runtimes}.{}", vm.handler);
            let _ = writeln!(out, "\n[{table}]\n  runtime_type = \"io.containerd.vm.v1\"");
            if !vm.annotations.is_empty() {
                let list: Vec<String> = vm.annotations.iter().map(|a| format!("{a:?}")).collect();
                let _ = writeln!(out, "  pod_annotations = [{}]", list.join(", "));
                let _ = writeln!(out, "  container_annotations = [{}]", list.join(", "));
            }
            if let Some(path) = &vm.config_path {
                let _ = writeln!(out, "\n[{table}.options]\n  ConfigPath = {}", quoted(path));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packaged(version: u32) -> String {
        let path = crate::workspace_root().join(format!("packaging/containerd-config-v{version}.toml"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The shipped snippets are exactly what the description renders; regenerate them
    /// with `cargo run -p integration --bin containerd-config -- packaging/`.
    #[test]
    fn packaging_snippets_match_the_description() {
        assert_eq!(packaged(2), ContainerdConfig::packaging().render(ConfigVersion::V2));
        assert_eq!(packaged(3), ContainerdConfig::packaging().render(ConfigVersion::V3));
    }

    #[test]
    fn cri_runtime_table_moves_between_versions() {
        let v2 = ContainerdConfig::packaging().render(ConfigVersion::V2);
        assert!(v2.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vm]"), "{v2}");
        assert!(v2.starts_with("# containerd config version 2") && v2.contains("\nversion = 2\n"));
        let v3 = ContainerdConfig::packaging().render(ConfigVersion::V3);
        assert!(v3.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.vm]"), "{v3}");
        assert!(v3.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.vm.options]\n  ConfigPath = \"/etc/containerd-shim-vm/config.toml\""));
        assert!(v3.contains("\nversion = 3\n"));
    }

    /// Go's `path.Match` for the patterns used here: literal characters and `*` (any run
    /// of characters but `/`); anything else a glob could mean is refused.
    fn go_path_match(pattern: &str, name: &str) -> bool {
        assert!(!pattern.contains(['?', '[', '\\']), "{pattern}: only literals and * are modelled");
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                let Some(rest) = name.strip_prefix(head) else { return false };
                (0..=rest.len())
                    .filter(|&i| rest.is_char_boundary(i))
                    .take_while(|&i| !rest[..i].contains('/'))
                    .any(|i| go_path_match(tail, &rest[i..]))
            }
        }
    }

    /// CRI passes the shim's annotations through: the packaged patterns match them as
    /// containerd matches (glob, not regular expression), and nothing outside the prefix.
    #[test]
    fn packaged_annotation_patterns_match_the_shims_annotations() {
        let patterns = VmRuntime::packaged().annotations;
        let passed = |key: &str| patterns.iter().any(|p| go_path_match(p, key));
        for key in [
            "vm.containerd.io/cpus",
            "vm.containerd.io/memory",
            "vm.containerd.io/disk",
            "VirtletCloudInitUserData",
            "VirtletSSHKeys",
            "VirtletForceDHCPNetworkConfig",
        ] {
            assert!(passed(key), "{key} is not passed through by {patterns:?}");
        }
        for key in ["io.kubernetes.cri.sandbox-id", "vmXcontainerdYio/cpus", "vm.containerd.io/a/b"] {
            assert!(!passed(key), "{key} is passed through by {patterns:?}");
        }
        assert!(!go_path_match("vm.containerd.io/.*", "vm.containerd.io/cpus"), "a regex is not a glob");
        let v3 = ContainerdConfig::packaging().render(ConfigVersion::V3);
        assert!(v3.contains("  pod_annotations = [\"vm.containerd.io/*\", \"Virtlet*\"]\n"), "{v3}");
        assert!(v3.contains("  container_annotations = [\"vm.containerd.io/*\", \"Virtlet*\"]\n"), "{v3}");
    }

    #[test]
    fn nri_gets_its_own_socket_on_containerd_2_only() {
        let config = ContainerdConfig { nri_socket: Some("/tmp/r/nri.sock".into()), ..Default::default() };
        assert!(config
            .render(ConfigVersion::V3)
            .contains("\n[plugins.'io.containerd.nri.v1.nri']\n  socket_path = \"/tmp/r/nri.sock\"\n"));
        assert!(!config.render(ConfigVersion::V2).contains("nri"));
    }

    #[test]
    fn disabling_cri_names_each_versions_plugins() {
        let config = ContainerdConfig { disable_cri: true, ..Default::default() };
        assert!(config.render(ConfigVersion::V3).contains("\"io.containerd.cri.v1.runtime\""));
        assert!(!config.render(ConfigVersion::V2).contains("io.containerd.cri.v1.runtime"));
    }
}
