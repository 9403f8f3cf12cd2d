//! What the guest is told about itself through cloud-init: the `vm.containerd.io/`
//! cloud-init annotations, Virtlet's with Virtlet's meanings, and the process env,
//! checked here so that bad input is refused before anything is taken.

use std::collections::HashMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::PlanError;

pub const ANNOTATION_CLOUD_INIT: &str = "vm.containerd.io/cloud-init";
pub const ANNOTATION_CLOUD_INIT_FORMAT: &str = "vm.containerd.io/cloud-init-format";
pub const ANNOTATION_USER_DATA: &str = "vm.containerd.io/user-data";
pub const ANNOTATION_USER_DATA_BASE64: &str = "vm.containerd.io/user-data-base64";
pub const ANNOTATION_USER_DATA_OVERWRITE: &str = "vm.containerd.io/user-data-overwrite";
pub const ANNOTATION_META_DATA: &str = "vm.containerd.io/meta-data";
pub const ANNOTATION_SSH_KEYS: &str = "vm.containerd.io/ssh-keys";

/// Virtlet's pod annotations for the same things.
const VIRTLET_USER_DATA: &str = "VirtletCloudInitUserData";
const VIRTLET_USER_DATA_SCRIPT: &str = "VirtletCloudInitUserDataScript";
const VIRTLET_META_DATA: &str = "VirtletCloudInitMetaData";
const VIRTLET_SSH_KEYS: &str = "VirtletSSHKeys";
const VIRTLET_IMAGE_TYPE: &str = "VirtletCloudInitImageType";
/// Names a key of VirtletCloudInitUserData's mapping whose value is the script, in the
/// encoding VirtletCloudInitUserDataSourceEncoding names (`plain`, the default, or `base64`).
const VIRTLET_SCRIPT_KEY: &str = "VirtletCloudInitUserDataSourceKey";
const VIRTLET_SCRIPT_ENCODING: &str = "VirtletCloudInitUserDataSourceEncoding";
/// Those of Virtlet's annotations this module reads.
pub(super) const VIRTLET_READ: &[&str] = &[
    VIRTLET_USER_DATA,
    VIRTLET_USER_DATA_SCRIPT,
    VIRTLET_META_DATA,
    VIRTLET_SSH_KEYS,
    VIRTLET_IMAGE_TYPE,
    VIRTLET_SCRIPT_KEY,
    VIRTLET_SCRIPT_ENCODING,
];
/// What Virtlet put in a script's place: its mount script, which is empty without volumes.
const VIRTLET_MOUNT_SCRIPT: &str = "@virtlet-mount-script@";
/// Virtlet's annotations that name a Kubernetes object, which a shim cannot read, and
/// what to use instead.
const VIRTLET_SOURCES: &[(&str, &str)] = &[
    ("VirtletSSHKeySource", "put the keys themselves in VirtletSSHKeys or vm.containerd.io/ssh-keys"),
    ("VirtletCloudInitUserDataSource", "put the user data itself in vm.containerd.io/user-data"),
    ("VirtletFilesFromDataSource", "write the files with write_files in vm.containerd.io/user-data"),
    ("VirtletConfigMapAsFiles", "write the files with write_files in vm.containerd.io/user-data"),
];

/// The most user data a VM may be given: the seed image holds 64 MiB in all.
pub const MAX_USER_DATA: usize = 16 << 20;

/// Which cloud-init datasource the guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CloudInit {
    /// A NoCloud seed (label `cidata`).
    #[default]
    NoCloud,
    /// An OpenStack config drive, version 2 (label `config-2`), which cloudbase-init
    /// (Windows) reads too.
    ConfigDrive,
    /// No seed: the image configures itself (it then gets no pod IP, hostname or keys).
    None,
}

/// The file system of the seed image. Either way it is a read-only virtio disk: cloud-init
/// and cloudbase-init find it by its label whatever the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SeedFormat {
    #[default]
    Vfat,
    /// ISO 9660 with Rock Ridge and Joliet names.
    Iso,
}

/// The user's own user data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserData {
    pub text: String,
    /// Taken as the whole user data, not merged with what the shim generates.
    pub verbatim: bool,
}

