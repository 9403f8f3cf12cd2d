//! The journal: a small record in the task's bundle of every host resource the task
//! holds. Each resource is written down (and fsynced) before it is taken and marked
//! when it is released. Delete, a failed Create, the `delete` action after a shim was
//! killed, and a Create that finds an old journal all release the same way: by
//! replaying it, newest resource first.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::process::ProcessId;
use super::{cgroup, network, placement, rootfs, state_dir};
use netns::{Interface, NetnsId};

/// The journal's file name in the bundle.
pub const JOURNAL_FILE: &str = "vm-journal.json";
const FORMAT_VERSION: u32 = 1;
/// How long a replay waits for a killed QEMU to be gone. The `delete` action has 5 s in
/// all (containerd's io.containerd.timeout.shim.cleanup).
const QEMU_GONE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a replay retries removing a cgroup that a dying process still holds.
const CGROUP_EMPTY_TIMEOUT: Duration = Duration::from_millis(1500);

/// A host resource a task holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// The image mounted on the bundle's rootfs.
    RootfsMount { target: PathBuf },
    /// The task's private directory under the configured state dir, with the token
    /// written inside it that proves the shim made it.
    StateDir { path: PathBuf, token: String },
    /// QEMU's cgroup (path relative to the hierarchy root); `created` if the shim made it.
    /// One that was there before is someone else's: neither emptied nor removed.
    Cgroup { path: String, created: bool },
    /// The QEMU process; `None` between asking for it and knowing its pid.
    Qemu { process: Option<ProcessId> },
    /// A pod interface as it was before the VM took it: put back on release.
    PodInterface { netns: PathBuf, netns_id: NetnsId, saved: Box<Interface> },
    /// A macvtap the task made on a pod interface.
    Macvtap { netns: PathBuf, netns_id: NetnsId, name: String },
    /// The macvlan beside a macvtap that the guest's DHCP is answered from.
    Macvlan { netns: PathBuf, netns_id: NetnsId, name: String },
    /// An ordinary container runc created (with its cgroup): deleted by force.
    RuncContainer(super::runc::RuncHandle),
    /// The VM's reservation `key` in the host-wide placement ledger at `ledger`.
    Placement { ledger: PathBuf, key: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    resource: Resource,
    released: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    version: u32,
    namespace: String,
    id: String,
    /// The configured state dir when the task was created: a state dir the journal
    /// names is removed only if it is `<state_root>/<namespace>/<id>`.
    state_root: PathBuf,
    entries: Vec<Entry>,
}

/// Names one resource in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryId(usize);

#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {reason}")]
pub struct JournalError {
    path: PathBuf,
    reason: String,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The pid of a QEMU that was still running and was killed (a dead shim's).
    pub killed_qemu: Option<u32>,
    /// Resources that could not be released, each with its reason.
    pub failures: Vec<String>,
}

pub struct Journal {
    path: PathBuf,
    record: Record,
}

impl Journal {
    /// Starts an empty journal for a task in `bundle`. An old journal there (a shim that
    /// died before Delete) is replayed first.
    pub fn begin(bundle: &Path, namespace: &str, id: &str, state_root: &Path) -> Result<Journal, JournalError> {
        if let Some(old) = Journal::open(bundle)? {
            warn!(bundle = %bundle.display(), "releasing what an earlier shim left for this task");
            let replayed = old.replay();
            if !replayed.failures.is_empty() {
                return Err(JournalError {
                    path: bundle.join(JOURNAL_FILE),
                    reason: format!(
                        "an earlier task's resources could not be released: {}",
                        replayed.failures.join("; ")
                    ),
                });
            }
        }
        // Written with its first resources (`intend`): an empty journal has nothing to say.
        Ok(Journal {
            path: bundle.join(JOURNAL_FILE),
            record: Record {
                version: FORMAT_VERSION,
                namespace: namespace.to_string(),
                id: id.to_string(),
                state_root: state_root.to_path_buf(),
                entries: Vec::new(),
            },
        })
    }

    /// The journal in `bundle`, if there is one.
    pub fn open(bundle: &Path) -> Result<Option<Journal>, JournalError> {
        let path = bundle.join(JOURNAL_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(JournalError { path, reason: e.to_string() }),
        };
        let record: Record =
            serde_json::from_slice(&text).map_err(|e| JournalError { path: path.clone(), reason: e.to_string() })?;
        if record.version != FORMAT_VERSION {
            return Err(JournalError {
                path,
                reason: format!("format version {} is not {FORMAT_VERSION}", record.version),
            });
        }
        Ok(Some(Journal { path, record }))
    }

