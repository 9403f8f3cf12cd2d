//! The host's NUMA nodes (CPUs, memory, distances), read from sysfs.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::CpuSet;

/// The kernel's distance from a node to itself and, by default, to another node.
const LOCAL_DISTANCE: u32 = 10;
const REMOTE_DISTANCE: u32 = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// By ascending id.
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: u32,
    /// Empty for a memory-only node (CXL, some HBM): it never carries vCPUs.
    pub cpus: CpuSet,
    pub memory_bytes: u64,
    /// Distance to each node, in the order of `Topology::nodes` (as the kernel lists it).
    pub distances: Vec<u32>,
}

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
}

impl Topology {
    /// Reads `<sysfs_root>/devices/system/node/node<N>/{cpulist,meminfo,distance}`. A kernel
    /// without NUMA has no node directories: then the host is one node 0 with the CPUs of
    /// `<sysfs_root>/devices/system/cpu/online` and the memory of `proc/meminfo` beside
    /// `sysfs_root` (`/sys` → `/proc/meminfo`).
    pub fn read(sysfs_root: &Path) -> Result<Topology, TopologyError> {
        let node_dir = sysfs_root.join("devices/system/node");
        let mut ids = match std::fs::read_dir(&node_dir) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_prefix("node")?.parse::<u32>().ok())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(TopologyError::Read { path: node_dir, source }),
        };
        if ids.is_empty() {
            let cpus = parse_cpus(&sysfs_root.join("devices/system/cpu/online"))?;
            let meminfo = sysfs_root.parent().unwrap_or(Path::new("/")).join("proc/meminfo");
            let memory_bytes = parse_mem_total(&meminfo)?;
            return Ok(Topology { nodes: vec![Node { id: 0, cpus, memory_bytes, distances: vec![LOCAL_DISTANCE] }] });
        }
        ids.sort_unstable();
        let nodes = ids
            .iter()
            .map(|&id| {
                let dir = node_dir.join(format!("node{id}"));
                let distance = dir.join("distance");
                let distances = read(&distance)?
                    .split_whitespace()
                    .map(|d| d.parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| parse_error(&distance, format!("not a list of distances ({e})")))?;
                if distances.len() != ids.len() {
                    let reason = format!("{} distances for {} nodes", distances.len(), ids.len());
                    return Err(parse_error(&distance, reason));
                }
                let cpus = parse_cpus(&dir.join("cpulist"))?;
                Ok(Node { id, cpus, memory_bytes: parse_mem_total(&dir.join("meminfo"))?, distances })
            })
            .collect::<Result<_, _>>()?;
        Ok(Topology { nodes })
    }

    /// `nodes` alike nodes of `cpus_per_node` consecutive CPUs each, at the kernel's default
    /// distances: for tests and benchmarks.
    pub fn symmetric(nodes: u32, cpus_per_node: u32, memory_per_node: u64) -> Topology {
        let nodes = (0..nodes)
            .map(|id| Node {
                id,
                cpus: (id * cpus_per_node..(id + 1) * cpus_per_node).collect(),
                memory_bytes: memory_per_node,
                distances: (0..nodes).map(|to| if to == id { LOCAL_DISTANCE } else { REMOTE_DISTANCE }).collect(),
            })
            .collect();
        Topology { nodes }
    }

    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The kernel's distance between two nodes; its defaults where sysfs gave none.
    pub fn distance(&self, from: u32, to: u32) -> u32 {
        let index = self.nodes.iter().position(|n| n.id == to);
        let given = self.node(from).zip(index).and_then(|(node, index)| node.distances.get(index).copied());
        given.unwrap_or(if from == to { LOCAL_DISTANCE } else { REMOTE_DISTANCE })
    }
}

fn read(path: &Path) -> Result<String, TopologyError> {
    std::fs::read_to_string(path).map_err(|source| TopologyError::Read { path: path.to_path_buf(), source })
}

fn parse_error(path: &Path, reason: String) -> TopologyError {
    TopologyError::Parse { path: path.to_path_buf(), reason }
}

fn parse_cpus(path: &Path) -> Result<CpuSet, TopologyError> {
    read(path)?.parse().map_err(|e: super::CpuListError| parse_error(path, e.to_string()))
}

