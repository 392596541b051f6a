//! The feed over HTTPS from a real server with its own test CA: conditional
//! GET, a new serial applied within a poll, refusals (bad signature, older
//! serial, oversized download) that leave the last good feed in force, the
//! server down for several polls, then recovery.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use blocker::feed::Direction;
use blocker_tests::{
    daemon::{Daemon, Scrape},
    orders::{drop_order, feed_yaml},
    require_root,
    topology::{Edge, server_v4},
};
use time::OffsetDateTime;

const PORT: u16 = 8443;

const SERVER: &str = r#"
import http.server, ssl, sys, os
port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.chdir(root)
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        # With a TRUNCATE file in the web root, the feed is cut short: the
        # headers promise the whole body, half of it arrives.
        if self.path == "/feed.yaml" and os.path.exists("TRUNCATE"):
            body = open("feed.yaml", "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()
    def log_message(self, fmt, *args):
        sys.stderr.write((fmt % args) + "\n")
        sys.stderr.flush()
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("starting a command");
    assert!(out.status.success(), "{cmd:?} failed: {out:?}");
}

/// A test CA and a server certificate for 127.0.0.1, made with openssl.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"])
            .args(["-subj", "/CN=blkt test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    );
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .arg("req")
            .args(ec)
            .args(["-keyout", "server.key", "-out", "server.csr"])
            .args(["-subj", "/CN=127.0.0.1"]),
    );
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem"])
            .args(["-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem"])
            .args(["-days", "2", "-extfile", "server.ext"]),
    );
}

/// The HTTPS server process, inside the edge namespace; killed on drop.
struct HttpsServer {
    child: Child,
    log: PathBuf,
}

impl HttpsServer {
    fn start(edge: &Edge, dir: &Path) -> Self {
        let log = dir.join("https.log");
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log");
        let child = edge
            .edge
            .command("python3")
            .arg(dir.join("server.py"))
            .arg(PORT.to_string())
            .arg(dir.join("www"))
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting the python HTTPS server");
        let server = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !edge
            .edge
            .exec(&["bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{PORT}")])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "HTTPS server did not listen");
            thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `yaml` and a signature into the web root. `sign_as` signs other
/// content instead (a signature over a different file). The modification
/// time moves forward by whole seconds each time, so Last-Modified changes.
fn publish(edge: &Edge, www: &Path, yaml: &str, sign_as: Option<&str>, generation: u64) {
    let tmp = www.join("staging.yaml");
    fs::write(&tmp, sign_as.unwrap_or(yaml)).expect("staging feed");
    let signature = edge.key.sign(&tmp);
    fs::rename(&signature, www.join("feed.yaml.minisig")).expect("signature in place");
    fs::write(www.join("feed.yaml"), yaml).expect("feed in place");
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + generation * 10);
    fs::File::options()
        .write(true)
        .open(www.join("feed.yaml"))
        .and_then(|f| f.set_modified(mtime))
        .expect("setting mtime");
    let _ = fs::remove_file(&tmp);
}

fn failures(scrape: &Scrape, reason: &str) -> f64 {
    scrape
        .get("blocker_feed_sync_failures_total", &[("reason", reason)])
        .unwrap_or(0.0)
}

fn serial(scrape: &Scrape) -> f64 {
    scrape.get("blocker_feed_serial", &[]).unwrap_or(-1.0)
}

