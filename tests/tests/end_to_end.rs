//! The daemon on a real link: a client namespace talks to servers behind an
//! edge namespace where `blocker run` enforces a signed `file://` feed on the
//! edge's veth. Real UDP, TCP and ICMP; counters read with a real HTTP scrape.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use blocker::feed::{Direction, Order, Rung};
use blocker_tests::{
    daemon::{Daemon, Scrape},
    minisign::KeyPair,
    orders::{drop_order, monitor_order},
    topology::{Edge, drain_count, server_v4, server_v6},
};

const SERIAL: u64 = 100;

const DROP_V4: &str = "E2E-DROP-V4";
const DROP_V6: &str = "E2E-DROP-V6";
const MONITOR: &str = "E2E-MON";

/// The servers on the edge: (address, the order that names it and its action).
fn servers() -> Vec<(IpAddr, Option<(&'static str, &'static str)>)> {
    vec![
        (server_v4(10), Some((DROP_V4, "drop"))),
        (server_v6(0x10), Some((DROP_V6, "drop"))),
        (server_v4(20), Some((MONITOR, "monitor"))),
        (server_v6(0x20), Some((MONITOR, "monitor"))),
        (server_v4(30), None),
        (server_v6(0x30), None),
    ]
}

fn server_rung(mut order: Order) -> Order {
    order.rung = Rung::Server;
    order
}

fn orders() -> Vec<Order> {
    vec![
        server_rung(drop_order(DROP_V4, Direction::Dst, &["198.51.100.10"])),
        server_rung(drop_order(DROP_V6, Direction::Dst, &["2001:db8:100::10"])),
        server_rung(monitor_order(
            MONITOR,
            Direction::Dst,
            &["198.51.100.20", "2001:db8:100::20"],
        )),
    ]
}

/// The edge with the feed published and the daemon running.
fn start() -> (Edge, Daemon) {
    let addresses: Vec<IpAddr> = servers().iter().map(|(a, _)| *a).collect();
    let edge = Edge::new(&addresses);
    edge.publish(SERIAL, &orders());
    let daemon = edge.start_daemon(SERIAL);
    (edge, daemon)
}

/// Frame length of a UDP datagram with `payload` bytes, as XDP sees it on
/// an untagged link.
fn udp_frame_len(addr: IpAddr, payload: usize) -> u64 {
    let ip_header = if addr.is_ipv4() { 20 } else { 40 };
    (14 + ip_header + 8 + payload) as u64
}

/// Per-order packet counter deltas between two scrapes.
fn delta(before: &Scrape, after: &Scrape, order: &str, action: &str) -> (u64, u64) {
    (
        after.order_packets(order, action) - before.order_packets(order, action),
        after.order_bytes(order, action) - before.order_bytes(order, action),
    )
}

#[test]
fn udp_to_ordered_addresses_is_dropped_and_counted_exactly() {
    const DATAGRAMS: usize = 50;
    const PAYLOAD: usize = 100;
    const PORT: u16 = 5000;
    let (edge, daemon) = start();
    let receivers: Vec<_> = servers()
        .into_iter()
        .map(|(addr, order)| (addr, order, edge.edge_udp(SocketAddr::new(addr, PORT))))
        .collect();
    let sender_v4 = edge.client_udp(server_v4(1));
    let sender_v6 = edge.client_udp(server_v6(1));
    let before = daemon.scrape();
    let payload = [0x42u8; PAYLOAD];
    for _ in 0..DATAGRAMS {
        for (addr, _, _) in &receivers {
            let sender = if addr.is_ipv4() {
                &sender_v4
            } else {
                &sender_v6
            };
            sender
                .send_to(&payload, SocketAddr::new(*addr, PORT))
                .unwrap_or_else(|err| panic!("sending to {addr}: {err}"));
        }
        // Stay far below any queue limit on the idle link.
        thread::sleep(Duration::from_millis(1));
    }
    for (addr, order, socket) in &receivers {
        let received = drain_count(socket, Duration::from_millis(300), Duration::from_secs(5));
        match order {
            Some((id, "drop")) => assert_eq!(received, 0, "{addr} is ordered dropped by {id}"),
            _ => assert_eq!(received, DATAGRAMS, "every datagram to {addr} must arrive"),
        }
    }
    let expected = |order: &str| -> (u64, u64) {
        receivers
            .iter()
            .filter(|(_, o, _)| o.is_some_and(|(id, _)| id == order))
            .fold((0, 0), |(packets, bytes), (addr, _, _)| {
                (
                    packets + DATAGRAMS as u64,
                    bytes + DATAGRAMS as u64 * udp_frame_len(*addr, PAYLOAD),
                )
            })
    };
    // Drops happen as the edge's NAPI runs; give the counters a moment.
    daemon.scrape_until(
        "drop counters to reach the datagrams sent",
        Duration::from_secs(5),
        |s| {
            delta(&before, s, DROP_V4, "drop").0 >= DATAGRAMS as u64
                && delta(&before, s, DROP_V6, "drop").0 >= DATAGRAMS as u64
        },
    );
    thread::sleep(Duration::from_millis(200));
    let after = daemon.scrape();
    for (order, action) in [(DROP_V4, "drop"), (DROP_V6, "drop"), (MONITOR, "monitor")] {
        assert_eq!(
            delta(&before, &after, order, action),
            expected(order),
            "(packets, bytes) counted for {order}; scrape:\n{}",
            after.text
        );
    }
}

