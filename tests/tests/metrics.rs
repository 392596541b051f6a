//! The metrics page as the NOC's tools see it: `promtool check metrics`
//! accepts it, and a real Prometheus server scrapes the per-order counters
//! and answers them through its HTTP API.

use std::{
    fs,
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use blocker::feed::Direction;
use blocker_tests::{
    daemon::Daemon,
    orders::{drop_order, monitor_order},
    require_root,
    topology::{Edge, drain_count, server_v4},
};

const DATAGRAMS: u64 = 25;
const PORT: u16 = 5001;

/// Sends `DATAGRAMS` UDP datagrams from the client to `addr`, returns how
/// many arrived.
fn send(edge: &Edge, addr: IpAddr) -> usize {
    let receiver = edge.edge_udp(SocketAddr::new(addr, PORT));
    let sender = edge.client_udp(addr);
    for _ in 0..DATAGRAMS {
        sender
            .send_to(&[0x17; 64], SocketAddr::new(addr, PORT))
            .unwrap_or_else(|err| panic!("sending to {addr}: {err}"));
        thread::sleep(Duration::from_millis(1));
    }
    drain_count(
        &receiver,
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
}

fn start() -> (Edge, Daemon, IpAddr, IpAddr) {
    require_root();
    let blocked = server_v4(30);
    let watched = server_v4(31);
    let edge = Edge::new(&[blocked, watched]);
    edge.publish(
        1,
        &[
            drop_order("MET-DROP", Direction::Dst, &[&blocked.to_string()]),
            monitor_order("MET-MON", Direction::Dst, &[&watched.to_string()]),
        ],
    );
    let daemon = edge.start_daemon(1);
    (edge, daemon, blocked, watched)
}

#[test]
fn promtool_accepts_the_metrics_page() {
    let (edge, daemon, blocked, watched) = start();
    assert_eq!(send(&edge, blocked), 0);
    assert_eq!(send(&edge, watched), DATAGRAMS as usize);
    let scrape = daemon.scrape_until("counters", Duration::from_secs(5), |s| {
        s.order_packets("MET-DROP", "drop") == DATAGRAMS
            && s.order_packets("MET-MON", "monitor") == DATAGRAMS
    });
    for name in [
        "blocker_build_info",
        "blocker_interface_frames_total",
        "blocker_feed_sync_duration_seconds_bucket",
        "blocker_feed_last_apply_duration_seconds",
        "process_resident_memory_bytes",
    ] {
        assert!(
            scrape.text.contains(name),
            "{name} missing:\n{}",
            scrape.text
        );
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; run `cargo xtask setup`)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.text.as_bytes())
        .expect("feeding promtool");
    let out = promtool.wait_with_output().expect("promtool");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {:?}\n{complaints}",
        out.status
    );
}

/// A Prometheus server in the edge namespace, killed on drop.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    // Any free port number; the namespace has its own port space, and the
    // root namespace's free one is as good a guess as any.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(19090)
}

/// The value of an instant query's single result, if there is one.
fn query(edge: &Edge, port: u16, promql: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let out = edge.edge.exec(&[
        "curl",
        "-sf",
        "--max-time",
        "3",
        "--get",
        "--data-urlencode",
        &format!("query={promql}"),
        &url,
    ]);
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let result = body["data"]["result"].as_array()?;
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_scrapes_per_order_counters() {
    let (edge, daemon, blocked, _) = start();
    let dir = edge.dir.path().to_owned();
    let port = free_port();
    fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: blocker\n    static_configs:\n      - targets: ['{}']\n",
            edge.listen()
        ),
    )
    .expect("prometheus config");
    let _prometheus = Prometheus(
        edge.edge
            .command("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package; run `cargo xtask setup`)"),
    );
    assert_eq!(send(&edge, blocked), 0);
    daemon.scrape_until("drop counter", Duration::from_secs(5), |s| {
        s.order_packets("MET-DROP", "drop") == DATAGRAMS
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let packets = query(
            &edge,
            port,
            "blocker_order_matched_packets_total{order=\"MET-DROP\",action=\"drop\"}",
        );
        let up = query(&edge, port, "up{job=\"blocker\"}");
        let serial = query(&edge, port, "blocker_feed_serial");
        if packets == Some(DATAGRAMS as f64) && up == Some(1.0) && serial == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered the counter: packets {packets:?}, up {up:?}, serial {serial:?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}