#[test]
fn https_feed_is_followed_and_bad_feeds_never_replace_the_good_one() {
    require_root();
    let blocked = server_v4(7);
    let edge = Edge::new(&[blocked]);
    let dir = edge.dir.path().to_owned();
    let www = dir.join("www");
    fs::create_dir(&www).expect("web root");
    fs::write(dir.join("server.py"), SERVER).expect("server script");
    make_pki(&dir);

    let order = |serial: u64| {
        feed_yaml(
            serial,
            OffsetDateTime::now_utc(),
            &[drop_order(
                "HTTPS-1",
                Direction::Dst,
                &[&blocked.to_string()],
            )],
        )
    };
    publish(&edge, &www, &order(1), None, 1);
    let config = edge
        .config()
        .to_yaml()
        .replace(
            &format!("  url: file://{}\n", edge.feed_path().display()),
            &format!(
                "  url: https://127.0.0.1:{PORT}/feed.yaml\n  ca_bundle: {}\n  max_bytes: 8192\n  timeout: 5s\n",
                dir.join("ca.pem").display()
            ),
        )
        .replace("poll_interval: 30s", "poll_interval: 1s");
    assert!(
        config.contains("https://"),
        "config rewrite failed:\n{config}"
    );
    fs::write(edge.config_path(), config).expect("config");

    let mut server = HttpsServer::start(&edge, &dir);
    let daemon: Daemon = edge.start_daemon(1);

    // Conditional GET: unchanged polls are answered 304.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("\"GET /feed.yaml HTTP/1.1\" 304") {
        assert!(
            Instant::now() < deadline,
            "no conditional GET answered 304; server log:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(200));
    }

    // A new serial is applied within a poll or two.
    publish(&edge, &www, &order(2), None, 2);
    daemon.scrape_until("serial 2 applied", Duration::from_secs(10), |s| {
        serial(s) == 2.0
    });

    // A signature over a different file: refused, serial 2 stays.
    publish(&edge, &www, &order(3), Some(&order(99)), 3);
    daemon.scrape_until("signature refusal counted", Duration::from_secs(10), |s| {
        failures(s, "signature") >= 1.0
    });
    assert_eq!(serial(&daemon.scrape()), 2.0);

    // An older serial, properly signed: rollback refused.
    publish(&edge, &www, &order(1), None, 4);
    daemon.scrape_until("serial refusal counted", Duration::from_secs(10), |s| {
        failures(s, "serial") >= 1.0
    });
    assert_eq!(serial(&daemon.scrape()), 2.0);

    // Oversized (max_bytes 8192): refused before it is read whole.
    let padding = format!("# {}\n", "x".repeat(100)).repeat(100);
    publish(&edge, &www, &format!("{}{padding}", order(5)), None, 5);
    daemon.scrape_until("oversize refusal counted", Duration::from_secs(10), |s| {
        failures(s, "too_large") >= 1.0
    });
    assert_eq!(serial(&daemon.scrape()), 2.0);

    // A truncated download: refused, serial 2 stays.
    let before = failures(&daemon.scrape(), "fetch");
    publish(&edge, &www, &order(7), None, 6);
    fs::write(www.join("TRUNCATE"), "").expect("truncate switch");
    daemon.scrape_until("truncated download refused", Duration::from_secs(10), |s| {
        failures(s, "fetch") >= before + 1.0
    });
    assert_eq!(serial(&daemon.scrape()), 2.0);

    // The server goes away for several polls: failures rise, enforcement stays.
    drop(server);
    fs::remove_file(www.join("TRUNCATE")).expect("truncate switch off");
    let before = failures(&daemon.scrape(), "fetch");
    let down = daemon.scrape_until("fetch failures while down", Duration::from_secs(15), |s| {
        failures(s, "fetch") >= before + 2.0
    });
    assert_eq!(serial(&down), 2.0);
    assert_eq!(
        down.get("blocker_prefixes", &[("family", "ipv4")]),
        Some(1.0)
    );
    let status = edge.blocker(&[
        "check",
        "--config",
        &edge.config_path().to_string_lossy(),
        &blocked.to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("HTTPS-1"),
        "the order stays in force while the server is down: {status:?}"
    );

    // Recovery.
    publish(&edge, &www, &order(8), None, 7);
    server = HttpsServer::start(&edge, &dir);
    daemon.scrape_until("serial 8 after recovery", Duration::from_secs(20), |s| {
        serial(s) == 8.0
    });
    drop(server);
    drop(daemon);
}