/// Accepts connections on `listener` and echoes what each sends, until
/// `stop`; returns how many connections it accepted.
fn echo_server(listener: TcpListener, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let mut accepted = 0;
        let hard_stop = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    accepted += 1;
                    stream.set_nonblocking(false).expect("blocking stream");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("read timeout");
                    let mut buf = [0u8; 256];
                    if let Ok(n) = stream.read(&mut buf) {
                        let _ = stream.write_all(&buf[..n]);
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(err) => panic!("accept: {err}"),
            }
        }
        accepted
    })
}

#[test]
fn tcp_to_ordered_addresses_never_connects() {
    const PORT: u16 = 8080;
    let (edge, daemon) = start();
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = servers()
        .into_iter()
        .map(|(addr, order)| {
            let listener = edge.edge_tcp(SocketAddr::new(addr, PORT));
            (addr, order, echo_server(listener, Arc::clone(&stop)))
        })
        .collect();
    let before = daemon.scrape();
    for (addr, order, _) in &servers {
        let target = SocketAddr::new(*addr, PORT);
        let started = Instant::now();
        let connected = edge
            .client
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(1)));
        match (order, connected) {
            (Some((id, "drop")), Ok(_)) => panic!("connected to {target}, ordered dropped by {id}"),
            (Some((_, "drop")), Err(err)) => {
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "a dropped SYN should fail by the 1 s timeout ({err})"
                );
            }
            (_, Err(err)) => panic!("connecting to {target} (not dropped): {err}"),
            (_, Ok(mut stream)) => {
                let message = format!("hello {addr}");
                stream.write_all(message.as_bytes()).expect("write");
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("read timeout");
                let mut echo = vec![0u8; message.len()];
                stream
                    .read_exact(&mut echo)
                    .unwrap_or_else(|err| panic!("no echo from {target}: {err}"));
                assert_eq!(echo, message.as_bytes());
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for (addr, order, handle) in servers {
        let accepted = handle.join().expect("echo server thread");
        match order {
            Some((_, "drop")) => assert_eq!(accepted, 0, "{addr} accepted a connection"),
            _ => assert_eq!(accepted, 1, "{addr} accepted {accepted} connections"),
        }
    }
    // TCP adds packets a test cannot predict (retransmitted SYNs, delayed
    // ACKs): each dropped SYN is counted, and each monitored connection sends
    // at least SYN, ACK, data and FIN towards the server.
    let after = daemon.scrape();
    for order in [DROP_V4, DROP_V6] {
        let (packets, _) = delta(&before, &after, order, "drop");
        assert!(
            (1..=4).contains(&packets),
            "{order} counted {packets} packets for one refused connect"
        );
    }
    let (packets, _) = delta(&before, &after, MONITOR, "monitor");
    assert!(
        packets >= 2 * 3,
        "{MONITOR} counted {packets} packets for two echo connections"
    );
}

