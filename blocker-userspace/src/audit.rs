//! The audit trail: `state_dir/audit.jsonl`, one JSON object per line per
//! event, appended and fsynced, never rewritten. It is the operator's
//! evidence of when each order was enforced.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    DaemonStart {
        version: String,
    },
    DaemonStop,
    Detached {
        interfaces: Vec<String>,
    },
    Attached {
        interface: String,
        mode: String,
    },
    /// Enforcement plumbing removed by someone else was put back.
    Repaired {
        what: String,
        detail: String,
    },
    /// A configured interface disappeared; the program returns when it does.
    InterfaceGone {
        interface: String,
    },
    FeedApplied {
        serial: u64,
        in_force: Vec<String>,
        ipv4_prefixes: usize,
        ipv6_prefixes: usize,
    },
    FeedRefused {
        #[serde(skip_serializing_if = "Option::is_none")]
        serial: Option<u64>,
        reason: String,
        detail: String,
    },
    OrderEnteredForce {
        order: String,
        serial: u64,
    },
    OrderLeftForce {
        order: String,
        serial: u64,
        state: String,
    },
    OrderRefused {
        order: String,
        serial: u64,
        reason: String,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

pub struct AuditLog {
    path: PathBuf,
    /// `None` while the file cannot be opened (state_dir read-only, say):
    /// each record tries again.
    file: Option<File>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log for appending.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Ok(Self {
            path: path.to_owned(),
            file: Some(Self::open_file(path)?),
        })
    }

    /// A log whose file is opened at the first record that can: the daemon
    /// starts (and enforces) even when `state_dir` cannot be written.
    pub fn deferred(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
        }
    }

    fn open_file(path: &Path) -> Result<File, AuditError> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| AuditError {
                path: path.to_owned(),
                source,
            })
    }

    /// Appends one event stamped `at` and fsyncs it.
    pub fn record(&mut self, at: OffsetDateTime, event: &AuditEvent) -> Result<(), AuditError> {
        self.record_all(at, std::slice::from_ref(event))
    }

    /// Appends `events`, each stamped `at`, in order, with one write and
    /// one fsync (a feed that brings ten thousand orders into force is one
    /// fsync, not ten thousand): all of them, or none (a partial write is
    /// cut back).
    pub fn record_all(
        &mut self,
        at: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let time = at.format(&Rfc3339).unwrap_or_default();
        let mut bytes = Vec::new();
        for event in events {
            serde_json::to_writer(&mut bytes, &Line { time: &time, event }).map_err(|e| {
                AuditError {
                    path: self.path.clone(),
                    source: io::Error::other(e),
                }
            })?;
            bytes.push(b'\n');
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(Self::open_file(&self.path)?),
        };
        let before = file.metadata().map(|m| m.len()).ok();
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        if let Err(source) = written {
            // Take back what was written, and reopen next time: the file may
            // have been replaced.
            if let Some(len) = before {
                let _ = file.set_len(len);
            }
            self.file = None;
            return Err(AuditError {
                path: self.path.clone(),
                source,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log at `path`, a JSON value a line.
    fn json_lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[test]
    fn appends_one_json_line_per_event() {
        let path = std::env::temp_dir().join(format!("blocker-audit-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let at = OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("time");
        let mut log = AuditLog::open(&path).expect("open");
        log.record(
            at,
            &AuditEvent::OrderEnteredForce {
                order: "ATKM-1".into(),
                serial: 3,
            },
        )
        .expect("record");
        drop(log);
        let mut log = AuditLog::open(&path).expect("reopen");
        log.record(at, &AuditEvent::DaemonStop).expect("record");
        let lines = json_lines(&path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "order_entered_force");
        assert_eq!(lines[0]["order"], "ATKM-1");
        assert_eq!(lines[0]["serial"], 3);
        assert_eq!(lines[1]["event"], "daemon_stop");
        assert!(
            lines[1]["time"]
                .as_str()
                .expect("time")
                .starts_with("2026-")
        );
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn events_written_at_once_are_lines_in_their_order() {
        let path =
            std::env::temp_dir().join(format!("blocker-audit-all-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let at = OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("time");
        let mut log = AuditLog::open(&path).expect("open");
        log.record_all(at, &[]).expect("nothing to write");
        let entered = |i: u32| AuditEvent::OrderEnteredForce {
            order: format!("ATKM-{i}"),
            serial: 7,
        };
        let mut events: Vec<AuditEvent> = (0..3).map(entered).collect();
        events.push(AuditEvent::FeedApplied {
            serial: 7,
            in_force: vec!["ATKM-0".into(), "ATKM-1".into(), "ATKM-2".into()],
            ipv4_prefixes: 3,
            ipv6_prefixes: 0,
        });
        log.record_all(at, &events).expect("record all");
        log.record(at, &AuditEvent::DaemonStop).expect("record");
        let lines = json_lines(&path);
        let kinds: Vec<&str> = lines
            .iter()
            .map(|l| l["event"].as_str().expect("event"))
            .collect();
        assert_eq!(
            kinds,
            [
                "order_entered_force",
                "order_entered_force",
                "order_entered_force",
                "feed_applied",
                "daemon_stop"
            ]
        );
        let orders: Vec<&str> = lines[..3]
            .iter()
            .map(|l| l["order"].as_str().expect("order"))
            .collect();
        assert_eq!(orders, ["ATKM-0", "ATKM-1", "ATKM-2"]);
        assert_eq!(lines[3]["in_force"].as_array().map(Vec::len), Some(3));
        assert!(lines.iter().all(|l| l["time"] == lines[0]["time"]));
        std::fs::remove_file(&path).expect("cleanup");
    }
}