/// `MemTotal:` in kB, from a node's meminfo ("Node 0 MemTotal:  24589268 kB") or
/// /proc/meminfo ("MemTotal:  24589268 kB").
fn parse_mem_total(path: &Path) -> Result<u64, TopologyError> {
    let text = read(path)?;
    let kib = text.lines().find_map(|line| {
        let mut words = line.split_whitespace().skip_while(|w| *w != "MemTotal:").skip(1);
        let kib = words.next()?.parse::<u64>().ok()?;
        (words.next() == Some("kB")).then_some(kib)
    });
    kib.and_then(|kib| kib.checked_mul(1024)).ok_or_else(|| parse_error(path, "no MemTotal line in kB".to_string()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Writes a fake sysfs under `root/sys` with one node per (cpulist, kB of memory), at
    /// distance 10 to itself and 10 + 10 × |a − b| to others (farther by id, as on rings of
    /// sockets), and returns `root/sys`.
    pub fn fake_sysfs(root: &Path, nodes: &[(&str, u64)]) -> PathBuf {
        let sys = root.join("sys");
        for (id, (cpulist, kib)) in nodes.iter().enumerate() {
            let dir = sys.join(format!("devices/system/node/node{id}"));
            std::fs::create_dir_all(&dir).expect("creating a fake node");
            let distances: Vec<String> = (0..nodes.len()).map(|to| (10 + 10 * id.abs_diff(to)).to_string()).collect();
            std::fs::write(dir.join("cpulist"), format!("{cpulist}\n")).expect("writing cpulist");
            let meminfo = format!("Node {id} MemTotal:       {kib} kB\nNode {id} MemFree:        1000 kB\n");
            std::fs::write(dir.join("meminfo"), meminfo).expect("writing meminfo");
            std::fs::write(dir.join("distance"), distances.join(" ") + "\n").expect("writing distance");
        }
        // What else the kernel puts there, which is not a node.
        std::fs::create_dir_all(sys.join("devices/system/node/power")).expect("creating power");
        std::fs::write(sys.join("devices/system/node/online"), "0-7\n").expect("writing online");
        sys
    }

    #[test]
    fn reads_1_2_4_and_8_node_hosts() {
        for count in [1usize, 2, 4, 8] {
            let root = tempfile::tempdir().expect("a temporary directory");
            let lists: Vec<String> = (0..count).map(|i| format!("{}-{}", i * 4, i * 4 + 3)).collect();
            let nodes: Vec<(&str, u64)> = lists.iter().map(|l| (l.as_str(), 1 << 20)).collect();
            let topology = Topology::read(&fake_sysfs(root.path(), &nodes)).expect("reads");
            assert_eq!(topology.nodes.len(), count);
            for (i, node) in topology.nodes.iter().enumerate() {
                assert_eq!(node.id as usize, i);
                assert_eq!(node.cpus.to_string(), lists[i]);
                assert_eq!(node.memory_bytes, 1 << 30);
                assert_eq!(node.distances.len(), count);
            }
            assert_eq!(topology.distance(0, 0), 10);
            if count > 1 {
                assert_eq!(topology.distance(0, count as u32 - 1), 10 + 10 * (count as u32 - 1));
            }
        }
    }

    #[test]
    fn memory_only_nodes_are_kept_without_cpus() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let topology = Topology::read(&fake_sysfs(root.path(), &[("0-3", 1024), ("", 2048)])).expect("reads");
        assert!(topology.nodes[1].cpus.is_empty());
        assert_eq!(topology.nodes[1].memory_bytes, 2048 * 1024);
    }

    #[test]
    fn a_kernel_without_numa_is_one_node() {
        let root = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(root.path().join("sys/devices/system/cpu")).expect("creating cpu");
        std::fs::create_dir_all(root.path().join("proc")).expect("creating proc");
        std::fs::write(root.path().join("sys/devices/system/cpu/online"), "0-5\n").expect("writing online");
        std::fs::write(root.path().join("proc/meminfo"), "MemTotal:       16318580 kB\nMemFree: 1 kB\n")
            .expect("writing meminfo");
        let topology = Topology::read(&root.path().join("sys")).expect("reads");
        assert_eq!(
            topology.nodes,
            vec![Node {
                id: 0,
                cpus: "0-5".parse().expect("a list"),
                memory_bytes: 16318580 * 1024,
                distances: vec![10]
            }]
        );
    }

    #[test]
    fn errors_name_the_file() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let sys = fake_sysfs(root.path(), &[("0-3", 1024), ("4-7", 1024)]);
        let node1 = sys.join("devices/system/node/node1");

        std::fs::write(node1.join("cpulist"), "7-4\n").expect("writing");
        let err = Topology::read(&sys).expect_err("backwards range").to_string();
        assert!(
            err.starts_with(&format!("{}: \"7-4\\n\" is not a CPU list", node1.join("cpulist").display())),
            "{err}"
        );

        std::fs::write(node1.join("cpulist"), "4-7\n").expect("writing");
        std::fs::write(node1.join("meminfo"), "Node 1 MemFree: 5 kB\n").expect("writing");
        let err = Topology::read(&sys).expect_err("no MemTotal").to_string();
        assert_eq!(err, format!("{}: no MemTotal line in kB", node1.join("meminfo").display()));

        std::fs::remove_file(node1.join("meminfo")).expect("removing");
        let err = Topology::read(&sys).expect_err("no meminfo").to_string();
        assert!(err.starts_with(&format!("reading {}: ", node1.join("meminfo").display())), "{err}");

        std::fs::write(node1.join("distance"), "20\n").expect("writing");
        let err = Topology::read(&sys).expect_err("short distances").to_string();
        assert_eq!(err, format!("{}: 1 distances for 2 nodes", node1.join("distance").display()));
    }

    #[test]
    fn symmetric_hosts_have_consecutive_cpus() {
        let topology = Topology::symmetric(2, 4, 1 << 30);
        assert_eq!(topology.nodes[1].cpus.to_string(), "4-7");
        assert_eq!(topology.distance(0, 1), 20);
        assert_eq!(topology.distance(1, 1), 10);
        assert_eq!(topology.distance(1, 9), 20);
    }
}