#[test]
fn icmp_echo_to_ordered_addresses_is_dropped() {
    const COUNT: u32 = 5;
    let (edge, daemon) = start();
    let before = daemon.scrape();
    let results: Vec<_> = thread::scope(|scope| {
        let handles: Vec<_> = servers()
            .into_iter()
            .map(|(addr, order)| {
                let edge = &edge;
                (addr, order, scope.spawn(move || edge.ping(addr, COUNT)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(addr, order, h)| (addr, order, h.join().expect("ping thread")))
            .collect()
    });
    let after = daemon.scrape();
    let mut expected = std::collections::BTreeMap::<&str, u64>::new();
    for (addr, order, (transmitted, received)) in &results {
        assert_eq!(*transmitted, COUNT, "pings sent to {addr}");
        match order {
            Some((id, "drop")) => {
                assert_eq!(*received, 0, "{addr} answered, ordered dropped by {id}")
            }
            _ => assert_eq!(*received, COUNT, "{addr} must answer every ping"),
        }
        if let Some((id, _)) = order {
            *expected.entry(id).or_default() += u64::from(*transmitted);
        }
    }
    // Static neighbours: the echo requests are the only frames towards the
    // servers, so the counts are exact.
    for (order, action) in [(DROP_V4, "drop"), (DROP_V6, "drop"), (MONITOR, "monitor")] {
        assert_eq!(
            delta(&before, &after, order, action).0,
            expected[order],
            "echo requests counted for {order}"
        );
    }
}

fn json_mentions(value: &serde_json::Value, needle: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains(needle),
        serde_json::Value::Number(n) => n.to_string() == needle,
        serde_json::Value::Array(items) => items.iter().any(|v| json_mentions(v, needle)),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains(needle) || json_mentions(v, needle)),
        _ => false,
    }
}

fn stdout_of(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_check_and_gauges_describe_what_is_in_force() {
    let (edge, daemon) = start();
    let config = edge.config_path();
    let config = config.to_str().expect("utf-8 path");

    let status = stdout_of(
        &edge.blocker(&["status", "--config", config]),
        "blocker status",
    );
    assert!(
        status.contains(&SERIAL.to_string()),
        "status names the serial:\n{status}"
    );
    assert!(
        status.contains(&edge.edge_if),
        "status names the interface:\n{status}"
    );
    let status_json = stdout_of(
        &edge.blocker(&["status", "--config", config, "--json"]),
        "blocker status --json",
    );
    let status_json: serde_json::Value = serde_json::from_str(&status_json)
        .unwrap_or_else(|err| panic!("status --json is not JSON ({err}):\n{status_json}"));
    assert!(
        json_mentions(&status_json, &SERIAL.to_string()),
        "{status_json:#}"
    );
    assert!(
        json_mentions(&status_json, &edge.edge_if),
        "{status_json:#}"
    );

    for (addr, named, not_named) in [
        ("198.51.100.10", Some(DROP_V4), [DROP_V6, MONITOR]),
        ("2001:db8:100::10", Some(DROP_V6), [DROP_V4, MONITOR]),
        ("2001:db8:100::20", Some(MONITOR), [DROP_V4, DROP_V6]),
        ("198.51.100.30", None, [DROP_V4, DROP_V6]),
    ] {
        let text = stdout_of(
            &edge.blocker(&["check", "--config", config, addr, "--json"]),
            &format!("blocker check {addr} --json"),
        );
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("check --json is not JSON ({err}):\n{text}"));
        if let Some(order) = named {
            assert!(
                json_mentions(&json, order),
                "check {addr} names {order}:\n{json:#}"
            );
        }
        for order in not_named
            .into_iter()
            .chain(if named.is_none() { Some(MONITOR) } else { None })
        {
            assert!(
                !json_mentions(&json, order),
                "check {addr} names {order}:\n{json:#}"
            );
        }
    }

    let scrape = daemon.scrape();
    assert_eq!(scrape.get("blocker_feed_serial", &[]), Some(SERIAL as f64));
    assert_eq!(
        scrape.get("blocker_orders", &[("state", "in_force")]),
        Some(3.0)
    );
    for state in ["pending", "expired", "suspended", "withdrawn", "refused"] {
        assert_eq!(
            scrape.get("blocker_orders", &[("state", state)]),
            Some(0.0),
            "{state}"
        );
    }
    assert_eq!(
        scrape.get("blocker_prefixes", &[("family", "ipv4")]),
        Some(2.0)
    );
    assert_eq!(
        scrape.get("blocker_prefixes", &[("family", "ipv6")]),
        Some(2.0)
    );
    let attached = scrape.matching("blocker_xdp_attached", &[("interface", &edge.edge_if)]);
    assert_eq!(attached.len(), 1, "one attachment series:\n{}", scrape.text);
    let (labels, value) = attached[0];
    assert_eq!(value, 1.0);
    let mode = labels
        .iter()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no mode label: {labels:?}"));
    // The kernel agrees: iproute2 shows `xdp` for a native attachment and
    // `xdpgeneric` for a generic one.
    let link = edge.edge.ip(&["-d", "link", "show", "dev", &edge.edge_if]);
    let kernel_mode = if link.contains("xdpgeneric") {
        "generic"
    } else if link.contains("xdp") {
        "native"
    } else {
        panic!("no XDP program on {}:\n{link}", edge.edge_if)
    };
    assert_eq!(mode, kernel_mode, "metric mode vs the kernel's:\n{link}");
    let last_success = scrape
        .get("blocker_feed_last_success_timestamp_seconds", &[])
        .expect("last success gauge");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        (now - 120.0..=now + 5.0).contains(&last_success),
        "{last_success} vs {now}"
    );
    for (order, action) in [(DROP_V4, "drop"), (DROP_V6, "drop"), (MONITOR, "monitor")] {
        assert!(
            scrape
                .get(
                    "blocker_order_matched_packets_total",
                    &[("order", order), ("action", action)]
                )
                .is_some(),
            "counter series for {order} exists before any match:\n{}",
            scrape.text
        );
    }
}

