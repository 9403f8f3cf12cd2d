//! Helpers shared by unit tests.

use std::path::{Path, PathBuf};

/// A fresh scratch directory, removed on drop.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Scratch(
            tempfile::Builder::new().prefix(&format!("shim-test-{tag}-")).tempdir().expect("creating a scratch dir"),
        )
    }

    pub fn dir(&self) -> &Path {
        self.0.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}