    /// The task the journal belongs to: (namespace, id).
    pub fn owner(&self) -> (&str, &str) {
        (&self.record.namespace, &self.record.id)
    }

    /// Writes `resource` down before it is taken.
    pub fn intend(&mut self, resource: Resource) -> Result<EntryId, JournalError> {
        Ok(self.intend_all(vec![resource])?[0])
    }

    /// Writes several resources down at once (one write, one sync), before any is taken.
    /// Releasing one that was never taken is harmless, so a plan's resources can all be
    /// recorded up front.
    pub fn intend_all(&mut self, resources: Vec<Resource>) -> Result<Vec<EntryId>, JournalError> {
        let first = self.record.entries.len();
        self.record.entries.extend(resources.into_iter().map(|resource| Entry { resource, released: false }));
        self.write()?;
        Ok((first..self.record.entries.len()).map(EntryId).collect())
    }

    /// Records what was learnt while taking a resource (QEMU's pid).
    pub fn update(&mut self, entry: EntryId, resource: Resource) -> Result<(), JournalError> {
        if let Some(e) = self.record.entries.get_mut(entry.0) {
            e.resource = resource;
        }
        self.write()
    }

    /// Marks a resource released (or never taken after all).
    pub fn released(&mut self, entry: EntryId) -> Result<(), JournalError> {
        match self.record.entries.get_mut(entry.0) {
            Some(e) if !e.released => e.released = true,
            _ => return Ok(()),
        }
        self.write()
    }

    /// Releases every resource still held, newest first, then removes the journal. A
    /// resource that cannot be released stays in the journal for a later replay.
    pub fn replay(mut self) -> Replayed {
        let mut replayed = Replayed::default();
        for index in (0..self.record.entries.len()).rev() {
            if self.record.entries[index].released {
                continue;
            }
            match release(&self.record, &self.record.entries[index].resource) {
                Ok(killed) => {
                    replayed.killed_qemu = replayed.killed_qemu.or(killed);
                    self.record.entries[index].released = true;
                }
                Err(reason) => {
                    warn!("{reason}");
                    replayed.failures.push(reason);
                }
            }
        }
        let result = if replayed.failures.is_empty() { self.remove() } else { self.write() };
        if let Err(e) = result {
            replayed.failures.push(e.to_string());
        }
        replayed
    }

    fn remove(&self) -> Result<(), JournalError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Written whole under a temporary name, synced, then renamed and the directory
    /// synced: after a crash the journal is the old record or the new one, never half.
    fn write(&self) -> Result<(), JournalError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let partial = dir.join(format!(".{JOURNAL_FILE}.partial"));
        let text = serde_json::to_vec_pretty(&self.record).map_err(|e| self.error(e))?;
        let mut file = File::create(&partial).map_err(|e| self.error(e))?;
        file.write_all(&text).and_then(|()| file.sync_all()).map_err(|e| self.error(e))?;
        std::fs::rename(&partial, &self.path).map_err(|e| self.error(e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| self.error(e))
    }