/// A new signed feed at the same URL takes over live; a feed signed with
/// another key, or one that does not raise the serial, is refused and what
/// is in force stays.
#[test]
fn feed_updates_apply_live_and_bad_feeds_are_refused() {
    const PORT: u16 = 5001;
    let (edge, daemon) = start();
    let blocked_first = server_v4(10);
    let blocked_later = server_v4(30);
    let rx_first = edge.edge_udp(SocketAddr::new(blocked_first, PORT));
    let rx_later = edge.edge_udp(SocketAddr::new(blocked_later, PORT));
    let sender = edge.client_udp(blocked_first);
    let send_round = |n: usize| {
        for _ in 0..n {
            for addr in [blocked_first, blocked_later] {
                sender
                    .send_to(b"x", SocketAddr::new(addr, PORT))
                    .expect("send");
            }
        }
    };
    let count = |socket: &std::net::UdpSocket| {
        drain_count(socket, Duration::from_millis(300), Duration::from_secs(5))
    };
    send_round(10);
    assert_eq!(
        (count(&rx_first), count(&rx_later)),
        (0, 10),
        "feed {SERIAL}"
    );

    // Signed with someone else's key: refused.
    let failures = |s: &Scrape| {
        s.get(
            "blocker_feed_sync_failures_total",
            &[("reason", "signature")],
        )
        .unwrap_or(0.0)
    };
    let before = daemon.scrape();
    let moved = vec![server_rung(drop_order(
        DROP_V4,
        Direction::Dst,
        &["198.51.100.30"],
    ))];
    let forged = KeyPair::generate();
    let feed_yaml =
        blocker_tests::orders::feed_yaml(SERIAL + 1, time::OffsetDateTime::now_utc(), &moved);
    let tmp = edge.dir.path().join("forged.yaml");
    std::fs::write(&tmp, feed_yaml).expect("write");
    let signature = forged.sign(&tmp);
    let mut feed_signature = edge.feed_path().into_os_string();
    feed_signature.push(".minisig");
    std::fs::rename(signature, &feed_signature).expect("rename");
    std::fs::rename(&tmp, edge.feed_path()).expect("rename");
    let refused = daemon.scrape_until(
        "the forged feed to be refused",
        Duration::from_secs(10),
        |s| failures(s) > failures(&before),
    );
    assert_eq!(refused.get("blocker_feed_serial", &[]), Some(SERIAL as f64));
    send_round(10);
    assert_eq!(
        (count(&rx_first), count(&rx_later)),
        (0, 10),
        "forged feed not applied"
    );

    // Properly signed: applied within the file watch interval.
    edge.publish(SERIAL + 1, &moved);
    daemon.scrape_until("serial to advance", Duration::from_secs(10), |s| {
        s.get("blocker_feed_serial", &[]) == Some((SERIAL + 1) as f64)
    });
    // Parsed against the feed in force: the order, one target line
    // changed, was taken from it, that line read.
    let parsed = format!("serial={} orders=1 taken_from_in_force=1", SERIAL + 1);
    assert!(
        daemon.log_text().contains(&parsed),
        "no `{parsed}` in the log:\n{}",
        daemon.log_text()
    );
    send_round(10);
    assert_eq!(
        (count(&rx_first), count(&rx_later)),
        (10, 0),
        "feed {}",
        SERIAL + 1
    );

    // A replay of an older serial, properly signed: refused.
    let serial_failures = |s: &Scrape| {
        s.get("blocker_feed_sync_failures_total", &[("reason", "serial")])
            .unwrap_or(0.0)
    };
    let before = daemon.scrape();
    edge.publish(SERIAL, &orders());
    daemon.scrape_until("the replay to be refused", Duration::from_secs(10), |s| {
        serial_failures(s) > serial_failures(&before)
    });
    send_round(10);
    assert_eq!(
        (count(&rx_first), count(&rx_later)),
        (10, 0),
        "replayed feed not applied"
    );
    let after = daemon.scrape();
    assert_eq!(
        after.get("blocker_feed_serial", &[]),
        Some((SERIAL + 1) as f64)
    );
    // The order id stayed across the update: its counter went on.
    assert_eq!(after.order_packets(DROP_V4, "drop"), 10 + 10 + 10 + 10);
}

