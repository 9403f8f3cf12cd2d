//! The allocator: which node(s) and CPUs a VM gets, given the host and what is already taken.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::topology::{Node, Topology};
use super::{CpuSet, Limits, NodePlacement, Placement, Policy, Request, Reservation, ANNOTATION_NUMA_NODE};
use crate::quantity::format_bytes;

/// Guest memory is split between nodes in 2 MiB units, so each guest node's backend can be
/// backed by huge pages.
const MEMORY_UNIT: u64 = 2 << 20;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    #[error("{ANNOTATION_NUMA_NODE}={node}: this host has no such NUMA node (its nodes: {known})")]
    UnknownNode { node: u32, known: String },
    #[error("the spec's mems name node {node}, which this host lacks (its nodes: {known})")]
    UnknownMems { node: u32, known: String },
    #[error("the spec's cpuset {cpuset:?} names CPUs this host lacks: {missing}")]
    CpusetOutsideHost { cpuset: String, missing: String },
    #[error("no NUMA node with CPUs is allowed by {restrictions}")]
    NoCandidate { restrictions: String },
    #[error("no NUMA node can take {vcpus} vCPUs and {memory}: {detail}")]
    NoRoom { vcpus: u32, memory: String, detail: String },
    #[error("a strict VM of {vcpus} vCPUs and {memory} is larger than any NUMA node ({detail}); strict placement does not span nodes")]
    TooLargeForStrict { vcpus: u32, memory: String, detail: String },
}

/// What the reservations hold on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTotals {
    pub vcpus: u64,
    pub memory_bytes: u64,
    /// CPUs pinned by strict VMs.
    pub strict_cpus: CpuSet,
}

/// Per node, what `taken` holds: a reservation spanning nodes counts its share on each.
pub fn totals(taken: &[Reservation]) -> BTreeMap<u32, NodeTotals> {
    let mut totals: BTreeMap<u32, NodeTotals> = BTreeMap::new();
    for placement in taken.iter().map(|r| &r.placement) {
        for share in &placement.nodes {
            let node = totals.entry(share.node).or_default();
            node.vcpus += u64::from(share.vcpus.end.saturating_sub(share.vcpus.start));
            node.memory_bytes += share.memory_bytes;
        }
        for &cpu in &placement.pins {
            let share = placement.nodes.iter().find(|n| n.cpus.contains(cpu)).or(placement.nodes.first());
            if let Some(share) = share {
                totals.entry(share.node).or_default().strict_cpus.extend([cpu]);
            }
        }
    }
    totals
}

/// The placement of a VM that is not placed (`numa: none`; the default on a host with one
/// NUMA node with CPUs), or `None` if it is to be placed. Nothing to reserve for it.
pub fn left_to_kernel(topology: &Topology, request: &Request) -> Option<Placement> {
    let nodes_with_cpus = topology.nodes.iter().filter(|n| !n.cpus.is_empty()).count();
    match request.policy {
        Policy::None => Some(Placement::none()),
        Policy::Auto if nodes_with_cpus <= 1 && request.node.is_none() => Some(Placement {
            reason: "one NUMA node on this host: left to the kernel (vm.containerd.io/numa=node places anyway)".into(),
            ..Placement::none()
        }),
        _ => None,
    }
}

/// Places one VM. Pure: the caller holds the ledger's lock and appends the result.
pub fn choose(
    topology: &Topology,
    taken: &[Reservation],
    request: &Request,
    limits: &Limits,
) -> Result<Placement, PlacementError> {
    if let Some(none) = left_to_kernel(topology, request) {
        return Ok(none);
    }
    if request.vcpus == 0 {
        return Err(PlacementError::NoVcpus);
    }
    // The spec's empty cpus or mems ("") restrict nothing.
    let request = &Request {
        cpuset: request.cpuset.clone().filter(|c| !c.is_empty()),
        mems: request.mems.clone().filter(|m| !m.is_empty()),
        ..request.clone()
    };
    let candidates = candidates(topology, request)?;
    let totals = totals(taken);
    match (request.policy, &request.cpuset) {
        (Policy::Strict, _) => strict(&candidates, &totals, request, limits),
        (_, Some(cpuset)) => {
            // kubelet chose the CPUs (its shared pool often spans every node): one node's
            // share of them when the VM fits there, else the cpuset across its nodes; never
            // refused for the overcommit limits.
            let unlimited =
                Limits { cpu_overcommit: f64::INFINITY, memory_overcommit: limits.memory_overcommit.max(1.0) };
            let roomy: Vec<Candidate> = candidates
                .iter()
                .filter(|c| c.cpus.len() as u64 >= u64::from(request.vcpus))
                .map(|c| Candidate { node: c.node, cpus: c.cpus.clone() })
                .collect();
            match balanced(topology, &roomy, &totals, request, &unlimited) {
                Ok(one) if one.nodes.len() == 1 => Ok(Placement {
                    from_cpuset: true,
                    reason: format!("inside the spec's cpuset {cpuset}: {}", one.reason),
                    ..one
                }),
                _ => Ok(inside_cpuset(&candidates, request, cpuset)),
            }
        }
        _ => balanced(topology, &candidates, &totals, request, limits),
    }
}

