//! Enforcement outlives the daemon (contract §3): while the client sends a
//! steady stream to a blocked server, the daemon is killed (SIGKILL, or a
//! clean SIGTERM) and started again with the same config. Not one datagram to
//! the blocked server may arrive across the whole run, the control stream to
//! an allowed server must arrive whole, and the order's counter must carry on
//! from the kernel's pinned maps to exactly the number of datagrams sent.
//! Order windows that open or close while no daemon runs take effect on time.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use blocker::feed::{Direction, Order};
use blocker_tests::{
    daemon::Daemon,
    orders::drop_order,
    topology::{Edge, count_in_background, server_v4, server_v6},
};

const SERIAL: u64 = 7;
const ORDER: &str = "RESTART-DROP";
const PORT: u16 = 6000;
/// One datagram to each server every `INTERVAL`.
const INTERVAL: Duration = Duration::from_millis(2);
/// Hard bound on the stream's duration.
const MAX_STREAM: Duration = Duration::from_secs(10);

fn orders() -> Vec<Order> {
    vec![drop_order(
        ORDER,
        Direction::Dst,
        &["198.51.100.10", "2001:db8:100::10"],
    )]
}

/// Every file under `bpffs_dir/links` with its inode: the pinned bpf_links.
/// A daemon that takes a link over keeps the pin; one that attached anew
/// would replace it (and leave a moment with no program on the link).
fn link_pins(bpffs_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut pins = Vec::new();
    let mut dirs = vec![bpffs_dir.join("links")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let ino = fs::metadata(&path)
                    .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
                    .ino();
                pins.push((path, ino));
            }
        }
    }
    pins.sort();
    pins
}

/// The id of the XDP program attached to the edge's interface.
fn xdp_prog_id(edge: &Edge) -> u64 {
    let json = edge
        .edge
        .ip(&["-j", "-d", "link", "show", "dev", &edge.edge_if]);
    let links: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|err| panic!("ip -j link: {err}: {json}"));
    links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no XDP program on {}: {json}", edge.edge_if))
}

enum Stop {
    Kill,
    Terminate,
}

struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sender: thread::JoinHandle<()>,
}

/// Sends one datagram to each of `targets` every INTERVAL from the client,
/// until stopped (or MAX_STREAM passed).
fn start_stream(edge: &Edge, targets: Vec<IpAddr>) -> Stream {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sockets: Vec<_> = targets
        .iter()
        .map(|addr| (SocketAddr::new(*addr, PORT), edge.client_udp(*addr)))
        .collect();
    let sender = {
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&sent);
        thread::spawn(move || {
            let started = Instant::now();
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < MAX_STREAM {
                for (target, socket) in &sockets {
                    socket
                        .send_to(b"restart", *target)
                        .unwrap_or_else(|err| panic!("sending to {target}: {err}"));
                }
                sent.fetch_add(1, Ordering::SeqCst);
                next += INTERVAL;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
        })
    };
    Stream { stop, sent, sender }
}

fn restart_keeps_enforcing(how: Stop) {
    let blocked = [server_v4(10), server_v6(0x10)];
    let allowed = [server_v4(30), server_v6(0x30)];
    let edge = Edge::new(&[blocked[0], blocked[1], allowed[0], allowed[1]]);
    edge.publish(SERIAL, &orders());
    let mut daemon: Option<Daemon> = Some(edge.start_daemon(SERIAL));

    let receivers_done = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = blocked
        .iter()
        .chain(&allowed)
        .map(|addr| {
            let socket = edge.edge_udp(SocketAddr::new(*addr, PORT));
            (
                *addr,
                count_in_background(socket, Arc::clone(&receivers_done)),
            )
        })
        .collect();
    let stream = start_stream(&edge, blocked.iter().chain(&allowed).copied().collect());

    let pins = link_pins(edge.bpffs.path());
    assert_eq!(pins.len(), 1, "one pinned link for one interface: {pins:?}");
    let mut prog_id = xdp_prog_id(&edge);

    thread::sleep(Duration::from_millis(700));
    for round in 0..2 {
        let running = daemon.take().expect("a daemon is running");
        let before = running.scrape().order_packets(ORDER, "drop");
        assert!(before > 0, "round {round}: nothing counted before the stop");
        match how {
            Stop::Kill => running.kill(),
            Stop::Terminate => running.terminate(),
        }
        // The stream goes on with no daemon at all.
        thread::sleep(Duration::from_millis(500));
        let restarted = edge.start_daemon(SERIAL);
        let after = restarted.scrape().order_packets(ORDER, "drop");
        assert!(
            after > before,
            "round {round}: the counter went from {before} to {after} across the restart"
        );
        daemon = Some(restarted);
        assert_eq!(
            link_pins(edge.bpffs.path()),
            pins,
            "round {round}: the restarted daemon must take the pinned link over, not attach anew"
        );
        let new_prog_id = xdp_prog_id(&edge);
        assert_ne!(
            new_prog_id, prog_id,
            "round {round}: the restarted daemon's program should now run on the link"
        );
        prog_id = new_prog_id;
        thread::sleep(Duration::from_millis(700));
    }

    stream.stop.store(true, Ordering::SeqCst);
    stream.sender.join().expect("sender thread");
    let rounds = stream.sent.load(Ordering::SeqCst);
    assert!(rounds > 500, "the stream sent only {rounds} rounds");
    receivers_done.store(true, Ordering::SeqCst);
    for (addr, handle) in receivers {
        let received = handle.join().expect("receiver thread") as u64;
        if blocked.contains(&addr) {
            assert_eq!(
                received, 0,
                "{received} datagrams to blocked {addr} got through"
            );
        } else {
            assert_eq!(received, rounds, "datagrams to allowed {addr}");
        }
    }
    let daemon = daemon.expect("a daemon is running");
    let expected = 2 * rounds;
    let scrape = daemon.scrape_until(
        "the counter to catch up with the stream",
        Duration::from_secs(5),
        |s| s.order_packets(ORDER, "drop") >= expected,
    );
    assert_eq!(
        scrape.order_packets(ORDER, "drop"),
        expected,
        "every blocked datagram counted exactly once across restarts"
    );
    assert_eq!(scrape.get("blocker_feed_serial", &[]), Some(SERIAL as f64));
    assert_eq!(
        scrape.get("blocker_orders", &[("state", "in_force")]),
        Some(1.0)
    );
}

