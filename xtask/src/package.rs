//! `cargo xtask deb [--check]`: a Debian package built with dpkg-deb from a
//! staged tree; `--check` installs it, verifies the unit, and proves the
//! unit's ExecStart line starts the daemon.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{blocker_binary, output, root, run};

#[derive(clap::Args)]
pub struct Options {
    /// Install the package, verify the unit, run its ExecStart, remove it.
    #[arg(long)]
    check: bool,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn deb(options: &Options) -> anyhow::Result<()> {
    crate::setup::setup()?;
    crate::util::build(true)?;
    let deb = build_deb()?;
    println!("built {}", deb.display());
    if options.check {
        check(&deb)?;
        println!("deb check passed: installs, unit verifies, ExecStart runs the daemon");
    }
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The output of `blocker ARGS` (completions, man page).
fn generated(binary: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = output(Command::new(binary).args(args))?;
    if !out.status.success() {
        bail!("blocker {} failed", args.join(" "));
    }
    Ok(out.stdout)
}

fn build_deb() -> anyhow::Result<PathBuf> {
    let root = root();
    let out_dir = root.join("target/deb");
    let stage = out_dir.join(format!("blocker_{VERSION}_amd64"));
    let _ = fs::remove_dir_all(&stage);
    let binary = blocker_binary(true);
    install(&binary, &stage.join("usr/bin/blocker"), 0o755)?;
    install(
        &root.join("packaging/blocker.service"),
        &stage.join("lib/systemd/system/blocker.service"),
        0o644,
    )?;
    install(
        &root.join("config/blocker.yaml"),
        &stage.join("etc/blocker/blocker.yaml"),
        0o644,
    )?;
    for doc in ["README.md", "docs/design.md", "docs/security.md"] {
        let name = Path::new(doc).file_name().unwrap_or_default();
        install(
            &root.join(doc),
            &stage.join("usr/share/doc/blocker").join(name),
            0o644,
        )?;
    }
    install(
        &root.join("config/grafana/blocker.json"),
        &stage.join("usr/share/blocker/grafana/blocker.json"),
        0o644,
    )?;
    install(
        &root.join("config/prometheus/alerts.yml"),
        &stage.join("usr/share/blocker/prometheus/alerts.yml"),
        0o644,
    )?;
    write(
        &stage.join("usr/share/bash-completion/completions/blocker"),
        &generated(&binary, &["completions", "bash"])?,
        0o644,
    )?;
    write(
        &stage.join("usr/share/zsh/vendor-completions/_blocker"),
        &generated(&binary, &["completions", "zsh"])?,
        0o644,
    )?;
    let man = generated(&binary, &["man"])?;
    let mut gzip = Command::new("gzip")
        .args(["-9n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("gzip")?;
    gzip.stdin.take().context("gzip stdin")?.write_all(&man)?;
    let man_gz = gzip.wait_with_output()?.stdout;
    write(
        &stage.join("usr/share/man/man1/blocker.1.gz"),
        &man_gz,
        0o644,
    )?;

    let control = format!(
        "Package: blocker\nVersion: {VERSION}\nArchitecture: amd64\nMaintainer: blocker developers <blocker@example.invalid>\nDepends: libc6\nRecommends: minisign\nSection: net\nPriority: optional\nDescription: enforce a regulator's signed block orders at the network edge with XDP\n blocker drops traffic to and from the addresses and prefixes named in the\n active orders of a signed feed, exactly in each order's window, with\n per-order Prometheus counters and an append-only audit log.\n"
    );
    write(&stage.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(
        &stage.join("DEBIAN/conffiles"),
        b"/etc/blocker/blocker.yaml\n",
        0o644,
    )?;
    install(
        &root.join("packaging/postinst"),
        &stage.join("DEBIAN/postinst"),
        0o755,
    )?;
    install(
        &root.join("packaging/prerm"),
        &stage.join("DEBIAN/prerm"),
        0o755,
    )?;
    let deb = out_dir.join(format!("blocker_{VERSION}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

const NS: &str = "blkdeb-check";
const BPFFS: &str = "/sys/fs/bpf/blkdeb-check";

/// Removes what the check made, whatever state it is in.
struct CheckGuard {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Drop for CheckGuard {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let _ = Command::new("/usr/bin/blocker")
            .args(["detach", "--config"])
            .arg(self.dir.join("blocker.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("dpkg")
            .args(["-P", "blocker"])
            .stdout(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn check(deb: &Path) -> anyhow::Result<()> {
    run(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    run(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let dir = std::env::temp_dir().join("blocker-deb-check");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut guard = CheckGuard {
        dir: dir.clone(),
        daemon: None,
    };
    let _ = Command::new("ip")
        .args(["netns", "del", NS])
        .stderr(Stdio::null())
        .status();
    run(Command::new("dpkg").arg("-i").arg(deb))?;
    run(Command::new("/usr/bin/blocker").arg("--version"))?;
    run(Command::new("/usr/bin/blocker")
        .arg("--help")
        .stdout(Stdio::null()))?;
    for file in [
        "/usr/share/man/man1/blocker.1.gz",
        "/usr/share/bash-completion/completions/blocker",
        "/etc/blocker/blocker.yaml",
    ] {
        if !Path::new(file).is_file() {
            bail!("{file} was not installed");
        }
    }
    let unit = "/lib/systemd/system/blocker.service";
    run(Command::new("systemd-analyze").args(["verify", unit]))?;

    // The unit's ExecStart, run by hand (systemd is not PID 1 here) with a
    // config for a throwaway namespace instead of /etc/blocker/blocker.yaml.
    let unit_text = fs::read_to_string(unit)?;
    let exec_start = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("the unit has no ExecStart")?;
    let config = dir.join("blocker.yaml");
    let exec_start = exec_start.replace("/etc/blocker/blocker.yaml", &config.to_string_lossy());
    run(Command::new("ip").args(["netns", "add", NS]))?;
    run(Command::new("ip").args([
        "-n", NS, "link", "add", "blkdeb-a", "type", "veth", "peer", "name", "blkdeb-b",
    ]))?;
    run(Command::new("ip").args(["-n", NS, "addr", "add", "192.0.2.1/24", "dev", "blkdeb-a"]))?;
    for dev in ["lo", "blkdeb-a", "blkdeb-b"] {
        run(Command::new("ip").args(["-n", NS, "link", "set", dev, "up"]))?;
    }
    run(Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(dir.join("k.pub"))
        .arg("-s")
        .arg(dir.join("k.key")))?;
    let feed = dir.join("feed.yaml");
    fs::write(
        &feed,
        "format: blocker-feed/v1\nserial: 1\nissued_at: 2026-11-24T10:00:00Z\nissuer: deb check\norders:\n  - id: DEB-1\n    rung: server\n    action: drop\n    direction: dst\n    targets: [192.0.2.99]\n    status: active\n",
    )?;
    run(Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(dir.join("k.key"))
        .arg("-m")
        .arg(&feed))?;
    fs::write(
        &config,
        format!(
            "interfaces: [{{name: blkdeb-a}}]\nfeed: {{url: \"file://{}\", public_key: {}, poll_interval: 1s}}\nstate_dir: {}\nbpffs_dir: {BPFFS}\nmetrics: {{listen: \"127.0.0.1:9948\"}}\n",
            feed.display(),
            dir.join("k.pub").display(),
            dir.join("state").display()
        ),
    )?;
    let mut words = exec_start.split_whitespace();
    let program = words.next().context("empty ExecStart")?;
    eprintln!("+ nsenter --net=/run/netns/{NS} {exec_start}");
    let log = fs::File::create(dir.join("daemon.log"))?;
    guard.daemon = Some(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{NS}"))
            .arg(program)
            .args(words)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("running ExecStart")?,
    );
    let started = Instant::now();
    loop {
        let page = output(Command::new("ip").args([
            "netns",
            "exec",
            NS,
            "curl",
            "-sf",
            "http://127.0.0.1:9948/metrics",
        ]))?;
        if String::from_utf8_lossy(&page.stdout).contains("blocker_feed_serial 1") {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            bail!("the unit's ExecStart did not bring the daemon up within 30 s:\n{log}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("ExecStart brought the daemon up: feed serial 1 enforced on blkdeb-a");
    drop(guard);
    if Path::new("/usr/bin/blocker").exists() {
        bail!("dpkg -P left /usr/bin/blocker behind");
    }
    Ok(())
}
