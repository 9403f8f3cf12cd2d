use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::launch::POLL;
use crate::procs::sleep;

// ------------------------------------------------------------------------------------------
// A minimal QMP client (the bench may not depend on the workspace's qmp crate)

/// When a bare QEMU's QMP socket accepted the connection and when its greeting arrived.
#[derive(Clone, Copy)]
pub(crate) struct QmpPhases {
    pub(crate) connected: Duration,
    pub(crate) greeting: Duration,
}

/// Connects to QEMU's QMP socket as soon as it exists, negotiates, and polls `query-status`
/// until it says running. Returns the time since `t0`, and when the phases were reached.
pub(crate) fn qmp_wait_running(socket: &Path, t0: Instant, child: &mut Child) -> Result<(Duration, QmpPhases)> {
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("QEMU exited ({status}) before its QMP socket accepted a connection");
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    bail!("QMP socket {}: {e}", socket.display());
                }
                sleep(Duration::from_micros(500))?;
            }
        }
    };
    let connected = t0.elapsed();
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let read_reply = |reader: &mut BufReader<UnixStream>| -> Result<serde_json::Value> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("QMP connection closed");
            }
            let v: serde_json::Value =
                serde_json::from_str(line.trim()).with_context(|| format!("QMP line {line:?}"))?;
            if v.get("event").is_some() {
                continue;
            }
            return Ok(v);
        }
    };
    let greeting = read_reply(&mut reader)?;
    let phases = QmpPhases { connected, greeting: t0.elapsed() };
    if greeting.get("QMP").is_none() {
        bail!("unexpected QMP greeting {greeting}");
    }
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    let r = read_reply(&mut reader)?;
    if r.get("return").is_none() {
        bail!("qmp_capabilities: {r}");
    }
    loop {
        writer.write_all(b"{\"execute\":\"query-status\"}\n")?;
        let r = read_reply(&mut reader)?;
        if r["return"]["running"] == serde_json::Value::Bool(true) {
            return Ok((t0.elapsed(), phases));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("QEMU not running after 30 s: {r}");
        }
        sleep(POLL)?;
    }
}
