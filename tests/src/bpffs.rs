//! A private bpffs directory per test.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{require_root, unique_name};

const BPFFS: &str = "/sys/fs/bpf";

/// `/sys/fs/bpf/blkt-<pid>-<n>`: whatever a test pins there (program, links,
/// maps) is detached and removed on drop.
#[derive(Debug)]
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    pub fn new() -> Self {
        require_root();
        ensure_mounted();
        crate::sweep_stale();
        let path = Path::new(BPFFS).join(unique_name("blkt"));
        fs::create_dir(&path).unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for BpffsDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        if let Err(err) = blocker::datapath::detach(&self.path) {
            eprintln!("warning: detaching {}: {err}", self.path.display());
        }
        if self.path.exists()
            && let Err(err) = fs::remove_dir_all(&self.path)
        {
            eprintln!("warning: removing {}: {err}", self.path.display());
        }
    }
}

/// Mounts the bpf filesystem at `/sys/fs/bpf` when nothing is mounted there
/// (systemd does this at boot; minimal containers do not).
fn ensure_mounted() {
    if is_bpffs(Path::new(BPFFS)) {
        return;
    }
    crate::run_ok(std::process::Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]));
    assert!(
        is_bpffs(Path::new(BPFFS)),
        "{BPFFS} is still not a bpf filesystem after `mount -t bpf bpf {BPFFS}`"
    );
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; the path is a valid
    // C string.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == BPF_FS_MAGIC
    }
}
