//! Faults around a running daemon, each with traffic to an order in force:
//! pins removed by hand, the interface deleted and recreated, `state_dir`
//! read-only and then full, and maps too small for a feed. Enforcement never
//! lapses, what failed shows in metrics and logs, and nothing is applied in
//! part.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use blocker::feed::{Direction, Order, Rung};
use blocker_common::map_names;
use blocker_tests::{
    daemon::{Daemon, Scrape},
    orders::drop_order,
    require_root, run_ok,
    topology::{Edge, Stream, drain_count, server_v4},
    wait_until,
};

const PORT: u16 = 6200;

fn blocks(id: &str, addr: IpAddr) -> Order {
    drop_order(id, Direction::Dst, &[&addr.to_string()])
}

/// Sends `count` datagrams from the client to `addr` and returns how many
/// the edge received.
fn delivered(edge: &Edge, addr: IpAddr, count: usize) -> usize {
    let receiver = edge.edge_udp(SocketAddr::new(addr, PORT));
    let sender = edge.client_udp(addr);
    for _ in 0..count {
        sender
            .send_to(b"probe", SocketAddr::new(addr, PORT))
            .expect("sending");
        std::thread::sleep(Duration::from_millis(2));
    }
    drain_count(
        &receiver,
        Duration::from_millis(300),
        Duration::from_secs(3),
    )
}

fn counter(scrape: &Scrape, name: &str, label: (&str, &str)) -> f64 {
    scrape.get(name, &[label]).unwrap_or(0.0)
}

fn publish_and_wait(edge: &Edge, daemon: &Daemon, serial: u64, orders: &[Order]) {
    edge.publish(serial, orders);
    daemon.hangup();
    daemon.scrape_until(
        &format!("serial {serial} applied"),
        Duration::from_secs(15),
        |s| s.get("blocker_feed_serial", &[]) == Some(serial as f64),
    );
}

#[test]
fn pins_removed_by_hand_are_put_back_without_a_gap() {
    require_root();
    let target = server_v4(60);
    let edge = Edge::new(&[target, server_v4(61)]);
    edge.publish(1, &[blocks("PINNED", target)]);
    let daemon = edge.start_daemon(1);
    let stream = Stream::start(&edge, target, PORT);
    std::thread::sleep(Duration::from_millis(300));

    // Everything under bpffs_dir goes: map, program and link pins.
    let bpffs = edge.bpffs.path().to_owned();
    fs::remove_dir_all(&bpffs).expect("removing the pins");
    let pins = [
        bpffs.join("maps/BLK_CONTROL"),
        bpffs.join("maps/BLK_V4_A"),
        bpffs.join("maps/BLK_STATS"),
        bpffs.join("prog"),
    ];
    wait_until(
        "the pins are back",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || pins.iter().all(|p| p.exists()) && link_pin(&bpffs, &edge.edge_if).is_some(),
    );
    let scrape = daemon.scrape_until("the repairs counted", Duration::from_secs(5), |s| {
        counter(s, "blocker_datapath_repairs_total", ("what", "pin")) >= 9.0
            && counter(s, "blocker_datapath_repairs_total", ("what", "link")) >= 1.0
    });
    assert_eq!(
        counter(
            &scrape,
            "blocker_datapath_repairs_total",
            ("what", "attach")
        ),
        0.0,
        "the program never left the interface: its link was pinned again, not re-made"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (sent, leaked) = stream.finish();
    assert!(sent > 100, "the stream ran ({sent} sent)");
    assert_eq!(leaked, 0, "{leaked} of {sent} datagrams got through");

    // The restored pins are the live ones: a new feed goes through them,
    // and `blocker check` reads them.
    let second = server_v4(61);
    publish_and_wait(
        &edge,
        &daemon,
        2,
        &[blocks("PINNED", target), blocks("AFTER", second)],
    );
    assert_eq!(delivered(&edge, second, 20), 0, "the new order is enforced");
    let check = edge.blocker(&[
        "check",
        "--config",
        &edge.config_path().display().to_string(),
        &second.to_string(),
    ]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("AFTER"),
        "check reads the restored pins: {text}"
    );
    assert!(
        daemon.log_text().contains("pinned again"),
        "the repair is logged"
    );
    let audit = fs::read_to_string(edge.dir.path().join("state/audit.jsonl")).expect("audit");
    assert!(audit.contains("\"event\":\"repaired\""), "{audit}");
    drop(daemon);
}

/// The pinned link of `interface`, in whichever mode.
fn link_pin(bpffs: &Path, interface: &str) -> Option<PathBuf> {
    ["native", "generic"]
        .iter()
        .map(|mode| bpffs.join("links").join(mode).join(interface))
        .find(|p| p.exists())
}

#[test]
fn an_interface_deleted_and_recreated_gets_the_program_again() {
    require_root();
    let target = server_v4(62);
    let open = server_v4(63);
    let mut edge = Edge::new(&[target, open]);
    edge.publish(1, &[blocks("RECREATED", target)]);
    let daemon = edge.start_daemon(1);
    assert_eq!(delivered(&edge, target, 20), 0, "blocked before");
    let name = edge.edge_if.clone();
    let index_before = edge.edge.run(move || blocker::datapath::ifindex(&name));

    edge.recreate_link();
    let name = edge.edge_if.clone();
    let index_after = edge.edge.run(move || blocker::datapath::ifindex(&name));
    assert_ne!(index_before, index_after, "a new interface");
    let interface = edge.edge_if.clone();
    daemon.scrape_until(
        "re-attached to the new interface",
        Duration::from_secs(10),
        |s| {
            counter(s, "blocker_datapath_repairs_total", ("what", "attach")) >= 1.0
                && s.matching("blocker_xdp_attached", &[("interface", &interface)])
                    .iter()
                    .any(|(_, v)| *v == 1.0)
        },
    );
    assert_eq!(
        delivered(&edge, target, 50),
        0,
        "blocked on the new interface"
    );
    assert!(
        delivered(&edge, open, 20) > 0,
        "the new link carries traffic"
    );
    let attached = run_ok(Command::new("ip").args([
        "-n",
        edge.edge.name(),
        "-d",
        "link",
        "show",
        "dev",
        &edge.edge_if,
    ]));
    assert!(attached.contains("xdp"), "the program is on it: {attached}");
    drop(daemon);
}

/// A tmpfs mounted on a directory for the length of a test.
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Self {
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "blkt-state",
                ])
                .arg(path),
        );
        Self {
            path: path.to_owned(),
        }
    }

    /// A read-only bind mount of `path` over itself: new opens fail with
    /// EROFS (files the daemon holds open keep working, as on a real
    /// file system the kernel turned read-only).
    fn read_only(path: &Path) -> Self {
        run_ok(Command::new("mount").arg("--bind").arg(path).arg(path));
        let mount = Self {
            path: path.to_owned(),
        };
        run_ok(
            Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(path),
        );
        mount
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system under `dir` until a write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    // Bounded: the tmpfs is a few MiB.
    for _ in 0..1024 {
        if file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_err()
        {
            return path;
        }
    }
    panic!("{} never filled up", dir.display());
}

