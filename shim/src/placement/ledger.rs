//! The host-wide ledger of placements: one JSON file that every shim rewrites under `flock`.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::choose::{choose, PlacementError};
use super::{Limits, Owner, Placement, Request, Reservation, Topology};

pub const LEDGER_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("placement ledger {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("placement ledger {} is corrupt ({source}); move it aside only once no VM runs", path.display())]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("placement ledger {} has version {found}; this shim reads version {LEDGER_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("{key} already holds a placement, owned by process {pid}, which runs")]
    Taken { key: String, pid: u32 },
    #[error("{key} holds no placement in {}", path.display())]
    Missing { key: String, path: PathBuf },
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// How many owners one placement asks after (see [`Ledger::place`]).
const RECONCILE_BATCH: usize = 16;

/// Drops the dead among up to RECONCILE_BATCH reservations, starting at a place that
/// moves from one call to the next, so that every reservation is asked after in turn.
fn reconcile_some(reservations: &mut Vec<Reservation>, is_alive: &impl Fn(&Owner) -> bool) {
    let len = reservations.len();
    if len == 0 {
        return;
    }
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let start = clock as usize % len;
    let dead: Vec<usize> = (0..RECONCILE_BATCH.min(len))
        .map(|i| (start + i) % len)
        .filter(|&i| !is_alive(&reservations[i].owner))
        .collect();
    let mut index = 0;
    reservations.retain(|_| {
        index += 1;
        !dead.contains(&(index - 1))
    });
}

#[derive(Serialize, Deserialize)]
struct Contents {
    version: u32,
    reservations: Vec<Reservation>,
}

/// Read first on its own, so a later version's file is refused for its version rather
/// than called corrupt.
#[derive(Deserialize)]
struct Header {
    version: u32,
}

/// The ledger file at `path`; `<path>.lock` beside it is what is locked, so the data file can
/// be replaced by rename (no reader ever sees half a file).
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn at(path: PathBuf) -> Ledger {
        Ledger { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Places the VM `key` for `owner` and records it. Reservations whose owner `is_alive`
    /// calls dead are dropped: a few of them at each placement (asking costs a read of
    /// /proc per owner, 500 owners would cost milliseconds), and all of them before a
    /// VM is refused for want of room. If `key` already has a reservation of the same owner
    /// (a create retried), or of a dead one, the new placement replaces it; another live
    /// owner's is refused. On any error the ledger is left as it was.
    pub fn place(
        &self,
        key: &str,
        owner: Owner,
        request: &Request,
        topology: &Topology,
        limits: &Limits,
        is_alive: impl Fn(&Owner) -> bool,
    ) -> Result<Placement, LedgerError> {
        self.update(|reservations| {
            if let Some(index) = reservations.iter().position(|r| r.key == key) {
                let holder = reservations[index].owner;
                if holder != owner && is_alive(&holder) {
                    return Err(LedgerError::Taken { key: key.to_string(), pid: holder.pid });
                }
                reservations.remove(index);
            }
            reconcile_some(reservations, &is_alive);
            let placement = match choose(topology, reservations, request, limits) {
                Ok(placement) => placement,
                Err(_) => {
                    reservations.retain(|r| is_alive(&r.owner));
                    choose(topology, reservations, request, limits)?
                }
            };
            reservations.push(Reservation {
                key: key.to_string(),
                owner,
                vcpus: request.vcpus,
                memory_bytes: request.memory_bytes,
                placement: placement.clone(),
            });
            Ok((placement, true))
        })
    }

    /// Hands `key`'s reservation to a new owner: the shim places before QEMU exists, then
    /// gives it to QEMU, whose life is the VM's.
    pub fn adopt(&self, key: &str, owner: Owner) -> Result<(), LedgerError> {
        self.update(|reservations| match reservations.iter_mut().find(|r| r.key == key) {
            Some(reservation) => {
                let changed = reservation.owner != owner;
                reservation.owner = owner;
                Ok(((), changed))
            }
            None => Err(LedgerError::Missing { key: key.to_string(), path: self.path.clone() }),
        })
    }

    /// Drops `key`'s reservation; whether there was one. Idempotent: every exit path of a
    /// VM may call it.
    pub fn release(&self, key: &str) -> Result<bool, LedgerError> {
        if !self.exists()? {
            return Ok(false);
        }
        self.update(|reservations| {
            let before = reservations.len();
            reservations.retain(|r| r.key != key);
            let released = reservations.len() < before;
            Ok((released, released))
        })
    }

    /// The live reservations; the dead ones found are dropped from the file too.
    pub fn list(&self, is_alive: impl Fn(&Owner) -> bool) -> Result<Vec<Reservation>, LedgerError> {
        if !self.exists()? {
            return Ok(Vec::new());
        }
        self.update(|reservations| {
            let before = reservations.len();
            reservations.retain(|r| is_alive(&r.owner));
            Ok((reservations.clone(), reservations.len() < before))
        })
    }

    fn exists(&self) -> Result<bool, LedgerError> {
        self.path.try_exists().map_err(io_error(&self.path))
    }

    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Read, change, and (if anything changed) write, all under the lock.
    /// Runs `change` on the reservations under the lock; it says whether it changed them
    /// (then they are written back: a copy to compare with would cost as much as the read).
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<Reservation>) -> Result<(T, bool), LedgerError>,
    ) -> Result<T, LedgerError> {
        let _lock = self.lock()?;
        let mut reservations = self.read()?;
        let (out, changed) = change(&mut reservations)?;
        if changed {
            self.write(reservations)?;
        }
        Ok(out)
    }

    fn lock(&self) -> Result<Flock<File>, LedgerError> {
        let path = self.beside(".lock");
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let mut file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_error(&path))?;
        // A signal (the shim reaps children) may interrupt the wait.
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => return Ok(lock),
                Err((unlocked, Errno::EINTR)) => file = unlocked,
                Err((_, errno)) => return Err(io_error(&path)(errno.into())),
            }
        }
    }

    fn read(&self) -> Result<Vec<Reservation>, LedgerError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.path)(e)),
        };
        let corrupt = |source| LedgerError::Corrupt { path: self.path.clone(), source };
        let version = |found| LedgerError::Version { path: self.path.clone(), found };
        match serde_json::from_slice::<Contents>(&text) {
            Ok(contents) if contents.version == LEDGER_VERSION => Ok(contents.reservations),
            Ok(contents) => Err(version(contents.version)),
            // Read once more, only to tell a later version's file from a corrupt one.
            Err(e) => match serde_json::from_slice::<Header>(&text) {
                Ok(header) if header.version != LEDGER_VERSION => Err(version(header.version)),
                _ => Err(corrupt(e)),
            },
        }
    }

    /// Writes beside the file and renames over it. No fsync: the ledger lives under /run
    /// (tmpfs), gone at reboot with the VMs it describes.
    fn write(&self, reservations: Vec<Reservation>) -> Result<(), LedgerError> {
        let temporary = self.beside(".tmp");
        let mut text = serde_json::to_vec(&Contents { version: LEDGER_VERSION, reservations })
            .map_err(|e| io_error(&self.path)(e.into()))?;
        text.push(b'\n');
        std::fs::write(&temporary, text).map_err(io_error(&temporary))?;
        std::fs::rename(&temporary, &self.path).map_err(io_error(&self.path))
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LedgerError {
    let path = path.to_path_buf();
    move |source| LedgerError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Barrier;

    use super::super::Policy;
    use super::*;

    const GIB: u64 = 1 << 30;

    fn owner(pid: u32) -> Owner {
        Owner { pid, start_time: 7 }
    }

    fn request(vcpus: u32, policy: Policy) -> Request {
        Request { vcpus, memory_bytes: GIB, policy, ..Request::default() }
    }

    fn alive(_: &Owner) -> bool {
        true
    }

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ledger = Ledger::at(dir.path().join("placement/ledger.json"));
        (dir, ledger)
    }

    fn keys(reservations: &[Reservation]) -> Vec<&str> {
        reservations.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn place_adopt_list_release() {
        let (_dir, ledger) = ledger();
        let topology = Topology::symmetric(2, 4, 8 * GIB);
        let limits = Limits::default();
        assert_eq!(ledger.list(alive).expect("lists"), []);
        assert!(!ledger.release("default/a").expect("nothing to release"));

        let a =
            ledger.place("default/a", owner(1), &request(2, Policy::Node), &topology, &limits, alive).expect("placed");
        let b =
            ledger.place("default/b", owner(2), &request(2, Policy::Node), &topology, &limits, alive).expect("placed");
        assert_eq!((a.nodes[0].node, b.nodes[0].node), (0, 1));
        ledger.adopt("default/a", owner(10)).expect("adopted");
        let listed = ledger.list(alive).expect("lists");
        assert_eq!(keys(&listed), ["default/a", "default/b"]);
        assert_eq!(listed[0].owner, owner(10));
        // The ledger keeps all but the reason.
        assert_eq!(listed[0].placement, Placement { reason: String::new(), ..a });

        let text = std::fs::read_to_string(ledger.path()).expect("the file");
        assert!(text.starts_with(r#"{"version":1,"reservations":[{"key":"default/a""#), "{text}");

        assert!(ledger.release("default/a").expect("released"));
        assert!(!ledger.release("default/a").expect("released twice"));
        assert_eq!(keys(&ledger.list(alive).expect("lists")), ["default/b"]);
        let err = ledger.adopt("default/a", owner(11)).expect_err("released");
        assert_eq!(err.to_string(), format!("default/a holds no placement in {}", ledger.path().display()));
    }

    #[test]
    fn a_key_is_replaced_by_its_owner_and_refused_to_others() {
        let (_dir, ledger) = ledger();
        let topology = Topology::symmetric(1, 4, 8 * GIB);
        let limits = Limits::default();
        let strict = request(3, Policy::Strict);
        ledger.place("k8s.io/a", owner(1), &strict, &topology, &limits, alive).expect("placed");
        // A retried create: the old placement does not compete with the new one.
        let again = ledger.place("k8s.io/a", owner(1), &strict, &topology, &limits, alive).expect("replaced");
        assert_eq!(again.pins, [0, 1, 2]);
        let err = ledger.place("k8s.io/a", owner(2), &strict, &topology, &limits, alive).expect_err("taken");
        assert_eq!(err.to_string(), "k8s.io/a already holds a placement, owned by process 1, which runs");
        // A refused placement leaves the ledger as it was.
        let err = ledger.place("k8s.io/b", owner(2), &strict, &topology, &limits, alive).expect_err("no CPUs");
        assert!(matches!(err, LedgerError::Placement(PlacementError::NoRoom { .. })), "{err}");
        assert_eq!(keys(&ledger.list(alive).expect("lists")), ["k8s.io/a"]);
    }

    #[test]
    fn a_dead_owners_reservation_is_reconciled_away() {
        let (_dir, ledger) = ledger();
        let topology = Topology::symmetric(1, 4, 8 * GIB);
        let limits = Limits::default();
        let strict = request(4, Policy::Strict);
        ledger.place("default/crashed", owner(1), &strict, &topology, &limits, alive).expect("placed");
        assert!(ledger.place("default/next", owner(2), &strict, &topology, &limits, alive).is_err());
        // The shim of "crashed" was killed: its QEMU (owner 1) is gone.
        let is_alive = |o: &Owner| o.pid != 1;
        let placed = ledger.place("default/next", owner(2), &strict, &topology, &limits, is_alive).expect("placed");
        assert_eq!(placed.pins, [0, 1, 2, 3]);
        assert_eq!(keys(&ledger.list(alive).expect("lists")), ["default/next"]);
        // A live owner with a reused pid (another start time) is not the owner.
        let reused = |o: &Owner| *o != owner(2);
        assert_eq!(ledger.list(reused).expect("lists"), []);
    }

    #[test]
    fn a_corrupt_or_newer_ledger_is_refused_naming_it() {
        let (_dir, ledger) = ledger();
        let topology = Topology::symmetric(1, 4, 8 * GIB);
        ledger
            .place("default/a", owner(1), &request(1, Policy::Node), &topology, &Limits::default(), alive)
            .expect("placed");
        std::fs::write(ledger.path(), "{\"version\":1,\"reservations\":[{\"key\":").expect("writing");
        let err = ledger.list(alive).expect_err("corrupt").to_string();
        assert!(err.starts_with(&format!("placement ledger {} is corrupt (", ledger.path().display())), "{err}");
        assert!(ledger.release("default/a").is_err());
        std::fs::write(ledger.path(), r#"{"version":2,"anything":[]}"#).expect("writing");
        let err = ledger.list(alive).expect_err("newer").to_string();
        assert_eq!(
            err,
            format!("placement ledger {} has version 2; this shim reads version 1", ledger.path().display())
        );
    }

    #[test]
    fn twenty_shims_at_once_never_double_book_a_cpu_nor_lose_an_update() {
        let (_dir, ledger) = ledger();
        let topology = Topology::symmetric(2, 16, 64 * GIB);
        let barrier = Barrier::new(20);
        // 20 strict VMs of 2 vCPUs on 32 CPUs, all at once: 16 fit.
        let placed: Vec<Option<Placement>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..20u32)
                .map(|i| {
                    let (path, topology, barrier) = (ledger.path().to_path_buf(), &topology, &barrier);
                    scope.spawn(move || {
                        let ledger = Ledger::at(path);
                        barrier.wait();
                        let strict = request(2, Policy::Strict);
                        ledger
                            .place(&format!("default/vm{i}"), owner(i), &strict, topology, &Limits::default(), alive)
                            .ok()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().expect("a thread")).collect()
        });
        let pins: Vec<u32> = placed.iter().flatten().flat_map(|p| p.pins.iter().copied()).collect();
        assert_eq!(placed.iter().flatten().count(), 16, "32 CPUs hold 16 strict VMs of 2");
        assert_eq!(pins.iter().collect::<BTreeSet<_>>().len(), 32, "{pins:?}");
        // Then, at once, the even ones release and the odd ones are adopted by their QEMU.
        let held: Vec<u32> = (0..20).filter(|&i| placed[i as usize].is_some()).collect();
        std::thread::scope(|scope| {
            for &i in &held {
                let path = ledger.path().to_path_buf();
                scope.spawn(move || {
                    let ledger = Ledger::at(path);
                    let key = format!("default/vm{i}");
                    if i % 2 == 0 {
                        assert!(ledger.release(&key).expect("released"));
                    } else {
                        ledger.adopt(&key, owner(1000 + i)).expect("adopted");
                    }
                });
            }
        });
        let listed = ledger.list(alive).expect("lists");
        let expected: Vec<(String, Owner)> =
            held.iter().filter(|&&i| i % 2 == 1).map(|&i| (format!("default/vm{i}"), owner(1000 + i))).collect();
        let mut found: Vec<(String, Owner)> = listed.into_iter().map(|r| (r.key, r.owner)).collect();
        found.sort_by_key(|(key, _)| key[10..].parse::<u32>().unwrap_or(u32::MAX));
        assert_eq!(found, expected);
    }
}
