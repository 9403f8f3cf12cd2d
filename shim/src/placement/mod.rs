//! NUMA placement: which host node(s) and CPUs each VM gets. By default (`node`) a VM lives on
//! one NUMA node, its vCPUs floating on that node's CPUs and its memory bound there, the node
//! chosen so that vCPUs and memory stay balanced across nodes under an overcommit limit; `strict`
//! also pins each vCPU to a CPU of its own, never shared with another strict VM; `none` leaves it
//! to the kernel. A cpuset in the spec (kubelet's CPU or memory manager) wins: placement stays
//! inside it. A VM larger than any node spans the fewest, closest nodes. Everything here is pure
//! except `topology` (reads sysfs) and `ledger` (the host-wide file every shim shares).

mod choose;
mod ledger;
#[cfg(test)]
mod proptests;
mod topology;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use choose::{choose, left_to_kernel, totals, NodeTotals, PlacementError};
pub use ledger::{Ledger, LedgerError, LEDGER_VERSION};
pub use topology::{Node, Topology, TopologyError};

pub const ANNOTATION_NUMA: &str = "vm.containerd.io/numa";
pub const ANNOTATION_NUMA_NODE: &str = "vm.containerd.io/numa-node";

/// Bounds a range in a CPU list, so "0-4294967295" cannot allocate gigabytes; the kernel's
/// own limit (NR_CPUS) is at most 8192.
const MAX_CPU: u32 = 1 << 16;

/// A set of host CPU numbers, written as the kernel writes them ("0-3,8,10-11"). A bitmap:
/// every shim reads every reservation's sets from the ledger at each placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CpuSet(Vec<u64>);

#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{text:?} is not a CPU list ({reason}); expected e.g. 0-3,8,10-11")]
pub struct CpuListError {
    pub text: String,
    pub reason: &'static str,
}

impl CpuSet {
    pub fn new() -> CpuSet {
        CpuSet::default()
    }

    /// Equal sets have equal words: no trailing empty word is kept.
    fn trimmed(mut words: Vec<u64>) -> CpuSet {
        while words.last() == Some(&0) {
            words.pop();
        }
        CpuSet(words)
    }

    fn insert(&mut self, cpu: u32) {
        let (word, bit) = ((cpu / 64) as usize, cpu % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    fn word(&self, index: usize) -> u64 {
        self.0.get(index).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.word((cpu / 64) as usize) & (1 << (cpu % 64)) != 0
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(index, &word)| {
            (0..64u32).filter(move |bit| word & (1 << bit) != 0).map(move |bit| index as u32 * 64 + bit)
        })
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet::trimmed(self.0.iter().enumerate().map(|(i, w)| w & other.word(i)).collect())
    }

    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet::trimmed(self.0.iter().enumerate().map(|(i, w)| w & !other.word(i)).collect())
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.iter().enumerate().all(|(i, w)| w & !other.word(i) == 0)
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(cpus: I) -> CpuSet {
        let mut set = CpuSet::new();
        set.extend(cpus);
        set
    }
}

impl Extend<u32> for CpuSet {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, cpus: I) {
        for cpu in cpus {
            self.insert(cpu);
        }
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    /// The kernel's list format; "" (or a bare newline, as sysfs writes for a node without
    /// CPUs) is the empty set.
    fn from_str(text: &str) -> Result<CpuSet, CpuListError> {
        let err = |reason| CpuListError { text: text.to_string(), reason };
        let cpu = |s: &str| -> Result<u32, CpuListError> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("not a CPU number"));
            }
            s.parse().ok().filter(|c| *c < MAX_CPU).ok_or_else(|| err("CPU number too large"))
        };
        let mut set = CpuSet::new();
        if text.trim().is_empty() {
            return Ok(set);
        }
        for item in text.trim().split(',') {
            let (first, last) = match item.split_once('-') {
                Some((first, last)) => (cpu(first)?, cpu(last)?),
                None => (cpu(item)?, cpu(item)?),
            };
            if first > last {
                return Err(err("a range runs backwards"));
            }
            set.extend(first..=last);
        }
        Ok(set)
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.iter().peekable();
        let mut first = true;
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.next_if_eq(&(end + 1)).is_some() {
                end += 1;
            }
            let sep = if first { "" } else { "," };
            first = false;
            if end == start {
                write!(f, "{sep}{start}")?;
            } else {
                write!(f, "{sep}{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for CpuSet {
    type Error = CpuListError;
    fn try_from(text: String) -> Result<CpuSet, CpuListError> {
        text.parse()
    }
}

impl From<CpuSet> for String {
    fn from(cpus: CpuSet) -> String {
        cpus.to_string()
    }
}

/// The `vm.containerd.io/numa` annotation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// No annotation: `Node` on a host with two or more NUMA nodes, `None` on one (its
    /// only node holds everything anyway; the limits would only cap the host).
    #[default]
    Auto,
    /// One node, most balanced, vCPUs floating on its CPUs.
    Node,
    /// As `Node`, and vCPU i pinned to a CPU no other strict VM has.
    Strict,
    /// No placement: the kernel decides.
    None,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{ANNOTATION_NUMA}={value:?} is not a NUMA policy; use node, strict or none")]
pub struct PolicyError {
    pub value: String,
}

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(value: &str) -> Result<Policy, PolicyError> {
        match value {
            "node" => Ok(Policy::Node),
            "strict" => Ok(Policy::Strict),
            "none" => Ok(Policy::None),
            _ => Err(PolicyError { value: value.to_string() }),
        }
    }
}

