//! `state_dir`: the last good feed (with its signature) and the order slot
//! table, each written atomically (temp file, fsync, rename, fsync the
//! directory), private to root (0700 directory, 0600 files).
//!
//! The last good feed is kept as `feed-<serial>.yaml` + `.minisig`, named by
//! the one-line pointer file `current`: a crash at any instant leaves either
//! the old pair or the new pair current, never a mix.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use crate::compile::SlotTable;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state_dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt ({reason}); remove it to start afresh")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "another blocker daemon{pid} runs with state_dir {path}: two daemons would fight over one datapath; stop it first"
    )]
    Locked { path: PathBuf, pid: String },
}

/// Held by the running daemon for as long as it runs: an advisory lock on
/// `state_dir/daemon.lock` (released by the kernel when the process dies).
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

type Result<T, E = StateError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The feed last applied, as it was signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedFeed {
    pub serial: u64,
    pub feed: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The daemon's last sync, as `blocker status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncStatus {
    /// Serial in force.
    pub serial: Option<u64>,
    /// Unix time of the last successful sync (feed fetched and verified, or unchanged).
    pub last_success: Option<i64>,
    /// Unix time of the last apply to the datapath.
    pub last_apply: Option<i64>,
    /// The last refusal, if the last sync failed.
    pub last_failure: Option<String>,
}

#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens `dir`, creating it (mode 0700) if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Opens `dir` for reading only; `None` when it does not exist.
    pub fn existing(dir: &Path) -> Option<Self> {
        dir.is_dir().then(|| Self {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("daemon.lock")
    }

    /// Takes the daemon lock, writing our pid into it where the directory
    /// can be written. Fails when another daemon holds it.
    pub fn lock(&self) -> Result<DaemonLock> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            // A read-only state_dir: a lock needs no write access.
            .or_else(|_| File::open(&path))
            .map_err(io_err(&path))?;
        if !try_flock(&file, libc::LOCK_EX) {
            return Err(StateError::Locked {
                pid: running_pid(&path),
                path: self.dir.clone(),
            });
        }
        let _ = file.set_len(0);
        let _ = (&file).write_all(std::process::id().to_string().as_bytes());
        Ok(DaemonLock { _file: file })
    }

    /// Stops the daemon running with this state_dir, if one runs: SIGTERM to
    /// the pid in its lock file, then waits up to `timeout` for the lock to
    /// be released. Returns the pid it stopped.
    pub fn stop_running_daemon(&self, timeout: std::time::Duration) -> Result<Option<u32>, String> {
        let path = self.lock_path();
        let Ok(file) = File::open(&path) else {
            return Ok(None);
        };
        let free = || try_flock(&file, libc::LOCK_SH);
        if free() {
            return Ok(None);
        }
        let pid: u32 = fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| {
                format!(
                    "a blocker daemon holds {} but its pid is unknown: stop it first",
                    path.display()
                )
            })?;
        let signal_pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
        // SAFETY: kill(2) with a pid and a signal number; no memory involved.
        if unsafe { libc::kill(signal_pid, libc::SIGTERM) } != 0 {
            return Err(format!(
                "stopping blocker run (pid {pid}): {}",
                io::Error::last_os_error()
            ));
        }
        let deadline = std::time::Instant::now() + timeout;
        while !free() {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "blocker run (pid {pid}) did not stop within {timeout:?}; stop it first"
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Some(pid))
    }

    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn feed_path(&self, serial: u64) -> PathBuf {
        self.dir.join(format!("feed-{serial}.yaml"))
    }

    fn signature_path(&self, serial: u64) -> PathBuf {
        self.dir.join(format!("feed-{serial}.yaml.minisig"))
    }

    fn slots_path(&self) -> PathBuf {
        self.dir.join("slots.json")
    }

    fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// Records when the feed was last synced and applied (for `blocker status`).
    pub fn save_status(&self, status: &SyncStatus) -> Result<()> {
        write_json(&self.status_path(), status)
    }

    pub fn load_status(&self) -> Result<Option<SyncStatus>> {
        let path = self.status_path();
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    /// Records `saved` as the last good feed.
    pub fn save_feed(&self, saved: &SavedFeed) -> Result<()> {
        write_atomic(&self.feed_path(saved.serial), &saved.feed)?;
        write_atomic(&self.signature_path(saved.serial), &saved.signature)?;
        let previous = self.current_serial()?;
        write_atomic(
            &self.current_path(),
            format!("{}\n", saved.serial).as_bytes(),
        )?;
        if let Some(previous) = previous.filter(|&p| p != saved.serial) {
            for path in [self.feed_path(previous), self.signature_path(previous)] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io_err(&path)(err)),
                }
            }
        }
        Ok(())
    }

    fn current_serial(&self) -> Result<Option<u64>> {
        let path = self.current_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_err(&path)(err)),
        };
        text.trim()
            .parse()
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: format!("not a serial: {e}"),
            })
    }

    /// The last good feed, if one was saved. The caller re-verifies it.
    pub fn load_feed(&self) -> Result<Option<SavedFeed>> {
        let Some(serial) = self.current_serial()? else {
            return Ok(None);
        };
        let feed_path = self.feed_path(serial);
        let feed = fs::read(&feed_path).map_err(io_err(&feed_path))?;
        let signature_path = self.signature_path(serial);
        let signature = fs::read(&signature_path).map_err(io_err(&signature_path))?;
        Ok(Some(SavedFeed {
            serial,
            feed,
            signature,
        }))
    }

    pub fn save_slots(&self, slots: &SlotTable) -> Result<()> {
        write_json(&self.slots_path(), slots)
    }

    /// The slot table last saved, or an empty one.
    pub fn load_slots(&self) -> Result<SlotTable> {
        let path = self.slots_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(SlotTable::new()),
            Err(err) => Err(io_err(&path)(err)),
        }
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &json)
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new
/// content: temp file in the same directory, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// A non-blocking flock; `false` when another process holds a conflicting lock.
fn try_flock(file: &File, operation: libc::c_int) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) == 0 }
}

fn running_pid(lock_path: &Path) -> String {
    fs::read_to_string(lock_path)
        .ok()
        .map(|pid| pid.trim().to_owned())
        .filter(|pid| !pid.is_empty())
        .map_or_else(String::new, |pid| format!(" (pid {pid})"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("blocker-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_and_loads_the_last_good_feed_privately() {
        let dir = temp_dir("feed");
        let state = StateDir::open(&dir).expect("open");
        assert_eq!(state.load_feed().expect("load"), None);
        let first = SavedFeed {
            serial: 7,
            feed: b"feed 7".to_vec(),
            signature: b"sig 7".to_vec(),
        };
        state.save_feed(&first).expect("save");
        let second = SavedFeed {
            serial: 9,
            feed: b"feed 9".to_vec(),
            signature: b"sig 9".to_vec(),
        };
        state.save_feed(&second).expect("save");
        assert_eq!(state.load_feed().expect("load"), Some(second));
        assert!(!dir.join("feed-7.yaml").exists(), "old feed removed");
        let mode = fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mode = fs::metadata(dir.join("feed-9.yaml"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_corrupt_pointer_is_reported_with_its_path() {
        let dir = temp_dir("corrupt");
        let state = StateDir::open(&dir).expect("open");
        fs::write(dir.join("current"), "not a number").expect("write");
        let err = state.load_feed().expect_err("corrupt");
        assert!(err.to_string().contains("current"), "{err}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
