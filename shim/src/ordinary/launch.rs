//! Starting a process through runc with the task's stdio (a container's init by `runc
//! create`, an exec by `runc exec --detach`): the task's streams opened, or a console socket
//! made for a terminal; runc run; the pid it wrote; a pidfd on the process; the streams the
//! shim serves from then on.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::runc_failed;
use super::stdio::{self, ConsoleSocket, StdinEnd, Streams};
use crate::console::Stdio;
use crate::host::process::Pidfd;
use crate::service::error::TaskError;

/// What runc is handed: the process's stdio without a terminal, the socket to send the
/// pty's master on with one.
pub struct RuncStdio {
    pub io: Option<Arc<dyn runc::Io>>,
    pub console_socket: Option<PathBuf>,
}

/// A process runc started, adopted by the shim.
pub struct Launched {
    pub pid: u32,
    pub pidfd: Pidfd,
    pub streams: Option<Streams>,
}

pub struct Launch<'a> {
    /// "container" or "exec", for messages.
    pub what: &'a str,
    /// runc's subcommand, for its errors.
    pub action: &'a str,
    pub stdio: &'a Stdio,
    pub id: &'a str,
    pub namespace: &'a str,
    pub stdin_end: StdinEnd,
    /// Where a console socket is made (a short path: sockets have a 108-byte limit).
    pub console_dir: &'a Path,
    /// Where `runc` writes the pid (`--pid-file`).
    pub pid_file: &'a Path,
    /// runc's JSON log, where its errors are read from.
    pub log: &'a Path,
}

impl Launch<'_> {
    /// Runs `runc` (the command, given the stdio to hand over) and wires up what it started.
    /// On an error nothing is left serving.
    pub async fn run<F, Fut>(self, runc: F) -> Result<Launched, TaskError>
    where
        F: FnOnce(RuncStdio) -> Fut,
        Fut: Future<Output = runc::Result<()>>,
    {
        let what = self.what;
        let unknown = |doing: &str, e: &dyn std::fmt::Display| {
            TaskError::Unknown(format!("containerd-shim-vm: {doing} the {what}'s {e}"))
        };
        let (given, streams, socket) = if self.stdio.terminal {
            let socket = ConsoleSocket::new(self.console_dir)
                .map_err(|e| unknown("opening", &format!("console socket: {e}")))?;
            let given = RuncStdio { io: None, console_socket: Some(socket.path().to_path_buf()) };
            (given, None, Some(socket))
        } else {
            let (process, streams) = stdio::plain(self.stdio, self.id, self.namespace, self.stdin_end)
                .await
                .map_err(|e| unknown("opening", &format!("stdio: {e}")))?;
            (RuncStdio { io: Some(Arc::new(process)), console_socket: None }, Some(streams), None)
        };
        // `given` goes into runc's command: the shim keeps no copy of the process's stdio.
        let ran = match &socket {
            Some(socket) => {
                let (run, receive) = (runc(given), socket.receive());
                tokio::pin!(run, receive);
                tokio::select! {
                    // runc failing before it connects: no waiting out the console's deadline.
                    ran = &mut run => match ran {
                        Ok(()) => Ok(Some(receive.await)),
                        Err(e) => Err(e),
                    },
                    master = &mut receive => run.await.map(|_| Some(master)),
                }
            }
            None => runc(given).await.map(|_| None),
        };
        let wired = async {
            let master = ran.map_err(|e| runc_failed(self.action, self.log, e))?;
            let pid = std::fs::read_to_string(self.pid_file).ok().and_then(|text| text.trim().parse::<u32>().ok());
            let pid = pid.ok_or_else(|| {
                TaskError::Unknown(format!("containerd-shim-vm: runc wrote no pid to {}", self.pid_file.display()))
            })?;
            // A process that exited already is our zombie until reaped: still there to open.
            let pidfd = Pidfd::open(pid).map_err(|e| unknown("opening", &format!("pidfd: {e}")))?;
            let terminal = match master {
                Some(master) => {
                    let served = match master {
                        Ok(master) => stdio::terminal(master, self.stdio, self.id, self.namespace)
                            .await
                            .map_err(|e| unknown("serving", &format!("console: {e}"))),
                        Err(e) => Err(unknown("receiving", &format!("console from runc: {e}"))),
                    };
                    match served {
                        Ok(streams) => Some(streams),
                        Err(e) => {
                            // Started, but nobody could talk to it: it must not run on untracked.
                            let _ = pidfd.kill();
                            let _ = tokio::time::timeout(Duration::from_secs(5), pidfd.reap()).await;
                            return Err(e);
                        }
                    }
                }
                None => None,
            };
            Ok((pid, pidfd, terminal))
        }
        .await;
        match wired {
            Ok((pid, pidfd, terminal)) => Ok(Launched { pid, pidfd, streams: streams.or(terminal) }),
            Err(e) => {
                if let Some(streams) = streams {
                    streams.finish(Duration::ZERO).await;
                }
                Err(e)
            }
        }
    }
}
