//! A task's cgroup metrics in the type containerd's clients decode for the host's cgroup
//! version: `io.containerd.cgroups.v1.Metrics` on v1, `io.containerd.cgroups.v2.Metrics` on
//! v2 (kubelet's ListContainerStats fails on any other type).

use std::path::Path;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};

/// Where the unified hierarchy is mounted.
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";

/// The metrics of `cgroup`, packed as an Any of the host's type.
pub fn collect(cgroup: &cgroups_rs::fs::Cgroup) -> Result<Any, String> {
    let metrics: Box<dyn containerd_shim::protos::protobuf::MessageDyn> = if cgroup.v2() {
        let dir = Path::new(UNIFIED_ROOT).join(cgroup.path().trim_start_matches('/'));
        Box::new(collect_v2(&dir)?)
    } else {
        Box::new(containerd_shim::cgroup::collect_metrics(cgroup).map_err(|e| format!("reading cgroup metrics: {e}"))?)
    };
    containerd_shim::util::convert_to_any(metrics).map_err(|e| format!("packing cgroup metrics: {e}"))
}

/// The v2 metrics of the cgroup at `dir`. Files a controller that is not enabled lacks are
/// left out; the cgroup itself must exist.
pub fn collect_v2(dir: &Path) -> Result<Metrics, String> {
    if !dir.is_dir() {
        return Err(format!("reading cgroup metrics: {} does not exist", dir.display()));
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let mut metrics = Metrics::new();

    if let Some(current) = read("pids.current") {
        let mut pids = PidsStat::new();
        pids.current = number(&current);
        pids.limit = read("pids.max").map(|max| limit(&max)).unwrap_or_default();
        metrics.pids = Some(pids).into();
    }
    if let Some(stat) = read("cpu.stat") {
        let stat = Keyed::parse(&stat);
        let mut cpu = CPUStat::new();
        cpu.usage_usec = stat.get("usage_usec");
        cpu.user_usec = stat.get("user_usec");
        cpu.system_usec = stat.get("system_usec");
        cpu.nr_periods = stat.get("nr_periods");
        cpu.nr_throttled = stat.get("nr_throttled");
        cpu.throttled_usec = stat.get("throttled_usec");
        metrics.cpu = Some(cpu).into();
    }
    if let Some(current) = read("memory.current") {
        let stat = read("memory.stat").unwrap_or_default();
        let stat = Keyed::parse(&stat);
        let mut memory = MemoryStat::new();
        memory.anon = stat.get("anon");
        memory.file = stat.get("file");
        memory.kernel_stack = stat.get("kernel_stack");
        memory.slab = stat.get("slab");
        memory.sock = stat.get("sock");
        memory.shmem = stat.get("shmem");
        memory.file_mapped = stat.get("file_mapped");
        memory.file_dirty = stat.get("file_dirty");
        memory.file_writeback = stat.get("file_writeback");
        memory.anon_thp = stat.get("anon_thp");
        memory.inactive_anon = stat.get("inactive_anon");
        memory.active_anon = stat.get("active_anon");
        memory.inactive_file = stat.get("inactive_file");
        memory.active_file = stat.get("active_file");
        memory.unevictable = stat.get("unevictable");
        memory.slab_reclaimable = stat.get("slab_reclaimable");
        memory.slab_unreclaimable = stat.get("slab_unreclaimable");
        memory.pgfault = stat.get("pgfault");
        memory.pgmajfault = stat.get("pgmajfault");
        memory.workingset_refault = stat.get("workingset_refault");
        memory.workingset_activate = stat.get("workingset_activate");
        memory.workingset_nodereclaim = stat.get("workingset_nodereclaim");
        memory.pgrefill = stat.get("pgrefill");
        memory.pgscan = stat.get("pgscan");
        memory.pgsteal = stat.get("pgsteal");
        memory.pgactivate = stat.get("pgactivate");
        memory.pgdeactivate = stat.get("pgdeactivate");
        memory.pglazyfree = stat.get("pglazyfree");
        memory.pglazyfreed = stat.get("pglazyfreed");
        memory.thp_fault_alloc = stat.get("thp_fault_alloc");
        memory.thp_collapse_alloc = stat.get("thp_collapse_alloc");
        memory.usage = number(&current);
        memory.usage_limit = read("memory.max").map(|max| limit(&max)).unwrap_or_default();
        memory.max_usage = read("memory.peak").map(|peak| number(&peak)).unwrap_or_default();
        memory.swap_usage = read("memory.swap.current").map(|s| number(&s)).unwrap_or_default();
        memory.swap_limit = read("memory.swap.max").map(|s| limit(&s)).unwrap_or_default();
        metrics.memory = Some(memory).into();
    }
    if let Some(events) = read("memory.events") {
        let events = Keyed::parse(&events);
        let mut memory_events = MemoryEvents::new();
        memory_events.low = events.get("low");
        memory_events.high = events.get("high");
        memory_events.max = events.get("max");
        memory_events.oom = events.get("oom");
        memory_events.oom_kill = events.get("oom_kill");
        memory_events.oom_group_kill = events.get("oom_group_kill");
        metrics.memory_events = Some(memory_events).into();
    }
    if let Some(stat) = read("io.stat") {
        let mut io = IOStat::new();
        io.usage = stat.lines().filter_map(io_entry).collect();
        metrics.io = Some(io).into();
    }
    Ok(metrics)
}

/// A single number file (`memory.current`); 0 if unreadable.
fn number(text: &str) -> u64 {
    text.trim().parse().unwrap_or_default()
}

/// A limit file: a number, or `max` (no limit; reported as u64::MAX as containerd does).
fn limit(text: &str) -> u64 {
    match text.trim() {
        "max" => u64::MAX,
        other => other.parse().unwrap_or_default(),
    }
}

/// `key value` lines (cpu.stat, memory.stat, memory.events).
struct Keyed<'a>(Vec<(&'a str, u64)>);

