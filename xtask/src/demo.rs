//! `cargo xtask demo`: two namespaces joined by a veth pair, a signed demo
//! feed, blocker enforcing it on the edge side, real traffic from the client
//! side, counters from /metrics, and an order entering and leaving force.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::util::{blocker_binary, output, run};

const CLIENT: &str = "blkdemo-client";
const EDGE: &str = "blkdemo-edge";
const DIR: &str = "/tmp/blocker-demo";
const BPFFS: &str = "/sys/fs/bpf/blocker-demo";
const METRICS: &str = "http://127.0.0.1:9947/metrics";

#[derive(clap::Args)]
pub struct Options {
    /// Leave the namespaces and the daemon running for exploring.
    #[arg(long)]
    keep: bool,
    /// Remove what a `--keep` run left behind.
    #[arg(long)]
    cleanup: bool,
}

/// Removes everything the demo made, whatever state it is in.
fn cleanup() {
    if let Ok(pid) = fs::read_to_string(Path::new(DIR).join("blocker.pid")) {
        let _ = Command::new("kill")
            .arg(pid.trim())
            .stderr(Stdio::null())
            .status();
        // detach refuses while the daemon still runs: wait for it to exit.
        let proc_dir = Path::new("/proc").join(pid.trim());
        for _ in 0..100 {
            if !proc_dir.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    let config = Path::new(DIR).join("blocker.yaml");
    if config.exists() {
        let _ = Command::new(blocker_binary(false))
            .arg("detach")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .status();
    }
    for ns in [CLIENT, EDGE] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_dir_all(DIR);
}

struct Guard {
    keep: bool,
    daemon: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &daemon.id().to_string()])
                .status();
            let _ = daemon.wait();
        }
        cleanup();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

/// `blocker ...` inside the edge namespace. nsenter enters the network
/// namespace only; `ip netns exec` would remount /sys and hide bpffs.
fn blocker_in_edge(args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{EDGE}"))
        .arg(blocker_binary(false))
        .args(args);
    cmd
}