    fn error(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError { path: self.path.clone(), reason: e.to_string() }
    }
}

/// Releases one resource; returns the pid of a QEMU it killed.
fn release(record: &Record, resource: &Resource) -> Result<Option<u32>, String> {
    match resource {
        Resource::Qemu { process: Some(process) } => {
            Ok(process.kill_and_wait(QEMU_GONE_TIMEOUT)?.then_some(process.pid))
        }
        // Never started, or started and lost before its pid was written down: its
        // cgroup, released next, holds it.
        Resource::Qemu { process: None } => Ok(None),
        Resource::Cgroup { path, created: true } => cgroup::remove(path, CGROUP_EMPTY_TIMEOUT).map(|()| None),
        Resource::Cgroup { created: false, .. } => Ok(None),
        Resource::StateDir { path, token } => {
            let expected = record.state_root.join(&record.namespace).join(&record.id);
            if *path != expected {
                return Err(format!(
                    "state dir {}: not {} (the configured state dir, namespace and id); left alone",
                    path.display(),
                    expected.display()
                ));
            }
            state_dir::remove(path, token).map(|()| None)
        }
        Resource::RootfsMount { target } => rootfs::unmount(target).map(|()| None),
        Resource::Macvtap { netns, netns_id, name } => network::release_macvtap(netns, *netns_id, name).map(|()| None),
        Resource::Macvlan { netns, netns_id, name } => network::release_macvlan(netns, *netns_id, name).map(|()| None),
        Resource::PodInterface { netns, netns_id, saved } => {
            network::restore_interface(netns, *netns_id, saved).map(|()| None)
        }
        Resource::RuncContainer(container) => container.delete().map(|()| None),
        Resource::Placement { ledger, key } => placement::release(ledger, key).map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Scratch;

    /// A task's world: (state root, bundle, its state dir at `<root>/ns/vm1`, its token).
    fn task_dirs(scratch: &Scratch) -> (PathBuf, PathBuf, PathBuf, String) {
        let root = scratch.path("state");
        let bundle = scratch.path("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let dir = root.join("ns").join("vm1");
        let token = state_dir::new_token().unwrap();
        state_dir::create(&dir, &token).unwrap();
        (root, bundle, dir, token)
    }

    #[test]
    fn records_survive_a_reopen_and_replay_removes_the_journal() {
        let scratch = Scratch::new("journal");
        let bundle = scratch.dir();
        let mut journal = Journal::begin(bundle, "ns", "vm1", Path::new("/nonexistent-root")).unwrap();
        let qemu = journal.intend(Resource::Qemu { process: None }).unwrap();
        journal.update(qemu, Resource::Qemu { process: Some(ProcessId { pid: 1, start_time: u64::MAX }) }).unwrap();
        let reopened = Journal::open(bundle).unwrap().unwrap();
        assert_eq!(reopened.owner(), ("ns", "vm1"));
        assert_eq!(
            reopened.record.entries[0].resource,
            Resource::Qemu { process: Some(ProcessId { pid: 1, start_time: u64::MAX }) }
        );
        // pid 1 with another start time is another process: not killed
        let replayed = reopened.replay();
        assert!(replayed.failures.is_empty() && replayed.killed_qemu.is_none(), "{replayed:?}");
        assert!(!bundle.join(JOURNAL_FILE).exists());
        assert!(Journal::open(bundle).unwrap().is_none());
    }

    #[test]
    fn a_state_dir_is_removed_only_where_the_config_puts_it_and_only_if_ours() {
        let scratch = Scratch::new("journal-state");
        let (root, bundle, ours, token) = task_dirs(&scratch);

        // A journal that names a directory elsewhere (or one without our token) leaves it.
        let elsewhere = scratch.path("precious");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let mut journal = Journal::begin(&bundle, "ns", "vm1", &root).unwrap();
        journal.intend(Resource::StateDir { path: elsewhere.clone(), token: token.clone() }).unwrap();
        journal.intend(Resource::StateDir { path: ours.clone(), token: "not-the-token".into() }).unwrap();
        let replayed = journal.replay();
        // elsewhere: refused; ours with another token: not ours, nothing to release
        assert_eq!(replayed.failures.len(), 1, "{replayed:?}");
        assert!(elsewhere.is_dir() && ours.is_dir());
        // what failed stays in the journal for a later replay
        assert!(bundle.join(JOURNAL_FILE).exists());
        std::fs::remove_file(bundle.join(JOURNAL_FILE)).unwrap();

        let mut journal = Journal::begin(&bundle, "ns", "vm1", &root).unwrap();
        journal.intend(Resource::StateDir { path: ours.clone(), token }).unwrap();
        let replayed = journal.replay();
        assert!(replayed.failures.is_empty(), "{replayed:?}");
        assert!(!ours.exists() && elsewhere.is_dir());
    }

    #[test]
    fn begin_replays_an_old_journal_first() {
        let scratch = Scratch::new("journal-old");
        let (root, bundle, dir, token) = task_dirs(&scratch);
        let mut old = Journal::begin(&bundle, "ns", "vm1", &root).unwrap();
        old.intend(Resource::StateDir { path: dir.clone(), token }).unwrap();
        drop(old); // the shim died
        let fresh = Journal::begin(&bundle, "ns", "vm1", &root).unwrap();
        assert!(!dir.exists());
        assert!(fresh.record.entries.is_empty());
    }

    #[test]
    fn released_resources_are_not_released_again() {
        let scratch = Scratch::new("journal-released");
        let (root, bundle, dir, token) = task_dirs(&scratch);
        let mut journal = Journal::begin(&bundle, "ns", "vm1", &root).unwrap();
        let entry = journal.intend(Resource::StateDir { path: dir.clone(), token }).unwrap();
        journal.released(entry).unwrap();
        assert!(journal.replay().failures.is_empty());
        assert!(dir.exists(), "marked released: left as it is");
    }
}
