//! `user-data` and NoCloud's meta-data with what the user adds: the user's own user data,
//! merged with a cloud-config the shim generates (the process env as /etc/cloud/environment)
//! as a MIME multipart that cloud-init merges, or taken verbatim. The SSH keys go in the
//! meta-data (`public-keys`), so that verbatim user data keeps them.

use std::fmt::Write as _;

use yaml_serde::{Mapping, Value};

use super::nocloud::{render_meta_data, EMPTY_USER_DATA};
use crate::plan::guest::GuestConfig;

/// Where the process env is written in the guest, one `NAME='value'` per line, for a
/// shell to source (`set -a; . /etc/cloud/environment`).
pub const ENVIRONMENT_FILE: &str = "/etc/cloud/environment";
/// How the shim's part merges into the user's: the user's values win, lists are joined.
const MERGE_TYPE: &str = "list(append)+dict(no_replace,recurse_list)+str()";
/// Put at the top of the user's shell script, so the env is exported to it.
const EXPORT_ENV: &str = "set -a; [ -r /etc/cloud/environment ] && . /etc/cloud/environment; set +a";

/// The whole `user-data` file.
pub fn render_user_data(guest: &GuestConfig) -> String {
    if let Some(user) = guest.user_data.as_ref().filter(|u| u.verbatim) {
        return user.text.clone();
    }
    let generated = generated_cloud_config(guest);
    match (&guest.user_data, generated) {
        (None, None) => EMPTY_USER_DATA.to_string(),
        (None, Some(generated)) => generated,
        (Some(user), None) => user.text.clone(),
        (Some(user), Some(generated)) => {
            let (kind, text) = match user.text.starts_with("#!") {
                true => ("text/x-shellscript", exporting_env(&user.text, !guest.env.is_empty())),
                false => ("text/cloud-config", user.text.clone()),
            };
            multipart(&[
                (kind, "user-data", None, text),
                ("text/cloud-config", "containerd-shim-vm.cfg", Some(MERGE_TYPE), generated),
            ])
        }
    }
}

/// The shim's cloud-config: the env file; `None` when there is no env.
fn generated_cloud_config(guest: &GuestConfig) -> Option<String> {
    let mut config = Mapping::new();
    add_environment_file(&mut config, &guest.env);
    cloud_config_text(config)
}

/// vendor-data, which cloud-init applies under the user data: the network applied at every
/// boot, not only an instance's first, when the guest has one (the same container, the
/// same instance id, may start again in a pod with another address; cloud-init 22.4 honours
/// it from the boot after it first reads it), and the env file when the user data is
/// verbatim and so cannot carry it (a `write_files` of the user's own replaces it).
pub fn render_vendor_data(guest: &GuestConfig, has_network: bool) -> Option<String> {
    let mut config = Mapping::new();
    if has_network {
        let when = Value::Sequence(vec!["boot-new-instance".into(), "boot".into()]);
        let mut network = Mapping::new();
        network.insert("when".into(), when);
        let mut updates = Mapping::new();
        updates.insert("network".into(), Value::Mapping(network));
        config.insert("updates".into(), Value::Mapping(updates));
    }
    if guest.user_data.as_ref().is_some_and(|user| user.verbatim) {
        add_environment_file(&mut config, &guest.env);
    }
    cloud_config_text(config)
}

/// `write_files` with the env file, if there is an env.
fn add_environment_file(config: &mut Mapping, env: &[String]) {
    let environment = environment_file(env);
    if environment.is_empty() {
        return;
    }
    let mut file = Mapping::new();
    file.insert("path".into(), ENVIRONMENT_FILE.into());
    // The env may hold secrets (a pod's secretKeyRef): root only.
    file.insert("permissions".into(), "0600".into());
    file.insert("content".into(), environment.into());
    config.insert("write_files".into(), Value::Sequence(vec![Value::Mapping(file)]));
}

fn cloud_config_text(config: Mapping) -> Option<String> {
    if config.is_empty() {
        return None;
    }
    // Serialising a mapping of strings cannot fail.
    let body = yaml_serde::to_string(&config).unwrap_or_default();
    Some(format!("#cloud-config\n{body}"))
}

/// `NAME='value'` lines for the env entries whose names a shell can take.
pub fn environment_file(env: &[String]) -> String {
    let mut out = String::new();
    for entry in env {
        let Some((name, value)) = entry.split_once('=') else { continue };
        let shell_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if shell_name {
            let _ = writeln!(out, "{name}='{}'", value.replace('\'', "'\\''"));
        }
    }
    out
}