/// What the seed tells the guest beside its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GuestConfig {
    pub cloud_init: CloudInit,
    pub seed_format: SeedFormat,
    pub user_data: Option<UserData>,
    /// More meta-data keys (a YAML mapping, checked), over the shim's.
    pub meta_data: Option<String>,
    /// Each an OpenSSH public key line, checked.
    pub ssh_keys: Vec<String>,
    /// The process env (`NAME=value`), written into the guest as /etc/cloud/environment.
    pub env: Vec<String>,
}

fn refused(key: &str, value: &str, reason: impl Into<String>) -> PlanError {
    PlanError::Annotation { key: key.to_string(), value: shorten(value), reason: reason.into() }
}

/// A value as an error shows it: long user data is cut.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_string(),
    }
}

fn flag(key: &str, value: &str) -> Result<bool, PlanError> {
    match value.trim() {
        "true" | "True" | "TRUE" | "yes" | "1" => Ok(true),
        "false" | "False" | "FALSE" | "no" | "0" | "" => Ok(false),
        _ => Err(refused(key, value, "not a boolean; use true or false")),
    }
}

pub fn parse(annotations: &HashMap<String, String>, env: &[String]) -> Result<GuestConfig, PlanError> {
    // Virtlet's annotations, empty, are not given, as in Virtlet.
    let get = |key: &str| {
        let value = annotations.get(key).map(String::as_str)?;
        (!(key.starts_with("Virtlet") && value.trim().is_empty())).then_some(value)
    };
    for (key, instead) in VIRTLET_SOURCES {
        if let Some(value) = annotations.get(*key) {
            return Err(refused(
                key,
                value,
                format!("names a Kubernetes object, which containerd-shim-vm cannot read: {instead}"),
            ));
        }
    }
    let cloud_init = match (get(ANNOTATION_CLOUD_INIT), get(VIRTLET_IMAGE_TYPE)) {
        (Some(value), _) => cloud_init_type(ANNOTATION_CLOUD_INIT, value)?,
        (None, Some(value)) => cloud_init_type(VIRTLET_IMAGE_TYPE, value)?,
        (None, None) => CloudInit::NoCloud,
    };
    let seed_format = match get(ANNOTATION_CLOUD_INIT_FORMAT) {
        None => SeedFormat::Vfat,
        Some(value) => match value.trim() {
            "vfat" => SeedFormat::Vfat,
            "iso" => SeedFormat::Iso,
            _ => return Err(refused(ANNOTATION_CLOUD_INIT_FORMAT, value, "not a seed format; use vfat or iso")),
        },
    };

    let overwrite = get(ANNOTATION_USER_DATA_OVERWRITE).map(|v| flag(ANNOTATION_USER_DATA_OVERWRITE, v)).transpose()?;
    let mut given = Vec::new();
    for key in [
        ANNOTATION_USER_DATA,
        ANNOTATION_USER_DATA_BASE64,
        VIRTLET_USER_DATA,
        VIRTLET_USER_DATA_SCRIPT,
        VIRTLET_SCRIPT_KEY,
    ] {
        if let Some(value) = get(key) {
            given.push((key, value));
        }
    }
    // Virtlet takes the script under the key over its script annotation, and a script over
    // its cloud-config.
    if given.iter().any(|(key, _)| *key == VIRTLET_SCRIPT_KEY) {
        given.retain(|(key, _)| *key != VIRTLET_USER_DATA_SCRIPT);
    }
    if given.iter().any(|(key, _)| [VIRTLET_USER_DATA_SCRIPT, VIRTLET_SCRIPT_KEY].contains(key)) {
        given.retain(|(key, _)| *key != VIRTLET_USER_DATA);
    }
    let user_data = match given.as_slice() {
        [] => None,
        [(key, value)] => {
            let text = match *key {
                ANNOTATION_USER_DATA_BASE64 => base64_text(value).map_err(|why| refused(key, value, why))?,
                VIRTLET_USER_DATA_SCRIPT => without_mount_script(value),
                VIRTLET_SCRIPT_KEY => without_mount_script(&script_under_key(
                    value,
                    get(VIRTLET_USER_DATA),
                    get(VIRTLET_SCRIPT_ENCODING),
                )?),
                _ => value.to_string(),
            };
            // Virtlet takes its script as the whole user data. (Its own overwrite
            // annotation changes nothing here: see annotations::VIRTLET_WITHOUT_EFFECT.)
            let verbatim = overwrite.unwrap_or([VIRTLET_USER_DATA_SCRIPT, VIRTLET_SCRIPT_KEY].contains(key));
            Some(check_user_data(key, value, text, verbatim)?)
        }
        [(first, _), (second, value), ..] => {
            return Err(refused(second, value, format!("user data is given twice, by {first} and {second}: give one")))
        }
    };
    if cloud_init == CloudInit::None {
        // What only a seed carries.
        let seed_only = [
            ANNOTATION_CLOUD_INIT_FORMAT,
            ANNOTATION_META_DATA,
            VIRTLET_META_DATA,
            ANNOTATION_SSH_KEYS,
            VIRTLET_SSH_KEYS,
        ];
        let asked =
            given.first().copied().or_else(|| seed_only.iter().find_map(|key| get(key).map(|value| (*key, value))));
        if let Some((key, value)) = asked {
            return Err(refused(
                key,
                value,
                format!("{ANNOTATION_CLOUD_INIT}=none: the guest gets no seed to read it from"),
            ));
        }
    }

    let meta_data = match (get(ANNOTATION_META_DATA), get(VIRTLET_META_DATA)) {
        (Some(value), _) => Some(check_meta_data(ANNOTATION_META_DATA, value)?),
        (None, Some(value)) => Some(check_meta_data(VIRTLET_META_DATA, value)?),
        (None, None) => None,
    };
    let ssh_keys = match (get(ANNOTATION_SSH_KEYS), get(VIRTLET_SSH_KEYS)) {
        (Some(value), _) => ssh_keys(ANNOTATION_SSH_KEYS, value)?,
        (None, Some(value)) => ssh_keys(VIRTLET_SSH_KEYS, value)?,
        (None, None) => Vec::new(),
    };
    Ok(GuestConfig { cloud_init, seed_format, user_data, meta_data, ssh_keys, env: env.to_vec() })
}

