//! The operator's config file (contract §2).
//!
//! Every key is typed and unknown keys are refused; a bad config refuses to
//! start and never falls back to defaults. Defaults apply only to keys left
//! out, and are documented on each field.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnetwork::IpNetwork;
use serde::Deserialize;

pub use crate::compile::Enforcement;
use crate::{feed::Rung, policy::Guardrails};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("config {origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode where the driver supports it, else generic.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    /// Default: `auto`.
    #[serde(default)]
    pub mode: AttachMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// `https://`, `http://` or `file://`.
    pub url: String,
    /// The regulator's minisign public key file.
    pub public_key: PathBuf,
    /// Default: 30s. At least 1s.
    #[serde(default = "default_poll_interval", with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    /// PEM bundle of CAs to trust for an `https://` feed instead of the
    /// built-in web roots (private PKI).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Largest feed download accepted. Default: 64 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Time limit of one download. Default: 30s.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl FeedConfig {
    /// The path of a `file://` feed.
    pub fn file_path(&self) -> Option<PathBuf> {
        let rest = self.url.strip_prefix("file://")?;
        // file:///abs/path and file://localhost/abs/path
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        rest.starts_with('/').then(|| PathBuf::from(rest))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Default: 127.0.0.1:9947 (loopback only).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

/// Per-family minimum prefix length for one rung; may only tighten.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungLimit {
    pub ipv4: Option<u8>,
    pub ipv6: Option<u8>,
}

/// Operator tightening of the contract's rung breadth limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungLimits {
    #[serde(default)]
    pub server: RungLimit,
    #[serde(default)]
    pub rack: RungLimit,
    #[serde(default)]
    pub datacenter: RungLimit,
}

impl RungLimits {
    fn get(&self, rung: Rung) -> RungLimit {
        match rung {
            Rung::Server => self.server,
            Rung::Rack => self.rack,
            Rung::Datacenter => self.datacenter,
        }
    }

    /// The minimum prefix length for `rung` and family: the operator's
    /// value where set, else the contract default.
    pub fn min_len(&self, rung: Rung, ipv6: bool) -> u8 {
        let limit = self.get(rung);
        let set = if ipv6 { limit.ipv6 } else { limit.ipv4 };
        set.unwrap_or_else(|| Guardrails::default().min_prefix_len(rung, ipv6))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Prefixes never blocked: an order with a target overlapping one is refused.
    #[serde(default)]
    pub protected: Vec<IpNetwork>,
    /// Prefixes a feed may hold; also each lookup table's capacity.
    /// Default: 1,000,000.
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes: u32,
    #[serde(default)]
    pub rungs: RungLimits,
}

impl Default for GuardrailsConfig {
    fn default() -> Self {
        Self {
            protected: Vec::new(),
            max_prefixes: default_max_prefixes(),
            rungs: RungLimits::default(),
        }
    }
}

impl GuardrailsConfig {
    /// The guardrails as the policy step takes them.
    pub fn to_policy(&self) -> Guardrails {
        let mut min_len = [[0u8; 2]; 3];
        for rung in [Rung::Server, Rung::Rack, Rung::Datacenter] {
            for (family, ipv6) in [(0, false), (1, true)] {
                min_len[rung as usize][family] = self.rungs.min_len(rung, ipv6);
            }
        }
        Guardrails {
            protected: self.protected.clone(),
            max_prefixes: self.max_prefixes,
            min_len,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub interfaces: Vec<InterfaceConfig>,
    /// Default: `enforce`.
    #[serde(default)]
    pub enforcement: Enforcement,
    pub feed: FeedConfig,
    /// Default: /var/lib/blocker.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Default: /sys/fs/bpf/blocker.
    #[serde(default = "default_bpffs_dir")]
    pub bpffs_dir: PathBuf,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub guardrails: GuardrailsConfig,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9947))
}
fn default_max_prefixes() -> u32 {
    1_000_000
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/blocker")
}
fn default_bpffs_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/blocker")
}