/// An order whose window opens while the daemon runs: at the boundary the
/// gauges and the audit log move it from pending to in force, while the
/// tables, which held it already (the datapath starts it on time by
/// itself), are not written again: the generation does not flip.
#[test]
fn a_window_opening_moves_gauges_and_audit_but_not_the_tables() {
    const ORDER: &str = "WINDOW-1";
    let edge = Edge::new(&[]);
    let opens = time::OffsetDateTime::now_utc() + time::Duration::seconds(8);
    let mut order = drop_order(ORDER, Direction::Dst, &["198.51.100.77/32"]);
    order.effective_from = Some(opens);
    edge.publish(SERIAL, &[order]);
    let daemon = edge.start_daemon(SERIAL);
    let generation = || {
        blocker::datapath::Maps::open_pinned(edge.bpffs.path())
            .and_then(|maps| maps.generation())
            .expect("reading the pinned control value")
    };
    let state = |scrape: &Scrape, state: &str| scrape.get("blocker_orders", &[("state", state)]);

    let before = daemon.scrape();
    assert!(
        time::OffsetDateTime::now_utc() < opens,
        "the daemon took too long to start; the window opened already"
    );
    assert_eq!(state(&before, "pending"), Some(1.0));
    assert_eq!(state(&before, "in_force"), Some(0.0));
    let flipped_to = generation();

    let after = daemon.scrape_until(
        "the order to enter force at its window",
        Duration::from_secs(20),
        |s| state(s, "in_force") == Some(1.0),
    );
    assert!(time::OffsetDateTime::now_utc() >= opens);
    assert_eq!(state(&after, "pending"), Some(0.0));
    assert_eq!(
        generation(),
        flipped_to,
        "the tables were written again though they held the order already"
    );
    let audit = std::fs::read_to_string(edge.dir.path().join("state/audit.jsonl"))
        .expect("reading the audit log");
    assert!(
        audit
            .lines()
            .any(|line| line.contains("order_entered_force") && line.contains(ORDER)),
        "no order_entered_force for {ORDER} in the audit log:\n{audit}"
    );
    let check = stdout_of(
        &edge.blocker(&[
            "check",
            "--config",
            edge.config_path().to_str().expect("utf-8 path"),
            "198.51.100.77",
            "--json",
        ]),
        "blocker check",
    );
    assert!(
        check.contains(ORDER),
        "check names {ORDER} once in force:\n{check}"
    );
}