/// Virtlet's script with its mount script put in, which is empty without volumes: a script
/// that begins with the placeholder begins as that mount script did, `#!/bin/sh`.
fn without_mount_script(script: &str) -> String {
    match script.trim_start().strip_prefix(VIRTLET_MOUNT_SCRIPT) {
        Some(rest) => format!("#!/bin/sh{}", rest.replace(VIRTLET_MOUNT_SCRIPT, "")),
        None => script.replace(VIRTLET_MOUNT_SCRIPT, ""),
    }
}

/// The script VirtletCloudInitUserDataSourceKey names: the string under that key of
/// VirtletCloudInitUserData's mapping, decoded as VirtletCloudInitUserDataSourceEncoding says.
fn script_under_key(key: &str, user_data: Option<&str>, encoding: Option<&str>) -> Result<String, PlanError> {
    let bad = |why: String| refused(VIRTLET_SCRIPT_KEY, key, why);
    let mapping = match user_data.map(yaml_serde::from_str::<yaml_serde::Value>) {
        Some(Ok(yaml_serde::Value::Mapping(mapping))) => mapping,
        Some(_) => return Err(bad(format!("{VIRTLET_USER_DATA} is not a YAML mapping to take the script from"))),
        None => return Err(bad(format!("names a key of {VIRTLET_USER_DATA}, which is not given"))),
    };
    let Some(value) = mapping.get(key) else {
        return Err(bad(format!("{VIRTLET_USER_DATA} has no key {key:?}")));
    };
    let Some(text) = value.as_str() else {
        return Err(bad(format!("the value under {key:?} in {VIRTLET_USER_DATA} is not a string")));
    };
    match encoding.map(str::trim).unwrap_or("plain") {
        "plain" | "" => Ok(text.to_string()),
        "base64" => base64_text(text).map_err(|why| bad(format!("the value under {key:?}: {why}"))),
        other => Err(refused(VIRTLET_SCRIPT_ENCODING, other, "not an encoding of the script; use plain or base64")),
    }
}