/// A shell script with the env exported at its top (after the `#!` line); other scripts
/// (Python, ...) as they are.
fn exporting_env(script: &str, has_env: bool) -> String {
    let (first, rest) = script.split_once('\n').unwrap_or((script, ""));
    let shell = ["sh", "bash", "dash", "ash", "ksh", "zsh"]
        .iter()
        .any(|name| first.split_whitespace().any(|word| word.rsplit('/').next() == Some(name)));
    match has_env && shell {
        true => format!("{first}\n{EXPORT_ENV}\n{rest}"),
        false => script.to_string(),
    }
}

/// A MIME multipart/mixed message of `parts` (type, file name, Merge-Type, body), with a
/// boundary found in none of them.
fn multipart(parts: &[(&str, &str, Option<&str>, String)]) -> String {
    let mut n = 0;
    let boundary = loop {
        let candidate = format!("==containerd-shim-vm-{n}==");
        if !parts.iter().any(|(_, _, _, body)| body.contains(&candidate)) {
            break candidate;
        }
        n += 1;
    };
    let mut out = format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n");
    for (kind, name, merge, body) in parts {
        let _ = write!(
            out,
            "--{boundary}\nContent-Type: {kind}; charset=\"utf-8\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: 8bit\n\
             Content-Disposition: attachment; filename=\"{name}\"\n"
        );
        if let Some(merge) = merge {
            let _ = writeln!(out, "Merge-Type: {merge}");
        }
        // The line break before a boundary belongs to the boundary: keep the body's own.
        let _ = write!(out, "\n{body}\n");
    }
    let _ = writeln!(out, "--{boundary}--");
    out
}

