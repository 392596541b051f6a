//! Network namespaces and veth pairs that clean up after themselves.
//!
//! Two ways into a namespace:
//! - [`NetNs::ip`] / [`NetNs::exec`]: `ip -n NS ...` and `ip netns exec NS ...`,
//!   for iproute2, ping and curl;
//! - [`NetNs::command`] and [`NetNs::run`]: `setns(CLONE_NEWNET)` alone, for a
//!   child process or a thread. Unlike `ip netns exec`, this keeps the mount
//!   namespace: `ip netns exec` remounts `/sys`, which hides the bpffs at
//!   `/sys/fs/bpf` that the daemon pins its program and maps in.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Command, Output},
    thread,
};

use crate::{output, require_root, run_ok, unique_ifname, unique_name};

/// A network namespace named `blkt-<pid>-<n>`, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace and brings its loopback up.
    pub fn new() -> Self {
        require_root();
        crate::sweep_stale();
        let name = unique_name("blkt");
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // IPv6 addresses are added with `nodad`; this also covers link-local
        // addresses, so no address is ever tentative during a test.
        for key in ["all", "default"] {
            ns.exec_ok(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.accept_dad=0"),
            ]);
        }
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the handle `setns` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn open(&self) -> File {
        let path = self.path();
        File::open(&path).unwrap_or_else(|err| panic!("opening {}: {err}", path.display()))
    }

    /// `ip -n NS ARGS...`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip netns exec NS ARGS...`, whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }

    /// `ip netns exec NS ARGS...`, which must succeed; returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }

    /// A command whose child enters this namespace (network only) before it
    /// executes `program`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let ns = self.open();
        let mut command = Command::new(program);
        // SAFETY: between fork and exec the closure only calls setns(2), which
        // is async-signal-safe, on a descriptor the parent keeps open (`ns` is
        // moved into the closure, which lives as long as `command`).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Starts `f` on a new thread that first entered this namespace.
    pub fn spawn<T, F>(&self, f: F) -> thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let ns = self.open();
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                // SAFETY: setns on a namespace descriptor we own; it changes
                // only this thread's network namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert!(rc == 0, "setns into {name}: {}", io::Error::last_os_error());
                drop(ns);
                f()
            })
            .expect("spawning a thread")
    }

    /// Runs `f` inside this namespace (on a dedicated thread) and returns its
    /// result; a panic in `f` is re-raised here.
    pub fn run<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The MAC address of `interface` in this namespace.
    pub fn mac(&self, interface: &str) -> String {
        let json = self.ip(&["-j", "link", "show", "dev", interface]);
        let links: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|err| panic!("ip -j link: {err}: {json}"));
        links[0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address for {interface} in {json}"))
            .to_owned()
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => eprintln!("warning: ip netns del {}: {err}", self.name),
        }
    }
}

/// A veth pair with one end in each of two namespaces, both up. Deleted on
/// drop (deleting either end deletes both).
#[derive(Debug)]
pub struct VethPair {
    /// The end in the first namespace.
    pub a: String,
    /// The end in the second namespace.
    pub b: String,
    ns_a: String,
}

impl VethPair {
    pub fn new(ns_a: &NetNs, ns_b: &NetNs) -> Self {
        Self::named(ns_a, ns_b, unique_ifname('a'), unique_ifname('b'))
    }

    /// A pair with the given names (to recreate one that was deleted).
    pub fn named(ns_a: &NetNs, ns_b: &NetNs, a: String, b: String) -> Self {
        run_ok(Command::new("ip").args([
            "link",
            "add",
            "name",
            &a,
            "netns",
            ns_a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            ns_b.name(),
        ]));
        let pair = Self {
            a,
            b,
            ns_a: ns_a.name().to_owned(),
        };
        ns_a.ip(&["link", "set", &pair.a, "up"]);
        ns_b.ip(&["link", "set", &pair.b, "up"]);
        pair
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Fails harmlessly when the namespace (and with it the pair) is gone.
        let _ = Command::new("ip")
            .args(["-n", &self.ns_a, "link", "del", &self.a])
            .output();
    }
}
