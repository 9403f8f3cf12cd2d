//! Bad input reaches `ctr` as a clear error naming the field and the value, and leaves
//! nothing behind: no QEMU, no state dir, no mount, no cgroup, no container, no fd.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use integration::images::TINY;
use integration::oci::{container_disk, Entry, Image};
use integration::rig::{processes_of, Namespace};
use integration::vmenv::{wait_for_file, wait_status, VmEnv, BOOT_TIMEOUT, PROMPT};

struct Case {
    id: &'static str,
    image: String,
    args: Vec<String>,
    expect: Vec<String>,
}

fn case(id: &'static str, image: &str, args: &[&str], expect: &[&str]) -> Case {
    Case {
        id,
        image: image.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

fn qemu_img(args: &[&str]) -> Result<()> {
    let out = Command::new("qemu-img").args(args).output().context("running qemu-img (install qemu-utils)")?;
    ensure!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Images a hostile or careless publisher could push, as (name, image).
///
/// `dir` must be an absolute path: the symlink image points at a host disk written there.
fn bad_images(dir: &Path, tiny_disk: &Path) -> Result<Vec<Image>> {
    let tiny = std::fs::read(tiny_disk)?;
    // A disk the shim would accept and boot, on the host, for the symlink to aim at: only
    // a refused escape keeps it from being used (an absolute target is looked up inside
    // the image, where this path does not exist).
    let host_disk = dir.join("host-disk.qcow2");
    ensure!(host_disk.is_absolute(), "{} is not absolute", host_disk.display());
    std::fs::write(&host_disk, &tiny)?;
    let host_disk = host_disk.to_str().context("scratch dir is not UTF-8")?;
    let backing = dir.join("backing.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/etc/shadow",
        "-F",
        "raw",
        backing.to_str().unwrap_or_default(),
        "64M",
    ])?;
    let mut corrupt = tiny[..4096].to_vec();
    corrupt[20..24].copy_from_slice(&40u32.to_be_bytes()); // cluster_bits = 40
    let mut gzip = vec![0u8; 1024];
    gzip[..2].copy_from_slice(&[0x1f, 0x8b]);
    Ok(vec![
        Image::new("example.org/bad/no-disk:1").entry(Entry::bytes("/etc/hostname", "nodisk\n")),
        Image::new("example.org/bad/empty-disk-dir:1").entry(Entry::dir("/disk")),
        container_disk("example.org/bad/two-disks:1", tiny_disk, "a.qcow2")
            .entry(Entry::host_file("/disk/b.qcow2", tiny_disk).owner(107, 107)),
        container_disk("example.org/bad/backing:1", &backing, "backing.qcow2"),
        Image::new("example.org/bad/truncated:1").entry(Entry::bytes("/disk/trunc.qcow2", tiny[..72].to_vec())),
        Image::new("example.org/bad/corrupt:1").entry(Entry::bytes("/disk/corrupt.qcow2", corrupt)),
        Image::new("example.org/bad/text:1").entry(Entry::bytes("/disk/notes.txt", "this is not a disk\n")),
        // A whole number of sectors, so only its content tells it from a raw disk.
        Image::new("example.org/bad/text-4k:1").entry(Entry::bytes(
            "/disk/readme.img",
            "not a disk, just text\n".repeat(200).into_bytes()[..4096].to_vec(),
        )),
        Image::new("example.org/bad/gzip:1").entry(Entry::bytes("/disk/disk.img.gz", gzip)),
        Image::new("example.org/bad/symlink:1").entry(Entry::symlink("/disk/evil.qcow2", host_disk)),
        Image::new("example.org/bad/fifo:1").entry(Entry::fifo("/disk/pipe.qcow2")),
    ])
}

fn expect_refused(env: &VmEnv, ns: &Namespace<'_>, c: &Case) -> Result<()> {
    let mut args: Vec<&str> = vec!["--rm"];
    args.extend(c.args.iter().map(String::as_str));
    let out = ns.ctr(env.run_args(&args, &c.image, c.id))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{}: ctr run succeeded; stdout {}", c.id, String::from_utf8_lossy(&out.stdout));
    for expected in &c.expect {
        ensure!(stderr.contains(expected.as_str()), "{}: error lacks {expected:?}: {stderr}", c.id);
    }
    env.assert_gone(ns, c.id).with_context(|| c.id.to_string())?;
    let containers = ns.ctr_ok(["container", "ls", "-q"])?;
    ensure!(!containers.lines().any(|l| l.trim() == c.id), "{}: container left", c.id);
    Ok(())
}

#[test]
fn bad_images_annotations_and_qemu_are_refused_cleanly() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("bad")?;
    let dir = tempfile::tempdir()?;
    for (i, image) in bad_images(dir.path(), &env.images.disks.qcow2)?.into_iter().enumerate() {
        let archive = dir.path().join(format!("bad{i}.tar"));
        image.write_archive(&archive)?;
        ns.import(&archive)?;
    }
    let missing_qemu = dir.path().join("missing-qemu.toml");
    std::fs::write(
        &missing_qemu,
        format!(
            "accel = \"tcg\"\nstate_dir = \"{}\"\nqemu = \"/nonexistent/qemu-system-x86_64\"\n",
            env.state_dir.display()
        ),
    )?;
    let failing_qemu = dir.path().join("failing-qemu.toml");
    std::fs::write(
        &failing_qemu,
        format!("accel = \"tcg\"\nstate_dir = \"{}\"\nqemu = \"/bin/false\"\n", env.state_dir.display()),
    )?;
    // A QEMU that speaks QMP but says it is 7.1: refused by version, not by accident.
    let old_qemu_config = env.fake_qemu_config(dir.path(), (7, 1, 0), false)?;
    // VMs only: an image without a disk is refused rather than run by runc.
    let vms_only = dir.path().join("vms-only.toml");
    std::fs::write(
        &vms_only,
        format!("accel = \"tcg\"\nstate_dir = \"{}\"\nnon_vm_containers = \"refuse\"\n", env.state_dir.display()),
    )?;
    let bad_config = dir.path().join("bad-config.toml");
    std::fs::write(&bad_config, "accel = \"xen\"\n")?;
    let cfg = |path: &Path| path.display().to_string();

    let cases = vec![
        case(
            "no-disk",
            "example.org/bad/no-disk:1",
            &["--runtime-config-path", &cfg(&vms_only)],
            &["no /disk directory", "non_vm_containers = \"refuse\""],
        ),
        // Run by runc as an ordinary container, which fails: runc's reason reaches ctr.
        case("no-disk-no-command", "example.org/bad/no-disk:1", &[], &["runc create", "args"]),
        case("empty-disk-dir", "example.org/bad/empty-disk-dir:1", &[], &["/disk directory is empty"]),
        case("two-disks", "example.org/bad/two-disks:1", &[], &["2 files", "a.qcow2", "b.qcow2"]),
        case("backing", "example.org/bad/backing:1", &[], &["backing.qcow2", "backing file", "/etc/shadow"]),
        case("truncated", "example.org/bad/truncated:1", &[], &["trunc.qcow2"]),
        case("corrupt", "example.org/bad/corrupt:1", &[], &["corrupt.qcow2", "cluster"]),
        case("text", "example.org/bad/text:1", &[], &["notes.txt", "not a multiple of 512"]),
        case(
            "text-4k",
            "example.org/bad/text-4k:1",
            &[],
            &["readme.img", "neither qcow2 nor a bootable raw disk", "text"],
        ),
        case("gzip", "example.org/bad/gzip:1", &[], &["disk.img.gz", "gzip"]),
        // evil.qcow2 -> <scratch>/host-disk.qcow2, a valid disk on the host: refused only if the
        // link is resolved inside the image, where its target does not exist.
        case("symlink", "example.org/bad/symlink:1", &[], &["/disk/evil.qcow2", "No such file"]),
        // must fail at once, not block the shim opening a pipe nobody writes
        case("fifo", "example.org/bad/fifo:1", &[], &["/disk/pipe.qcow2", "not a regular file"]),
        case("cpus-abc", TINY, &["--annotation", "vm.containerd.io/cpus=abc"], &["vm.containerd.io/cpus", "abc"]),
        // Guest configuration: each names its annotation.
        case(
            "ssh-key",
            TINY,
            &["--annotation", "vm.containerd.io/ssh-keys=ssh-rsa AAAAnotakey"],
            &["vm.containerd.io/ssh-keys", "not an SSH public key"],
        ),
        case(
            "user-data-b64",
            TINY,
            &["--annotation", "vm.containerd.io/user-data-base64=@@@"],
            &["vm.containerd.io/user-data-base64", "not base64"],
        ),
        case(
            "cloud-init-type",
            TINY,
            &["--annotation", "vm.containerd.io/cloud-init=floppy"],
            &["vm.containerd.io/cloud-init", "use nocloud, configdrive or none"],
        ),
        case(
            "seed-format",
            TINY,
            &["--annotation", "vm.containerd.io/cloud-init-format=ext4"],
            &["vm.containerd.io/cloud-init-format", "ext4", "use vfat or iso"],
        ),
        case(
            "root-size",
            TINY,
            &["--annotation", "VirtletRootVolumeSize=lots"],
            &["VirtletRootVolumeSize", "lots", "not a disk size"],
        ),
        case(
            "force-dhcp",
            TINY,
            &["--annotation", "VirtletForceDHCPNetworkConfig=yes"],
            &["VirtletForceDHCPNetworkConfig", "\"yes\"", "true or false"],
        ),
        case(
            "force-dhcp-passthru",
            TINY,
            &[
                "--annotation",
                "VirtletForceDHCPNetworkConfig=true",
                "--annotation",
                "vm.containerd.io/macvtap-mode=passthru",
            ],
            &["vm.containerd.io/macvtap-mode", "passthru", "needs bridge mode"],
        ),
        case(
            "user-data-yaml",
            TINY,
            &["--annotation", "vm.containerd.io/user-data=#cloud-config\nruncmd: [x"],
            &["vm.containerd.io/user-data", "not valid YAML"],
        ),
        case(
            "virtlet-source",
            TINY,
            &["--annotation", "VirtletSSHKeySource=secret/keys"],
            &["VirtletSSHKeySource", "cannot read"],
        ),
        case("cpus-0", TINY, &["--annotation", "vm.containerd.io/cpus=0"], &["vm.containerd.io/cpus", "\"0\""]),
        case(
            "memory-1ki",
            TINY,
            &["--annotation", "vm.containerd.io/memory=1Ki"],
            &["vm.containerd.io/memory", "1Ki", "minimum"],
        ),
        case(
            "memory-2ti",
            TINY,
            &["--annotation", "vm.containerd.io/memory=2Ti"],
            &["vm.containerd.io/memory", "2Ti", "max_memory"],
        ),
        case(
            "memory-over-limit",
            TINY,
            &["--memory-limit", "268435456", "--annotation", "vm.containerd.io/memory=512Mi"],
            &["vm.containerd.io/memory", "512Mi", "memory limit 256Mi"],
        ),
        case(
            "disk-escape",
            TINY,
            &["--annotation", "vm.containerd.io/disk=../../etc/shadow"],
            &["vm.containerd.io/disk", "../../etc/shadow"],
        ),
        case(
            "disk-host-path",
            TINY,
            &["--annotation", "vm.containerd.io/disk=/etc/passwd"],
            &["vm.containerd.io/disk", "/etc/passwd"],
        ),
        case(
            "qemu-missing",
            TINY,
            &["--runtime-config-path", &cfg(&missing_qemu)],
            &["/nonexistent/qemu-system-x86_64"],
        ),
        case("qemu-fails", TINY, &["--runtime-config-path", &cfg(&failing_qemu)], &["/bin/false", "exited at once"]),
        case(
            "qemu-too-old",
            TINY,
            &["--runtime-config-path", &cfg(&old_qemu_config)],
            &["qemu-7.1", "version 7.1.0", "needs QEMU 7.2"],
        ),
        case("bad-config", TINY, &["--runtime-config-path", &cfg(&bad_config)], &[&cfg(&bad_config), "xen"]),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = expect_refused(&env, &ns, c) {
            failures.push(format!("{e:#}"));
        }
    }
    ensure!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    Ok(())
}

/// Containers of one pod share a shim; a refused Create in it must not leak fds or
/// disturb the VM already running there.
#[test]
fn refused_create_in_a_shared_shim_leaks_no_fd() -> Result<()> {
    let env = VmEnv::start()?;
    let ns = env.namespace("shared")?;
    let dir = tempfile::tempdir()?;
    let backing = bad_images(dir.path(), &env.images.disks.qcow2)?.remove(3);
    let archive = dir.path().join("backing.tar");
    backing.write_archive(&archive)?;
    ns.import(&archive)?;
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=pod-1"];
    let log = env.rig.dir().join("good.log");
    let log_uri = format!("file://{}", log.display());
    let mut good_args = vec!["-d", "--log-uri", &log_uri];
    good_args.extend(pod);
    ns.ctr_ok(env.run_args(&good_args, TINY, "good"))?;
    wait_for_file(&log, PROMPT, BOOT_TIMEOUT)?;

    let shims: Vec<i32> = processes_of(env.rig.dir())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-vm-v1") && cmd.contains("-id"))
        .map(|(pid, _)| pid)
        .collect();
    ensure!(shims.len() == 1, "expected one VM shim, found {shims:?}");
    let shim = LiveProcess::of(shims[0])?;
    let before = shim.fd_count()?;

    // Failures after the QMP socket is made and QEMU started must leak nothing either.
    let failing_qemu = dir.path().join("failing-qemu.toml");
    std::fs::write(
        &failing_qemu,
        format!("accel = \"tcg\"\nstate_dir = \"{}\"\nqemu = \"/bin/false\"\n", env.state_dir.display()),
    )?;
    let failing_qemu = failing_qemu.display().to_string();
    let old_qemu = env.fake_qemu_config(dir.path(), (7, 1, 0), false)?.display().to_string();
    for (id, image, extra) in [
        ("refused-1", "example.org/bad/backing:1", vec![]),
        ("refused-2", TINY, vec!["--annotation", "vm.containerd.io/cpus=abc"]),
        ("refused-3", "example.org/bad/backing:1", vec![]),
        ("refused-4", TINY, vec!["--runtime-config-path", failing_qemu.as_str()]),
        ("refused-5", TINY, vec!["--runtime-config-path", old_qemu.as_str()]),
    ] {
        let mut args = vec!["--rm"];
        args.extend(pod);
        args.extend(extra);
        let out = ns.ctr(env.run_args(&args, image, id))?;
        ensure!(!out.status.success(), "{id} was not refused");
        env.assert_gone(&ns, id)?;
    }
    let after = shim.fd_count()?;
    ensure!(after <= before, "shim fds grew from {before} to {after} over refused creates");

    // A second VM in the same shim: each QEMU holds its own console and nobody else's.
    let log2 = env.rig.dir().join("second.log");
    let log2_uri = format!("file://{}", log2.display());
    let mut second_args = vec!["-d", "--log-uri", &log2_uri];
    second_args.extend(pod);
    ns.ctr_ok(env.run_args(&second_args, TINY, "second"))?;
    wait_for_file(&log2, PROMPT, BOOT_TIMEOUT)?;
    for id in ["good", "second"] {
        let pid = wait_status(&ns, id, "RUNNING", Duration::from_secs(5))?;
        let targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        // QEMU holds its console's pty twice (the descriptor passed in, and its /dev/fdset
        // copy): count distinct ptys.
        let mut ptys: Vec<&String> =
            targets.iter().filter(|t| t.starts_with("/dev/pts/") || t.as_str() == "/dev/ptmx").collect();
        ptys.sort();
        ptys.dedup();
        ensure!(ptys.len() == 1 && ptys[0].starts_with("/dev/pts/"), "QEMU of {id} holds consoles {ptys:?}");
        let pipes = targets.iter().filter(|t| t.starts_with("pipe:")).count();
        ensure!(pipes == 0, "QEMU of {id} inherited pipes: {targets:?}");
        // install-deps.sh makes the user QEMU runs as: a guest escape is not root.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default().to_string();
        let expected = std::process::Command::new("id").args(["-u", "containerd-shim-vm"]).output()?;
        let expected = String::from_utf8_lossy(&expected.stdout).trim().to_string();
        ensure!(!expected.is_empty(), "no user containerd-shim-vm (integration/scripts/install-deps.sh makes it)");
        ensure!(
            uid.split_whitespace().all(|u| u == expected),
            "QEMU of {id} runs with uids {uid}, not containerd-shim-vm's {expected}"
        );
    }
    ns.ctr_ok(["task", "kill", "-s", "SIGKILL", "second"])?;
    wait_status(&ns, "second", "STOPPED", Duration::from_secs(60))?;
    ns.ctr_ok(["task", "rm", "second"])?;
    ns.ctr_ok(["container", "rm", "second"])?;
    shim.check().context("the pod's shim must keep serving")?;
    wait_status(&ns, "good", "RUNNING", Duration::from_secs(5))?;
    ns.ctr_ok(["task", "kill", "good"])?;
    wait_status(&ns, "good", "STOPPED", Duration::from_secs(60))?;
    ns.ctr_ok(["task", "rm", "good"])?;
    ns.ctr_ok(["container", "rm", "good"])?;
    env.assert_gone(&ns, "good")
}

/// A process that must stay the same one: its pid and its start time (field 22 of
/// /proc/<pid>/stat, in clock ticks since boot), so a pid reused by another process is noticed.
struct LiveProcess {
    pid: i32,
    start_time: u64,
}

impl LiveProcess {
    fn of(pid: i32) -> Result<LiveProcess> {
        let (state, start_time) = Self::stat(pid)?;
        ensure!(state != "Z" && state != "X", "process {pid} is already dead (state {state})");
        Ok(LiveProcess { pid, start_time })
    }

    /// (state, start time) from /proc/<pid>/stat; an error if there is no such process.
    fn stat(pid: i32) -> Result<(String, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid} is gone: reading /proc/{pid}/stat"))?;
        // The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        let state = fields.first().with_context(|| format!("no state in /proc/{pid}/stat: {stat}"))?;
        let start_time = fields
            .get(19)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no start time in /proc/{pid}/stat: {stat}"))?;
        Ok((state.to_string(), start_time))
    }

    /// Fails unless the process is still running and still the one first seen.
    fn check(&self) -> Result<()> {
        let (state, start_time) = Self::stat(self.pid)?;
        ensure!(state != "Z" && state != "X", "process {} has exited (state {state})", self.pid);
        ensure!(
            start_time == self.start_time,
            "pid {} is another process now (started at tick {start_time}, not {})",
            self.pid,
            self.start_time
        );
        Ok(())
    }

    /// Open fds of the process; fails if it is gone or changed, or its fd table is unreadable.
    fn fd_count(&self) -> Result<usize> {
        self.check()?;
        let dir = format!("/proc/{}/fd", self.pid);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            entry.with_context(|| format!("reading {dir}"))?;
            count += 1;
        }
        // Still the same live process after the count (an exited one shows no fds).
        self.check()?;
        ensure!(count > 0, "{dir} lists no fds");
        Ok(count)
    }
}