#[test]
fn a_read_only_or_full_state_dir_does_not_stop_enforcement() {
    require_root();
    let targets = [server_v4(64), server_v4(65), server_v4(66)];
    let edge = Edge::new(&targets);
    let state = edge.dir.path().join("state");
    let mount = Mount::tmpfs(&state, "2m");
    edge.publish(1, &[blocks("FIRST", targets[0])]);
    let mut daemon = edge.start_daemon(1);

    // Read-only: a new feed is still applied and enforced.
    let read_only = Mount::read_only(&state);
    let orders = [blocks("FIRST", targets[0]), blocks("SECOND", targets[1])];
    publish_and_wait(&edge, &daemon, 2, &orders);
    assert_eq!(delivered(&edge, targets[1], 20), 0, "SECOND is enforced");
    let scrape = daemon.scrape();
    for file in ["slots", "feed", "status"] {
        assert!(
            counter(
                &scrape,
                "blocker_state_write_failures_total",
                ("file", file)
            ) >= 1.0,
            "the {file} write failure is counted"
        );
    }
    assert!(
        daemon.log_text().contains("Read-only file system"),
        "the failure is logged with its cause"
    );

    // A daemon (re)started on a read-only state_dir enforces too.
    daemon.kill();
    daemon = edge.start_daemon(2);
    assert_eq!(delivered(&edge, targets[0], 20), 0, "FIRST after restart");
    assert_eq!(delivered(&edge, targets[1], 20), 0, "SECOND after restart");
    assert!(
        counter(
            &daemon.scrape(),
            "blocker_state_write_failures_total",
            ("file", "audit")
        ) >= 1.0,
        "the audit log that cannot be opened is counted"
    );

    // Full: the same.
    drop(read_only);
    let filler = fill(&state);
    let orders = [
        blocks("FIRST", targets[0]),
        blocks("SECOND", targets[1]),
        blocks("THIRD", targets[2]),
    ];
    let failures = |d: &Daemon| {
        d.scrape()
            .matching("blocker_state_write_failures_total", &[])
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let before = failures(&daemon);
    publish_and_wait(&edge, &daemon, 3, &orders);
    assert_eq!(delivered(&edge, targets[2], 20), 0, "THIRD is enforced");
    assert!(failures(&daemon) > before, "the full disk is counted");
    assert!(
        daemon.log_text().contains("No space left on device"),
        "the failure is logged with its cause"
    );

    // Space again: the next feed is saved, and the audit log is whole.
    fs::remove_file(filler).expect("removing the filler");
    publish_and_wait(&edge, &daemon, 4, &orders);
    wait_until(
        "feed 4 saved",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || fs::read_to_string(state.join("current")).is_ok_and(|c| c.trim() == "4"),
    );
    let audit = fs::read_to_string(state.join("audit.jsonl")).expect("audit log");
    for line in audit.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("torn audit line {line:?}: {e}"));
    }
    assert!(audit.contains("\"serial\":4"), "{audit}");
    drop(daemon);
    drop(mount);
}

