//! A real HTTP server for feeds: Python's threaded one, on the loopback.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use blocker::{config::FeedConfig, sync::FeedSource};

/// A real HTTP server (Python's, threaded) on the loopback, serving the
/// files of a directory; stopped when dropped.
pub struct FeedServer {
    child: std::process::Child,
    port: u16,
}

const SERVER: &str = r#"
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
handler = functools.partial(Quiet, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl FeedServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(std::process::Command::new("python3"), dir)
    }

    /// The server inside `ns` (on its loopback), for a daemon there.
    pub fn start_in(ns: &crate::netns::NetNs, dir: &Path) -> Self {
        Self::start_with(ns.command("python3"), dir)
    }

    fn start_with(mut python: std::process::Command, dir: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = python
            .args(["-c", SERVER])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 serves the feeds");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("its output"))
            .read_line(&mut line)
            .expect("its port");
        let port = line.trim().parse().expect("a port number");
        Self { child, port }
    }

    /// The URL of the file `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The daemon's source of the feed `name` (its signature beside it),
    /// over HTTP.
    pub fn source(&self, name: &str) -> FeedSource {
        FeedSource::new(&FeedConfig {
            url: self.url(name),
            public_key: PathBuf::new(),
            poll_interval: Duration::from_secs(30),
            ca_bundle: None,
            max_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
        })
        .expect("an HTTP source")
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
