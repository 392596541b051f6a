//! The daemon's attack surface, from the outside: the metrics listener is on
//! loopback by default, serves `/metrics` and nothing else, and no request
//! changes state; `state_dir` is private; the feed fetcher refuses
//! redirects to another scheme and caps the size and the time of a
//! download.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use blocker::feed::Direction;
use blocker_tests::{
    orders::drop_order,
    require_root,
    topology::{EDGE_V4, Edge, server_v4},
};

/// One HTTP/1.1 request on a fresh connection inside the edge namespace;
/// returns the status line ("" when the connection closed without one).
fn request(edge: &Edge, addr: SocketAddr, raw: String) -> String {
    edge.edge.run(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|err| panic!("connecting to {addr}: {err}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(raw.as_bytes()).expect("sending");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    })
}

fn http(method: &str, path: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: blocker\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

#[test]
fn the_metrics_listener_is_loopback_only_and_serves_nothing_but_metrics() {
    require_root();
    let target = server_v4(70);
    let edge = Edge::new(&[target]);
    // No `metrics:` section: the default listen address.
    let config = edge.config().to_yaml();
    let config = config.replace(&format!("metrics:\n  listen: {}\n", edge.listen()), "");
    assert!(!config.contains("metrics:"), "{config}");
    fs::write(edge.config_path(), config).expect("config");
    edge.publish(
        1,
        &[drop_order("SEC", Direction::Dst, &[&target.to_string()])],
    );
    let daemon = edge.start_daemon(1);

    let listening = edge.edge.exec_ok(&["ss", "-Hltn"]);
    let sockets: Vec<&str> = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        sockets,
        ["127.0.0.1:9947"],
        "the daemon listens on loopback only: {listening}"
    );
    let outside = SocketAddr::new(EDGE_V4.into(), 9947);
    let refused = edge
        .client
        .run(move || TcpStream::connect_timeout(&outside, Duration::from_secs(1)));
    assert!(refused.is_err(), "metrics are not reachable from the link");

    let audit_path = edge.dir.path().join("state/audit.jsonl");
    let audit_before = fs::read_to_string(&audit_path).expect("audit");
    let listen = edge.listen();
    assert!(request(&edge, listen, http("GET", "/metrics")).contains(" 200 "));
    for path in [
        "/",
        "/metrics/",
        "/admin",
        "/reload",
        "/-/reload",
        "/api/v1/feed",
        "/debug/pprof/",
        "/../../etc/passwd",
        "/metrics/../state",
    ] {
        let status = request(&edge, listen, http("GET", path));
        assert!(status.contains(" 404 "), "GET {path}: {status}");
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let status = request(&edge, listen, http(method, "/metrics"));
        assert!(status.contains(" 405 "), "{method} /metrics: {status}");
    }
    // Junk and oversized requests: refused, and the daemon carries on.
    let _ = request(&edge, listen, "\u{1}\u{2}garbage\r\n\r\n".to_owned());
    let _ = request(
        &edge,
        listen,
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)),
    );
    let _ = request(
        &edge,
        listen,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X-Junk: y\r\n".repeat(10_000)
        ),
    );
    let scrape = daemon.scrape();
    assert_eq!(scrape.get("blocker_feed_serial", &[]), Some(1.0));
    let audit_after = fs::read_to_string(&audit_path).expect("audit");
    assert_eq!(
        audit_before, audit_after,
        "no request left a trace in the audit log"
    );
    drop(daemon);
}

fn assert_private(dir: &Path) {
    let mode = fs::metadata(dir).expect("state_dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    let mut files = 0;
    for entry in fs::read_dir(dir).expect("state_dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("meta");
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", entry.path().display());
        } else {
            assert_eq!(mode, 0o600, "{} is {mode:o}", entry.path().display());
            files += 1;
        }
    }
    assert!(
        files >= 5,
        "feed, signature, current, slots, status, audit, lock"
    );
}

