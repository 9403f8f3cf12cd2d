//! Property tests: random hosts of 1–8 nodes, random create/release/crash sequences run
//! through a real ledger file, checked against a model of what should be live.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::{
    totals, CpuSet, Ledger, LedgerError, Limits, Node, Owner, Placement, Policy, Request, Reservation, Topology,
};

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Op {
    Create {
        vcpus: u32,
        memory_mib: u64,
        policy: Policy,
        node: Option<u32>,
        cpuset: Option<u128>,
        mems: Option<u8>,
    },
    Release(usize),
    /// The owner dies without releasing (a SIGKILLed shim and its QEMU).
    Crash(usize),
}

/// Nodes of 0–12 CPUs (0: memory-only) and 1–64 GiB, CPUs numbered in blocks or interleaved
/// across nodes as on two-socket hosts, with random symmetric distances.
fn topology() -> impl Strategy<Value = Topology> {
    let node = (prop_oneof![1 => Just(0u32), 8 => 1..=12u32], 1..=64u64);
    (prop::collection::vec(node, 1..=8), any::<bool>(), prop::collection::vec(11..=40u32, 64)).prop_map(
        |(sizes, interleave, far)| {
            let n = sizes.len();
            let mut cpus = vec![CpuSet::new(); n];
            let mut next = 0u32;
            if interleave {
                for round in 0..12 {
                    for (i, (count, _)) in sizes.iter().enumerate() {
                        if round < *count {
                            cpus[i].extend([next]);
                            next += 1;
                        }
                    }
                }
            } else {
                for (i, (count, _)) in sizes.iter().enumerate() {
                    cpus[i].extend(next..next + count);
                    next += count;
                }
            }
            let distance = |a: usize, b: usize| if a == b { 10 } else { far[a.min(b) * 8 + a.max(b)] };
            let nodes = (0..n)
                .map(|i| Node {
                    id: i as u32,
                    cpus: cpus[i].clone(),
                    memory_bytes: sizes[i].1 << 30,
                    distances: (0..n).map(|j| distance(i, j)).collect(),
                })
                .collect();
            Topology { nodes }
        },
    )
}

fn limits() -> impl Strategy<Value = Limits> {
    (0.5f64..=4.0, 0.5f64..=1.5)
        .prop_map(|(cpu_overcommit, memory_overcommit)| Limits { cpu_overcommit, memory_overcommit })
}

fn op() -> impl Strategy<Value = Op> {
    let policy = prop_oneof![
        5 => Just(Policy::Node),
        3 => Just(Policy::Strict),
        1 => Just(Policy::None),
        2 => Just(Policy::Auto)
    ];
    // Mostly VMs that fit a node, some larger than any.
    let vcpus = prop_oneof![8 => 1..=4u32, 2 => 5..=24u32];
    let gib = prop_oneof![8 => 1..=8u64, 1 => 9..=64u64];
    let create = (
        vcpus,
        gib,
        policy,
        prop::option::weighted(0.2, 0..9u32),
        prop::option::weighted(0.2, any::<u128>()),
        prop::option::weighted(0.15, any::<u8>()),
    )
        .prop_map(|(vcpus, gib, policy, node, cpuset, mems)| Op::Create {
            vcpus,
            memory_mib: gib * 1024,
            policy,
            node,
            cpuset,
            mems,
        });
    prop_oneof![6 => create, 2 => any::<usize>().prop_map(Op::Release), 1 => any::<usize>().prop_map(Op::Crash)]
}

fn ratio(used: u64, capacity: u64) -> f64 {
    match (used, capacity) {
        (0, _) => 0.0,
        (_, 0) => f64::INFINITY,
        _ => used as f64 / capacity as f64,
    }
}

/// A new placement against the reservations live just before it.
fn check_placement(
    topology: &Topology,
    before: &[Reservation],
    request: &Request,
    placement: &Placement,
    limits: &Limits,
) -> Result<(), TestCaseError> {
    if request.policy == Policy::None {
        prop_assert_eq!(placement, &Placement::none());
        return Ok(());
    }
    // The default on a host with one node with CPUs: left to the kernel, as `none`.
    if request.policy == Policy::Auto && placement.nodes.is_empty() {
        prop_assert!(topology.nodes.iter().filter(|n| !n.cpus.is_empty()).count() <= 1 && request.node.is_none());
        return Ok(());
    }
    let mut next_vcpu = 0;
    for share in &placement.nodes {
        let node = topology.node(share.node).ok_or_else(|| TestCaseError::fail("an unknown node"))?;
        prop_assert!(!share.cpus.is_empty() && share.cpus.is_subset(&node.cpus), "{:?} on {:?}", share, node);
        prop_assert!(request.cpuset.as_ref().is_none_or(|c| share.cpus.is_subset(c)));
        prop_assert!(request.node.is_none_or(|n| n == share.node));
        prop_assert!(request.mems.as_ref().is_none_or(|m| m.contains(&share.node)));
        prop_assert_eq!(share.vcpus.start, next_vcpu);
        next_vcpu = share.vcpus.end;
    }
    prop_assert_eq!(next_vcpu, request.vcpus);
    prop_assert_eq!(placement.nodes.iter().map(|n| n.memory_bytes).sum::<u64>(), request.memory_bytes);
    prop_assert_eq!(placement.from_cpuset, request.cpuset.is_some());
    let with = [before, &[reservation("new", Owner { pid: 0, start_time: 0 }, request, placement.clone())]].concat();
    let totals = totals(&with);
    for share in &placement.nodes {
        let (node, held) = (topology.node(share.node).expect("checked above"), &totals[&share.node]);
        let (cpu, mem) = (ratio(held.vcpus, node.cpus.len() as u64), ratio(held.memory_bytes, node.memory_bytes));
        if !placement.from_cpuset {
            prop_assert!(mem <= limits.memory_overcommit, "node {} memory {} over {:?}", node.id, mem, limits);
            prop_assert!(
                request.policy == Policy::Strict || cpu <= limits.cpu_overcommit,
                "node {} cpu {}",
                node.id,
                cpu
            );
        }
    }
    if request.policy == Policy::Strict {
        prop_assert_eq!(placement.nodes.len(), 1);
        prop_assert_eq!(placement.pins.len(), request.vcpus as usize);
        let pins: CpuSet = placement.pins.iter().copied().collect();
        prop_assert_eq!(pins.len(), placement.pins.len());
        prop_assert!(pins.is_subset(&placement.cpus()));
        let taken: CpuSet = before.iter().flat_map(|r| r.placement.pins.iter().copied()).collect();
        prop_assert!(pins.intersection(&taken).is_empty(), "{} already pinned in {}", pins, taken);
    } else {
        prop_assert!(placement.pins.is_empty());
    }
    Ok(())
}

