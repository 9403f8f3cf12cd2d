//! A task's lifecycle as a pure state type: created → running ⇄ paused → stopped.
//! Every change goes through [`State::apply`], and what containerd may ask of a task in
//! each state is decided here, so the odd orders containerd drives are unit-tested.

use std::time::SystemTime;

use containerd_shim_protos::api::Status;

/// How a task's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The process exists, held before its first instruction (QEMU `-S`).
    Created,
    Running,
    Paused,
    /// The process was reaped; nothing leaves this state.
    Stopped(Exit),
}

/// Something that happened to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Started,
    Paused,
    Resumed,
    Exited(Exit),
}

/// A request containerd makes that depends on the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Start,
    Pause,
    Resume,
}

/// Why a request does not fit the state; the message is what containerd's client prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task is {}", describe(*.0))]
pub struct WrongState(pub State);

fn describe(state: State) -> &'static str {
    match state {
        State::Created => "created but not started",
        State::Running => "running",
        State::Paused => "paused",
        State::Stopped(_) => "stopped",
    }
}

/// What Delete must do in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Never started: stop the held process first, then release.
    StopFirst,
    /// Running or paused: refuse (containerd kills first).
    Refuse,
    /// Stopped: release and report this exit.
    Release(Exit),
}

impl State {
    pub fn status(self) -> Status {
        match self {
            State::Created => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Paused => Status::PAUSED,
            State::Stopped(_) => Status::STOPPED,
        }
    }

    pub fn exit(self) -> Option<Exit> {
        match self {
            State::Stopped(exit) => Some(exit),
            _ => None,
        }
    }

    /// Whether `request` may be carried out now.
    pub fn check(self, request: Request) -> Result<(), WrongState> {
        match (self, request) {
            (State::Created, Request::Start) | (State::Running, Request::Pause) | (State::Paused, Request::Resume) => {
                Ok(())
            }
            _ => Err(WrongState(self)),
        }
    }

    /// The state after `change`, or `None` when it changes nothing (a pause of a paused
    /// task, anything after the exit, a second exit).
    pub fn after(self, change: Change) -> Option<State> {
        match (self, change) {
            (State::Stopped(_), _) => None,
            (_, Change::Exited(exit)) => Some(State::Stopped(exit)),
            (State::Created, Change::Started) => Some(State::Running),
            (State::Running, Change::Paused) => Some(State::Paused),
            (State::Paused, Change::Resumed) => Some(State::Running),
            _ => None,
        }
    }

    /// Applies `change`; returns whether it changed the state, so whoever made the
    /// change (a request or QEMU on its own) reports it, once.
    pub fn apply(&mut self, change: Change) -> bool {
        match self.after(change) {
            Some(next) => {
                *self = next;
                true
            }
            None => false,
        }
    }

    pub fn on_delete(self) -> OnDelete {
        match self {
            State::Created => OnDelete::StopFirst,
            State::Running | State::Paused => OnDelete::Refuse,
            State::Stopped(exit) => OnDelete::Release(exit),
        }
    }

    /// A signal reaches the process only while it has not exited.
    pub fn can_signal(self) -> bool {
        !matches!(self, State::Stopped(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: u32) -> Exit {
        Exit { status, at: SystemTime::UNIX_EPOCH }
    }

    const ALL: [State; 4] =
        [State::Created, State::Running, State::Paused, State::Stopped(Exit { status: 0, at: SystemTime::UNIX_EPOCH })];

    #[test]
    fn the_normal_path() {
        let mut s = State::Created;
        assert_eq!(s.status(), Status::CREATED);
        assert!(s.check(Request::Start).is_ok());
        assert!(s.apply(Change::Started));
        assert!(s.check(Request::Pause).is_ok());
        assert!(s.apply(Change::Paused));
        assert_eq!(s.status(), Status::PAUSED);
        assert!(s.check(Request::Resume).is_ok());
        assert!(s.apply(Change::Resumed));
        assert!(s.apply(Change::Exited(exit(0))));
        assert_eq!((s.status(), s.exit()), (Status::STOPPED, Some(exit(0))));
    }

    #[test]
    fn requests_that_do_not_fit_are_refused_with_the_state() {
        let refused = |s: State, r: Request| s.check(r).unwrap_err().to_string();
        assert_eq!(refused(State::Running, Request::Start), "task is running");
        assert_eq!(refused(State::Created, Request::Pause), "task is created but not started");
        assert_eq!(refused(State::Running, Request::Resume), "task is running");
        assert_eq!(refused(State::Stopped(exit(0)), Request::Start), "task is stopped");
        assert_eq!(refused(State::Paused, Request::Pause), "task is paused");
    }

    #[test]
    fn nothing_leaves_stopped_and_the_first_exit_wins() {
        for change in [Change::Started, Change::Paused, Change::Resumed, Change::Exited(exit(9))] {
            let mut s = State::Stopped(exit(1));
            assert!(!s.apply(change), "{change:?}");
            assert_eq!(s.exit(), Some(exit(1)));
        }
    }

    #[test]
    fn every_live_state_can_exit() {
        for mut s in [State::Created, State::Running, State::Paused] {
            assert!(s.apply(Change::Exited(exit(137))));
            assert_eq!(s, State::Stopped(exit(137)));
        }
    }

    #[test]
    fn a_change_seen_twice_is_reported_once() {
        // QEMU's STOP event and the Pause request both see the pause: one report.
        let mut s = State::Running;
        assert!(s.apply(Change::Paused));
        assert!(!s.apply(Change::Paused));
        assert!(s.apply(Change::Resumed));
        assert!(!s.apply(Change::Resumed));
        // a created task is not paused or resumed by QEMU events
        let mut created = State::Created;
        assert!(!created.apply(Change::Paused) && !created.apply(Change::Resumed));
        assert_eq!(created, State::Created);
    }

    #[test]
    fn delete_in_each_state() {
        assert_eq!(State::Created.on_delete(), OnDelete::StopFirst);
        assert_eq!(State::Running.on_delete(), OnDelete::Refuse);
        assert_eq!(State::Paused.on_delete(), OnDelete::Refuse);
        assert_eq!(State::Stopped(exit(3)).on_delete(), OnDelete::Release(exit(3)));
    }

    #[test]
    fn kill_after_exit_has_no_process_to_signal() {
        for s in ALL {
            assert_eq!(s.can_signal(), s.exit().is_none(), "{s:?}");
        }
    }

    #[test]
    fn only_start_pause_resume_in_their_states_are_allowed() {
        for s in ALL {
            for r in [Request::Start, Request::Pause, Request::Resume] {
                let allowed = matches!(
                    (s, r),
                    (State::Created, Request::Start)
                        | (State::Running, Request::Pause)
                        | (State::Paused, Request::Resume)
                );
                assert_eq!(s.check(r).is_ok(), allowed, "{s:?} {r:?}");
            }
        }
    }
}