#[test]
fn files_in_state_dir_are_private_whatever_the_umask() {
    require_root();
    let target = server_v4(71);
    let edge = Edge::new(&[target]);
    let state = edge.dir.path().join("state");
    fs::remove_dir(&state).expect("the daemon makes state_dir itself");
    edge.publish(
        1,
        &[drop_order("PRIV", Direction::Dst, &[&target.to_string()])],
    );
    // SAFETY: umask only changes this process's file-creation mask; the
    // daemon inherits it. Tests run one at a time (--test-threads=1).
    let previous = unsafe { libc::umask(0) };
    let daemon = edge.start_daemon(1);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    edge.publish(
        2,
        &[
            drop_order("PRIV", Direction::Dst, &[&target.to_string()]),
            drop_order("PRIV2", Direction::Dst, &["198.51.100.72"]),
        ],
    );
    daemon.scrape_until("serial 2", Duration::from_secs(10), |s| {
        s.get("blocker_feed_serial", &[]) == Some(2.0)
    });
    assert_private(&state);
    drop(daemon);
}

/// A plain HTTP feed server in the edge namespace with hostile paths.
const SERVER: &str = r##"
import http.server, sys, time
port = int(sys.argv[1])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/to-file"):
            self.send_response(302); self.send_header("Location", "file:///etc/passwd"); self.end_headers()
        elif self.path.startswith("/to-https"):
            self.send_response(302); self.send_header("Location", "https://127.0.0.1:%d/feed.yaml" % port); self.end_headers()
        elif self.path.startswith("/big"):
            body = b"#" * (4 * 1024 * 1024)
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/endless"):
            self.send_response(200); self.end_headers()
            for _ in range(64 * 1024):
                self.wfile.write(b"#" * 1024)
        elif self.path.startswith("/slow"):
            self.send_response(200); self.send_header("Content-Length", "1000000"); self.end_headers()
            for _ in range(60):
                self.wfile.write(b"#"); self.wfile.flush(); time.sleep(0.5)
        else:
            self.send_response(404); self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"##;

const FEED_PORT: u16 = 8471;

struct FeedServer(Child);

impl FeedServer {
    fn start(edge: &Edge) -> Self {
        let child = edge
            .edge
            .command("python3")
            .args(["-c", SERVER, &FEED_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // The daemon hangs up on hostile downloads: no tracebacks.
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the python feed server");
        let server = Self(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], FEED_PORT));
        while edge
            .edge
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
            .is_err()
        {
            assert!(Instant::now() < deadline, "the feed server did not listen");
            thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_fetcher_refuses_scheme_changing_redirects_and_caps_size_and_time() {
    require_root();
    let target = server_v4(73);
    let edge = Edge::new(&[target]);
    let _server = FeedServer::start(&edge);
    let base = edge.config().to_yaml();
    let file_url = format!("file://{}", edge.feed_path().display());
    for (path, reason, limits) in [
        ("/to-file", "redirect", ""),
        ("/to-https", "redirect", ""),
        ("/big", "too_large", "  max_bytes: 65536\n"),
        ("/endless", "too_large", "  max_bytes: 65536\n"),
        ("/slow", "fetch", "  timeout: 2s\n"),
    ] {
        let url = format!("http://127.0.0.1:{FEED_PORT}{path}");
        let config = base.replace(&file_url, &url).replace(
            "  poll_interval: 30s\n",
            &format!("  poll_interval: 30s\n{limits}"),
        );
        fs::write(edge.config_path(), config).expect("config");
        let started = Instant::now();
        let daemon = edge.spawn_daemon();
        let scrape = daemon.scrape_until(
            &format!("{path} refused as {reason}"),
            Duration::from_secs(15),
            |s| {
                s.get("blocker_feed_sync_failures_total", &[("reason", reason)])
                    .is_some_and(|v| v >= 1.0)
            },
        );
        if path == "/slow" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the 2 s timeout cut the 30 s download ({:?})",
                started.elapsed()
            );
        }
        assert_eq!(scrape.get("blocker_feed_serial", &[]), Some(0.0), "{path}");
        let rss = scrape
            .get("process_resident_memory_bytes", &[])
            .unwrap_or(0.0);
        assert!(
            rss < 256.0 * 1024.0 * 1024.0,
            "{path}: the download did not balloon the daemon ({rss} bytes resident)"
        );
        daemon.terminate();
    }
}
