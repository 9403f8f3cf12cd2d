//! The exec processes of one task, by exec id, from Exec until their Delete: the part of
//! exec every kind of task shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim::protos::protobuf::well_known_types::any::Any;

use super::container::Process;
use super::error::TaskError;
use crate::lifecycle::Exit;

/// The OCI process of an ExecProcessRequest (JSON, whatever its type URL).
pub fn parse_exec_spec(spec: &Any) -> Result<oci_spec::runtime::Process, TaskError> {
    serde_json::from_slice(&spec.value)
        .map_err(|e| TaskError::InvalidArgument(format!("containerd-shim-vm: the exec's process spec: {e}")))
}

pub struct ExecProcesses<P> {
    task_id: String,
    processes: Mutex<HashMap<String, Arc<P>>>,
}

impl<P: Process + 'static> ExecProcesses<P> {
    pub fn new(task_id: &str) -> ExecProcesses<P> {
        ExecProcesses { task_id: task_id.to_string(), processes: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<P>>> {
        self.processes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks `exec_id` is free, then adds the process `make` returns.
    pub fn add(&self, exec_id: &str, make: impl FnOnce() -> P) -> Result<(), TaskError> {
        let mut processes = self.lock();
        self.check_free(&processes, exec_id)?;
        processes.insert(exec_id.to_string(), Arc::new(make()));
        Ok(())
    }

    /// Checks that `exec_id` could be added now (before work that `add` would waste).
    pub fn free(&self, exec_id: &str) -> Result<(), TaskError> {
        self.check_free(&self.lock(), exec_id)
    }

    fn check_free(&self, processes: &HashMap<String, Arc<P>>, exec_id: &str) -> Result<(), TaskError> {
        // An exec's TaskExit carries its id: the task's own id would read as the init's exit.
        if exec_id == self.task_id {
            return Err(TaskError::InvalidArgument(format!("exec id {exec_id:?} is the container's own id")));
        }
        match processes.contains_key(exec_id) {
            true => Err(TaskError::AlreadyExists(format!("exec {exec_id} already exists in task {}", self.task_id))),
            false => Ok(()),
        }
    }

    pub fn get(&self, exec_id: &str) -> Result<Arc<dyn Process>, TaskError> {
        match self.lock().get(exec_id) {
            Some(process) => Ok(process.clone() as Arc<dyn Process>),
            None => Err(TaskError::NotFound(format!("process {exec_id} not found in task {}", self.task_id))),
        }
    }

    /// Delete of an exec: its exit, once it has one; then it is forgotten.
    pub async fn remove(&self, exec_id: &str) -> Result<Exit, TaskError> {
        let process = self.lock().get(exec_id).cloned();
        let process = process.ok_or_else(|| TaskError::NotFound(format!("process {exec_id} not found")))?;
        let exit = process.finish_for_delete().await?;
        self.lock().remove(exec_id);
        Ok(exit)
    }

    /// The running ones' pids, by exec id.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let processes = self.lock();
        let running = processes.iter().filter(|(_, process)| process.state().can_signal());
        running.map(|(id, process)| (id.clone(), process.pid())).filter(|(_, pid)| *pid != 0).collect()
    }
}