/// `blocker plan` against the feed the daemon applied: what a candidate
/// would change, by order and by prefix, and whether it would be refused;
/// the daemon and its tables untouched.
#[test]
fn plan_names_what_a_candidate_changes_and_applies_nothing() {
    const NEW: &str = "E2E-NEW";
    let (edge, daemon) = start();
    let config = edge.config_path();
    let config = config.to_str().expect("utf-8 path");
    // A candidate beside the feed, signed by the regulator's key (or
    // another), its signature next to it as `blocker plan` looks for it.
    let candidate = |name: &str, serial: u64, orders: &[Order], key: &KeyPair| {
        let path = edge.dir.path().join(name);
        let yaml =
            blocker_tests::orders::feed_yaml(serial, time::OffsetDateTime::now_utc(), orders);
        std::fs::write(&path, yaml).expect("writing the candidate");
        key.sign(&path);
        path.to_str().expect("utf-8 path").to_owned()
    };
    let plan = |feed: &str, json: bool| {
        let mut args = vec!["plan", "--config", config, feed];
        if json {
            args.push("--json");
        }
        edge.blocker(&args)
    };

    // One order's target moved, one gone, one kept, one new.
    let mut next = vec![
        server_rung(drop_order(DROP_V4, Direction::Dst, &["198.51.100.30"])),
        orders()[2].clone(),
        server_rung(drop_order(NEW, Direction::Both, &["203.0.113.8/29"])),
    ];
    let good = candidate("next.yaml", SERIAL + 1, &next, &edge.key);
    let text = stdout_of(&plan(&good, false), "blocker plan");
    for line in [
        format!("serial {SERIAL} -> {}", SERIAL + 1),
        "(signature verified)".to_owned(),
        format!("orders added     {NEW}"),
        format!("orders removed   {DROP_V6}"),
        format!("orders changed   {DROP_V4}"),
        "prefixes         +2 -2 =2".to_owned(),
        format!("newly enforced   {NEW} (drop): 8 addresses"),
    ] {
        assert!(text.contains(&line), "no `{line}` in the plan:\n{text}");
    }
    assert!(!text.contains("REFUSED"), "{text}");
    let json = stdout_of(&plan(&good, true), "blocker plan --json");
    let json: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|err| panic!("plan --json is not JSON ({err}):\n{json}"));
    assert_eq!(json["would_apply"], true, "{json:#}");
    assert_eq!(
        json["orders"]["added"],
        serde_json::json!([NEW]),
        "{json:#}"
    );
    assert_eq!(
        json["orders"]["removed"],
        serde_json::json!([DROP_V6]),
        "{json:#}"
    );
    assert_eq!(
        json["orders"]["changed"],
        serde_json::json!([DROP_V4]),
        "{json:#}"
    );
    assert_eq!(json["orders"]["unchanged"], 1, "{json:#}");
    assert_eq!(
        json["prefixes"]["added"],
        serde_json::json!(["198.51.100.30/32", "203.0.113.8/29"]),
        "{json:#}"
    );
    assert_eq!(
        json["prefixes"]["removed"],
        serde_json::json!(["198.51.100.10/32", "2001:db8:100::10/128"]),
        "{json:#}"
    );
    assert_eq!(json["newly_enforced"][0]["addresses"], "8", "{json:#}");

    // Refused: a serial not above the one in force; another key's signature.
    for (name, serial, key, why) in [
        (
            "replay.yaml",
            SERIAL,
            &edge.key,
            "is not larger than serial",
        ),
        ("forged.yaml", SERIAL + 1, &KeyPair::generate(), "signature"),
    ] {
        let feed = candidate(name, serial, &next, key);
        let out = plan(&feed, false);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "plan of {name}:\n{text}");
        assert!(
            text.contains("WOULD BE REFUSED") && text.contains(why),
            "plan of {name} names no `{why}` refusal:\n{text}"
        );
    }

    // Thirty new orders: the text names twenty and counts the rest, the
    // JSON lists all thirty.
    next.extend((0..30u8).map(|i| {
        server_rung(drop_order(
            &format!("E2E-MANY-{i:02}"),
            Direction::Dst,
            &[&format!("203.0.113.{}", 100 + i)],
        ))
    }));
    let many = candidate("many.yaml", SERIAL + 2, &next, &edge.key);
    let text = stdout_of(&plan(&many, false), "blocker plan of 31 new orders");
    let added = text
        .lines()
        .find(|l| l.trim_start().starts_with("orders added"))
        .unwrap_or_else(|| panic!("no orders added line:\n{text}"));
    assert!(
        added.contains("31: E2E-MANY-00,")
            && added.ends_with("and 11 more (--json lists them all)"),
        "{added}"
    );
    assert_eq!(added.matches("E2E-").count(), 20, "{added}");
    assert!(
        // The eleven past the twentieth: E2E-MANY-20..29, one address
        // each, and E2E-NEW's eight.
        text.contains("newly enforced   11 more orders: 18 addresses (--json lists them all)"),
        "{text}"
    );
    let json = stdout_of(&plan(&many, true), "blocker plan --json of 31 new orders");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["orders"]["added"].as_array().map(Vec::len), Some(31));
    assert_eq!(json["newly_enforced"].as_array().map(Vec::len), Some(31));

    // Nothing was applied: the daemon still enforces the feed it had.
    let scrape = daemon.scrape();
    assert_eq!(scrape.get("blocker_feed_serial", &[]), Some(SERIAL as f64));
    assert_eq!(
        scrape.get("blocker_orders", &[("state", "in_force")]),
        Some(3.0)
    );
}
