//! Two namespaces joined by a veth pair: a client, and an edge router that
//! runs blocker on its end of the link and hosts the servers the client
//! talks to.
//!
//! ```text
//!  client ns                                 edge ns (blocker, XDP on `edge_if`)
//!  192.0.2.1/24   2001:db8:1::1/64  <-veth->  192.0.2.2/24  2001:db8:1::2/64
//!  routes 198.51.100.0/24, 2001:db8:100::/64  servers on lo: 198.51.100.x/32,
//!         via the edge                        2001:db8:100::x/128
//! ```
//!
//! Neighbour entries are static on both sides, so no ARP or NDP crosses the
//! link during a test and the only frames the edge sees are the test's.

use std::{
    fs,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use blocker::feed::Order;
use tempfile::TempDir;
use time::OffsetDateTime;

use crate::{
    blocker_bin,
    bpffs::BpffsDir,
    daemon::{Daemon, DaemonConfig},
    minisign::KeyPair,
    netns::{NetNs, VethPair},
    orders::feed_yaml,
    output,
};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const EDGE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const EDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

/// A server address on the edge: 198.51.100.`n`.
pub const fn server_v4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))
}

/// A server address on the edge: 2001:db8:100::`n`.
pub const fn server_v6(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, n))
}

/// Where the daemon serves `/metrics` inside the edge namespace.
pub const METRICS_LISTEN: &str = "127.0.0.1:9947";

/// The whole setup. Fields drop in order: pins first, then the link, then
/// the namespaces; a daemon the test started must be declared after this so
/// it is stopped before.
pub struct Edge {
    pub bpffs: BpffsDir,
    pub veth: VethPair,
    pub edge: NetNs,
    pub client: NetNs,
    pub key: KeyPair,
    pub dir: TempDir,
    /// The edge's end of the veth pair (where XDP is attached).
    pub edge_if: String,
    /// The client's end.
    pub client_if: String,
}