/// Base64 (line breaks and blanks allowed) of UTF-8 text; else why not.
fn base64_text(encoded: &str) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.split_whitespace().collect::<String>())
        .map_err(|e| format!("not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "decodes to bytes that are not UTF-8 text".to_string())
}

fn cloud_init_type(key: &str, value: &str) -> Result<CloudInit, PlanError> {
    // Virtlet lowercases its value.
    match value.trim().to_ascii_lowercase().as_str() {
        "nocloud" => Ok(CloudInit::NoCloud),
        "configdrive" => Ok(CloudInit::ConfigDrive),
        "none" => Ok(CloudInit::None),
        _ => Err(refused(key, value, "not a cloud-init type; use nocloud, configdrive or none")),
    }
}

/// User data is a cloud-config (checked as YAML) or a script; verbatim, anything
/// cloud-init takes (MIME, `#include`, ...).
fn check_user_data(key: &str, value: &str, text: String, verbatim: bool) -> Result<UserData, PlanError> {
    if text.len() > MAX_USER_DATA {
        return Err(refused(
            key,
            value,
            format!("{} bytes of user data, over the seed's limit of {MAX_USER_DATA} bytes", text.len()),
        ));
    }
    let first_line = text.lines().next().unwrap_or_default().trim_end();
    if first_line == "#cloud-config" {
        match yaml_serde::from_str::<yaml_serde::Value>(&text) {
            Ok(yaml_serde::Value::Mapping(_)) | Ok(yaml_serde::Value::Null) => {}
            Ok(_) => return Err(refused(key, value, "the cloud-config is not a YAML mapping")),
            Err(e) => return Err(refused(key, value, format!("the cloud-config is not valid YAML: {e}"))),
        }
    } else if key == VIRTLET_USER_DATA {
        // Virtlet's cloud-config annotation carries the mapping without the header.
        return match yaml_serde::from_str::<yaml_serde::Value>(&text) {
            Ok(yaml_serde::Value::Mapping(_)) => Ok(UserData { text: format!("#cloud-config\n{text}"), verbatim }),
            Ok(_) => Err(refused(key, value, "not a YAML mapping (a cloud-config)")),
            Err(e) => Err(refused(key, value, format!("not valid YAML: {e}"))),
        };
    } else if !first_line.starts_with("#!") && !verbatim {
        return Err(refused(
            key,
            value,
            "starts with neither #cloud-config nor #! (a script); other formats only with \
             vm.containerd.io/user-data-overwrite=true",
        ));
    }
    Ok(UserData { text, verbatim })
}

fn check_meta_data(key: &str, value: &str) -> Result<String, PlanError> {
    match yaml_serde::from_str::<yaml_serde::Value>(value) {
        Ok(yaml_serde::Value::Mapping(map)) => {
            if map.keys().any(|k| !k.is_string()) {
                return Err(refused(key, value, "meta-data keys must be strings"));
            }
            Ok(value.to_string())
        }
        Ok(_) => Err(refused(key, value, "not a YAML (or JSON) mapping")),
        Err(e) => Err(refused(key, value, format!("not valid YAML: {e}"))),
    }
}

/// Key types an OpenSSH public key line may carry, and their certificates'.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
];

/// An authorized_keys line's options (`from="10.0.0.0/8",no-pty`) and what follows them:
/// the options end at the first blank outside double quotes. `None` when the line's first
/// word is a key type.
fn split_options(line: &str) -> Option<(&str, &str)> {
    let first = line.split_whitespace().next()?;
    if SSH_KEY_TYPES.contains(&first) {
        return None;
    }
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return Some((&line[..at], line[at..].trim_start())),
            _ => {}
        }
    }
    None
}

