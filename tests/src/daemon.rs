//! The `blocker run` process, its config (contract §2), and `/metrics`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::{self, File},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{blocker_bin, netns::NetNs};

/// How long a daemon may take from exec to serving `/metrics` with its feed
/// applied and its interface attached (program load included).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The operator's config, as the tests vary it.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub interface: String,
    /// `auto`, `native` or `generic`.
    pub mode: String,
    /// `enforce` or `observe`.
    pub enforcement: String,
    pub feed_url: String,
    pub public_key: PathBuf,
    pub poll_interval: String,
    pub state_dir: PathBuf,
    pub bpffs_dir: PathBuf,
    pub listen: SocketAddr,
    pub protected: Vec<String>,
    pub max_prefixes: u32,
}

impl DaemonConfig {
    pub fn to_yaml(&self) -> String {
        let mut yaml = String::new();
        let _ = writeln!(yaml, "interfaces:");
        let _ = writeln!(yaml, "  - name: {}", self.interface);
        let _ = writeln!(yaml, "    mode: {}", self.mode);
        let _ = writeln!(yaml, "enforcement: {}", self.enforcement);
        let _ = writeln!(yaml, "feed:");
        let _ = writeln!(yaml, "  url: {}", self.feed_url);
        let _ = writeln!(yaml, "  public_key: {}", self.public_key.display());
        let _ = writeln!(yaml, "  poll_interval: {}", self.poll_interval);
        let _ = writeln!(yaml, "state_dir: {}", self.state_dir.display());
        let _ = writeln!(yaml, "bpffs_dir: {}", self.bpffs_dir.display());
        let _ = writeln!(yaml, "metrics:");
        let _ = writeln!(yaml, "  listen: {}", self.listen);
        let _ = writeln!(yaml, "guardrails:");
        if self.protected.is_empty() {
            let _ = writeln!(yaml, "  protected: []");
        } else {
            let _ = writeln!(yaml, "  protected:");
            for prefix in &self.protected {
                let _ = writeln!(yaml, "    - {prefix}");
            }
        }
        let _ = writeln!(yaml, "  max_prefixes: {}", self.max_prefixes);
        yaml
    }

    /// Writes the config to `path`.
    pub fn write(&self, path: &Path) {
        fs::write(path, self.to_yaml())
            .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
    }
}

/// A running `blocker run --config FILE` inside a namespace. Killed on drop;
/// its log is printed when the test is panicking.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    ns: String,
    listen: SocketAddr,
}

impl Daemon {
    /// Starts the daemon in `ns` (network namespace only: the bpffs under
    /// `/sys/fs/bpf` stays visible) with stdout and stderr appended to `log`,
    /// and waits until `/metrics` answers.
    pub fn start(ns: &NetNs, config: &Path, listen: SocketAddr, log: &Path) -> Self {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|err| panic!("opening {}: {err}", log.display()));
        let stderr = file.try_clone().expect("cloning the log file handle");
        let child = ns
            .command(blocker_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("BLOCKER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("starting blocker run: {err}"));
        let mut daemon = Self {
            child: Some(child),
            log: log.to_owned(),
            ns: ns.name().to_owned(),
            listen,
        };
        daemon.wait_serving();
        daemon
    }

    /// SIGHUP: sync the feed now.
    pub fn hangup(&self) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid");
        // SAFETY: kill(2) on our own running child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn wait_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "blocker run exited during start-up ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if try_scrape(&self.ns, self.listen).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "blocker run did not serve /metrics on {} within {START_TIMEOUT:?}; log:\n{}",
                self.listen,
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Scrapes `/metrics` (a real HTTP GET from inside the namespace).
    pub fn scrape(&self) -> Scrape {
        try_scrape(&self.ns, self.listen).unwrap_or_else(|| {
            panic!(
                "scraping http://{}/metrics in {} failed; log:\n{}",
                self.listen,
                self.ns,
                self.log_text()
            )
        })
    }

    /// Scrapes until `ready` holds for the scrape (bounded); returns it.
    pub fn scrape_until(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        let deadline = Instant::now() + timeout;
        loop {
            let scrape = self.scrape();
            if ready(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last scrape:\n{}\nlog:\n{}",
                scrape.text,
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|err| format!("(log unreadable: {err})"))
    }

    /// SIGKILL: no clean-up code runs in the daemon.
    pub fn kill(mut self) {
        self.signal_and_reap(libc::SIGKILL);
    }

    /// SIGTERM, and the daemon must exit 0 within a few seconds.
    pub fn terminate(mut self) {
        let status = self.signal_and_reap(libc::SIGTERM);
        assert!(
            status.is_some_and(|s| s.success()),
            "blocker run did not exit cleanly on SIGTERM ({status:?}); log:\n{}",
            self.log_text()
        );
    }

    fn signal_and_reap(&mut self, signal: libc::c_int) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which we have not reaped yet, so
        // the pid cannot have been reused.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "blocker run (pid {pid}) still running 10 s after signal {signal}; log:\n{}",
                        self.log_text()
                    );
                }
                Err(err) => panic!("waiting for blocker run: {err}"),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- blocker run log ({}) ----\n{}---- end of log ----",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// GET http://LISTEN/metrics from inside `ns` with curl; None when it fails.
pub fn try_scrape(ns: &str, listen: SocketAddr) -> Option<Scrape> {
    let url = format!("http://{listen}/metrics");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "3", &url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(Scrape::parse(&text))
}

/// A sample's identity: metric name and its labels, sorted by label name.
pub type SeriesKey = (String, Vec<(String, String)>);

/// One Prometheus text-format scrape, parsed.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: BTreeMap<SeriesKey, f64>,
    pub text: String,
}

