//! Logs go to containerd's shim log (the `log` FIFO in the bundle), never stdout.

use std::sync::Mutex;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Sends `tracing` (and the `log` records of the shim library) to the bundle's log FIFO,
/// or to stderr when there is none (as when run by hand).
pub fn init(debug: bool) {
    // `SHIM_VM_LOG=debug` or per module, `SHIM_VM_LOG=info,qmp=trace`. (Targets, not
    // EnvFilter: the latter's regular expressions cost every shim their code.)
    let level = if debug { LevelFilter::DEBUG } else { LevelFilter::INFO };
    let requested = std::env::var("SHIM_VM_LOG").ok().map(|text| (text.parse::<Targets>(), text));
    let filter = match &requested {
        Some((Ok(targets), _)) => targets.clone(),
        _ => Targets::new().with_default(level),
    };
    let format = tracing_subscriber::fmt::layer().with_ansi(false).with_target(false);
    // containerd has the FIFO open for reading before it starts the serving shim.
    let result = match std::fs::OpenOptions::new().write(true).open("log") {
        Ok(file) => tracing_subscriber::registry().with(format.with_writer(Mutex::new(file))).with(filter).try_init(),
        Err(_) => tracing_subscriber::registry().with(format.with_writer(std::io::stderr)).with(filter).try_init(),
    };
    if let Err(e) = result {
        eprintln!("containerd-shim-vm: logging already set up: {e}");
    }
    if let Some((Err(e), text)) = requested {
        tracing::warn!("SHIM_VM_LOG={text:?} is not a filter such as \"info,qmp=trace\" ({e}): logging at {level}");
    }
    // The shipped shim aborts on a panic (Cargo.toml, profile.dist): say why in the shim
    // log before it goes, since stderr may reach nobody.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("containerd-shim-vm panicked, stopping: {info}");
        default_hook(info);
    }));
}