#[test]
fn sigkill_and_restart_never_lets_a_blocked_datagram_through() {
    restart_keeps_enforcing(Stop::Kill);
}

#[test]
fn sigterm_and_restart_never_lets_a_blocked_datagram_through() {
    restart_keeps_enforcing(Stop::Terminate);
}

/// Order windows that open or close while no daemon runs take effect on
/// time: one order starts and another expires at the same instant, with the
/// daemon killed before it. The next daemon's counters include what was
/// dropped in between.
#[test]
fn order_windows_open_and_close_on_time_while_the_daemon_is_down() {
    const STARTING: &str = "WINDOW-STARTS";
    const EXPIRING: &str = "WINDOW-ENDS";
    const DATAGRAMS: usize = 20;
    let starting = server_v4(10);
    let expiring = server_v4(20);
    let control = server_v4(30);
    let edge = Edge::new(&[starting, expiring, control]);
    let instant = time::OffsetDateTime::now_utc() + Duration::from_secs(5);
    let mut starts = drop_order(STARTING, Direction::Dst, &["198.51.100.10"]);
    starts.effective_from = Some(instant);
    let mut ends = drop_order(EXPIRING, Direction::Dst, &["198.51.100.20"]);
    ends.expires_at = Some(instant);
    edge.publish(SERIAL, &[starts, ends]);
    let daemon = edge.start_daemon(SERIAL);
    let scrape = daemon.scrape();
    assert_eq!(
        scrape.get("blocker_orders", &[("state", "pending")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("blocker_orders", &[("state", "in_force")]),
        Some(1.0)
    );

    let receivers: Vec<_> = [starting, expiring, control]
        .into_iter()
        .map(|addr| (addr, edge.edge_udp(SocketAddr::new(addr, PORT))))
        .collect();
    let sender = edge.client_udp(control);
    // Datagrams received at (starting, expiring, control).
    let send_and_count = || -> Vec<usize> {
        for _ in 0..DATAGRAMS {
            for (addr, _) in &receivers {
                sender
                    .send_to(b"window", SocketAddr::new(*addr, PORT))
                    .expect("send");
            }
        }
        receivers
            .iter()
            .map(|(_, socket)| {
                blocker_tests::topology::drain_count(
                    socket,
                    Duration::from_millis(300),
                    Duration::from_secs(5),
                )
            })
            .collect()
    };
    assert!(
        time::OffsetDateTime::now_utc() + Duration::from_millis(1500) < instant,
        "set-up took too long to observe the orders before the instant"
    );
    assert_eq!(
        send_and_count(),
        [DATAGRAMS, 0, DATAGRAMS],
        "before the instant: {EXPIRING} drops, {STARTING} does not yet"
    );

    daemon.kill();
    let left = instant + Duration::from_millis(300) - time::OffsetDateTime::now_utc();
    if left.is_positive() {
        thread::sleep(left.unsigned_abs());
    }
    assert_eq!(
        send_and_count(),
        [0, DATAGRAMS, DATAGRAMS],
        "after the instant, no daemon running: {STARTING} drops, {EXPIRING} no longer"
    );

    let daemon = edge.start_daemon(SERIAL);
    let scrape = daemon.scrape();
    assert_eq!(
        scrape.get("blocker_orders", &[("state", "in_force")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("blocker_orders", &[("state", "expired")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.order_packets(STARTING, "drop"),
        DATAGRAMS as u64,
        "what was dropped while no daemon ran is counted"
    );
    assert_eq!(
        send_and_count(),
        [0, DATAGRAMS, DATAGRAMS],
        "after the restart"
    );
}
