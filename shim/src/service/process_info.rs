//! What Pids says of each process (`ctr task ps` prints it): of the task's own process,
//! which kind of task it became, as the annotation [`KIND_ANNOTATION`] of an OCI spec; of an
//! exec's, its exec id, as runc's shim says it. Both are types every `ctr` release decodes
//! (1.6 to 2.x): a type of our own would make `ctr task ps` fail outright.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim_protos::api::ProcessInfo;

/// The annotation naming the task's kind (`vm` or `container`). Reported, never read: the
/// kind follows from the image and CRI's annotations.
pub const KIND_ANNOTATION: &str = "vm.containerd.io/kind";
/// The type containerd gives an OCI runtime spec (JSON) in an Any.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// runc's ProcessDetails by its bare name: ctr 1.6 finds no `type.googleapis.com/` name.
const PROCESS_DETAILS_TYPE_URL: &str = "containerd.runc.v1.ProcessDetails";

/// `pids` as Pids answers: `task_pid` carries the task's `kind` and `annotations` (what
/// else a user may want to see of it: a VM's placement), an exec's pid its id. Execs that
/// run inside the task's own process (a VM's, in its guest) have the task's pid: they get
/// a line each after the task's.
pub fn process_infos(
    pids: &[u32],
    task_pid: u32,
    kind: &str,
    annotations: &[(&str, String)],
    execs: &[(String, u32)],
) -> Vec<ProcessInfo> {
    let mut infos: Vec<ProcessInfo> = pids
        .iter()
        .map(|&pid| {
            let info = if pid == task_pid {
                Some(kind_info(kind, annotations))
            } else {
                execs.iter().find(|(_, exec_pid)| *exec_pid == pid).map(|(id, _)| exec_info(id))
            };
            ProcessInfo { pid, info: info.into(), ..Default::default() }
        })
        .collect();
    let inside = execs.iter().filter(|(_, exec_pid)| *exec_pid == task_pid);
    infos.extend(inside.map(|(id, pid)| ProcessInfo {
        pid: *pid,
        info: Some(exec_info(id)).into(),
        ..Default::default()
    }));
    infos
}

fn kind_info(kind: &str, annotations: &[(&str, String)]) -> Any {
    let mut all = serde_json::Map::new();
    all.insert(KIND_ANNOTATION.into(), kind.into());
    for (key, value) in annotations {
        all.insert((*key).into(), value.as_str().into());
    }
    let spec = serde_json::json!({ "annotations": all });
    Any { type_url: SPEC_TYPE_URL.into(), value: spec.to_string().into_bytes(), ..Default::default() }
}

fn exec_info(exec_id: &str) -> Any {
    let details = ProcessDetails { exec_id: exec_id.to_string(), ..Default::default() };
    // Writing a message to memory cannot fail; an empty Any would only lose the id.
    let value = details.write_to_bytes().unwrap_or_default();
    Any { type_url: PROCESS_DETAILS_TYPE_URL.into(), value, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_process_says_its_kind_and_execs_their_ids() {
        let execs = vec![("probe".to_string(), 40), ("shell".to_string(), 41)];
        let placed = [("vm.containerd.io/placement", "node 0 cpus 0-3".to_string())];
        let infos = process_infos(&[10, 40, 41, 77], 10, "container", &placed, &execs);
        assert_eq!(infos.iter().map(|i| i.pid).collect::<Vec<_>>(), [10, 40, 41, 77]);

        let kind = infos[0].info.as_ref().expect("the task's process has info");
        assert_eq!(kind.type_url, SPEC_TYPE_URL);
        let spec: serde_json::Value = serde_json::from_slice(&kind.value).unwrap();
        assert_eq!(spec["annotations"][KIND_ANNOTATION], "container");
        assert_eq!(spec["annotations"]["vm.containerd.io/placement"], "node 0 cpus 0-3");

        for (info, id) in infos[1..3].iter().zip(["probe", "shell"]) {
            let any = info.info.as_ref().expect("an exec's process has info");
            assert_eq!(any.type_url, PROCESS_DETAILS_TYPE_URL);
            assert_eq!(ProcessDetails::parse_from_bytes(&any.value).unwrap().exec_id, id);
        }
        // A process the task forked itself: nothing to say.
        assert!(infos[3].info.is_none());
    }

    #[test]
    fn execs_inside_the_task_process_get_a_line_each() {
        let execs = vec![("probe".to_string(), 10), ("shell".to_string(), 10)];
        let infos = process_infos(&[10], 10, "vm", &[], &execs);
        assert_eq!(infos.iter().map(|i| i.pid).collect::<Vec<_>>(), [10, 10, 10]);
        let ids: Vec<String> = infos[1..]
            .iter()
            .map(|i| ProcessDetails::parse_from_bytes(&i.info.as_ref().unwrap().value).unwrap().exec_id)
            .collect();
        assert_eq!(ids, ["probe", "shell"]);
    }
}