impl Edge {
    /// Builds the namespaces, the link, the addresses (`servers` go on the
    /// edge's loopback), routes and static neighbours; writes the config.
    pub fn new(servers: &[IpAddr]) -> Self {
        let client = NetNs::new();
        let edge = NetNs::new();
        let veth = VethPair::new(&client, &edge);
        let client_if = veth.a.clone();
        let edge_if = veth.b.clone();
        for server in servers {
            match server {
                IpAddr::V4(a) => edge.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]),
                IpAddr::V6(a) => {
                    edge.ip(&["addr", "add", &format!("{a}/128"), "dev", "lo", "nodad"])
                }
            };
        }
        let dir = tempfile::Builder::new()
            .prefix("blkt-edge-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir(dir.path().join("state")).expect("state dir");
        let setup = Self {
            bpffs: BpffsDir::new(),
            veth,
            edge,
            client,
            key: KeyPair::generate(),
            dir,
            edge_if,
            client_if,
        };
        setup.wire();
        setup.config().write(&setup.config_path());
        setup
    }

    /// Addresses, routes and static neighbours on the veth pair.
    fn wire(&self) {
        self.client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_V4}/24"),
            "dev",
            &self.client_if,
        ]);
        self.client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            &self.client_if,
            "nodad",
        ]);
        self.edge.ip(&[
            "addr",
            "add",
            &format!("{EDGE_V4}/24"),
            "dev",
            &self.edge_if,
        ]);
        self.edge.ip(&[
            "addr",
            "add",
            &format!("{EDGE_V6}/64"),
            "dev",
            &self.edge_if,
            "nodad",
        ]);
        self.client.ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            &EDGE_V4.to_string(),
        ]);
        self.client.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:100::/64",
            "via",
            &EDGE_V6.to_string(),
        ]);
        let client_mac = self.client.mac(&self.client_if);
        let edge_mac = self.edge.mac(&self.edge_if);
        for (ns, dev, addr, mac) in [
            (
                &self.client,
                &self.client_if,
                IpAddr::V4(EDGE_V4),
                &edge_mac,
            ),
            (
                &self.client,
                &self.client_if,
                IpAddr::V6(EDGE_V6),
                &edge_mac,
            ),
            (
                &self.edge,
                &self.edge_if,
                IpAddr::V4(CLIENT_V4),
                &client_mac,
            ),
            (
                &self.edge,
                &self.edge_if,
                IpAddr::V6(CLIENT_V6),
                &client_mac,
            ),
        ] {
            ns.ip(&[
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
    }

    /// Deletes the veth pair and creates it again under the same names
    /// (new ifindexes, new MACs), wired as before: what a router sees when
    /// an interface is removed and re-added.
    pub fn recreate_link(&mut self) {
        self.client.ip(&["link", "del", &self.client_if]);
        let recreated = VethPair::named(
            &self.client,
            &self.edge,
            self.client_if.clone(),
            self.edge_if.clone(),
        );
        // The old guard would delete the new pair by its name.
        std::mem::forget(std::mem::replace(&mut self.veth, recreated));
        self.wire();
    }

    pub fn feed_path(&self) -> PathBuf {
        self.dir.path().join("feed.yaml")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("blocker.yaml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("blocker.log")
    }

    pub fn listen(&self) -> SocketAddr {
        METRICS_LISTEN.parse().expect("listen address")
    }

    pub fn config(&self) -> DaemonConfig {
        DaemonConfig {
            interface: self.edge_if.clone(),
            mode: "auto".to_owned(),
            enforcement: "enforce".to_owned(),
            feed_url: format!("file://{}", self.feed_path().display()),
            public_key: self.key.public_key(),
            poll_interval: "30s".to_owned(),
            state_dir: self.dir.path().join("state"),
            bpffs_dir: self.bpffs.path().to_owned(),
            listen: self.listen(),
            protected: vec!["192.0.2.53/32".to_owned()],
            max_prefixes: 1024,
        }
    }

    /// Publishes a signed feed at the `file://` URL: signs a temporary copy
    /// with minisign, then renames the signature and the feed into place.
    pub fn publish(&self, serial: u64, orders: &[Order]) {
        let yaml = feed_yaml(serial, OffsetDateTime::now_utc(), orders);
        let tmp = self.dir.path().join("feed.yaml.tmp");
        fs::write(&tmp, yaml).expect("writing the feed");
        let signature = self.key.sign(&tmp);
        let mut final_signature = self.feed_path().into_os_string();
        final_signature.push(".minisig");
        fs::rename(signature, final_signature).expect("placing the signature");
        fs::rename(&tmp, self.feed_path()).expect("placing the feed");
    }

    /// Starts `blocker run` in the edge namespace and waits until it serves
    /// metrics (whatever it made of the feed).
    pub fn spawn_daemon(&self) -> Daemon {
        Daemon::start(
            &self.edge,
            &self.config_path(),
            self.listen(),
            &self.log_path(),
        )
    }

    /// Starts `blocker run` in the edge namespace and waits until it serves
    /// metrics with feed `serial` applied and the interface attached.
    pub fn start_daemon(&self, serial: u64) -> Daemon {
        let daemon = self.spawn_daemon();
        let interface = self.edge_if.clone();
        daemon.scrape_until(
            &format!("feed serial {serial} applied and {interface} attached"),
            Duration::from_secs(20),
            |scrape| {
                scrape.get("blocker_feed_serial", &[]) == Some(serial as f64)
                    && scrape
                        .matching("blocker_xdp_attached", &[("interface", &interface)])
                        .iter()
                        .any(|(_, v)| *v == 1.0)
            },
        );
        daemon
    }

    /// Runs `blocker ARGS...` in the edge namespace (network only).
    pub fn blocker(&self, args: &[&str]) -> Output {
        output(self.edge.command(blocker_bin()).args(args))
    }

    /// `ping -c COUNT -W 1 -i 0.2 -q ADDR` from the client: (transmitted,
    /// received).
    pub fn ping(&self, addr: IpAddr, count: u32) -> (u32, u32) {
        let out = self.client.exec(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-W",
            "1",
            "-i",
            "0.2",
            &addr.to_string(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse_ping_summary(&stdout).unwrap_or_else(|| {
            panic!(
                "no ping summary for {addr}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// A UDP socket bound to `addr` inside the edge namespace.
    pub fn edge_udp(&self, addr: SocketAddr) -> UdpSocket {
        self.edge.run(move || {
            UdpSocket::bind(addr).unwrap_or_else(|err| panic!("binding {addr} on the edge: {err}"))
        })
    }

    /// A TCP listener bound to `addr` inside the edge namespace.
    pub fn edge_tcp(&self, addr: SocketAddr) -> TcpListener {
        self.edge.run(move || {
            TcpListener::bind(addr)
                .unwrap_or_else(|err| panic!("listening on {addr} on the edge: {err}"))
        })
    }

    /// An unbound-port UDP socket for the client, of `addr`'s family.
    pub fn client_udp(&self, family_of: IpAddr) -> UdpSocket {
        let local: SocketAddr = match family_of {
            IpAddr::V4(_) => (IpAddr::V4(CLIENT_V4), 0).into(),
            IpAddr::V6(_) => (IpAddr::V6(CLIENT_V6), 0).into(),
        };
        self.client.run(move || {
            UdpSocket::bind(local)
                .unwrap_or_else(|err| panic!("binding {local} on the client: {err}"))
        })
    }
}

/// "5 packets transmitted, 0 received" → (5, 0).
pub fn parse_ping_summary(stdout: &str) -> Option<(u32, u32)> {
    let line = stdout.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// Counts datagrams arriving on `socket` until it has been quiet for
/// `quiet`, or `limit` has passed.
pub fn drain_count(socket: &UdpSocket, quiet: Duration, limit: Duration) -> usize {
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let start = Instant::now();
    let mut last = Instant::now();
    let mut count = 0;
    let mut buf = [0u8; 2048];
    while start.elapsed() < limit && last.elapsed() < quiet {
        match socket.recv(&mut buf) {
            Ok(_) => {
                count += 1;
                last = Instant::now();
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) => panic!("receiving: {err}"),
        }
    }
    count
}

/// A thread that counts datagrams on `socket` until `stop` is set and the
/// socket has been quiet for a moment.
pub fn count_in_background(socket: UdpSocket, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let mut count = 0;
        let mut buf = [0u8; 2048];
        let mut quiet_since: Option<Instant> = None;
        // Bounded: the sender stops within seconds; 60 s is a hard stop.
        let hard_stop = Instant::now() + Duration::from_secs(60);
        while Instant::now() < hard_stop {
            match socket.recv(&mut buf) {
                Ok(_) => {
                    count += 1;
                    quiet_since = None;
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::SeqCst) {
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(300) {
                            break;
                        }
                    }
                }
                Err(err) => panic!("receiving: {err}"),
            }
        }
        count
    })
}

/// A steady stream (one datagram per 2 ms, at most 120 s) from the client
/// to `addr`:`port`, counted on the edge.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sender: thread::JoinHandle<usize>,
    receiver: thread::JoinHandle<usize>,
}

impl Stream {
    pub fn start(edge: &Edge, addr: IpAddr, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let receiver =
            count_in_background(edge.edge_udp(SocketAddr::new(addr, port)), stop.clone());
        let socket = edge.client_udp(addr);
        let flag = stop.clone();
        let sender = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut sent = 0;
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                if socket
                    .send_to(b"stays", SocketAddr::new(addr, port))
                    .is_ok()
                {
                    sent += 1;
                }
                thread::sleep(Duration::from_millis(2));
            }
            sent
        });
        Self {
            stop,
            sender,
            receiver,
        }
    }

    /// (sent, delivered)
    pub fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self.sender.join().expect("sender");
        let delivered = self.receiver.join().expect("receiver");
        (sent, delivered)
    }
}
