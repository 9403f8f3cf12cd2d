//! The runtime options containerd sends with Create: `ctr run --runtime-config-path`
//! and a runtime's `options.ConfigPath` arrive as `runtimeoptions.v1.Options`.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;

const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
/// `config_path` is field 2 of runtimeoptions.v1.Options (field 1 is type_url).
const CONFIG_PATH_FIELD: u32 = 2;

/// The ConfigPath carried by the options, if they are runtimeoptions with one.
pub fn config_path(options: Option<&Any>) -> Result<Option<String>, String> {
    let Some(any) = options else { return Ok(None) };
    if any.type_url.trim_start_matches("type.googleapis.com/") != RUNTIME_OPTIONS_TYPE {
        return Ok(None);
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| format!("runtime options: {e}"))? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == CONFIG_PATH_FIELD && wire_type == 2 {
            path = Some(input.read_string().map_err(|e| format!("runtime options ConfigPath: {e}"))?);
        } else {
            let wire_type = containerd_shim_protos::protobuf::rt::WireType::new(wire_type)
                .ok_or_else(|| format!("runtime options: bad wire type {wire_type}"))?;
            input.skip_field(wire_type).map_err(|e| format!("runtime options: {e}"))?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedOutputStream;

    fn options(type_url_field: &str, config_path: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, type_url_field).unwrap();
            out.write_string(2, config_path).unwrap();
            out.flush().unwrap();
        }
        Any { type_url: RUNTIME_OPTIONS_TYPE.into(), value, ..Default::default() }
    }

    #[test]
    fn reads_config_path() {
        let any = options("io.containerd.vm.v1", "/etc/vm/shim.toml");
        assert_eq!(config_path(Some(&any)).unwrap().as_deref(), Some("/etc/vm/shim.toml"));
    }

    #[test]
    fn other_option_types_and_absent_options_mean_none() {
        assert_eq!(config_path(None).unwrap(), None);
        let runc = Any { type_url: "containerd.runc.v1.Options".into(), value: vec![1, 2, 3], ..Default::default() };
        assert_eq!(config_path(Some(&runc)).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let bad = Any { type_url: RUNTIME_OPTIONS_TYPE.into(), value: vec![0x12, 0xff], ..Default::default() };
        assert!(config_path(Some(&bad)).is_err());
    }
}