fn scrape() -> String {
    output(Command::new("ip").args(["netns", "exec", EDGE, "curl", "-sf", METRICS]))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Echo replies received for `count` pings from the client.
fn ping(target: &str, count: u32) -> anyhow::Result<u32> {
    let out = output(Command::new("ip").args([
        "netns",
        "exec",
        CLIENT,
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        target,
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find_map(|l| {
            l.split(", ")
                .find_map(|part| part.strip_suffix(" received"))
                .and_then(|n| n.trim().parse().ok())
        })
        .with_context(|| format!("ping {target}: unexpected output: {text}"))?;
    Ok(received)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn wait_until(at: OffsetDateTime, what: &str) {
    let wait = at - OffsetDateTime::now_utc();
    if wait.is_positive() {
        println!(
            "   ... waiting {:.0} s until {what}",
            wait.as_seconds_f64().ceil()
        );
        thread::sleep(wait.try_into().unwrap_or_default());
    }
}

fn expect(
    target: &str,
    label: &str,
    blocked: bool,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let sent = 3;
    let received = ping(target, sent)?;
    let ok = if blocked {
        received == 0
    } else {
        received == sent
    };
    println!(
        "   {target:<16} {label:<34} expected {:<8} got {received}/{sent} replies  {}",
        if blocked { "BLOCKED" } else { "allowed" },
        if ok { "ok" } else { "WRONG" }
    );
    if !ok {
        failures.push(format!("{target} ({label})"));
    }
    Ok(())
}

pub fn demo(options: &Options) -> anyhow::Result<()> {
    if options.cleanup {
        cleanup();
        println!("demo: cleaned up");
        return Ok(());
    }
    crate::setup::setup()?;
    crate::util::build(false)?;
    cleanup();
    let dir = PathBuf::from(DIR);
    fs::create_dir_all(&dir)?;
    let mut guard = Guard {
        keep: options.keep,
        daemon: None,
    };

    println!("\n== 1. Two hosts: a client and an edge router, joined by a veth pair");
    ip(&["netns", "add", CLIENT])?;
    ip(&["netns", "add", EDGE])?;
    ip(&[
        "link", "add", "blkd-c", "netns", CLIENT, "type", "veth", "peer", "name", "blkd-e",
        "netns", EDGE,
    ])?;
    for (ns, dev, addrs) in [
        (CLIENT, "blkd-c", &["192.0.2.1/24", "2001:db8:d::1/64"][..]),
        (
            EDGE,
            "blkd-e",
            &[
                "192.0.2.10/24",
                "192.0.2.20/24",
                "2001:db8:d::10/64",
                "2001:db8:d::20/64",
            ][..],
        ),
    ] {
        for addr in addrs {
            let mut args = vec!["-n", ns, "addr", "add", addr, "dev", dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip(&args)?;
        }
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }

    println!("\n== 2. The regulator's key and a signed feed (stock minisign)");
    run(Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(dir.join("demo.pub"))
        .arg("-s")
        .arg(dir.join("demo.key")))?;
    let now = OffsetDateTime::now_utc();
    let window_from = now + Duration::from_secs(15);
    let window_until = window_from + Duration::from_secs(8);
    let feed = format!(
        r#"format: blocker-feed/v1
serial: 1
issued_at: {issued}
issuer: ATKM (demo)
orders:
  - id: DEMO-0001
    rung: server
    action: drop
    direction: both
    targets: [192.0.2.10/32, 2001:db8:d::10/128]
    status: active
    reference: "Demo order: a bad hoster's server"
  - id: DEMO-0002
    rung: server
    action: monitor
    direction: dst
    targets: [192.0.2.20/32]
    status: active
  - id: DEMO-0003
    rung: server
    action: drop
    direction: dst
    targets: [2001:db8:d::20/128]
    status: active
    effective_from: {from}
    expires_at: {until}
"#,
        issued = rfc3339(now),
        from = rfc3339(window_from),
        until = rfc3339(window_until),
    );
    let feed_path = dir.join("feed.yaml");
    fs::write(&feed_path, &feed)?;
    run(Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(dir.join("demo.key"))
        .arg("-m")
        .arg(&feed_path))?;
    println!("{feed}");
    let config = format!(
        "interfaces:\n  - name: blkd-e\n    mode: auto\nenforcement: enforce\nfeed:\n  url: file://{}\n  public_key: {}\n  poll_interval: 1s\nstate_dir: {}\nbpffs_dir: {BPFFS}\nmetrics:\n  listen: 127.0.0.1:9947\n",
        feed_path.display(),
        dir.join("demo.pub").display(),
        dir.join("state").display(),
    );
    let config_path = dir.join("blocker.yaml");
    fs::write(&config_path, config)?;
    let cfg = config_path.to_string_lossy().into_owned();

    println!("\n== 3. blocker run on the edge");
    let log = fs::File::create(dir.join("blocker.log"))?;
    let daemon = blocker_in_edge(&["run", "--config", &cfg])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting blocker run")?;
    fs::write(dir.join("blocker.pid"), daemon.id().to_string())?;
    guard.daemon = Some(daemon);
    let started = Instant::now();
    while !scrape().contains("blocker_feed_serial 1") {
        if started.elapsed() > Duration::from_secs(30) {
            let log = fs::read_to_string(dir.join("blocker.log")).unwrap_or_default();
            bail!("blocker did not apply the demo feed within 30 s; its log:\n{log}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    run(&mut blocker_in_edge(&["status", "--config", &cfg]))?;

    println!("\n== 4. Traffic from the client");
    let mut failures = Vec::new();
    expect("192.0.2.10", "DEMO-0001 drop (server)", true, &mut failures)?;
    expect(
        "192.0.2.20",
        "DEMO-0002 monitor: counted, passes",
        false,
        &mut failures,
    )?;
    expect(
        "2001:db8:d::10",
        "DEMO-0001 drop (server)",
        true,
        &mut failures,
    )?;
    expect(
        "2001:db8:d::20",
        "DEMO-0003 not yet in force",
        false,
        &mut failures,
    )?;
    println!();
    run(&mut blocker_in_edge(&[
        "check",
        "--config",
        &cfg,
        "192.0.2.10",
    ]))?;

    println!(
        "\n== 5. An order on time: DEMO-0003 from {} until {}",
        rfc3339(window_from),
        rfc3339(window_until)
    );
    wait_until(
        window_from + Duration::from_millis(500),
        "DEMO-0003 enters force",
    );
    expect("2001:db8:d::20", "DEMO-0003 in force", true, &mut failures)?;
    wait_until(
        window_until + Duration::from_millis(500),
        "DEMO-0003 expires",
    );
    expect("2001:db8:d::20", "DEMO-0003 expired", false, &mut failures)?;

    println!("\n== 6. Per-order counters on /metrics");
    for line in scrape().lines().filter(|l| {
        l.starts_with("blocker_order_matched_packets_total")
            || l.starts_with("blocker_orders{")
            || l.starts_with("blocker_xdp_attached")
    }) {
        println!("   {line}");
    }
    println!("\n   audit log ({}/state/audit.jsonl):", DIR);
    for line in fs::read_to_string(dir.join("state/audit.jsonl"))?.lines() {
        println!("   {line}");
    }

    if options.keep {
        println!(
            "\n== Left running. Explore:\n   nsenter --net=/run/netns/{EDGE} {bin} status --config {cfg}\n   nsenter --net=/run/netns/{EDGE} {bin} check --config {cfg} 192.0.2.10\n   ip netns exec {EDGE} curl -s {METRICS}\n   ip netns exec {CLIENT} ping 192.0.2.10\n   cargo xtask demo --cleanup",
            bin = blocker_binary(false).display()
        );
    } else {
        println!("\n== 7. Cleaning up (detach, namespaces)");
    }
    if !failures.is_empty() {
        bail!(
            "demo: traffic did not match the orders: {}",
            failures.join(", ")
        );
    }
    println!("demo: blocked and allowed traffic matched the orders for IPv4 and IPv6");
    Ok(())
}
