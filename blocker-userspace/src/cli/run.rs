//! `blocker run --config FILE`.

use std::path::Path;

use tracing_subscriber::EnvFilter;

use super::{EnvError, Exit, load_config};
use crate::daemon;

pub(super) fn run(config_path: &Path) -> Result<Exit, EnvError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BLOCKER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| EnvError::new(format!("starting the runtime: {e}")))?;
    runtime
        .block_on(daemon::run(config, shutdown_signal()))
        .map_err(|e| EnvError::chain(&e))?;
    Ok(Exit::Ok)
}

/// SIGTERM or SIGINT. If the handlers cannot be installed the daemon runs
/// until killed, which is safe: stopping never changes enforcement.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install SIGTERM/SIGINT handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
