//! containerd's logging-binary protocol, for `binary://` stdio URIs (`ctr run --log-uri
//! binary://...`, and nerdctl's default for detached containers): the shim starts the
//! binary with the console on fd 3, stderr on fd 4, and waits until it closes (or writes
//! to) fd 5 to say it is ready. CONTAINER_ID and CONTAINER_NAMESPACE name the task; the
//! URI's query pairs become arguments.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::fcntl::OFlag;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tracing::warn;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running logging binary and the write ends of its streams.
pub struct BinaryLogger {
    child: tokio::process::Child,
    stderr: Option<pipe::Sender>,
}

/// The program and arguments a `binary://` URI names.
#[derive(Debug, PartialEq, Eq)]
pub struct LoggerCommand {
    pub program: String,
    pub args: Vec<String>,
}

impl LoggerCommand {
    pub fn parse(uri: &str) -> Result<LoggerCommand, String> {
        let url = url::Url::parse(uri).map_err(|e| format!("stdout {uri:?}: {e}"))?;
        if url.scheme() != "binary" {
            return Err(format!("stdout {uri:?}: not a binary:// URI"));
        }
        let program = url.path().to_string();
        if url.host_str().is_some_and(|h| !h.is_empty()) || !program.starts_with('/') {
            return Err(format!("stdout {uri:?}: the logging binary must be an absolute path"));
        }
        let args = url
            .query_pairs()
            .flat_map(|(k, v)| if v.is_empty() { vec![k.into_owned()] } else { vec![k.into_owned(), v.into_owned()] })
            .collect();
        Ok(LoggerCommand { program, args })
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

impl BinaryLogger {
    /// Starts the logger and waits until it is ready; returns it with the writer for the console.
    pub async fn start(uri: &str, id: &str, namespace: &str) -> io::Result<(BinaryLogger, pipe::Sender)> {
        let command = LoggerCommand::parse(uri).map_err(io::Error::other)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        let mut cmd = tokio::process::Command::new(&command.program);
        cmd.args(&command.args)
            .env("CONTAINER_ID", id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.fd_mappings(vec![
            FdMapping { parent_fd: out_r, child_fd: 3 },
            FdMapping { parent_fd: err_r, child_fd: 4 },
            FdMapping { parent_fd: ready_w, child_fd: 5 },
        ])
        .map_err(io::Error::other)?;
        let mut child =
            cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("logging binary {}: {e}", command.program)))?;
        // Dropping the command closes the shim's copies of the child's ends, so the ready
        // pipe reports EOF once the logger has closed fd 5.
        drop(cmd);
        let mut ready = pipe::Receiver::from_owned_fd(ready_r)?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(READY_TIMEOUT, ready.read(&mut byte)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let _ = child.start_kill();
                return Err(io::Error::new(e.kind(), format!("logging binary {}: {e}", command.program)));
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "logging binary {} did not signal readiness on fd 5 within {READY_TIMEOUT:?}",
                        command.program
                    ),
                ));
            }
        }
        let stdout = pipe::Sender::from_owned_fd(out_w)?;
        let stderr = pipe::Sender::from_owned_fd(err_w)?;
        Ok((BinaryLogger { child, stderr: Some(stderr) }, stdout))
    }

    /// The write end of the logger's stderr stream, for a process that writes it itself.
    pub fn take_stderr(&mut self) -> Option<pipe::Sender> {
        self.stderr.take()
    }

    /// After the console writer was dropped: closes stderr and lets the logger finish.
    pub async fn finish(mut self, deadline: Duration) {
        self.stderr = None;
        if tokio::time::timeout(deadline, self.child.wait()).await.is_err() {
            warn!("logging binary did not exit within {deadline:?}; killing it");
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn uri_gives_program_and_arguments() {
        let c = LoggerCommand::parse(
            "binary:///usr/local/bin/nerdctl?_NERDCTL_INTERNAL_LOGGING=%2Fvar%2Flib%2Fnerdctl%2F1",
        )
        .unwrap();
        assert_eq!(c.program, "/usr/local/bin/nerdctl");
        assert_eq!(c.args, vec!["_NERDCTL_INTERNAL_LOGGING", "/var/lib/nerdctl/1"]);
        assert_eq!(LoggerCommand::parse("binary:///bin/logger").unwrap().args, Vec::<String>::new());
        assert!(LoggerCommand::parse("binary://relative/x").unwrap_err().contains("absolute"));
        assert!(LoggerCommand::parse("binary:relative").unwrap_err().contains("absolute"));
        assert!(LoggerCommand::parse("file:///x").is_err());
    }

    #[tokio::test]
    async fn logger_gets_the_console_on_fd_3_and_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = dir.path().join("logger.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\nexec 5>&-\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID $1\" > \"$2\"\ncat <&3 >> \"$2\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let uri = format!("binary://{}?tag={}", script.display(), out.display());
        let (logger, mut stdout) = BinaryLogger::start(&uri, "vm1", "default").await.unwrap();
        stdout.write_all(b"console line\n").await.unwrap();
        drop(stdout);
        logger.finish(Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "default/vm1 tag\nconsole line\n");
    }

    #[tokio::test]
    async fn a_logger_that_never_gets_ready_is_an_error() {
        let err = match BinaryLogger::start("binary:///nonexistent/logger", "vm1", "default").await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a missing logger must fail"),
        };
        assert!(err.contains("/nonexistent/logger"), "{err}");
    }
}
