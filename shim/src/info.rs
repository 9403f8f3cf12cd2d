//! `containerd-shim-vm-v1 --info`: what containerd 2.x's introspection (`ctr plugins
//! inspect-runtime`) asks a runtime. Runtime options arrive on stdin; RuntimeInfo
//! (protobuf) goes to stdout.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use serde_json::json;

use crate::{COMMIT, RUNTIME_ID, VERSION};

const FEATURES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
/// The oldest QEMU the shim is tested with and relies on.
pub const MIN_QEMU: (u32, u32) = (7, 2);

/// Builds the answer from the runtime options containerd passed (possibly none).
pub fn runtime_info(options: &[u8]) -> Result<RuntimeInfo, String> {
    let options = if options.is_empty() {
        None
    } else {
        Some(Any::parse_from_bytes(options).map_err(|e| format!("runtime options on stdin: {e}"))?)
    };
    // OCI runtime features: what of the spec every task honours, VMs included. A VM runs
    // the hooks that run outside the container (with QEMU's pid); no Linux namespaces or
    // seccomp apply inside a guest, which is its own kernel. (The pod's sandbox and its
    // ordinary containers go through runc, which honours all of runc's.)
    let features = json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.1",
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": [],
        "linux": {
            "namespaces": [],
            "capabilities": [],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.containerd.vm.v1.qemu.minimum": format!("{}.{}", MIN_QEMU.0, MIN_QEMU.1),
            "io.containerd.vm.v1.qemu.user": qemu_user(options.as_ref()),
            "io.containerd.vm.v1.annotations": crate::plan::KNOWN_ANNOTATIONS.join(",")
        }
    });
    Ok(RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: VERSION.to_string(),
            revision: COMMIT.to_string(),
            ..Default::default()
        }),
        options: options.into(),
        features: MessageField::some(Any {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: features.to_string().into_bytes(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Who QEMU runs as under the config these options choose, as a sentence for people.
fn qemu_user(options: Option<&Any>) -> String {
    let config = crate::runtime_options::runtime_config(options)
        .map_err(|e| e.to_string())
        .and_then(|found| crate::config::Config::find(&found).map_err(|e| e.to_string()));
    let config = match config {
        Ok(config) => config,
        Err(e) => return format!("unknown: {e}"),
    };
    match crate::host::qemu::credentials(&config.qemu_user) {
        Ok(Some(c)) => format!("{} (uid {}, gid {})", c.user, c.uid, c.gid),
        Ok(None) if config.qemu_user == "root" => "root (config qemu_user = \"root\")".into(),
        Ok(None) => {
            format!("root: user {} does not exist on this host (packaging/install.sh makes it)", config.qemu_user)
        }
        Err(e) => format!("none: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_name_version_and_features() {
        let info = runtime_info(&[]).unwrap();
        assert_eq!(info.name, "io.containerd.vm.v1");
        assert_eq!(info.version.version, VERSION);
        assert!(info.options.is_none());
        let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        assert_eq!(features["hooks"], json!(["prestart", "createRuntime", "poststart", "poststop"]));
        assert!(features["annotations"]["io.containerd.vm.v1.annotations"]
            .as_str()
            .unwrap()
            .contains("vm.containerd.io/cpus"));
        // and it survives the wire
        let bytes = info.write_to_bytes().unwrap();
        assert_eq!(RuntimeInfo::parse_from_bytes(&bytes).unwrap().name, "io.containerd.vm.v1");
    }

    #[test]
    fn echoes_the_options_and_refuses_garbage() {
        let opts =
            Any { type_url: "runtimeoptions.v1.Options".into(), value: vec![0x12, 1, b'x'], ..Default::default() };
        let info = runtime_info(&opts.write_to_bytes().unwrap()).unwrap();
        assert_eq!(info.options.type_url, "runtimeoptions.v1.Options");
        assert!(runtime_info(&[0xff, 0xff, 0xff]).is_err());
    }
}
