//! What the guest is told through its NoCloud seed, read back inside the tiny guest
//! (which copies the seed's files to /run/seed) through exec: the user's user data merged
//! with the shim's (SSH keys, the process env) or taken byte for byte, the user's
//! meta-data, the hostname; and no seed at all with `cloud-init: none`.

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use integration::images::TINY;
use integration::rig::Namespace;
use integration::vmenv::{wait_for_file, wait_status, wait_until, VmEnv, BOOT_TIMEOUT, PROMPT};

const TIMEOUT: Duration = Duration::from_secs(60);
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXHGmT3Vi2Ow6tpBlVmF0hDLCtq9ZiWUEvqpbOjPDEz test@host";

/// Boots `id` detached with `extra` ctr run flags; returns once its guest agent answers.
fn boot(env: &VmEnv, ns: &Namespace<'_>, id: &str, extra: &[&str]) -> Result<()> {
    let log = env.rig.dir().join(format!("{id}.log"));
    let log_uri = format!("file://{}", log.display());
    let mut args = vec!["-d", "--log-uri", &log_uri];
    args.extend_from_slice(extra);
    ns.ctr_ok(env.run_args(&args, TINY, id))?;
    wait_status(ns, id, "RUNNING", TIMEOUT)?;
    wait_for_file(&log, PROMPT, BOOT_TIMEOUT)?;
    let mut attempt = 0;
    wait_until("the guest agent", BOOT_TIMEOUT, || {
        attempt += 1;
        Ok(ns
            .ctr(["task", "exec", "--exec-id", &format!("ready{attempt}"), id, "true"])?
            .status
            .success()
            .then_some(()))
    })
}

/// A file of the guest's, through exec.
fn guest_file(ns: &Namespace<'_>, id: &str, exec_id: &str, path: &str) -> Result<Vec<u8>> {
    let out = ns.ctr(["task", "exec", "--exec-id", exec_id, id, "cat", path])?;
    ensure!(out.status.success(), "cat {path} in {id}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

fn stop(env: &VmEnv, ns: &Namespace<'_>, id: &str) -> Result<()> {
    ns.ctr_ok(["task", "kill", "--signal", "SIGKILL", id])?;
    wait_status(ns, id, "STOPPED", TIMEOUT)?;
    ns.ctr_ok(["task", "rm", id])?;
    ns.ctr_ok(["container", "rm", id])?;
    env.assert_gone(ns, id)
}

/// The parts of a MIME multipart user-data as Python's email parser (cloud-init's) reads
/// them: `content-type\nbody` each.
fn mime_parts(user_data: &[u8]) -> Result<Vec<String>> {
    let script = "import email, sys\nm = email.message_from_bytes(sys.stdin.buffer.read())\n\
                  assert m.is_multipart(), 'not multipart'\n\
                  for p in m.get_payload():\n    print(p.get_content_type()); print(p.get_payload()); print('\\x00')";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("python3")?;
    child.stdin.take().context("stdin")?.write_all(user_data)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "python's email parser: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text.split("\0\n").filter(|p| !p.trim().is_empty()).map(str::to_string).collect())
}

#[test]
fn the_seed_carries_user_data_keys_env_meta_data_and_the_hostname() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("cloudinit")?;
    let script = "#!/bin/sh\necho user-script-ran\n";
    boot(
        &env,
        &ns,
        "ci1",
        &[
            "--env",
            "GREETING=hello world",
            "--annotation",
            &format!("vm.containerd.io/user-data={script}"),
            "--annotation",
            &format!("vm.containerd.io/ssh-keys={KEY}"),
            "--annotation",
            "VirtletCloudInitMetaData=zone: z1\nlabels: {app: web}\n",
        ],
    )?;
    let user_data = guest_file(&ns, "ci1", "u1", "/run/seed/user-data")?;
    let parts = mime_parts(&user_data)?;
    ensure!(parts.len() == 2, "two parts: {parts:?}");
    ensure!(parts[0].starts_with("text/x-shellscript\n#!/bin/sh\n"), "the user's script first: {:?}", parts[0]);
    // The env is exported right after the `#!` line (ctr 2.x passes the annotation without
    // its last line break: only the text is compared).
    let exported =
        "#!/bin/sh\nset -a; [ -r /etc/cloud/environment ] && . /etc/cloud/environment; set +a\necho user-script-ran";
    ensure!(parts[0].contains(exported), "the user's script with the env exported: {:?}", parts[0]);
    ensure!(parts[1].starts_with("text/cloud-config\n#cloud-config\n"), "the shim's part: {:?}", parts[1]);
    ensure!(parts[1].contains(KEY) && parts[1].contains("GREETING='hello world'"), "{:?}", parts[1]);
    let meta_data = String::from_utf8(guest_file(&ns, "ci1", "m1", "/run/seed/meta-data")?)?;
    ensure!(
        meta_data.contains("instance-id: \"ci1\"")
            && meta_data.contains("local-hostname: \"ci1\"")
            && meta_data.contains("\"zone\": \"z1\"")
            && meta_data.contains("\"labels\": {\"app\":\"web\"}"),
        "meta-data: {meta_data:?}"
    );
    let hostname = String::from_utf8(guest_file(&ns, "ci1", "h1", "/proc/sys/kernel/hostname")?)?;
    ensure!(hostname.trim() == "ci1", "the guest's hostname: {hostname:?}");
    stop(&env, &ns, "ci1")?;

    // Taken verbatim, byte for byte; given as base64.
    let verbatim = "#cloud-config\n# kept as it is\nruncmd:\n  - [sh, -c, 'echo \"hi\"']\n";
    let encoded = base64::engine::general_purpose::STANDARD.encode(verbatim);
    boot(
        &env,
        &ns,
        "ci2",
        &[
            "--annotation",
            &format!("vm.containerd.io/user-data-base64={encoded}"),
            "--annotation",
            "vm.containerd.io/user-data-overwrite=true",
            "--annotation",
            &format!("VirtletSSHKeys={KEY}"),
        ],
    )?;
    let user_data = guest_file(&ns, "ci2", "u2", "/run/seed/user-data")?;
    ensure!(user_data == verbatim.as_bytes(), "verbatim user-data: {:?}", String::from_utf8_lossy(&user_data));
    stop(&env, &ns, "ci2")?;

    // No seed.
    boot(&env, &ns, "ci3", &["--annotation", "vm.containerd.io/cloud-init=none"])?;
    let seed = ns.ctr(["task", "exec", "--exec-id", "s3", "ci3", "ls", "/run/seed"])?;
    ensure!(!seed.status.success(), "cloud-init=none still gave a seed: {}", String::from_utf8_lossy(&seed.stdout));
    stop(&env, &ns, "ci3")
}