/// Durations written as humans do: "30s", "5m", "1h 30m".
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. 30s, 5m, 1h"
            ))
        })
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.check(origin)?;
        Ok(config)
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        if self.interfaces.is_empty() {
            return Err(invalid(
                "interfaces",
                "name at least one interface to attach to".into(),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, interface) in self.interfaces.iter().enumerate() {
            let key = format!("interfaces[{i}].name");
            if interface.name.is_empty() || interface.name.len() > 15 {
                return Err(invalid(
                    &key,
                    format!(
                        "{:?} is not an interface name (1 to 15 characters)",
                        interface.name
                    ),
                ));
            }
            if interface.name.contains(['/', ' ', '.']) {
                return Err(invalid(
                    &key,
                    format!("{:?} contains '/', '.' or a space", interface.name),
                ));
            }
            if !names.insert(interface.name.as_str()) {
                return Err(invalid(&key, format!("{} is listed twice", interface.name)));
            }
        }
        let url = &self.feed.url;
        if !(url.starts_with("https://")
            || url.starts_with("http://")
            || url.starts_with("file://"))
        {
            return Err(invalid(
                "feed.url",
                format!("{url:?} must start with https://, http:// or file://"),
            ));
        }
        if url.starts_with("file://") && self.feed.file_path().is_none() {
            return Err(invalid(
                "feed.url",
                format!(
                    "{url:?}: a file URL needs an absolute path, e.g. file:///etc/blocker/feed.yaml"
                ),
            ));
        }
        if self.feed.poll_interval < Duration::from_secs(1) {
            return Err(invalid("feed.poll_interval", "must be at least 1s".into()));
        }
        if self.feed.timeout < Duration::from_secs(1) {
            return Err(invalid("feed.timeout", "must be at least 1s".into()));
        }
        if self.feed.max_bytes == 0 {
            return Err(invalid("feed.max_bytes", "must be positive".into()));
        }
        for (i, prefix) in self.guardrails.protected.iter().enumerate() {
            if prefix.network() != prefix.ip() {
                return Err(invalid(
                    &format!("guardrails.protected[{i}]"),
                    format!(
                        "{prefix} has host bits set; did you mean {}/{}?",
                        prefix.network(),
                        prefix.prefix()
                    ),
                ));
            }
        }
        if !(1..=16_777_216).contains(&self.guardrails.max_prefixes) {
            return Err(invalid(
                "guardrails.max_prefixes",
                "must be between 1 and 16777216".into(),
            ));
        }
        let defaults = Guardrails::default();
        for rung in [Rung::Server, Rung::Rack, Rung::Datacenter] {
            let limit = self.guardrails.rungs.get(rung);
            for (value, ipv6, family, max) in [
                (limit.ipv4, false, "ipv4", 32u8),
                (limit.ipv6, true, "ipv6", 128u8),
            ] {
                let Some(value) = value else { continue };
                let default = defaults.min_prefix_len(rung, ipv6);
                if value < default || value > max {
                    return Err(invalid(
                        &format!("guardrails.rungs.{}.{family}", rung.as_str()),
                        format!(
                            "{value} is outside {default}..={max}: the config may only tighten the contract's limit (/{default})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "interfaces: [{name: eth1}]\nfeed: {url: 'file:///etc/blocker/feed.yaml', public_key: /etc/blocker/atkm.pub}\n";

    #[test]
    fn the_example_config_parses() {
        let config = Config::from_yaml_str(include_str!("../../config/blocker.yaml"), "example")
            .expect("example config");
        assert_eq!(config.interfaces[0].name, "eth1");
        assert_eq!(config.guardrails.protected.len(), 1);
    }

    #[test]
    fn defaults_apply_to_keys_left_out() {
        let config = Config::from_yaml_str(MINIMAL, "t").expect("minimal");
        assert_eq!(config.enforcement, Enforcement::Enforce);
        assert_eq!(config.interfaces[0].mode, AttachMode::Auto);
        assert_eq!(config.feed.poll_interval, Duration::from_secs(30));
        assert_eq!(config.metrics.listen, default_listen());
        assert_eq!(config.guardrails.max_prefixes, 1_000_000);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/blocker"));
        assert_eq!(
            config.feed.file_path(),
            Some(PathBuf::from("/etc/blocker/feed.yaml"))
        );
        let g = config.guardrails.to_policy();
        assert_eq!(g.min_prefix_len(Rung::Server, false), 29);
        assert_eq!(g.min_prefix_len(Rung::Datacenter, true), 29);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        for (yaml, needle) in [
            (format!("{MINIMAL}enforcment: observe\n"), "enforcment"),
            (format!("{MINIMAL}enforcement: maybe\n"), "maybe"),
            ("interfaces: []\nfeed: {url: 'file:///f', public_key: /k}\n".to_owned(), "interfaces"),
            ("interfaces: [{name: eth1}]\nfeed: {url: 'ftp://x/f', public_key: /k}\n".to_owned(), "feed.url"),
            ("interfaces: [{name: eth1}]\nfeed: {url: 'file:///f', public_key: /k, poll_interval: soon}\n".to_owned(), "soon"),
            (format!("{MINIMAL}guardrails: {{protected: [192.0.2.53/24]}}\n"), "host bits"),
            (format!("{MINIMAL}guardrails: {{rungs: {{server: {{ipv4: 24}}}}}}\n"), "guardrails.rungs.server.ipv4"),
            (format!("{MINIMAL}guardrails: {{max_prefixes: 0}}\n"), "max_prefixes"),
            ("interfaces: [{name: eth1}, {name: eth1}]\nfeed: {url: 'file:///f', public_key: /k}\n".to_owned(), "twice"),
        ] {
            let err = Config::from_yaml_str(&yaml, "t").expect_err(&yaml).to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn rung_limits_may_tighten() {
        let yaml = format!(
            "{MINIMAL}guardrails: {{rungs: {{server: {{ipv4: 31}}, rack: {{ipv6: 56}}}}}}\n"
        );
        let config = Config::from_yaml_str(&yaml, "t").expect("tightened");
        let g = config.guardrails.to_policy();
        assert_eq!(g.min_prefix_len(Rung::Server, false), 31);
        assert_eq!(g.min_prefix_len(Rung::Server, true), 64);
        assert_eq!(g.min_prefix_len(Rung::Rack, true), 56);
    }
}
