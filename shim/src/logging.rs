//! Logs go to containerd's shim log (the `log` FIFO in the bundle), never stdout.

use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Sends `tracing` (and the `log` records of the shim library) to the bundle's log FIFO,
/// or to stderr when there is none (as when run by hand).
pub fn init(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("SHIM_VM_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_target(false);
    // containerd has the FIFO open for reading before it starts the serving shim.
    let result = match std::fs::OpenOptions::new().write(true).open("log") {
        Ok(file) => builder.with_writer(Mutex::new(file)).try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
    if let Err(e) = result {
        eprintln!("containerd-shim-vm: logging already set up: {e}");
    }
    // The shipped shim aborts on a panic (Cargo.toml, profile.dist): say why in the shim
    // log before it goes, since stderr may reach nobody.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("containerd-shim-vm panicked, stopping: {info}");
        default_hook(info);
    }));
}