/// What one VM asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Request {
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub policy: Policy,
    /// `vm.containerd.io/numa-node`.
    pub node: Option<u32>,
    /// The spec's `linux.resources.cpu.cpus` (kubelet's static CPU manager).
    pub cpuset: Option<CpuSet>,
    /// The spec's `linux.resources.cpu.mems` (kubelet's memory manager): allowed nodes.
    pub mems: Option<Vec<u32>>,
}

/// How far allocations may exceed a node: vCPUs ≤ `cpu_overcommit` × the node's CPUs and
/// guest memory ≤ `memory_overcommit` × the node's memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
}

impl Default for Limits {
    /// Idle vCPUs cost little, so 4 per CPU; guest memory is not overcommitted (no swap,
    /// no balloon: a node short of memory would push the guest's pages to another node).
    fn default() -> Limits {
        Limits { cpu_overcommit: 4.0, memory_overcommit: 1.0 }
    }
}

/// The decision for one VM, kept in the ledger and shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The host nodes used, by id; empty for `numa: none`. More than one: the guest gets one
    /// NUMA node per entry (`-numa node`), in this order.
    pub nodes: Vec<NodePlacement>,
    /// `strict` only: vCPU i runs on host CPU `pins[i]`.
    pub pins: Vec<u32>,
    /// Chosen inside the spec's cpuset (kubelet's), without the overcommit check.
    pub from_cpuset: bool,
    /// Why these nodes, for the log and for users; not kept in the ledger, which every
    /// placement reads whole.
    #[serde(default, skip_serializing)]
    pub reason: String,
}

/// The VM's share of one host node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlacement {
    pub node: u32,
    /// The CPUs QEMU's threads (and unpinned vCPUs) may run on.
    pub cpus: CpuSet,
    /// Guest memory bound to this node.
    pub memory_bytes: u64,
    /// The guest vCPU indexes carried here.
    pub vcpus: Range<u32>,
}

impl Placement {
    /// `numa: none`: no node, no pin; the ledger counts nothing for it.
    pub fn none() -> Placement {
        Placement { nodes: Vec::new(), pins: Vec::new(), from_cpuset: false, reason: "numa: none".to_string() }
    }

    /// Every CPU the VM may run on.
    pub fn cpus(&self) -> CpuSet {
        self.nodes.iter().flat_map(|n| n.cpus.iter()).collect()
    }
}

/// A process named so that a reused pid is never taken for it (pid + start time in clock
/// ticks, as `/proc/<pid>/stat` gives): first the shim, then the VM's QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start_time: u64,
}

/// One placed VM in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// `<namespace>/<container id>`, see [`key`].
    pub key: String,
    pub owner: Owner,
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub placement: Placement,
}