#[test]
fn a_feed_bigger_than_the_maps_is_refused_whole() {
    require_root();
    let target = server_v4(67);
    let extra = server_v4(68);
    let edge = Edge::new(&[target, extra]);
    // The maps are made with room for 64 prefixes...
    let mut config = edge.config();
    config.max_prefixes = 64;
    config.write(&edge.config_path());
    edge.publish(1, &[blocks("SMALL", target)]);
    edge.start_daemon(1).terminate();
    // ... and stay that size when the config allows more (resizing needs a
    // detach), so a feed within the guardrail no longer fits.
    config.max_prefixes = 1000;
    config.write(&edge.config_path());
    let mut big = drop_order(
        "BIG",
        Direction::Dst,
        &(0..100u16)
            .map(|i| format!("2001:db8:100::{:x}", i + 0x100))
            .chain([extra.to_string()])
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    big.rung = Rung::Datacenter;
    edge.publish(2, &[blocks("SMALL", target), big]);
    let daemon = edge.spawn_daemon();
    let scrape = daemon.scrape_until(
        "the feed refused for capacity",
        Duration::from_secs(20),
        |s| counter(s, "blocker_feed_sync_failures_total", ("reason", "apply")) >= 1.0,
    );
    assert_eq!(scrape.get("blocker_feed_serial", &[]), Some(1.0));
    assert_eq!(scrape.get("blocker_prefixes_capacity", &[]), Some(64.0));
    assert_eq!(
        scrape.get("blocker_prefixes", &[("family", "ipv6")]),
        Some(0.0),
        "nothing of the big feed was loaded"
    );
    assert!(
        daemon.log_text().contains("hold at most 64"),
        "the log says why"
    );
    assert_eq!(delivered(&edge, target, 20), 0, "the last good feed stays");
    assert!(
        delivered(&edge, extra, 20) > 0,
        "no part of the refused feed is enforced"
    );
    drop(daemon);
}

#[test]
fn detach_while_the_daemon_runs_stops_it_and_lifts_enforcement() {
    require_root();
    let target = server_v4(69);
    let edge = Edge::new(&[target]);
    edge.publish(1, &[blocks("LIFTED", target)]);
    let daemon = edge.start_daemon(1);
    assert_eq!(delivered(&edge, target, 20), 0, "blocked before");
    // The pin of a program's step-1 bitmap that a daemon left when it died
    // while its program loaded (here: another pin of a pinned map, under
    // such a pin's name; no process id reaches 2^22).
    let stale = edge.bpffs.path().join("union-loading-4194304");
    aya::maps::MapData::from_pin(edge.bpffs.path().join("maps").join(map_names::CONTROL))
        .expect("a pinned map")
        .pin(&stale)
        .expect("pinning it again");
    let out = edge.blocker(&[
        "detach",
        "--config",
        &edge.config_path().display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "detach: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("stopped blocker run (pid {})", daemon.pid())),
        "{stdout}"
    );
    // Stopped, the daemon puts nothing back: the pins stay gone.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !edge.bpffs.path().join("maps").exists()
            && link_pin(edge.bpffs.path(), &edge.edge_if).is_none(),
        "the pins are gone"
    );
    assert!(
        !edge.bpffs.path().exists(),
        "bpffs_dir is gone, the stale pin with it"
    );
    assert!(delivered(&edge, target, 20) > 0, "enforcement is lifted");
    let audit = fs::read_to_string(edge.dir.path().join("state/audit.jsonl")).expect("audit");
    assert!(audit.contains("\"event\":\"detached\""), "{audit}");
    drop(daemon);
}
