//! The seed writer as the serving shim runs it: the shim's own binary with `--write-seed`,
//! a Seed as JSON on stdin, the image on stdout (a regular file), an error on stderr.

use std::io::{Read, Seek, Write};
use std::process::{Command, Stdio};

use containerd_shim_vm::host::seed_writer::{self, WRITE_SEED_ARG};
use containerd_shim_vm::plan::guest::{GuestConfig, UserData};
use containerd_shim_vm::seed::Seed;

/// Runs the writer on `seed` (JSON text) into a new file; its exit status, stderr and image.
fn run_writer(seed: &[u8]) -> (std::process::ExitStatus, String, Vec<u8>) {
    let mut image = tempfile::tempfile().expect("a temporary file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_containerd-shim-vm-v1"))
        .arg(WRITE_SEED_ARG)
        .stdin(Stdio::piped())
        .stdout(image.try_clone().expect("a second handle on the file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the shim's binary");
    child.stdin.take().expect("stdin").write_all(seed).expect("writing the seed");
    let output = child.wait_with_output().expect("waiting for the writer");
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned(), read_back(&mut image))
}

/// What a writer left in `image`.
fn read_back(image: &mut std::fs::File) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.rewind().expect("rewinding the image");
    image.read_to_end(&mut bytes).expect("reading the image");
    bytes
}

/// The image the library writes for `seed`: what the child must write too.
fn library_image(seed: &Seed) -> Vec<u8> {
    let mut image = std::io::Cursor::new(Vec::new());
    seed.write_image(&mut image).expect("the library writes the image");
    image.into_inner()
}

fn seed(user_data: &str) -> Seed {
    Seed {
        instance_id: "vm1".into(),
        hostname: "vm1".into(),
        network: None,
        guest: GuestConfig {
            user_data: Some(UserData { text: user_data.into(), verbatim: true }),
            ..GuestConfig::default()
        },
    }
}

#[test]
fn the_child_writes_the_same_image_as_the_library() {
    let seed = seed("#cloud-config\nruncmd: [[echo, hi]]\n");
    let (status, stderr, image) = run_writer(&serde_json::to_vec(&seed).unwrap());
    assert!(status.success(), "the writer failed: {status}: {stderr}");
    assert!(!image.is_empty());
    assert!(image == library_image(&seed), "the child's image differs from Seed::write_image's");
}

#[test]
fn the_childs_error_names_what_is_wrong() {
    let mut bad = seed("#cloud-config\n");
    bad.instance_id = "../etc".into();
    let (status, stderr, _) = run_writer(&serde_json::to_vec(&bad).unwrap());
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("instance id \"../etc\""), "stderr: {stderr}");

    let (status, stderr, _) = run_writer(b"{\"instance_id\": 7}");
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("reading the seed from the shim"), "stderr: {stderr}");
}

/// The serving shim's side, `seed_writer::write`, with the binary as its child: a request
/// larger than a pipe holds, and a failure whose message comes back.
#[tokio::test(flavor = "current_thread")]
async fn the_shim_hands_a_large_seed_over_and_gets_the_childs_error_back() {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_containerd-shim-vm-v1"));
    let large = seed(&format!("#cloud-config\nwrite_files: [{{path: /big, content: {}}}]\n", "x".repeat(256 << 10)));
    let mut image = tempfile::tempfile().unwrap();
    seed_writer::write(binary, &large, image.try_clone().unwrap()).await.expect("writing a 256 KiB seed");
    assert!(read_back(&mut image) == library_image(&large), "the image differs from Seed::write_image's");

    let mut bad = seed("#cloud-config\n");
    bad.instance_id = String::new();
    let e = seed_writer::write(binary, &bad, tempfile::tempfile().unwrap()).await.unwrap_err().to_string();
    assert!(e.contains("instance id \"\""), "{e}");
}