/// A node the request allows, with the CPUs it may use there.
struct Candidate<'a> {
    node: &'a Node,
    cpus: CpuSet,
}

/// The nodes with CPUs that the requested node, the spec's mems and its cpuset allow.
fn candidates<'a>(topology: &'a Topology, request: &Request) -> Result<Vec<Candidate<'a>>, PlacementError> {
    let known = || ids(topology.nodes.iter().map(|n| n.id));
    if let Some(node) = request.node.filter(|&id| topology.node(id).is_none()) {
        return Err(PlacementError::UnknownNode { node, known: known() });
    }
    if let Some(&node) = request.mems.iter().flatten().find(|&&id| topology.node(id).is_none()) {
        return Err(PlacementError::UnknownMems { node, known: known() });
    }
    if let Some(cpuset) = &request.cpuset {
        let missing = cpuset.difference(&topology.nodes.iter().flat_map(|n| n.cpus.iter()).collect());
        if !missing.is_empty() {
            return Err(PlacementError::CpusetOutsideHost { cpuset: cpuset.to_string(), missing: missing.to_string() });
        }
    }
    let found: Vec<Candidate> = topology
        .nodes
        .iter()
        .filter(|n| request.node.is_none_or(|id| id == n.id))
        .filter(|n| request.mems.as_ref().is_none_or(|mems| mems.contains(&n.id)))
        .map(|node| Candidate {
            node,
            cpus: request.cpuset.as_ref().map_or(node.cpus.clone(), |c| c.intersection(&node.cpus)),
        })
        .filter(|c| !c.cpus.is_empty())
        .collect();
    if found.is_empty() {
        let with_cpus = ids(topology.nodes.iter().filter(|n| !n.cpus.is_empty()).map(|n| n.id));
        let mut restrictions = vec![format!("the host (nodes with CPUs: {with_cpus})")];
        restrictions.extend(request.node.map(|n| format!("{ANNOTATION_NUMA_NODE}={n}")));
        restrictions.extend(request.mems.as_ref().map(|m| format!("the spec's mems {}", ids(m.iter().copied()))));
        restrictions.extend(request.cpuset.as_ref().map(|c| format!("the spec's cpuset {:?}", c.to_string())));
        return Err(PlacementError::NoCandidate { restrictions: restrictions.join(" and ") });
    }
    Ok(found)
}

fn ids(ids: impl Iterator<Item = u32>) -> String {
    ids.map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
}

/// used / capacity, with nothing on nothing as 0 and something on nothing as too much.
fn ratio(used: u64, capacity: u64) -> f64 {
    match (used, capacity) {
        (0, _) => 0.0,
        (_, 0) => f64::INFINITY,
        _ => used as f64 / capacity as f64,
    }
}

/// A node's load with this VM's share added.
#[derive(Clone, Copy)]
struct After {
    cpu: f64,
    mem: f64,
}

impl After {
    fn of(node: &Node, totals: &BTreeMap<u32, NodeTotals>, vcpus: u64, memory: u64) -> After {
        let (held_vcpus, held_memory) = totals.get(&node.id).map_or((0, 0), |t| (t.vcpus, t.memory_bytes));
        After {
            cpu: ratio(held_vcpus + vcpus, node.cpus.len() as u64),
            mem: ratio(held_memory.saturating_add(memory), node.memory_bytes),
        }
    }

    fn within(&self, limits: &Limits) -> bool {
        self.cpu <= limits.cpu_overcommit && self.mem <= limits.memory_overcommit
    }

    /// The limits this load exceeds, with the numbers.
    fn excess(&self, limits: &Limits) -> String {
        let mut over = Vec::new();
        if self.cpu > limits.cpu_overcommit {
            over.push(format!("cpu {:.2} > {:.2}", self.cpu, limits.cpu_overcommit));
        }
        if self.mem > limits.memory_overcommit {
            over.push(format!("memory {:.2} > {:.2}", self.mem, limits.memory_overcommit));
        }
        over.join(", ")
    }

    /// The balance rule: smallest |cpu − mem|, then least loaded (callers break the last tie
    /// by node id).
    fn rank(&self, other: &After) -> Ordering {
        let imbalance = |a: &After| (a.cpu - a.mem).abs();
        imbalance(self).total_cmp(&imbalance(other)).then(self.cpu.max(self.mem).total_cmp(&other.cpu.max(other.mem)))
    }
}

fn nodes_phrase(n: usize) -> String {
    if n == 1 {
        "1 node".to_string()
    } else {
        format!("{n} nodes")
    }
}