/// A reservation's key: container ids are unique within a containerd namespace only.
pub fn key(namespace: &str, container: &str) -> String {
    format!("{namespace}/{container}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(text: &str) -> CpuSet {
        text.parse().expect("a valid CPU list")
    }

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert!(cpus("").is_empty());
        assert!(cpus("\n").is_empty());
        assert_eq!(cpus("0").iter().collect::<Vec<_>>(), [0]);
        assert_eq!(cpus("0-0").iter().collect::<Vec<_>>(), [0]);
        assert_eq!(cpus("0-3,8,10-11\n").iter().collect::<Vec<_>>(), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(cpus(" 2 - 3 , 1 ").iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(cpus("3,1,2-3"), cpus("1-3"));
    }

    #[test]
    fn bad_cpu_lists_are_refused_naming_the_text() {
        for (text, reason) in [
            ("3-1", "a range runs backwards"),
            ("a", "not a CPU number"),
            ("1,", "not a CPU number"),
            (",1", "not a CPU number"),
            ("1-", "not a CPU number"),
            ("-1", "not a CPU number"),
            ("+1", "not a CPU number"),
            ("1-2-3", "not a CPU number"),
            ("0-7:2", "not a CPU number"),
            ("0-4294967295", "CPU number too large"),
            ("99999999999", "CPU number too large"),
        ] {
            let err = text.parse::<CpuSet>().expect_err(text);
            assert_eq!(err.reason, reason, "{text}");
            assert!(err.to_string().starts_with(&format!("{text:?} is not a CPU list")), "{err}");
        }
    }

    #[test]
    fn cpu_lists_print_in_the_kernels_format() {
        for text in ["", "0", "0-3,8,10-11", "1,3,5", "0-1", "0-127"] {
            assert_eq!(cpus(text).to_string(), text);
        }
        assert_eq!(cpus("0-0,1,2").to_string(), "0-2");
    }

    #[test]
    fn cpu_sets_serialise_as_the_list_string() {
        let json = serde_json::to_string(&cpus("0-3,8")).expect("serialises");
        assert_eq!(json, r#""0-3,8""#);
        assert_eq!(serde_json::from_str::<CpuSet>(&json).expect("parses"), cpus("0-3,8"));
        let err = serde_json::from_str::<CpuSet>(r#""3-1""#).expect_err("backwards");
        assert!(err.to_string().contains("\"3-1\" is not a CPU list"), "{err}");
    }

    #[test]
    fn policies_parse_from_the_annotation() {
        assert_eq!("node".parse(), Ok(Policy::Node));
        assert_eq!("strict".parse(), Ok(Policy::Strict));
        assert_eq!("none".parse(), Ok(Policy::None));
        let err = "Strict".parse::<Policy>().expect_err("case matters");
        assert_eq!(err.to_string(), r#"vm.containerd.io/numa="Strict" is not a NUMA policy; use node, strict or none"#);
        assert_eq!(Policy::default(), Policy::Auto);
    }

    #[test]
    fn placements_round_trip_through_json() {
        let placement = Placement {
            nodes: vec![NodePlacement { node: 1, cpus: cpus("4-7"), memory_bytes: 1 << 30, vcpus: 0..2 }],
            pins: vec![4, 5],
            from_cpuset: false,
            reason: "node 1".to_string(),
        };
        let json = serde_json::to_string(&placement).expect("serialises");
        assert!(json.contains(r#""cpus":"4-7""#), "{json}");
        assert_eq!(
            serde_json::from_str::<Placement>(&json).expect("parses"),
            Placement { reason: String::new(), ..placement.clone() }
        );
        assert_eq!(placement.cpus(), cpus("4-7"));
        assert!(Placement::none().nodes.is_empty());
    }

    #[test]
    fn limits_default_to_4x_cpu_and_no_memory_overcommit() {
        assert_eq!(Limits::default(), Limits { cpu_overcommit: 4.0, memory_overcommit: 1.0 });
        let partial: Limits = serde_json::from_str(r#"{"cpu_overcommit": 2.0}"#).expect("parses");
        assert_eq!(partial, Limits { cpu_overcommit: 2.0, memory_overcommit: 1.0 });
    }
}