/// One key per line (blank lines and `#` comments skipped), as in authorized_keys:
/// `[options] type base64 [comment]`, the base64 decoding to a key blob that names the same
/// type.
fn ssh_keys(key: &str, value: &str) -> Result<Vec<String>, PlanError> {
    let mut keys = Vec::new();
    for line in value.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let bad = |why: &str| refused(key, value, format!("line {line:?} is not an SSH public key: {why}"));
        let the_key = match split_options(line) {
            Some((_, rest)) if rest.split_whitespace().next().is_some_and(|kind| SSH_KEY_TYPES.contains(&kind)) => rest,
            _ => line,
        };
        let mut fields = the_key.split_whitespace();
        let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
            return Err(bad("expected `[options] <type> <base64 key> [comment]`"));
        };
        if !SSH_KEY_TYPES.contains(&kind) {
            return Err(bad(&format!("unknown key type {kind:?}")));
        }
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(blob).map_err(|_| bad("the key is not base64"))?;
        // The blob begins with its type, as a length-prefixed string.
        let named = decoded
            .get(..4)
            .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
            .and_then(|len| decoded.get(4..4 + len));
        if named != Some(kind.as_bytes()) {
            return Err(bad("the key's data does not match its type"));
        }
        keys.push(line.to_string());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXHGmT3Vi2Ow6tpBlVmF0hDLCtq9ZiWUEvqpbOjPDEz test@host";

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn reason(e: PlanError) -> (String, String) {
        match e {
            PlanError::Annotation { key, reason, .. } => (key, reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_asked_is_a_nocloud_seed_with_the_env() {
        let env = vec!["PATH=/bin".to_string(), "GREETING=hi there".to_string()];
        let config = parse(&HashMap::new(), &env).unwrap();
        assert_eq!(config.cloud_init, CloudInit::NoCloud);
        assert_eq!(config.seed_format, SeedFormat::Vfat);
        assert_eq!(config.env, env);
        assert!(config.user_data.is_none() && config.ssh_keys.is_empty());
    }

    #[test]
    fn ours_and_virtlets_annotations_are_read() {
        let ours = parse(
            &annotations(&[
                (ANNOTATION_USER_DATA, "#cloud-config\nruncmd: [[touch, /x]]\n"),
                (ANNOTATION_SSH_KEYS, &format!("{ED25519}\n\n# a comment\n")),
                (ANNOTATION_META_DATA, "{\"zone\": \"a\"}"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(ours.ssh_keys, [ED25519]);
        assert!(!ours.user_data.as_ref().unwrap().verbatim);
        let virtlet = parse(
            &annotations(&[
                (VIRTLET_USER_DATA, "runcmd:\n  - [touch, /x]\n"),
                ("VirtletCloudInitUserDataOverwrite", "true"),
                (VIRTLET_SSH_KEYS, ED25519),
                (VIRTLET_META_DATA, "zone: a\n"),
                (VIRTLET_IMAGE_TYPE, "nocloud"),
            ]),
            &[],
        )
        .unwrap();
        let user_data = virtlet.user_data.unwrap();
        assert!(!user_data.verbatim, "Virtlet merges its cloud-config whatever its overwrite says");
        assert!(user_data.text.starts_with("#cloud-config\nruncmd:"), "{}", user_data.text);
        let drive = parse(&annotations(&[(VIRTLET_IMAGE_TYPE, "configdrive")]), &[]).unwrap();
        assert_eq!(drive.cloud_init, CloudInit::ConfigDrive);
        let iso =
            parse(&annotations(&[(ANNOTATION_CLOUD_INIT, "configdrive"), (ANNOTATION_CLOUD_INIT_FORMAT, "iso")]), &[])
                .unwrap();
        assert_eq!((iso.cloud_init, iso.seed_format), (CloudInit::ConfigDrive, SeedFormat::Iso));
        let script = parse(&annotations(&[(VIRTLET_USER_DATA_SCRIPT, "#!/bin/sh\necho hi\n")]), &[]).unwrap();
        let script = script.user_data.unwrap();
        assert_eq!(script.text, "#!/bin/sh\necho hi\n");
        assert!(script.verbatim, "Virtlet's script is the whole user data");
        let b64 = parse(&annotations(&[(ANNOTATION_USER_DATA_BASE64, "IyEvYmluL3No\nCmVjaG8gaGkK\n")]), &[]).unwrap();
        assert_eq!(b64.user_data.unwrap().text, "#!/bin/sh\necho hi\n");
    }

    #[test]
    fn virtlet_pods_parse_as_virtlet_parsed_them() {
        // The script wins over the cloud-config; the mount script is empty without volumes.
        let both = parse(
            &annotations(&[
                (VIRTLET_USER_DATA, "runcmd:\n  - [touch, /x]\n"),
                (VIRTLET_USER_DATA_SCRIPT, "#!/bin/sh\n@virtlet-mount-script@\necho hi\n"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(both.user_data.unwrap(), UserData { text: "#!/bin/sh\n\necho hi\n".into(), verbatim: true });
        // Empty values are no values; the image type is read in any case.
        let empty = parse(
            &annotations(&[
                (VIRTLET_USER_DATA, ""),
                (VIRTLET_USER_DATA_SCRIPT, " "),
                (VIRTLET_META_DATA, ""),
                (VIRTLET_IMAGE_TYPE, ""),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!((empty.cloud_init, empty.user_data, empty.meta_data), (CloudInit::NoCloud, None, None));
        let drive = parse(&annotations(&[(VIRTLET_IMAGE_TYPE, "ConfigDrive")]), &[]).unwrap();
        assert_eq!(drive.cloud_init, CloudInit::ConfigDrive);
        // authorized_keys lines with options, as Virtlet passed them on.
        let with_options = format!("from=\"10.0.0.0/8,192.168.1.1\",command=\"echo \\\"a b\\\"\" {ED25519}");
        let keys = parse(&annotations(&[(VIRTLET_SSH_KEYS, &with_options)]), &[]).unwrap();
        assert_eq!(keys.ssh_keys, [with_options]);
        // Virtlet's own example: the placeholder alone, then at the top of a script.
        for (script, expected) in
            [("@virtlet-mount-script@", "#!/bin/sh"), ("@virtlet-mount-script@\necho hi\n", "#!/bin/sh\necho hi\n")]
        {
            let parsed = parse(&annotations(&[(VIRTLET_USER_DATA_SCRIPT, script)]), &[]).unwrap();
            assert_eq!(parsed.user_data.unwrap().text, expected);
        }
        // The script under a key of the cloud-config, plain or base64, over the script annotation.
        let keyed = |encoding: Option<&str>, value: &str| {
            let mut pairs = vec![
                (VIRTLET_USER_DATA, format!("script: {value:?}\nruncmd: [[touch, /x]]\n")),
                (VIRTLET_USER_DATA_SCRIPT, "#!/bin/sh\necho other\n".to_string()),
                (VIRTLET_SCRIPT_KEY, "script".to_string()),
            ];
            if let Some(encoding) = encoding {
                pairs.push((VIRTLET_SCRIPT_ENCODING, encoding.to_string()));
            }
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            parse(&annotations(&pairs), &[])
        };
        let plain = keyed(None, "#!/bin/sh\necho keyed\n").unwrap().user_data.unwrap();
        assert_eq!(plain, UserData { text: "#!/bin/sh\necho keyed\n".into(), verbatim: true });
        let encoded = keyed(Some("base64"), "IyEvYmluL3NoCmVjaG8ga2V5ZWQK").unwrap().user_data.unwrap();
        assert_eq!(encoded.text, "#!/bin/sh\necho keyed\n");
        let (key, why) = reason(keyed(Some("base64"), "%%").unwrap_err());
        assert_eq!(key, VIRTLET_SCRIPT_KEY);
        assert!(why.contains("not base64"), "{why}");
        let (key, why) = reason(keyed(Some("rot13"), "x").unwrap_err());
        assert_eq!(key, VIRTLET_SCRIPT_ENCODING);
        assert!(why.contains("plain or base64"), "{why}");
        let missing = parse(&annotations(&[(VIRTLET_USER_DATA, "a: 1\n"), (VIRTLET_SCRIPT_KEY, "script")]), &[]);
        let (key, why) = reason(missing.unwrap_err());
        assert!(key == VIRTLET_SCRIPT_KEY && why.contains("no key"), "{why}");
        // Empty Virtlet values ask nothing of a seed that is not there.
        let none = parse(
            &annotations(&[(ANNOTATION_CLOUD_INIT, "none"), (VIRTLET_SSH_KEYS, ""), (VIRTLET_META_DATA, " ")]),
            &[],
        );
        assert_eq!(none.unwrap().cloud_init, CloudInit::None);
    }

    #[test]
    fn bad_input_is_refused_naming_the_annotation() {
        // (annotations, the key the error names, words it says)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[(ANNOTATION_CLOUD_INIT, "cdrom")], ANNOTATION_CLOUD_INIT, "use nocloud, configdrive or none"),
            (&[(ANNOTATION_CLOUD_INIT_FORMAT, "ext4")], ANNOTATION_CLOUD_INIT_FORMAT, "use vfat or iso"),
            (&[(ANNOTATION_USER_DATA_BASE64, "%%%")], ANNOTATION_USER_DATA_BASE64, "not base64"),
            (&[(ANNOTATION_USER_DATA, "#cloud-config\nruncmd: [unclosed\n")], ANNOTATION_USER_DATA, "not valid YAML"),
            (&[(ANNOTATION_USER_DATA, "hello")], ANNOTATION_USER_DATA, "neither #cloud-config nor #!"),
            (&[(ANNOTATION_SSH_KEYS, "ssh-rsa notbase64!")], ANNOTATION_SSH_KEYS, "not base64"),
            (&[(ANNOTATION_SSH_KEYS, "hello world")], ANNOTATION_SSH_KEYS, "unknown key type"),
            (
                &[(
                    ANNOTATION_SSH_KEYS,
                    "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGXHGmT3Vi2Ow6tpBlVmF0hDLCtq9ZiWUEvqpbOjPDEz",
                )],
                ANNOTATION_SSH_KEYS,
                "does not match its type",
            ),
            (&[(ANNOTATION_META_DATA, "- a list")], ANNOTATION_META_DATA, "mapping"),
            (&[("VirtletSSHKeySource", "secret/x")], "VirtletSSHKeySource", "cannot read"),
            (&[("VirtletFilesFromDataSource", "configmap/x")], "VirtletFilesFromDataSource", "write_files"),
            (
                &[(ANNOTATION_USER_DATA_OVERWRITE, "maybe"), (ANNOTATION_USER_DATA, "#!/bin/sh\n")],
                ANNOTATION_USER_DATA_OVERWRITE,
                "boolean",
            ),
            (&[(ANNOTATION_USER_DATA_OVERWRITE, "maybe")], ANNOTATION_USER_DATA_OVERWRITE, "boolean"),
            (
                &[(
                    ANNOTATION_SSH_KEYS,
                    "no-pty ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGXHGmT3Vi2Ow6tpBlVmF0hDLCtq9ZiWUEvqpbOjPDEz",
                )],
                ANNOTATION_SSH_KEYS,
                "does not match its type",
            ),
            (&[(ANNOTATION_SSH_KEYS, "no-pty hello world")], ANNOTATION_SSH_KEYS, "unknown key type"),
            (
                &[(ANNOTATION_USER_DATA, "#!/bin/sh\n"), (VIRTLET_USER_DATA_SCRIPT, "#!/bin/sh\n")],
                VIRTLET_USER_DATA_SCRIPT,
                "given twice",
            ),
            (
                &[(ANNOTATION_CLOUD_INIT, "none"), (ANNOTATION_USER_DATA, "#!/bin/sh\n")],
                ANNOTATION_USER_DATA,
                "no seed",
            ),
            (&[(ANNOTATION_CLOUD_INIT, "none"), (VIRTLET_SSH_KEYS, ED25519)], VIRTLET_SSH_KEYS, "no seed"),
            (
                &[(ANNOTATION_CLOUD_INIT, "none"), (ANNOTATION_CLOUD_INIT_FORMAT, "iso")],
                ANNOTATION_CLOUD_INIT_FORMAT,
                "no seed",
            ),
        ];
        for (pairs, key, words) in cases {
            let (got_key, why) = reason(parse(&annotations(pairs), &[]).unwrap_err());
            assert_eq!(&got_key, key, "{pairs:?}: {why}");
            assert!(why.contains(words), "{pairs:?}: {why}");
        }
        let huge = format!("#!/bin/sh\n{}", "#".repeat(MAX_USER_DATA));
        let (key, why) = reason(parse(&annotations(&[(ANNOTATION_USER_DATA, &huge)]), &[]).unwrap_err());
        assert_eq!(key, ANNOTATION_USER_DATA);
        assert!(why.contains("over the seed's limit"), "{why}");
    }
}