/// `meta-data`: the shim's instance id, hostname and SSH keys (`public-keys`, which
/// cloud-init gives the default user), and the user's keys over them. The keys and the
/// user's values are written as JSON (which YAML reads as it is), so that a quoted `"yes"`
/// or `"1:30"` stays a string for cloud-init's YAML 1.1 reader.
pub fn render_meta_data_with(instance_id: &str, hostname: &str, ssh_keys: &[String], extra: Option<&str>) -> String {
    let mut ours = render_meta_data(instance_id, hostname);
    if !ssh_keys.is_empty() {
        let _ = writeln!(ours, "public-keys: {}", serde_json::to_string(ssh_keys).unwrap_or_default());
    }
    let extra = extra.and_then(|text| match yaml_serde::from_str::<Value>(text) {
        Ok(Value::Mapping(map)) if !map.is_empty() => Some(map),
        _ => None,
    });
    let Some(extra) = extra else { return ours };
    let mut out: String = ours
        .lines()
        .filter(|line| line.split_once(':').is_none_or(|(key, _)| !extra.contains_key(key)))
        .map(|line| format!("{line}\n"))
        .collect();
    for (key, value) in &extra {
        let (Some(key), Ok(value)) = (key.as_str(), serde_json::to_string(value)) else { continue };
        let _ = writeln!(out, "{}: {value}", super::nocloud::quote(key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::guest::UserData;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXHGmT3Vi2Ow6tpBlVmF0hDLCtq9ZiWUEvqpbOjPDEz k";

    fn guest(user: Option<(&str, bool)>, keys: &[&str], env: &[&str]) -> GuestConfig {
        GuestConfig {
            user_data: user.map(|(text, verbatim)| UserData { text: text.into(), verbatim }),
            ssh_keys: keys.iter().map(|k| k.to_string()).collect(),
            env: env.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_to_say_is_an_empty_cloud_config() {
        assert_eq!(render_user_data(&guest(None, &[], &[])), EMPTY_USER_DATA);
    }

    #[test]
    fn the_env_makes_a_cloud_config_whose_env_file_a_shell_can_source() {
        let text = render_user_data(&guest(None, &[KEY], &["A=1", "QUOTE=it's", "bad-name=x", "EMPTY="]));
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        let config: Value = yaml_serde::from_str(&text).unwrap();
        assert!(config.get("ssh_authorized_keys").is_none(), "the keys are meta-data: {text}");
        assert_eq!(config["write_files"][0]["path"], ENVIRONMENT_FILE);
        assert_eq!(config["write_files"][0]["permissions"], "0600");
        let content = config["write_files"][0]["content"].as_str().unwrap();
        assert_eq!(content, "A='1'\nQUOTE='it'\\''s'\nEMPTY=''\n");
        let sourced = std::process::Command::new("sh")
            .args(["-c", &format!("{content}\nprintf '%s|%s' \"$A\" \"$QUOTE\"")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&sourced.stdout), "1|it's");
    }

    #[test]
    fn vendor_data_carries_the_env_file_only_beside_verbatim_user_data() {
        let env = ["GREETING=hi"];
        assert_eq!(render_vendor_data(&guest(None, &[], &env), false), None);
        assert_eq!(render_vendor_data(&guest(Some(("#!/bin/sh\n", false)), &[], &env), false), None);
        assert_eq!(render_vendor_data(&guest(Some(("#!/bin/sh\n", true)), &[], &[]), false), None);
        let verbatim = render_vendor_data(&guest(Some(("#!/bin/sh\n", true)), &[], &env), true).unwrap();
        assert!(verbatim.starts_with("#cloud-config\n"), "{verbatim}");
        let config: Value = yaml_serde::from_str(&verbatim).unwrap();
        assert_eq!(config["write_files"][0]["path"], ENVIRONMENT_FILE);
        assert_eq!(config["write_files"][0]["content"], "GREETING='hi'\n");
        assert_eq!(config["updates"]["network"]["when"][1], "boot");
        let network_only: Value =
            yaml_serde::from_str(&render_vendor_data(&guest(None, &[], &env), true).unwrap()).unwrap();
        assert!(network_only.get("write_files").is_none(), "the user data has the env: {network_only:?}");
    }

    #[test]
    fn verbatim_user_data_is_the_user_data_byte_for_byte() {
        let text = "#cloud-config\nruncmd: [[touch, /x]]\n";
        assert_eq!(render_user_data(&guest(Some((text, true)), &[KEY], &["A=1"])), text);
    }

    #[test]
    fn user_data_merges_with_the_shims_as_two_mime_parts() {
        let script = "#!/bin/sh\necho from-the-script\n";
        let text = render_user_data(&guest(Some((script, false)), &[KEY], &["GREETING=1"]));
        let boundary = "==containerd-shim-vm-0==";
        assert!(text.starts_with(&format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\n")), "{text}");
        let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
        assert_eq!(parts.len(), 4, "preamble, two parts, the end: {text}");
        assert!(parts[1].contains("Content-Type: text/x-shellscript"), "{}", parts[1]);
        assert!(parts[1].contains(&format!("\n\n#!/bin/sh\n{EXPORT_ENV}\necho from-the-script\n")), "{}", parts[1]);
        assert!(parts[2].contains("Content-Type: text/cloud-config") && parts[2].contains(MERGE_TYPE), "{}", parts[2]);
        assert!(parts[2].contains("GREETING") && parts[3] == "--\n", "{text}");
        // A boundary that the user data holds is not used.
        let tricky = format!("#!/bin/sh\necho --{boundary}\n");
        let text = render_user_data(&guest(Some((&tricky, false)), &[KEY], &["A=1"]));
        assert!(text.contains("boundary=\"==containerd-shim-vm-1==\""), "{text}");
    }

    #[test]
    fn a_python_script_is_left_as_it_is() {
        let script = "#!/usr/bin/env python3\nprint(1)\n";
        assert_eq!(exporting_env(script, true), script);
        assert_eq!(exporting_env("#!/bin/bash -e\nx\n", true), format!("#!/bin/bash -e\n{EXPORT_ENV}\nx\n"));
    }

    #[test]
    fn the_users_meta_data_is_added_and_wins() {
        let ours = render_meta_data_with("i-1", "vm1", &[], None);
        assert_eq!(ours, render_meta_data("i-1", "vm1"));
        let keyed: Value = yaml_serde::from_str(&render_meta_data_with("i-1", "vm1", &[KEY.into()], None)).unwrap();
        assert_eq!(keyed["public-keys"][0], KEY);
        let merged = render_meta_data_with(
            "i-1",
            "vm1",
            &[KEY.into()],
            Some("local-hostname: custom\nzone: a\nquoted: \"yes\"\ntime: \"1:30\"\nlabels: {app: web}\n"),
        );
        let value: Value = yaml_serde::from_str(&merged).unwrap();
        assert_eq!(value["instance-id"], "i-1");
        assert_eq!(value["local-hostname"], "custom");
        assert_eq!(value["zone"], "a");
        assert_eq!(value["labels"]["app"], "web");
        // Strings YAML 1.1 would read as a boolean or a number stay quoted.
        assert!(merged.contains("\"quoted\": \"yes\"\n") && merged.contains("\"time\": \"1:30\"\n"), "{merged}");
        assert_eq!(merged.matches("local-hostname").count(), 1, "{merged}");
    }
}
