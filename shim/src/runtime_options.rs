//! The runtime options containerd sends with Create: `ctr run --runtime-config-path`
//! and a runtime's `options.ConfigPath` arrive as `runtimeoptions.v1.Options`, and so
//! (containerd 2.x) does a runtime's whole `options` table as `ConfigBody` when it has
//! no ConfigPath.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use std::path::PathBuf;

use containerd_shim_protos::protobuf::CodedInputStream;

use crate::config::RuntimeConfig;

const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
/// `config_path` is field 2 of runtimeoptions.v1.Options (field 1 is type_url).
const CONFIG_PATH_FIELD: u32 = 2;
/// `config_body` (bytes: a TOML document) is field 3.
const CONFIG_BODY_FIELD: u32 = 3;

/// The ConfigPath and ConfigBody carried by the options, if they are runtimeoptions.
pub fn runtime_config(options: Option<&Any>) -> Result<RuntimeConfig, String> {
    let mut found = RuntimeConfig::default();
    let Some(any) = options else { return Ok(found) };
    if any.type_url.trim_start_matches("type.googleapis.com/") != RUNTIME_OPTIONS_TYPE {
        return Ok(found);
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| format!("runtime options: {e}"))? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        match (field, wire_type) {
            (CONFIG_PATH_FIELD, 2) => {
                let path = input.read_string().map_err(|e| format!("runtime options ConfigPath: {e}"))?;
                found.path = Some(PathBuf::from(path)).filter(|p| !p.as_os_str().is_empty());
            }
            (CONFIG_BODY_FIELD, 2) => {
                let body = input.read_bytes().map_err(|e| format!("runtime options ConfigBody: {e}"))?;
                let body =
                    String::from_utf8(body).map_err(|_| "runtime options ConfigBody: not UTF-8 TOML".to_string())?;
                found.body = Some(body).filter(|b| !b.trim().is_empty());
            }
            _ => {
                let wire_type = containerd_shim_protos::protobuf::rt::WireType::new(wire_type)
                    .ok_or_else(|| format!("runtime options: bad wire type {wire_type}"))?;
                input.skip_field(wire_type).map_err(|e| format!("runtime options: {e}"))?;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedOutputStream;

    fn options(type_url_field: &str, config_path: &str, config_body: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, type_url_field).unwrap();
            out.write_string(2, config_path).unwrap();
            out.write_bytes(3, config_body.as_bytes()).unwrap();
            out.flush().unwrap();
        }
        Any { type_url: RUNTIME_OPTIONS_TYPE.into(), value, ..Default::default() }
    }

    #[test]
    fn reads_config_path() {
        let any = options("io.containerd.vm.v1", "/etc/vm/shim.toml", "");
        let found = runtime_config(Some(&any)).unwrap();
        assert_eq!(found, RuntimeConfig { path: Some("/etc/vm/shim.toml".into()), body: None });
    }

    #[test]
    fn reads_config_body() {
        let any = options("io.containerd.vm.v1", "", "accel = \"tcg\"\n");
        let found = runtime_config(Some(&any)).unwrap();
        assert_eq!(found, RuntimeConfig { path: None, body: Some("accel = \"tcg\"\n".into()) });
    }

    #[test]
    fn other_option_types_and_absent_options_mean_none() {
        assert_eq!(runtime_config(None).unwrap(), RuntimeConfig::default());
        let runc = Any { type_url: "containerd.runc.v1.Options".into(), value: vec![1, 2, 3], ..Default::default() };
        assert_eq!(runtime_config(Some(&runc)).unwrap(), RuntimeConfig::default());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let bad = Any { type_url: RUNTIME_OPTIONS_TYPE.into(), value: vec![0x12, 0xff], ..Default::default() };
        assert!(runtime_config(Some(&bad)).is_err());
    }
}