/// The ledger against the model: the live keys, no shared strict CPU, and totals that are
/// the sum of the live reservations.
fn check_ledger(
    topology: &Topology,
    listed: &[Reservation],
    live: &[(String, Owner, Request)],
) -> Result<(), TestCaseError> {
    let keys: BTreeSet<&str> = listed.iter().map(|r| r.key.as_str()).collect();
    prop_assert_eq!(keys.len(), listed.len());
    prop_assert_eq!(keys, live.iter().map(|(k, _, _)| k.as_str()).collect::<BTreeSet<_>>());
    let pins: Vec<u32> = listed.iter().flat_map(|r| r.placement.pins.iter().copied()).collect();
    prop_assert_eq!(pins.iter().collect::<BTreeSet<_>>().len(), pins.len(), "a strict CPU double-booked: {:?}", pins);
    let totals = totals(listed);
    let placed: Vec<&Reservation> = listed.iter().filter(|r| !r.placement.nodes.is_empty()).collect();
    prop_assert_eq!(
        totals.values().map(|t| t.vcpus).sum::<u64>(),
        placed.iter().map(|r| u64::from(r.vcpus)).sum::<u64>()
    );
    prop_assert_eq!(
        totals.values().map(|t| t.memory_bytes).sum::<u64>(),
        placed.iter().map(|r| r.memory_bytes).sum::<u64>()
    );
    let strict: CpuSet = totals.values().flat_map(|t| t.strict_cpus.iter()).collect();
    prop_assert_eq!(strict, pins.iter().copied().collect::<CpuSet>());
    for r in listed {
        for share in &r.placement.nodes {
            let node = topology.node(share.node).ok_or_else(|| TestCaseError::fail("an unknown node"))?;
            prop_assert!(share.cpus.is_subset(&node.cpus));
        }
    }
    Ok(())
}

fn reservation(key: &str, owner: Owner, request: &Request, placement: Placement) -> Reservation {
    Reservation { key: key.to_string(), owner, vcpus: request.vcpus, memory_bytes: request.memory_bytes, placement }
}

fn request(topology: &Topology, op: &Op) -> Option<Request> {
    let Op::Create { vcpus, memory_mib, policy, node, cpuset, mems } = op else { return None };
    let host: CpuSet = topology.nodes.iter().flat_map(|n| n.cpus.iter()).collect();
    let cpuset = cpuset.map(|mask| host.iter().filter(|c| mask >> (c % 128) & 1 == 1).collect::<CpuSet>());
    let mems =
        mems.map(|mask| topology.nodes.iter().map(|n| n.id).filter(|id| mask >> id & 1 == 1).collect::<Vec<_>>());
    Some(Request {
        vcpus: *vcpus,
        memory_bytes: memory_mib * MIB,
        policy: *policy,
        node: *node,
        cpuset: cpuset.filter(|c| !c.is_empty()),
        mems: mems.filter(|m| !m.is_empty()),
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_creates_and_releases_keep_the_ledger_sound(
        topology in topology(),
        limits in limits(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let ledger = Ledger::at(dir.path().join("ledger.json"));
        let mut live: Vec<(String, Owner, Request)> = Vec::new();
        let mut dead: BTreeSet<(u32, u64)> = BTreeSet::new();
        let fail = |e: LedgerError| TestCaseError::fail(e.to_string());
        for (step, op) in ops.iter().enumerate() {
            let is_alive = |o: &Owner| !dead.contains(&(o.pid, o.start_time));
            match (op, request(&topology, op)) {
                (_, Some(request)) => {
                    let (key, owner) = (format!("default/vm{step}"), Owner { pid: step as u32, start_time: 1 });
                    let before = ledger.list(is_alive).map_err(fail)?;
                    match ledger.place(&key, owner, &request, &topology, &limits, is_alive) {
                        Ok(placement) => {
                            check_placement(&topology, &before, &request, &placement, &limits)?;
                            live.push((key, owner, request));
                        }
                        Err(LedgerError::Placement(_)) => {}
                        Err(e) => return Err(fail(e)),
                    }
                }
                (Op::Release(i), None) if !live.is_empty() => {
                    let (key, _, _) = live.remove(i % live.len());
                    prop_assert!(ledger.release(&key).map_err(fail)?);
                }
                (Op::Crash(i), None) if !live.is_empty() => {
                    let (_, owner, _) = live.remove(i % live.len());
                    dead.insert((owner.pid, owner.start_time));
                }
                _ => {}
            }
            let is_alive = |o: &Owner| !dead.contains(&(o.pid, o.start_time));
            check_ledger(&topology, &ledger.list(is_alive).map_err(fail)?, &live)?;
        }
    }
}
