//! Writes a seed image in a short-lived child of the shim's own binary, so that the
//! long-running shim never maps the renderers' and image writers' code (YAML, FAT, ISO
//! 9660): one shim runs per VM, and text it ran once stays resident in every one of them.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::seed::{Seed, SeedError};

/// The argument that makes the shim's binary a seed writer ([`child_main`]).
pub const WRITE_SEED_ARG: &str = "--write-seed";

/// A seed of the largest size takes milliseconds; this only bounds a child gone wrong.
const WRITER_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `seed`'s image into `image` (an empty regular file) by running `self_exe
/// --write-seed`; the child's error, if any, comes back as it said it.
pub async fn write(self_exe: &Path, seed: &Seed, image: std::fs::File) -> Result<(), SeedError> {
    // A unit test's binary is the test harness, not the shim: it writes in-process, through
    // the same `Seed::write_image` the child runs.
    if cfg!(test) {
        return seed.write_image(image).map(|_| ());
    }
    let request = serde_json::to_vec(seed).map_err(|e| SeedError::Image(format!("encoding the seed: {e}")))?;
    let spawn_error = |e: std::io::Error| SeedError::Io {
        what: format!("starting {} {WRITE_SEED_ARG}", self_exe.display()),
        source: e,
    };
    let mut child = tokio::process::Command::new(self_exe)
        .arg(WRITE_SEED_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(image))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let mut stdin = child.stdin.take().ok_or_else(|| SeedError::Image("the writer's stdin was not piped".into()))?;
    // The request fits the pipe only up to 64 KiB: written while the child reads it, then
    // the pipe closed (dropped), which is the end of the request to the child.
    let feed = async move {
        let written = stdin.write_all(&request).await;
        drop(stdin);
        written
    };
    let (fed, output) =
        match tokio::time::timeout(WRITER_TIMEOUT, async { tokio::join!(feed, child.wait_with_output()) }).await {
            Ok(done) => done,
            Err(_) => return Err(SeedError::Image(format!("the seed writer did not finish in {WRITER_TIMEOUT:?}"))),
        };
    let output = output.map_err(|e| SeedError::Io { what: "waiting for the seed writer".into(), source: e })?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(SeedError::Child(if said.is_empty() {
            format!("the seed writer ended with {}", output.status)
        } else {
            said
        }));
    }
    fed.map_err(|e| SeedError::Io { what: "handing the seed to its writer".into(), source: e })
}

/// Entry point of `<shim> --write-seed`: a [`Seed`] as JSON on stdin, its image written
/// to stdout (a regular file), the reason on stderr and exit status 1 if it cannot be.
pub fn child_main() -> i32 {
    match write_from_stdio() {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            1
        }
    }
}

fn write_from_stdio() -> Result<(), SeedError> {
    use std::os::fd::AsFd;
    let seed: Seed = serde_json::from_reader(std::io::stdin().lock())
        .map_err(|e| SeedError::Image(format!("reading the seed from the shim: {e}")))?;
    // The image is written with seeks: stdout is the file itself, taken as one.
    let image = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| SeedError::Io { what: "taking stdout as the image file".into(), source: e })?;
    seed.write_image(image).map(|_| ())
}
