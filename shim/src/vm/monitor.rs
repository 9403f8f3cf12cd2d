//! The VM's one exit monitor: owns QEMU's child handle (so only it signals QEMU's pid,
//! and only while it is QEMU's), follows QMP events, and records the exit once, at the
//! moment QEMU is reaped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim::protos::events::task::{TaskOOM, TaskPaused, TaskResumed};
use qmp::VmEvent;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Vm, PANIC_EXIT_STATUS, QEMU_LOG};
use crate::host::oom::OomWatch;
use crate::lifecycle::{Change, Exit};
use crate::service::events::task_exit;

const CONSOLE_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn run(
    vm: Arc<Vm>,
    mut child: tokio::process::Child,
    mut events: qmp::Events,
    mut oom: Option<OomWatch>,
    published: watch::Sender<Option<Exit>>,
) {
    let mut panicked = false;
    // After SHUTDOWN or a panic QEMU may report STOP on its way out: not a pause.
    let mut ending = false;
    let mut events_open = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            killed = next_oom(&mut oom) => match killed {
                Ok(()) => {
                    warn!("the kernel killed a process of the VM's cgroup: out of memory");
                    vm.events.send(TaskOOM { container_id: vm.id.clone(), ..Default::default() });
                }
                Err(e) => {
                    warn!("watching for OOM kills: {e}");
                    oom = None;
                }
            },
            event = events.next(), if events_open => match event {
                Some(VmEvent::GuestPanicked) => {
                    warn!("guest kernel panicked; stopping the VM");
                    panicked = true;
                    ending = true;
                    if let Err(e) = vm.qmp.quit().await {
                        warn!("quit after panic: {e}");
                        let _ = child.start_kill();
                    }
                }
                Some(VmEvent::Reset { guest, reason }) => info!(guest, %reason, "VM reset"),
                Some(VmEvent::Shutdown { guest, reason }) => {
                    info!(guest, %reason, "VM shutting down");
                    ending = true;
                }
                // A lifecycle request under way records its own change (QEMU reports STOP
                // before it answers `stop`): wait for it, then apply what QEMU says, so
                // that a STOP right after our `cont` (a write failing again) is not lost.
                // Whoever changes the state first publishes the change, once.
                Some(VmEvent::Stop) if !ending => {
                    let _after_request = vm.requests.lock().await;
                    if vm.apply(Change::Paused) {
                        warn!("QEMU paused the VM by itself (see {QEMU_LOG}); resume it once the cause is fixed");
                        vm.events.send(TaskPaused { container_id: vm.id.clone(), ..Default::default() });
                    }
                }
                Some(VmEvent::Resume) => {
                    let _after_request = vm.requests.lock().await;
                    if vm.apply(Change::Resumed) {
                        info!("QEMU resumed the VM by itself");
                        vm.events.send(TaskResumed { container_id: vm.id.clone(), ..Default::default() });
                    }
                }
                Some(other) => tracing::debug!(?other, "QMP event"),
                None => events_open = false,
            },
        }
    };
    // Reaped: the exit is recorded now, once, so State, Kill and Delete agree from here.
    let overridden = *vm.exit_override.lock().unwrap_or_else(|p| p.into_inner());
    let code = match status {
        _ if panicked => PANIC_EXIT_STATUS,
        _ if overridden.is_some() => overridden.unwrap_or_default(),
        Ok(s) => exit_code(s),
        Err(e) => {
            warn!("waiting for QEMU: {e}");
            255
        }
    };
    let exit = Exit { status: code, at: SystemTime::now() };
    vm.apply(Change::Exited(exit));
    info!(status = code, "VM exited");
    let marked = {
        let vm = vm.clone();
        tokio::task::spawn_blocking(move || {
            let mut held = vm.held();
            // The guest is gone: nobody to answer.
            held.dhcp.clear();
            let entry = held.qemu_entry;
            held.journal.as_mut().map(|journal| journal.released(entry)).transpose()
        })
        .await
    };
    if let Ok(Err(e)) = marked {
        warn!("{e}");
    }
    // Output and TaskExit before Wait and Delete see the exit: TaskExit precedes TaskDelete.
    let pumps = vm.pumps.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(pumps) = pumps {
        pumps.finish(CONSOLE_DRAIN_TIMEOUT).await;
    }
    vm.events.send(task_exit(&vm.id, &vm.id, vm.pid, exit));
    let _ = published.send(Some(exit));
}

/// The next OOM kill, or never when nothing is watched.
async fn next_oom(oom: &mut Option<OomWatch>) -> std::io::Result<()> {
    match oom {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u32,
        (None, Some(signal)) => 128 + signal as u32,
        _ => 255,
    }
}
