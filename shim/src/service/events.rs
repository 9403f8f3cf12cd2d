//! The one queue of events leaving the shim, in the order they happened, and the one
//! task that hands them to containerd.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use tokio::sync::mpsc;
use tracing::warn;

pub type Published = (String, Box<dyn MessageDyn>);

/// The TaskExit of a task's process: its init (`process_id` = the container id) or an exec.
pub fn task_exit(
    container_id: &str,
    process_id: &str,
    pid: u32,
    exit: crate::lifecycle::Exit,
) -> containerd_shim::protos::events::task::TaskExit {
    containerd_shim::protos::events::task::TaskExit {
        container_id: container_id.to_string(),
        id: process_id.to_string(),
        pid,
        exit_status: exit.status,
        exited_at: containerd_shim::protos::protobuf::MessageField::some(timestamp(exit.at)),
        ..Default::default()
    }
}

/// The queue, with a count of the events not yet handed to containerd so Shutdown can
/// let them go out first.
#[derive(Clone)]
pub struct EventQueue {
    tx: mpsc::UnboundedSender<Published>,
    pending: Arc<AtomicUsize>,
}

impl EventQueue {
    /// A queue and the receiving end that [`publish`] (or a test) reads.
    pub fn new() -> (EventQueue, EventReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        (EventQueue { tx, pending: pending.clone() }, EventReceiver { rx, pending })
    }

    pub fn send<E: Event + Send>(&self, event: E) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send((event.topic(), Box::new(event))).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The events of one task: muted if the task is undone before containerd heard of it.
    pub fn for_task(&self) -> TaskEvents {
        TaskEvents { queue: self.clone(), muted: Arc::new(AtomicBool::new(false)) }
    }

    /// Waits (up to `deadline`) until every queued event has been handed over.
    pub async fn drained(&self, deadline: Duration) {
        let _ = tokio::time::timeout(deadline, async {
            while self.pending.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// The receiving end of the queue.
pub struct EventReceiver {
    rx: mpsc::UnboundedReceiver<Published>,
    pending: Arc<AtomicUsize>,
}

impl EventReceiver {
    /// The next event: its topic and message.
    pub async fn recv(&mut self) -> Option<Published> {
        let event = self.rx.recv().await;
        if event.is_some() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        event
    }

    /// An event already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Published> {
        let event = self.rx.try_recv().ok();
        if event.is_some() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        event
    }
}

/// The one place events leave the shim, in the order they happened.
pub async fn publish(publisher: RemotePublisher, namespace: String, mut events: EventReceiver) {
    while let Some((topic, event)) = events.rx.recv().await {
        if let Err(e) = publisher.publish(Default::default(), &topic, &namespace, event).await {
            warn!(%topic, "publishing event: {e}");
        }
        events.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A task's handle on the queue.
#[derive(Clone)]
pub struct TaskEvents {
    queue: EventQueue,
    muted: Arc<AtomicBool>,
}

impl TaskEvents {
    pub fn send<E: Event + Send>(&self, event: E) {
        if !self.muted.load(Ordering::SeqCst) {
            self.queue.send(event);
        }
    }

    /// Nothing more of this task reaches containerd.
    pub fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let d = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}