impl<'a> Keyed<'a> {
    fn parse(text: &'a str) -> Keyed<'a> {
        Keyed(
            text.lines()
                .filter_map(|line| {
                    let (key, value) = line.split_once(' ')?;
                    Some((key, value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of `key`; 0 if absent.
    fn get(&self, key: &str) -> u64 {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).unwrap_or_default()
    }
}

/// One io.stat line: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`.
fn io_entry(line: &str) -> Option<IOEntry> {
    let mut words = line.split_whitespace();
    let (major, minor) = words.next()?.split_once(':')?;
    let mut entry = IOEntry::new();
    entry.major = major.parse().ok()?;
    entry.minor = minor.parse().ok()?;
    for word in words {
        let Some((key, value)) = word.split_once('=') else { continue };
        let value = value.parse().unwrap_or_default();
        match key {
            "rbytes" => entry.rbytes = value,
            "wbytes" => entry.wbytes = value,
            "rios" => entry.rios = value,
            "wios" => entry.wios = value,
            _ => {}
        }
    }
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_files_become_the_v2_metrics_type() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("pids.current", "3\n");
        write("pids.max", "max\n");
        write(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
        );
        write("memory.current", "4096000\n");
        write("memory.max", "536870912\n");
        write("memory.stat", "anon 1000\nfile 2000\npgfault 7\n");
        write("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n");
        write("io.stat", "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\nbad line\n");

        let metrics = collect_v2(dir.path()).unwrap();
        assert_eq!((metrics.pids.current, metrics.pids.limit), (3, u64::MAX));
        assert_eq!((metrics.cpu.usage_usec, metrics.cpu.user_usec, metrics.cpu.system_usec), (1500, 1000, 500));
        assert_eq!((metrics.cpu.nr_throttled, metrics.cpu.throttled_usec), (1, 20));
        assert_eq!((metrics.memory.usage, metrics.memory.usage_limit), (4096000, 536870912));
        assert_eq!((metrics.memory.anon, metrics.memory.file, metrics.memory.pgfault), (1000, 2000, 7));
        assert_eq!((metrics.memory_events.max, metrics.memory_events.oom_kill), (2, 1));
        assert_eq!(metrics.io.usage.len(), 1);
        let io = &metrics.io.usage[0];
        assert_eq!((io.major, io.minor, io.rbytes, io.wbytes, io.rios, io.wios), (8, 0, 100, 200, 1, 2));

        let any = containerd_shim::util::convert_to_any(Box::new(metrics)).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    }

    #[test]
    fn controllers_not_enabled_are_left_out_and_a_missing_cgroup_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.current"), "10\n").unwrap();
        let metrics = collect_v2(dir.path()).unwrap();
        assert!(metrics.pids.is_none() && metrics.cpu.is_none() && metrics.io.is_none());
        assert_eq!(metrics.memory.usage, 10);
        let err = collect_v2(&dir.path().join("gone")).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
