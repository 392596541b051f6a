//! `blocker detach --config FILE`: the only command that lifts enforcement.

use std::path::Path;

use time::OffsetDateTime;

use super::{EnvError, Exit, load_config};
use crate::{
    audit::{AuditEvent, AuditLog},
    datapath,
    state::StateDir,
};

pub(super) fn detach(config_path: &Path) -> Result<Exit, EnvError> {
    let config = load_config(config_path)?;
    // A running daemon would put back every pin detach removes: stop it
    // first (it leaves enforcement pinned when it stops).
    if let Some(state) = StateDir::existing(&config.state_dir)
        && let Some(pid) = state
            .stop_running_daemon(std::time::Duration::from_secs(10))
            .map_err(EnvError::new)?
    {
        println!("stopped blocker run (pid {pid})");
    }
    let detached = datapath::detach(&config.bpffs_dir).map_err(EnvError::new)?;
    if detached.is_empty() {
        println!(
            "nothing attached under {}; pins removed",
            config.bpffs_dir.display()
        );
    } else {
        println!(
            "detached from {}; pins under {} removed: enforcement lifted",
            detached.join(", "),
            config.bpffs_dir.display()
        );
    }
    if let Some(state) = StateDir::existing(&config.state_dir) {
        let event = AuditEvent::Detached {
            interfaces: detached,
        };
        if let Err(err) = AuditLog::open(&state.audit_log_path())
            .and_then(|mut log| log.record(OffsetDateTime::now_utc(), &event))
        {
            eprintln!("blocker: warning: {err}");
        }
    }
    Ok(Exit::Ok)
}