/// `numa: node` without a cpuset: the most balanced node under the limits, or, for a VM
/// larger than any node, the fewest close nodes.
fn balanced(
    topology: &Topology,
    candidates: &[Candidate],
    totals: &BTreeMap<u32, NodeTotals>,
    request: &Request,
    limits: &Limits,
) -> Result<Placement, PlacementError> {
    let (vcpus, memory) = (u64::from(request.vcpus), request.memory_bytes);
    let afters: Vec<After> = candidates.iter().map(|c| After::of(c.node, totals, vcpus, memory)).collect();
    let fitting: Vec<usize> = (0..candidates.len()).filter(|&i| afters[i].within(limits)).collect();
    if let Some(&best) = fitting.iter().min_by(|&&a, &&b| afters[a].rank(&afters[b])) {
        let (c, after) = (&candidates[best], afters[best]);
        let why = match request.node {
            Some(_) => format!("as {ANNOTATION_NUMA_NODE} asks"),
            None => format!("most balanced of {} under the limits", nodes_phrase(fitting.len())),
        };
        return Ok(Placement {
            nodes: vec![NodePlacement {
                node: c.node.id,
                cpus: c.cpus.clone(),
                memory_bytes: memory,
                vcpus: 0..request.vcpus,
            }],
            pins: Vec::new(),
            from_cpuset: false,
            reason: format!("node {}: cpu {:.2} mem {:.2} after this VM, {why}", c.node.id, after.cpu, after.mem),
        });
    }
    let detail: Vec<String> =
        candidates.iter().zip(&afters).map(|(c, a)| format!("node {}: {}", c.node.id, a.excess(limits))).collect();
    let no_room =
        |detail: String| PlacementError::NoRoom { vcpus: request.vcpus, memory: format_bytes(memory), detail };
    let larger_than_any = candidates.iter().all(|c| !After::of(c.node, &BTreeMap::new(), vcpus, memory).within(limits));
    if !larger_than_any || request.node.is_some() || candidates.len() < 2 {
        return Err(no_room(detail.join("; ")));
    }
    span(topology, candidates, totals, request, limits).ok_or_else(|| {
        no_room(format!("larger than any one node, and no group of nodes has room ({})", detail.join("; ")))
    })
}

/// Splits `total` in proportion to `weights` (largest remainders first, ties to the first).
fn split(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return split(total, &vec![1; weights.len()]);
    }
    let exact: Vec<u128> = weights.iter().map(|&w| u128::from(total) * u128::from(w)).collect();
    let mut shares: Vec<u64> = exact.iter().map(|e| (e / sum) as u64).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(exact[i] % sum));
    let left = total - shares.iter().sum::<u64>();
    for &i in order.iter().take(left as usize) {
        shares[i] += 1;
    }
    shares
}

/// Guest memory split in `MEMORY_UNIT`s, any odd remainder on the first node.
fn split_memory(total: u64, weights: &[u64]) -> Vec<u64> {
    let mut shares: Vec<u64> = split(total / MEMORY_UNIT, weights).into_iter().map(|s| s * MEMORY_UNIT).collect();
    if let Some(first) = shares.first_mut() {
        *first += total % MEMORY_UNIT;
    }
    shares
}

/// The VM laid across `members` with these shares: consecutive vCPU ranges in node order.
fn layout(members: &[&Candidate], vcpus: &[u64], memory: &[u64]) -> Vec<NodePlacement> {
    let mut next = 0u32;
    members
        .iter()
        .zip(vcpus.iter().zip(memory))
        .map(|(c, (&v, &m))| {
            let start = next;
            next += v as u32;
            NodePlacement { node: c.node.id, cpus: c.cpus.clone(), memory_bytes: m, vcpus: start..next }
        })
        .collect()
}

/// A VM larger than any node: the fewest nodes, closest together, then most balanced, whose
/// shares (in proportion to each node's CPUs and memory) all stay under the limits. Groups
/// are each node with its nearest neighbours, so the search stays polynomial on big hosts.
fn span(
    topology: &Topology,
    candidates: &[Candidate],
    totals: &BTreeMap<u32, NodeTotals>,
    request: &Request,
    limits: &Limits,
) -> Option<Placement> {
    let n = candidates.len();
    let id = |i: usize| candidates[i].node.id;
    for size in 2..=n {
        let groups: BTreeSet<Vec<usize>> = (0..n)
            .map(|seed| {
                let mut others: Vec<usize> = (0..n).filter(|&i| i != seed).collect();
                others.sort_by_key(|&i| (topology.distance(id(seed), id(i)), id(i)));
                let mut group: Vec<usize> = std::iter::once(seed).chain(others.into_iter().take(size - 1)).collect();
                group.sort_unstable();
                group
            })
            .collect();
        let found = groups
            .iter()
            .filter_map(|group| {
                let members: Vec<&Candidate> = group.iter().map(|&i| &candidates[i]).collect();
                let cpus: Vec<u64> = members.iter().map(|c| c.cpus.len() as u64).collect();
                let vcpus = split(u64::from(request.vcpus), &cpus);
                let mems: Vec<u64> = members.iter().map(|c| c.node.memory_bytes).collect();
                let memory = split_memory(request.memory_bytes, &mems);
                let afters: Vec<After> =
                    members.iter().enumerate().map(|(i, c)| After::of(c.node, totals, vcpus[i], memory[i])).collect();
                if !afters.iter().all(|a| a.within(limits)) {
                    return None;
                }
                let distance: u32 = group
                    .iter()
                    .flat_map(|&a| group.iter().map(move |&b| (a, b)))
                    .map(|(a, b)| topology.distance(id(a), id(b)))
                    .sum();
                let worst = afters.iter().copied().max_by(|a, b| a.rank(b))?;
                Some((distance, worst, members, vcpus, memory, afters))
            })
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.rank(&b.1)));
        let Some((_, _, members, vcpus, memory, afters)) = found else { continue };
        let loads: Vec<String> = members
            .iter()
            .zip(&afters)
            .map(|(c, a)| format!("node {} cpu {:.2} mem {:.2}", c.node.id, a.cpu, a.mem))
            .collect();
        let reason = format!(
            "spans nodes {}: {} vCPUs and {} are larger than any one node under the limits; after this VM {}",
            ids(members.iter().map(|c| c.node.id)),
            request.vcpus,
            format_bytes(request.memory_bytes),
            loads.join(", ")
        );
        return Some(Placement {
            nodes: layout(&members, &vcpus, &memory),
            pins: Vec::new(),
            from_cpuset: false,
            reason,
        });
    }
    None
}

