//! Harness for blocker's privileged integration tests.
//!
//! - [`netns`]: network namespace and veth guards, running commands and
//!   closures inside a namespace.
//! - [`bpffs`]: a private directory under `/sys/fs/bpf`, detached and removed
//!   on drop.
//! - [`minisign`]: keys and signatures made with the stock `minisign` tool,
//!   never by blocker's own code.
//! - [`frame`]: Ethernet / VLAN / IPv4 / IPv6 / UDP / TCP / ICMP frame builder.
//! - [`orders`]: feed and order builders (Rust values and contract YAML).
//! - [`daemon`]: the `blocker run` process guard, its config, and a real
//!   HTTP scrape of `/metrics` parsed into a map.
//! - [`topology`]: the client ⇄ edge two-namespace setup the end-to-end and
//!   restart tests share.
//! - [`feed_server`]: a real HTTP server for feeds, on the loopback.
//!
//! These tests never skip: without root they panic ([`require_root`]).
//! Every guard cleans up on drop, also while a test panics.

pub mod bench;
pub mod bpffs;
pub mod daemon;
pub mod feed_server;
pub mod frame;
pub mod minisign;
pub mod netns;
pub mod orders;
pub mod rig;
pub mod topology;

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// Panics unless the tests run as root: namespaces, bpffs and XDP need it,
/// and a privileged test that silently skips proves nothing.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "blocker-tests need root (network namespaces, bpffs, XDP); run `cargo xtask test`, \
         or as root: `cargo build -p blocker-userspace && cargo test -p blocker-tests -- --test-threads=1`"
    );
}

/// Removes namespaces and bpffs directories that an earlier test process
/// (named `blkt-<pid>-<n>`, pid no longer alive) left behind when it was
/// killed before its guards ran. Runs once per process.
pub fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let stale = |name: &str| {
            name.strip_prefix("blkt-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid != std::process::id()
                        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                })
        };
        for entry in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                eprintln!("removing stale namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
        for entry in std::fs::read_dir("/sys/fs/bpf")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                eprintln!("removing stale bpffs directory {name}");
                let _ = blocker::datapath::detach(&entry.path());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// A name unique to this process and call: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A short interface name (at most 15 bytes, the kernel's limit) unique to
/// this process and call.
pub fn unique_ifname(side: char) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("bt{:x}{side}{n}", std::process::id() & 0xff_ffff);
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_owned()
}

/// The `blocker` binary: `$BLOCKER_BIN`, else `<workspace>/target/debug/blocker`.
pub fn blocker_bin() -> PathBuf {
    let path = std::env::var_os("BLOCKER_BIN").map_or_else(
        || workspace_root().join("target/debug/blocker"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no blocker binary at {}: run `cargo build -p blocker-userspace` first (or set BLOCKER_BIN)",
        path.display()
    );
    path
}

/// Runs a command to completion and returns its output; panics when it cannot
/// be started.
pub fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let out = output(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `ready` every `interval` until it returns true; panics after
/// `timeout` naming `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(interval);
    }
}
