//! What the guest is told through its seed, read back inside the tiny guest (which copies
//! the seed's files to /run/seed) through exec: the user's user data merged with the
//! shim's (the process env) or taken byte for byte, the SSH keys and the user's meta-data,
//! the hostname; NoCloud and the config drive, vfat and ISO 9660, each file byte for byte
//! as the shim wrote it into the image; and no seed at all with `cloud-init: none`. Then
//! what Virtlet's hardware annotations and the root size give the guest.

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use integration::images::TINY;
use integration::rig::Namespace;
use integration::vmenv::{guest_file, wait_for_agent, wait_for_file, wait_status, VmEnv, BOOT_TIMEOUT, PROMPT};

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
    wait_for_agent(ns, id, BOOT_TIMEOUT)
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
    ensure!(parts[1].contains("GREETING='hello world'"), "{:?}", parts[1]);
    let [meta_data, _] =
        <[String; 2]>::try_from(env.seed_as_the_guest_read_it(&ns, "ci1", &["meta-data", "user-data"])?)
            .map_err(|_| anyhow::anyhow!("two files"))?;
    ensure!(
        meta_data.contains("instance-id: \"ci1\"")
            && meta_data.contains("local-hostname: \"ci1\"")
            && meta_data.contains(&format!("public-keys: [\"{KEY}\"]"))
            && meta_data.contains("\"zone\": \"z1\"")
            && meta_data.contains("\"labels\": {\"app\":\"web\"}"),
        "meta-data: {meta_data:?}"
    );
    let hostname = String::from_utf8(guest_file(&ns, "ci1", "h1", "/proc/sys/kernel/hostname")?)?;
    ensure!(hostname.trim() == "ci1", "the guest's hostname: {hostname:?}");
    env.kill_and_remove(&ns, "ci1")?;

    // Taken verbatim, byte for byte; given as base64; on an ISO 9660 seed. The keys are
    // meta-data and the env file vendor-data, so verbatim user data keeps them.
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
            "--annotation",
            "vm.containerd.io/cloud-init-format=iso",
            "--env",
            "GREETING=verbatim",
        ],
    )?;
    let texts = env.seed_as_the_guest_read_it(&ns, "ci2", &["user-data", "meta-data", "vendor-data"])?;
    ensure!(texts[0] == verbatim, "verbatim user-data: {:?}", texts[0]);
    ensure!(texts[1].contains(KEY), "the keys with verbatim user data: {:?}", texts[1]);
    ensure!(
        texts[2].starts_with("#cloud-config\n")
            && texts[2].contains("/etc/cloud/environment")
            && texts[2].contains("GREETING='verbatim'"),
        "the env file beside verbatim user data: {:?}",
        texts[2]
    );
    env.kill_and_remove(&ns, "ci2")?;

    // A config drive, vfat (Virtlet's annotation) and ISO 9660 (ours).
    for (id, extra) in
        [("ci4", "VirtletCloudInitImageType=configdrive"), ("ci5", "vm.containerd.io/cloud-init-format=iso")]
    {
        let mut flags = vec!["--env", "GREETING=hello", "--annotation", extra, "--annotation"];
        let keys = format!("vm.containerd.io/ssh-keys={KEY}");
        flags.push(&keys);
        if id == "ci5" {
            flags.extend(["--annotation", "vm.containerd.io/cloud-init=configdrive"]);
        }
        flags.extend(["--annotation", "vm.containerd.io/meta-data=zone: z1"]);
        boot(&env, &ns, id, &flags)?;
        let texts =
            env.seed_as_the_guest_read_it(&ns, id, &["openstack/latest/meta_data.json", "openstack/latest/user_data"])?;
        let meta: serde_json::Value = serde_json::from_str(&texts[0])?;
        ensure!(
            meta["uuid"] == id && meta["hostname"] == id && meta["public_keys"]["key-0"] == KEY && meta["zone"] == "z1",
            "{id} meta_data.json: {meta}"
        );
        ensure!(texts[1].contains("GREETING='hello'"), "{id} user_data: {:?}", texts[1]);
        env.kill_and_remove(&ns, id)?;
    }

    // No seed.
    boot(&env, &ns, "ci3", &["--annotation", "vm.containerd.io/cloud-init=none"])?;
    let seed = ns.ctr(["task", "exec", "--exec-id", "s3", "ci3", "ls", "/run/seed"])?;
    ensure!(!seed.status.success(), "cloud-init=none still gave a seed: {}", String::from_utf8_lossy(&seed.stdout));
    env.kill_and_remove(&ns, "ci3")
}

#[test]
fn virtlets_hardware_annotations_and_the_root_size_reach_the_guest() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("hardware")?;
    let uuid = "53e1d0f4-3b7a-4c1e-9c5d-2a6b8f0e1d2c";
    let uuid_flag = format!("VirtletSystemUUID={}", uuid.to_uppercase());
    boot(
        &env,
        &ns,
        "hw1",
        &[
            "--annotation",
            "VirtletDiskDriver=scsi",
            "--annotation",
            "VirtletCPUModel=host-model",
            "--annotation",
            &uuid_flag,
            "--annotation",
            "VirtletRootVolumeSize=96Mi",
            // No seed, so that the guest has no virtio disk at all.
            "--annotation",
            "vm.containerd.io/cloud-init=none",
        ],
    )?;
    let product = String::from_utf8(guest_file(&ns, "hw1", "p1", "/sys/class/dmi/id/product_uuid")?)?;
    ensure!(product.trim() == uuid, "the guest's SMBIOS UUID: {product:?}");
    // The root disk is a SCSI disk (sda, not vda), grown from the image's 32 MiB.
    let sectors = String::from_utf8(guest_file(&ns, "hw1", "s1", "/sys/block/sda/size")?)?;
    ensure!(sectors.trim() == (96u64 << 20 >> 9).to_string(), "the root disk has {sectors:?} sectors");
    // host-model under TCG is QEMU's `max`, which has SSE4.2; the default qemu64 has not.
    let cpuinfo = String::from_utf8(guest_file(&ns, "hw1", "c1", "/proc/cpuinfo")?)?;
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    ensure!(flags.split_whitespace().any(|f| f == "sse4_2"), "the guest's CPU flags: {flags}");
    let virtio = ns.ctr(["task", "exec", "--exec-id", "v1", "hw1", "ls", "/sys/block/vda"])?;
    ensure!(!virtio.status.success(), "the guest has a virtio disk");
    env.kill_and_remove(&ns, "hw1")
}