/// A cpuset from the spec (kubelet's decision): its nodes, split in proportion to its CPUs
/// on each; no limit applies, and the ledger still counts it.
fn inside_cpuset(candidates: &[Candidate], request: &Request, cpuset: &CpuSet) -> Placement {
    let members: Vec<&Candidate> = candidates.iter().collect();
    let weights: Vec<u64> = members.iter().map(|c| c.cpus.len() as u64).collect();
    let vcpus = split(u64::from(request.vcpus), &weights);
    let memory = split_memory(request.memory_bytes, &weights);
    Placement {
        nodes: layout(&members, &vcpus, &memory),
        pins: Vec::new(),
        from_cpuset: true,
        reason: format!(
            "inside the spec's cpuset {cpuset} (kubelet's CPU manager): node{} {}",
            if members.len() == 1 { "" } else { "s" },
            ids(members.iter().map(|c| c.node.id))
        ),
    }
}

/// `numa: strict`: one node with enough CPUs no strict VM holds; vCPU i on the i-th lowest.
/// The memory limit applies (without a cpuset); the CPU limit does not, a strict vCPU having
/// a CPU of its own.
fn strict(
    candidates: &[Candidate],
    totals: &BTreeMap<u32, NodeTotals>,
    request: &Request,
    limits: &Limits,
) -> Result<Placement, PlacementError> {
    let (vcpus, memory) = (u64::from(request.vcpus), request.memory_bytes);
    let check_memory = request.cpuset.is_none();
    let memory_fits = |a: &After| !check_memory || a.mem <= limits.memory_overcommit;
    let fits_empty = |c: &Candidate| {
        c.cpus.len() as u64 >= vcpus && memory_fits(&After::of(c.node, &BTreeMap::new(), vcpus, memory))
    };
    if !candidates.iter().any(fits_empty) {
        let sizes: Vec<String> = candidates
            .iter()
            .map(|c| format!("node {}: {} CPUs, {}", c.node.id, c.cpus.len(), format_bytes(c.node.memory_bytes)))
            .collect();
        return Err(PlacementError::TooLargeForStrict {
            vcpus: request.vcpus,
            memory: format_bytes(memory),
            detail: sizes.join("; "),
        });
    }
    let pinned: CpuSet = totals.values().flat_map(|t| t.strict_cpus.iter()).collect();
    let mut fitting = Vec::new();
    let mut refusals = Vec::new();
    for c in candidates {
        let free = c.cpus.difference(&pinned);
        let after = After::of(c.node, totals, vcpus, memory);
        if (free.len() as u64) < vcpus {
            refusals.push(format!("node {}: {} of {} CPUs free", c.node.id, free.len(), c.cpus.len()));
        } else if !memory_fits(&after) {
            refusals.push(format!("node {}: memory {:.2} > {:.2}", c.node.id, after.mem, limits.memory_overcommit));
        } else {
            fitting.push((c, after, free));
        }
    }
    let count = fitting.len();
    let Some((c, after, free)) = fitting.into_iter().min_by(|a, b| a.1.rank(&b.1)) else {
        return Err(PlacementError::NoRoom {
            vcpus: request.vcpus,
            memory: format_bytes(memory),
            detail: refusals.join("; "),
        });
    };
    let pins: Vec<u32> = free.iter().take(request.vcpus as usize).collect();
    let inside = request.cpuset.as_ref().map(|s| format!(" inside the spec's cpuset {s}")).unwrap_or_default();
    let reason = format!(
        "node {}: vCPUs pinned to {}{inside}, cpu {:.2} mem {:.2} after this VM, most balanced of {} with free CPUs",
        c.node.id,
        pins.iter().copied().collect::<CpuSet>(),
        after.cpu,
        after.mem,
        nodes_phrase(count)
    );
    Ok(Placement {
        nodes: vec![NodePlacement {
            node: c.node.id,
            cpus: c.cpus.clone(),
            memory_bytes: memory,
            vcpus: 0..request.vcpus,
        }],
        pins,
        from_cpuset: request.cpuset.is_some(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Owner;
    use super::*;

    const GIB: u64 = 1 << 30;

    fn request(vcpus: u32, gib: u64) -> Request {
        Request { vcpus, memory_bytes: gib * GIB, policy: Policy::Node, ..Request::default() }
    }

    fn strict_request(vcpus: u32, gib: u64) -> Request {
        Request { policy: Policy::Strict, ..request(vcpus, gib) }
    }

    fn cpus(text: &str) -> CpuSet {
        text.parse().expect("a CPU list")
    }

    /// Places each request in turn, as the ledger would, and returns the reservations.
    fn place_all(topology: &Topology, requests: &[Request], limits: &Limits) -> Vec<Reservation> {
        let mut taken = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let placement = choose(topology, &taken, r, limits).unwrap_or_else(|e| panic!("request {i}: {e}"));
            taken.push(reserve(i, r, placement));
        }
        taken
    }

    fn reserve(i: usize, r: &Request, placement: Placement) -> Reservation {
        let owner = Owner { pid: 100 + i as u32, start_time: 1 };
        Reservation { key: format!("default/vm{i}"), owner, vcpus: r.vcpus, memory_bytes: r.memory_bytes, placement }
    }

    fn node_of(placement: &Placement) -> u32 {
        assert_eq!(placement.nodes.len(), 1, "{placement:?}");
        placement.nodes[0].node
    }

    #[test]
    fn policy_none_places_nothing() {
        let request = Request { policy: Policy::None, ..request(64, 1024) };
        assert_eq!(choose(&Topology::symmetric(2, 4, GIB), &[], &request, &Limits::default()), Ok(Placement::none()));
    }

    #[test]
    fn by_default_a_one_node_host_is_left_to_the_kernel_and_a_larger_one_balanced() {
        let auto = Request { policy: Policy::Auto, ..request(2, 1) };
        let one = Topology::symmetric(1, 4, 8 * GIB);
        let placement = choose(&one, &[], &auto, &Limits::default()).unwrap();
        assert!(placement.nodes.is_empty() && placement.reason.contains("one NUMA node"), "{placement:?}");
        let asked = Request { policy: Policy::Node, ..auto.clone() };
        assert_eq!(node_of(&choose(&one, &[], &asked, &Limits::default()).unwrap()), 0);
        let two = Topology::symmetric(2, 4, 8 * GIB);
        assert_eq!(choose(&two, &[], &auto, &Limits::default()).unwrap().nodes.len(), 1);
    }

    #[test]
    fn alike_vms_alternate_between_nodes() {
        let topology = Topology::symmetric(2, 8, 16 * GIB);
        let taken = place_all(&topology, &vec![request(2, 4); 4], &Limits::default());
        let nodes: Vec<u32> = taken.iter().map(|r| node_of(&r.placement)).collect();
        assert_eq!(nodes, [0, 1, 0, 1]);
        assert_eq!(taken[1].placement.nodes[0].cpus, cpus("8-15"));
        assert_eq!(taken[1].placement.nodes[0].vcpus, 0..2);
        assert_eq!(
            taken[1].placement.reason,
            "node 1: cpu 0.25 mem 0.25 after this VM, most balanced of 2 nodes under the limits"
        );
    }

    #[test]
    fn a_vm_goes_where_cpu_and_memory_stay_balanced() {
        let topology = Topology::symmetric(4, 8, 16 * GIB);
        // Node 0 is CPU-heavy, node 1 memory-heavy, nodes 2 and 3 empty.
        let taken = place_all(&topology, &[request(16, 1), request(1, 12)], &Limits::default());
        assert_eq!(taken.iter().map(|r| node_of(&r.placement)).collect::<Vec<_>>(), [0, 1]);
        let memory_heavy = choose(&topology, &taken, &request(2, 14), &Limits::default()).expect("placed");
        // Node 0: cpu 2.25 mem 0.94 (1.31); node 1: over memory; nodes 2, 3: cpu 0.25 mem 0.88 (0.63).
        assert_eq!(node_of(&memory_heavy), 2);
        let cpu_heavy = choose(&topology, &taken, &request(8, 1), &Limits::default()).expect("placed");
        // Node 1: cpu 1.13 mem 0.81 (0.31) beats empty nodes: cpu 1.00 mem 0.06 (0.94).
        assert_eq!(node_of(&cpu_heavy), 1);
    }

    #[test]
    fn ties_go_to_the_least_loaded_then_the_lowest_id() {
        let topology = Topology::symmetric(3, 4, 4 * GIB);
        // Node 0 holds cpu 0.5 mem 0.5, nodes 1 and 2 nothing.
        let taken = place_all(&topology, &[request(2, 2)], &Limits::default());
        let next = choose(&topology, &taken, &request(2, 2), &Limits::default()).expect("placed");
        // Both 0 and 1 give |cpu − mem| = 0; node 1 is less loaded (0.5 against 1.0).
        assert_eq!(node_of(&next), 1);
    }

    #[test]
    fn the_overcommit_limits_are_kept_and_refusals_give_the_numbers() {
        let topology = Topology::symmetric(2, 4, 8 * GIB);
        let limits = Limits { cpu_overcommit: 1.0, memory_overcommit: 1.0 };
        let taken = place_all(&topology, &[request(4, 2), request(4, 2)], &limits);
        let err = choose(&topology, &taken, &request(1, 1), &limits).expect_err("full");
        assert_eq!(
            err.to_string(),
            "no NUMA node can take 1 vCPUs and 1Gi: node 0: cpu 1.25 > 1.00; node 1: cpu 1.25 > 1.00"
        );
        let err = choose(&topology, &taken, &Request { node: Some(1), ..request(2, 7) }, &limits).expect_err("full");
        assert_eq!(
            err.to_string(),
            "no NUMA node can take 2 vCPUs and 7Gi: node 1: cpu 1.50 > 1.00, memory 1.12 > 1.00"
        );
        // The default limits let vCPUs overcommit 4 to 1, not memory.
        let taken = place_all(&topology, &vec![request(8, 1); 4], &Limits::default());
        assert!(choose(&topology, &taken, &request(1, 1), &Limits::default()).is_err());
        let taken = place_all(&topology, &vec![request(1, 4); 4], &Limits::default());
        assert!(choose(&topology, &taken, &request(1, 1), &Limits::default()).is_err());
    }

    #[test]
    fn a_requested_node_is_taken_even_if_less_balanced() {
        let topology = Topology::symmetric(2, 8, 16 * GIB);
        let taken = place_all(&topology, &[request(4, 4)], &Limits::default());
        let asked =
            choose(&topology, &taken, &Request { node: Some(0), ..request(4, 4) }, &Limits::default()).expect("placed");
        assert_eq!(node_of(&asked), 0);
        assert_eq!(asked.reason, format!("node 0: cpu 1.00 mem 0.50 after this VM, as {ANNOTATION_NUMA_NODE} asks"));
    }

    #[test]
    fn an_unknown_or_cpuless_node_is_refused_naming_it() {
        let mut topology = Topology::symmetric(2, 4, GIB);
        let err = choose(&topology, &[], &Request { node: Some(5), ..request(1, 1) }, &Limits::default())
            .expect_err("no node 5");
        assert_eq!(err.to_string(), "vm.containerd.io/numa-node=5: this host has no such NUMA node (its nodes: 0, 1)");
        topology.nodes[1].cpus = CpuSet::new();
        let err = choose(&topology, &[], &Request { node: Some(1), ..request(1, 1) }, &Limits::default())
            .expect_err("no CPUs");
        assert_eq!(
            err.to_string(),
            "no NUMA node with CPUs is allowed by the host (nodes with CPUs: 0) and vm.containerd.io/numa-node=1"
        );
        // A memory-only node is never chosen on its own.
        let taken = place_all(&topology, &vec![request(1, 0); 3], &Limits::default());
        assert!(taken.iter().all(|r| node_of(&r.placement) == 0));
    }

    #[test]
    fn the_specs_mems_restrict_the_nodes() {
        let topology = Topology::symmetric(4, 4, 4 * GIB);
        let taken =
            place_all(&topology, &vec![Request { mems: Some(vec![2, 3]), ..request(1, 1) }; 3], &Limits::default());
        assert_eq!(taken.iter().map(|r| node_of(&r.placement)).collect::<Vec<_>>(), [2, 3, 2]);
        let err = choose(&topology, &[], &Request { mems: Some(vec![1, 7]), ..request(1, 1) }, &Limits::default())
            .expect_err("no node 7");
        assert_eq!(err.to_string(), "the spec's mems name node 7, which this host lacks (its nodes: 0, 1, 2, 3)");
    }

    #[test]
    fn strict_vms_never_share_a_cpu() {
        let topology = Topology::symmetric(2, 4, 8 * GIB);
        let taken = place_all(&topology, &[strict_request(3, 1), strict_request(3, 1)], &Limits::default());
        assert_eq!(taken[0].placement.pins, [0, 1, 2]);
        assert_eq!(taken[1].placement.pins, [4, 5, 6]);
        assert_eq!(taken[1].placement.nodes[0].cpus, cpus("4-7"));
        let err = choose(&topology, &taken, &strict_request(2, 1), &Limits::default()).expect_err("1 free per node");
        assert_eq!(
            err.to_string(),
            "no NUMA node can take 2 vCPUs and 1Gi: node 0: 1 of 4 CPUs free; node 1: 1 of 4 CPUs free"
        );
        // Floating VMs still fit beside them, and a 1-vCPU strict VM takes a free CPU.
        let more = choose(&topology, &taken, &strict_request(1, 1), &Limits::default()).expect("placed");
        assert_eq!(more.pins, [3]);
        assert!(choose(&topology, &taken, &request(2, 1), &Limits::default()).is_ok());
        // Release is removal: the CPUs are free again.
        let again = choose(&topology, &taken[1..], &strict_request(3, 1), &Limits::default()).expect("placed");
        assert_eq!(again.pins, [0, 1, 2]);
    }

    #[test]
    fn strict_keeps_the_memory_limit() {
        let topology = Topology::symmetric(2, 4, 8 * GIB);
        let taken = place_all(&topology, &[request(1, 7), request(1, 7)], &Limits::default());
        let err = choose(&topology, &taken, &strict_request(1, 2), &Limits::default()).expect_err("no memory");
        assert_eq!(
            err.to_string(),
            "no NUMA node can take 1 vCPUs and 2Gi: node 0: memory 1.12 > 1.00; node 1: memory 1.12 > 1.00"
        );
    }

    #[test]
    fn strict_vms_larger_than_a_node_are_refused() {
        let topology = Topology::symmetric(2, 4, 8 * GIB);
        let err = choose(&topology, &[], &strict_request(6, 1), &Limits::default()).expect_err("too large");
        assert_eq!(
            err.to_string(),
            "a strict VM of 6 vCPUs and 1Gi is larger than any NUMA node (node 0: 4 CPUs, 8Gi; node 1: 4 CPUs, 8Gi); \
             strict placement does not span nodes"
        );
        assert!(matches!(
            choose(&topology, &[], &strict_request(2, 9), &Limits::default()),
            Err(PlacementError::TooLargeForStrict { .. })
        ));
    }

    #[test]
    fn a_cpuset_from_the_spec_wins() {
        let topology = Topology::symmetric(2, 4, 4 * GIB);
        let limits = Limits { cpu_overcommit: 1.0, memory_overcommit: 1.0 };
        let pinned = Request { cpuset: Some(cpus("5-6")), ..request(8, 6) };
        // Over both limits, but kubelet decided: it is placed, inside the cpuset.
        let placement = choose(&topology, &[], &pinned, &limits).expect("placed");
        assert!(placement.from_cpuset);
        assert_eq!(node_of(&placement), 1);
        assert_eq!(placement.nodes[0].cpus, cpus("5-6"));
        assert_eq!(placement.reason, "inside the spec's cpuset 5-6 (kubelet's CPU manager): node 1");
        // And it counts: node 1 is now over the limits for VMs without a cpuset.
        let taken = vec![reserve(0, &pinned, placement)];
        let next = choose(&topology, &taken, &request(1, 1), &limits).expect("placed");
        assert_eq!(node_of(&next), 0);
        assert_eq!(totals(&taken)[&1], NodeTotals { vcpus: 8, memory_bytes: 6 * GIB, strict_cpus: CpuSet::new() });
    }

    #[test]
    fn a_cpuset_across_nodes_takes_one_node_that_holds_the_vm_else_spans_in_proportion() {
        let topology = Topology::symmetric(2, 4, 4 * GIB);
        // kubelet's shared pool over both nodes: a VM that one node's share holds stays there.
        let small = Request { cpuset: Some(cpus("2-7")), ..request(3, 3) };
        let placement = choose(&topology, &[], &small, &Limits::default()).expect("placed");
        assert_eq!((node_of(&placement), placement.nodes[0].cpus.to_string()), (1, "4-7".to_string()));
        assert!(placement.from_cpuset && placement.reason.starts_with("inside the spec's cpuset 2-7"));
        // Five vCPUs: no node's share holds them, so the cpuset's nodes share the VM.
        let large = Request { cpuset: Some(cpus("2-7")), ..request(5, 3) };
        let placement = choose(&topology, &[], &large, &Limits::default()).expect("placed");
        let shares: Vec<_> = placement.nodes.iter().map(|n| (n.node, n.cpus.to_string(), n.vcpus.len())).collect();
        assert_eq!(shares.len(), 2, "{shares:?}");
        assert_eq!(shares.iter().map(|s| s.2).sum::<usize>(), 5);
        assert_eq!(placement.reason, "inside the spec's cpuset 2-7 (kubelet's CPU manager): nodes 0, 1");
    }

    #[test]
    fn strict_inside_a_cpuset_pins_only_its_cpus() {
        let topology = Topology::symmetric(2, 4, 4 * GIB);
        let request = Request { cpuset: Some(cpus("1,3,6")), ..strict_request(2, 1) };
        let placement = choose(&topology, &[], &request, &Limits::default()).expect("placed");
        assert_eq!((placement.pins.clone(), placement.from_cpuset), (vec![1, 3], true));
        let taken = vec![reserve(0, &request, placement)];
        let err = choose(&topology, &taken, &request, &Limits::default()).expect_err("taken");
        assert_eq!(
            err.to_string(),
            "no NUMA node can take 2 vCPUs and 1Gi: node 0: 0 of 2 CPUs free; node 1: 1 of 1 CPUs free"
        );
    }

    #[test]
    fn a_cpuset_outside_the_host_is_refused() {
        let topology = Topology::symmetric(2, 4, GIB);
        let err = choose(&topology, &[], &Request { cpuset: Some(cpus("6-9")), ..request(1, 1) }, &Limits::default())
            .expect_err("no CPU 8");
        assert_eq!(err.to_string(), r#"the spec's cpuset "6-9" names CPUs this host lacks: 8-9"#);
        let empty = Request { cpuset: Some(CpuSet::new()), mems: Some(Vec::new()), ..request(1, 1) };
        assert!(!choose(&topology, &[], &empty, &Limits::default()).expect("placed").from_cpuset);
        let err = choose(
            &topology,
            &[],
            &Request { cpuset: Some(cpus("0-1")), node: Some(1), ..request(1, 1) },
            &Limits::default(),
        )
        .expect_err("cpuset on node 0");
        assert_eq!(
            err.to_string(),
            "no NUMA node with CPUs is allowed by the host (nodes with CPUs: 0, 1) and vm.containerd.io/numa-node=1 \
             and the spec's cpuset \"0-1\""
        );
    }

    /// Four nodes in two pairs: 0–1 and 2–3 close (12), the pairs far apart (30).
    fn two_pairs(cpus_per_node: u32, memory: u64) -> Topology {
        let mut topology = Topology::symmetric(4, cpus_per_node, memory);
        for node in &mut topology.nodes {
            node.distances = (0..4)
                .map(|to| {
                    if to == node.id {
                        10
                    } else if to / 2 == node.id / 2 {
                        12
                    } else {
                        30
                    }
                })
                .collect();
        }
        topology
    }

    #[test]
    fn a_vm_larger_than_any_node_spans_the_fewest_closest_nodes() {
        let topology = two_pairs(4, 8 * GIB);
        let limits = Limits { cpu_overcommit: 1.0, memory_overcommit: 1.0 };
        // Load node 1 so the pair 2–3 is the better (more balanced) close pair.
        let taken = place_all(&topology, &[Request { node: Some(1), ..request(2, 1) }], &limits);
        let placement = choose(&topology, &taken, &request(6, 12), &limits).expect("spans");
        let shares: Vec<_> = placement.nodes.iter().map(|n| (n.node, n.vcpus.clone(), n.memory_bytes)).collect();
        assert_eq!(shares, [(2, 0..3, 6 * GIB), (3, 3..6, 6 * GIB)]);
        assert!(
            placement.reason.starts_with("spans nodes 2, 3: 6 vCPUs and 12Gi are larger than any one node"),
            "{}",
            placement.reason
        );
        // The ledger counts each node's share.
        let all = [taken, vec![reserve(1, &request(6, 12), placement)]].concat();
        let totals = totals(&all);
        assert_eq!((totals[&2].vcpus, totals[&2].memory_bytes), (3, 6 * GIB));
        assert_eq!((totals[&1].vcpus, totals[&1].memory_bytes), (2, GIB));
    }

    #[test]
    fn spanning_takes_as_many_nodes_as_needed_and_no_more() {
        let topology = Topology::symmetric(8, 2, 4 * GIB);
        let limits = Limits { cpu_overcommit: 1.0, memory_overcommit: 1.0 };
        let placement = choose(&topology, &[], &request(5, 2), &limits).expect("spans");
        let shares: Vec<_> = placement.nodes.iter().map(|n| (n.node, n.vcpus.clone(), n.memory_bytes)).collect();
        // 5 vCPUs on 2-CPU nodes: 3 nodes; memory split 2Gi in 2 MiB units, remainder first.
        assert_eq!(shares.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(shares.iter().map(|s| s.1.clone()).collect::<Vec<_>>(), [0..2, 2..4, 4..5]);
        assert_eq!(shares.iter().map(|s| s.2).sum::<u64>(), 2 * GIB);
        let err = choose(&topology, &[], &request(17, 1), &limits).expect_err("larger than the host");
        assert!(err.to_string().contains("larger than any one node, and no group of nodes has room"), "{err}");
        // A VM too large for the node it asks for does not span.
        let err = choose(&topology, &[], &Request { node: Some(3), ..request(3, 1) }, &limits).expect_err("too large");
        assert_eq!(err.to_string(), "no NUMA node can take 3 vCPUs and 1Gi: node 3: cpu 1.50 > 1.00");
    }

    #[test]
    fn splits_are_proportional_and_whole() {
        assert_eq!(split(5, &[2, 2, 2]), [2, 2, 1]);
        assert_eq!(split(3, &[2, 4]), [1, 2]);
        assert_eq!(split(7, &[0, 0]), [4, 3]);
        assert_eq!(split_memory(3 * MEMORY_UNIT + 5, &[1, 1]), [2 * MEMORY_UNIT + 5, MEMORY_UNIT]);
    }

    #[test]
    fn a_vm_needs_a_vcpu() {
        assert_eq!(
            choose(&Topology::symmetric(1, 1, GIB), &[], &request(0, 1), &Limits::default()),
            Err(PlacementError::NoVcpus)
        );
    }
}