impl Scrape {
    /// Parses the text exposition format (comments skipped, timestamps
    /// ignored). Panics on a line it cannot read: a malformed exposition is
    /// a bug worth failing on.
    pub fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) =
                parse_sample(line).unwrap_or_else(|| panic!("unparsable metrics line: {line:?}"));
            samples.insert(key, value);
        }
        Self {
            samples,
            text: text.to_owned(),
        }
    }

    /// The sample with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// Every sample of `name` whose labels include `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(&[(String, String)], f64)> {
        self.samples
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|((_, l), v)| (l.as_slice(), *v))
            .collect()
    }

    /// `blocker_order_matched_packets_total{order, action}`, 0 when absent.
    pub fn order_packets(&self, order: &str, action: &str) -> u64 {
        self.counter(
            "blocker_order_matched_packets_total",
            &[("order", order), ("action", action)],
        )
    }

    /// `blocker_order_matched_bytes_total{order, action}`, 0 when absent.
    pub fn order_bytes(&self, order: &str, action: &str) -> u64 {
        self.counter(
            "blocker_order_matched_bytes_total",
            &[("order", order), ("action", action)],
        )
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self.get(name, labels).unwrap_or(0.0);
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "{name}{labels:?} = {value} is not a counter value"
        );
        value as u64
    }
}

fn parse_sample(line: &str) -> Option<(SeriesKey, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // Skip separators; `}` ends the label set.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let &(start, c) = chars.peek()?;
            if c == '}' {
                rest = &after[start + 1..];
                break;
            }
            let eq = after[start..].find('=')? + start;
            let key = after[start..eq].trim().to_owned();
            while chars.peek()?.0 <= eq {
                chars.next();
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        }
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    labels.sort();
    Some(((name, labels), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let scrape = Scrape::parse(
            "# HELP x y\n# TYPE blocker_feed_serial gauge\nblocker_feed_serial 42\n\
             blocker_order_matched_packets_total{order=\"A-1\",action=\"drop\"} 7\n\
             weird{b=\"q\\\"uote\",a=\"x,y}\"} 1.5e3 1700000000\n",
        );
        assert_eq!(scrape.get("blocker_feed_serial", &[]), Some(42.0));
        assert_eq!(scrape.order_packets("A-1", "drop"), 7);
        assert_eq!(scrape.order_packets("A-2", "drop"), 0);
        assert_eq!(
            scrape.get("weird", &[("a", "x,y}"), ("b", "q\"uote")]),
            Some(1500.0)
        );
        assert_eq!(scrape.matching("weird", &[("a", "x,y}")]).len(), 1);
    }
}
