//! The task's private directory under the configured state dir (QEMU's log and working
//! directory), made with a token inside that proves the shim made it.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use tracing::warn;

/// The file in the state dir holding its token.
const OWNER_FILE: &str = "owner";

/// A token that no other state dir has.
pub fn new_token() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")?.trim().to_string())
}

/// Makes `dir` (mode 0700; its parents 0711) with `token` inside. A directory left there
/// by a task that is gone (the journal in its bundle was replayed before this) is
/// removed first.
pub fn create(dir: &Path, token: &str) -> std::io::Result<()> {
    let context =
        |what: &str, e: std::io::Error| std::io::Error::new(e.kind(), format!("{what} {}: {e}", dir.display()));
    if dir.exists() {
        // QEMU works in its state dir: one still running there is a live VM, not debris.
        if let Some(pid) = working_in(dir) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("a VM for this container is still running (QEMU pid {pid}, state {})", dir.display()),
            ));
        }
        warn!(dir = %dir.display(), "removing a stale state dir");
        std::fs::remove_dir_all(dir).map_err(|e| context("removing stale state dir", e))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o711).create(parent).map_err(|e| context("creating", e))?;
    }
    // Made whole under a temporary name, then renamed: a directory at `dir` always
    // carries its token, so a replay can always tell it is ours.
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = dir.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::DirBuilder::new().mode(0o700).create(&partial).map_err(|e| context("creating state dir", e))?;
    let mut owner = std::fs::File::create(partial.join(OWNER_FILE)).map_err(|e| context("writing the token in", e))?;
    owner.write_all(token.as_bytes()).map_err(|e| context("writing the token in", e))?;
    std::fs::rename(&partial, dir).map_err(|e| context("naming state dir", e))
}

/// A process whose working directory is `dir`.
fn working_in(dir: &Path) -> Option<u32> {
    let dir = std::fs::canonicalize(dir).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        (std::fs::read_link(entry.path().join("cwd")).ok()? == dir).then_some(pid)
    })
}

/// Removes `dir` if it holds `token`; a directory that is already gone is fine.
pub fn remove(dir: &Path, token: &str) -> Result<(), String> {
    match std::fs::read_to_string(dir.join(OWNER_FILE)) {
        Ok(found) if found.trim() == token => {}
        // Not the directory this task made (its own was never made, or is gone; the
        // shim makes a state dir whole with its token): nothing of this task's is there.
        Ok(_) => {
            warn!(dir = %dir.display(), "state dir made by another task; left alone");
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.exists() {
                warn!(dir = %dir.display(), "state dir without a token: not made by this shim; left alone");
            }
            return Ok(());
        }
        Err(e) => return Err(format!("state dir {}: reading its token: {e}; left alone", dir.display())),
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("removing state dir {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Scratch;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_with_a_token_and_removed_only_with_it() {
        let scratch = Scratch::new("state-dir");
        let dir = scratch.path("root/ns/vm1");
        let token = new_token().unwrap();
        create(&dir, &token).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(remove(&dir, "other").is_ok());
        assert!(dir.is_dir(), "another task's: left alone");
        remove(&dir, &token).unwrap();
        assert!(!dir.exists());
        remove(&dir, &token).unwrap();
        // a directory the shim did not make (no token) is left alone
        std::fs::create_dir_all(&dir).unwrap();
        assert!(remove(&dir, &token).is_ok());
        assert!(dir.is_dir());
    }
}
