//! Applies under fire: a prefix that stays in force across 50 feed updates
//! never lets a packet through, and SIGKILL at random points of an apply
//! loses nothing (20 kills): after each restart the serial is the newest published, the
//! audit log is whole, and the order in every feed never leaked.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use blocker::feed::{Direction, Order};
use blocker_tests::{
    orders::drop_order,
    require_root,
    topology::{Edge, Stream, server_v4},
};

const PORT: u16 = 6100;
const STAYS: &str = "STAYS";

fn stays(addr: IpAddr) -> Order {
    drop_order(STAYS, Direction::Dst, &[&addr.to_string()])
}

#[test]
fn fifty_feed_updates_never_unblock_a_prefix_that_stays() {
    require_root();
    let target = server_v4(40);
    let edge = Edge::new(&[target]);
    edge.publish(1, &[stays(target)]);
    let daemon = edge.start_daemon(1);
    let stream = Stream::start(&edge, target, PORT);
    for serial in 2..=51u64 {
        let mut orders = vec![stays(target)];
        // Other orders come and go: a different set every update.
        for k in 0..(serial % 5 + 1) {
            let host = (serial * 7 + k * 13) % 250 + 1;
            orders.push(drop_order(
                &format!("CHURN-{serial}-{k}"),
                Direction::Both,
                &[
                    &format!("198.51.100.{host}"),
                    &format!("2001:db8:100::{serial:x}:{k:x}"),
                ],
            ));
        }
        edge.publish(serial, &orders);
        daemon.hangup();
        daemon.scrape_until(&format!("serial {serial}"), Duration::from_secs(10), |s| {
            s.get("blocker_feed_serial", &[]) == Some(serial as f64)
        });
    }
    let (sent, delivered) = stream.finish();
    assert!(sent > 100, "the stream ran ({sent} sent)");
    assert_eq!(
        delivered, 0,
        "{delivered} of {sent} datagrams to {target} got through"
    );
    let scrape = daemon.scrape();
    assert_eq!(scrape.get("blocker_feed_serial", &[]), Some(51.0));
    assert!(scrape.order_packets(STAYS, "drop") >= sent as u64);
}

#[test]
fn sigkill_during_applies_loses_nothing() {
    require_root();
    let target = server_v4(41);
    let edge = Edge::new(&[target]);
    // Room for the bulk orders below.
    let config = edge
        .config()
        .to_yaml()
        .replace("max_prefixes: 1024", "max_prefixes: 8192");
    fs::write(edge.config_path(), config).expect("config");
    edge.publish(1, &[stays(target)]);
    let mut daemon = edge.start_daemon(1);
    let stream = Stream::start(&edge, target, PORT);
    // A small LCG: varied, repeatable kill delays without a rand crate.
    let mut seed: u64 = 0x5eed;
    let mut last = 1;
    for serial in 2..=21u64 {
        let hosts: Vec<String> = (0..2000u64)
            .map(|i| format!("2001:db8:100::{:x}:{i:x}", serial))
            .collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let bulk = drop_order(&format!("BULK-{serial}"), Direction::Dst, &hosts);
        let mut bulk = bulk;
        bulk.rung = blocker::feed::Rung::Datacenter;
        edge.publish(serial, &[stays(target), bulk]);
        daemon.hangup();
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        thread::sleep(Duration::from_millis((seed >> 33) % 150));
        daemon.kill();
        daemon = edge.start_daemon(serial);
        last = serial;
        let scrape = daemon.scrape();
        assert_eq!(
            scrape.get("blocker_prefixes", &[("family", "ipv6")]),
            Some(2000.0),
            "serial {serial}: the bulk order's prefixes are loaded"
        );
        assert_eq!(
            scrape.get("blocker_prefixes", &[("family", "ipv4")]),
            Some(1.0)
        );
    }
    let (sent, delivered) = stream.finish();
    assert!(sent > 100, "the stream ran ({sent} sent)");
    assert_eq!(
        delivered, 0,
        "{delivered} of {sent} datagrams leaked across the kills"
    );
    let audit = fs::read_to_string(edge.dir.path().join("state/audit.jsonl")).expect("audit log");
    let mut applied = 0;
    let mut newest = serde_json::Value::Null;
    for line in audit.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("torn audit line {line:?}: {e}"));
        if event["event"] == "feed_applied" {
            let serial = event["serial"].as_u64().expect("serial");
            if serial >= applied {
                applied = serial;
                newest = event;
            }
        }
    }
    assert_eq!(applied, last, "the audit log records the last feed applied");
    // What the audit log says is in force is what the maps hold.
    let in_force: Vec<&str> = newest["in_force"]
        .as_array()
        .expect("in_force")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(in_force, [format!("BULK-{last}").as_str(), STAYS]);
    let scrape = daemon.scrape();
    for family in ["ipv4", "ipv6"] {
        assert_eq!(
            scrape.get("blocker_prefixes", &[("family", family)]),
            newest[format!("{family}_prefixes")].as_f64(),
            "{family} prefixes: the maps hold what the audit log says"
        );
    }
    let config = edge.config_path().display().to_string();
    let bulk_host = format!("2001:db8:100::{last:x}:7");
    for (address, order) in [
        (target.to_string(), STAYS.to_owned()),
        (bulk_host, format!("BULK-{last}")),
    ] {
        let out = edge.blocker(&["check", "--config", &config, &address]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&order), "check {address}: {text}");
    }
    drop(daemon);
}

#[test]
fn a_daemon_started_while_the_feed_is_unreachable_enforces_the_last_good_feed() {
    require_root();
    let target = server_v4(42);
    let edge = Edge::new(&[target]);
    edge.publish(1, &[stays(target)]);
    edge.start_daemon(1).terminate();
    // The regulator is unreachable: no feed, no signature.
    fs::remove_file(edge.feed_path()).expect("removing the feed");
    let mut signature = edge.feed_path().into_os_string();
    signature.push(".minisig");
    fs::remove_file(signature).expect("removing the signature");
    let daemon = edge.start_daemon(1);
    daemon.scrape_until("the fetch failure counted", Duration::from_secs(10), |s| {
        s.get("blocker_feed_sync_failures_total", &[("reason", "fetch")])
            .is_some_and(|v| v >= 1.0)
    });
    let stream = Stream::start(&edge, target, PORT);
    thread::sleep(Duration::from_millis(500));
    let (sent, delivered) = stream.finish();
    assert!(sent > 50, "the stream ran ({sent} sent)");
    assert_eq!(delivered, 0, "the last good feed is enforced at once");
}

/// One order whose window opens and closes while no daemon runs: the
/// datapath alone enforces it exactly inside the window.
#[test]
fn an_order_is_enforced_exactly_in_its_window_while_the_daemon_is_dead() {
    require_root();
    let target = server_v4(43);
    let edge = Edge::new(&[target]);
    let now = time::OffsetDateTime::now_utc();
    let from = (now + Duration::from_secs(5))
        .replace_nanosecond(0)
        .expect("whole second");
    let until = from + Duration::from_secs(4);
    let mut windowed = drop_order("WINDOW", Direction::Dst, &[&target.to_string()]);
    windowed.effective_from = Some(from);
    windowed.expires_at = Some(until);
    edge.publish(1, &[windowed]);
    edge.start_daemon(1).kill();

    let receiver = edge.edge_udp(SocketAddr::new(target, PORT));
    receiver
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let socket = edge.client_udp(target);
    let end = until + Duration::from_secs(2);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let sender = thread::spawn(move || {
        let mut sent = Vec::new();
        // Bounded by `end` (about 11 s) and a hard 30 s.
        let hard = Instant::now() + Duration::from_secs(30);
        while time::OffsetDateTime::now_utc() < end && Instant::now() < hard {
            let at = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
            if socket
                .send_to(&at.to_be_bytes(), SocketAddr::new(target, PORT))
                .is_ok()
            {
                sent.push(at);
            }
            thread::sleep(Duration::from_millis(20));
        }
        flag.store(true, Ordering::SeqCst);
        sent
    });
    let mut received = Vec::new();
    let mut buf = [0u8; 64];
    let hard = Instant::now() + Duration::from_secs(40);
    while Instant::now() < hard {
        match receiver.recv(&mut buf) {
            Ok(16) => received.push(i128::from_be_bytes(buf[..16].try_into().expect("16 bytes"))),
            Ok(_) => {}
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(_) => {}
        }
    }
    let sent = sender.join().expect("sender");
    let margin = 300_000_000i128;
    let (from, until) = (from.unix_timestamp_nanos(), until.unix_timestamp_nanos());
    let inside = |t: &i128| *t >= from + margin && *t < until - margin;
    assert!(
        sent.iter().filter(|t| inside(t)).count() > 50,
        "datagrams were sent in the window"
    );
    assert!(
        received.iter().any(|t| *t < from - margin),
        "traffic before the window passes"
    );
    assert!(
        received.iter().any(|t| *t >= until + margin),
        "traffic after the window passes"
    );
    let leaked: Vec<_> = received.iter().filter(|t| inside(t)).collect();
    assert!(
        leaked.is_empty(),
        "{} datagrams sent inside the window got through",
        leaked.len()
    );
}
