//! Fetching the feed and its signature from `feed.url`.
//!
//! - `file://` feeds are watched: a fetch reports [`Fetch::Unchanged`] unless
//!   the feed or its `.minisig` changed on disk (size, mtime or inode), or the
//!   caller forces a read.
//! - `http://` and `https://` feeds are polled with conditional GET (ETag /
//!   If-None-Match, Last-Modified / If-Modified-Since); `URL.minisig` is
//!   fetched alongside. Downloads are bounded in size and time; redirects are
//!   followed only within the same scheme.
//!
//! The validators of a download are kept only once the caller [`commit`]s
//! it (it was applied, or equals what is in force), so a refused feed is
//! fetched whole again on the next poll (its signature may have been fixed).
//!
//! [`commit`]: FeedSource::commit

use std::{
    fs, io,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::config::FeedConfig;

/// A signature file is a few hundred bytes; anything bigger is not one.
const MAX_SIGNATURE_BYTES: u64 = 16 * 1024;
/// Redirect hops followed at most.
const MAX_REDIRECTS: usize = 5;

/// A feed and its detached signature, as fetched (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub feed: Vec<u8>,
    pub signature: Vec<u8>,
    validators: Validators,
}

impl Fetched {
    /// A fetched pair from bytes at hand (e.g. the last good feed on disk).
    pub fn from_bytes(feed: Vec<u8>, signature: Vec<u8>) -> Self {
        Self {
            feed,
            signature,
            validators: Validators::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    Unchanged,
    New(Fetched),
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} is over {max} bytes (feed.max_bytes); refusing to download more")]
    TooLarge { what: String, max: u64 },
    #[error("feed url {url}: unsupported (use https://, http:// or file://)")]
    UnsupportedScheme { url: String },
    #[error("GET {url}: {detail}")]
    Http { url: String, detail: String },
    #[error("GET {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: redirect to {location} refused ({why})")]
    Redirect {
        url: String,
        location: String,
        why: &'static str,
    },
    #[error("feed.ca_bundle {path}: {detail}")]
    CaBundle { path: PathBuf, detail: String },
}

impl SyncError {
    /// The `reason` label of `blocker_feed_sync_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Read { .. } | SyncError::Http { .. } | SyncError::Status { .. } => "fetch",
            SyncError::TooLarge { .. } => "too_large",
            SyncError::UnsupportedScheme { .. } | SyncError::CaBundle { .. } => "config",
            SyncError::Redirect { .. } => "redirect",
        }
    }
}

/// What identifies a version of a file on disk without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ino: meta.ino(),
        })
    }
}

/// What tells a source whether the feed changed since the last download.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Validators {
    #[default]
    None,
    File(Option<Stamp>, Option<Stamp>),
    Http {
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

enum Origin {
    File {
        feed: PathBuf,
        signature: PathBuf,
    },
    Http {
        agent: ureq::Agent,
        url: String,
        https: bool,
    },
}

/// Where the feed comes from.
pub struct FeedSource {
    origin: Origin,
    max_bytes: u64,
    committed: Validators,
}

impl FeedSource {
    pub fn new(config: &FeedConfig) -> Result<Self, SyncError> {
        let origin = if let Some(feed) = config.file_path() {
            let mut signature = feed.clone().into_os_string();
            signature.push(".minisig");
            Origin::File {
                feed,
                signature: signature.into(),
            }
        } else if let Some(https) = http_scheme(&config.url) {
            Origin::Http {
                agent: agent(config)?,
                url: config.url.clone(),
                https,
            }
        } else {
            return Err(SyncError::UnsupportedScheme {
                url: config.url.clone(),
            });
        };
        Ok(Self {
            origin,
            max_bytes: config.max_bytes,
            committed: Validators::None,
        })
    }

    /// Whether this source is polled over the network (else watched on disk).
    pub fn is_remote(&self) -> bool {
        matches!(self.origin, Origin::Http { .. })
    }

    /// Fetches the feed and its signature unless they are unchanged since
    /// the last [`commit`](Self::commit). `force` re-reads a file source.
    pub fn fetch(&mut self, force: bool) -> Result<Fetch, SyncError> {
        match &self.origin {
            Origin::File { feed, signature } => {
                let stamps = Validators::File(Stamp::of(feed), Stamp::of(signature));
                if !force && self.committed == stamps {
                    return Ok(Fetch::Unchanged);
                }
                let feed = read_bounded(feed, self.max_bytes)?;
                let signature = read_bounded(signature, MAX_SIGNATURE_BYTES)?;
                Ok(Fetch::New(Fetched {
                    feed,
                    signature,
                    validators: stamps,
                }))
            }
            Origin::Http { agent, url, https } => {
                let (etag, last_modified) = match &self.committed {
                    Validators::Http {
                        etag,
                        last_modified,
                    } => (etag.clone(), last_modified.clone()),
                    _ => (None, None),
                };
                let conditional = Conditional {
                    etag: etag.as_deref(),
                    last_modified: last_modified.as_deref(),
                };
                let Some(feed) = get(agent, url, *https, conditional, self.max_bytes)? else {
                    return Ok(Fetch::Unchanged);
                };
                let signature_url = format!("{url}.minisig");
                let signature = get(
                    agent,
                    &signature_url,
                    *https,
                    Conditional::default(),
                    MAX_SIGNATURE_BYTES,
                )?
                .ok_or(SyncError::Status {
                    url: signature_url,
                    status: 304,
                })?;
                Ok(Fetch::New(Fetched {
                    feed: feed.body,
                    signature: signature.body,
                    validators: Validators::Http {
                        etag: feed.etag,
                        last_modified: feed.last_modified,
                    },
                }))
            }
        }
    }

    /// Remembers `fetched` as handled: until the source changes, fetches
    /// report [`Fetch::Unchanged`] (an HTTP poll costs a 304).
    pub fn commit(&mut self, fetched: &Fetched) {
        self.committed = fetched.validators.clone();
    }

    /// Forgets what was committed: the next fetch downloads in full.
    pub fn forget(&mut self) {
        self.committed = Validators::None;
    }
}

fn http_scheme(url: &str) -> Option<bool> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") {
        Some(true)
    } else if lower.starts_with("http://") {
        Some(false)
    } else {
        None
    }
}

fn agent(config: &FeedConfig) -> Result<ureq::Agent, SyncError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = &config.ca_bundle {
        let pem = fs::read(path).map_err(|e| SyncError::CaBundle {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SyncError::CaBundle {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(SyncError::CaBundle {
                path: path.clone(),
                detail: "no PEM certificate in it".to_owned(),
            });
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    let agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(config.timeout))
        .timeout_connect(Some(config.timeout.min(Duration::from_secs(10))))
        .user_agent(concat!("blocker/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    Ok(agent)
}

#[derive(Clone, Copy, Default)]
struct Conditional<'a> {
    etag: Option<&'a str>,
    last_modified: Option<&'a str>,
}

struct Download {
    body: Vec<u8>,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// GETs `url` (following same-scheme redirects); `None` on 304.
fn get(
    agent: &ureq::Agent,
    url: &str,
    https: bool,
    conditional: Conditional<'_>,
    max_bytes: u64,
) -> Result<Option<Download>, SyncError> {
    let mut current = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let mut request = agent.get(&current);
        if let Some(etag) = conditional.etag {
            request = request.header("If-None-Match", etag);
        }
        if let Some(last_modified) = conditional.last_modified {
            request = request.header("If-Modified-Since", last_modified);
        }
        let http_error = |e: ureq::Error| SyncError::Http {
            url: current.clone(),
            detail: e.to_string(),
        };
        let response = request.call().map_err(http_error)?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match status {
            200 => {
                let etag = header("etag");
                let last_modified = header("last-modified");
                let body = read_body(response.into_body(), &current, max_bytes)?;
                return Ok(Some(Download {
                    body,
                    etag,
                    last_modified,
                }));
            }
            304 => return Ok(None),
            301 | 302 | 303 | 307 | 308 => {
                let location = header("location").unwrap_or_default();
                let next = resolve_redirect(&current, &location, https).map_err(|why| {
                    SyncError::Redirect {
                        url: current.clone(),
                        location: location.clone(),
                        why,
                    }
                })?;
                current = next;
            }
            status => {
                return Err(SyncError::Status {
                    url: current,
                    status,
                });
            }
        }
    }
    Err(SyncError::Redirect {
        url: url.to_owned(),
        location: current,
        why: "too many redirects",
    })
}

/// The absolute URL a redirect points to, if it keeps the scheme.
fn resolve_redirect(from: &str, location: &str, https: bool) -> Result<String, &'static str> {
    if location.is_empty() {
        return Err("no Location header");
    }
    match http_scheme(location) {
        Some(to_https) if to_https == https => Ok(location.to_owned()),
        Some(_) => Err("it changes the scheme"),
        None if location.contains("://") => Err("it changes the scheme"),
        None if location.starts_with('/') => {
            // Same origin: scheme://authority + absolute path.
            let after_scheme = from.find("://").map_or(0, |i| i + 3);
            let authority_end = from[after_scheme..]
                .find('/')
                .map_or(from.len(), |i| after_scheme + i);
            Ok(format!("{}{location}", &from[..authority_end]))
        }
        None => Err("relative redirects are not followed"),
    }
}

fn read_body(body: ureq::Body, url: &str, max_bytes: u64) -> Result<Vec<u8>, SyncError> {
    let mut bytes = Vec::new();
    body.into_reader()
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SyncError::Http {
            url: url.to_owned(),
            detail: format!("reading the body: {e} (truncated download?)"),
        })?;
    if bytes.len() as u64 > max_bytes {
        return Err(SyncError::TooLarge {
            what: url.to_owned(),
            max: max_bytes,
        });
    }
    Ok(bytes)
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, SyncError> {
    let read_err = |source| SyncError::Read {
        path: path.to_owned(),
        source,
    };
    let size = fs::metadata(path).map_err(read_err)?.len();
    if size > max {
        return Err(SyncError::TooLarge {
            what: path.display().to_string(),
            max,
        });
    }
    fs::read(path).map_err(read_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_the_scheme() {
        let from = "https://feeds.example.org/atkm/feed.yaml";
        assert_eq!(
            resolve_redirect(from, "https://mirror.example.org/f.yaml", true),
            Ok("https://mirror.example.org/f.yaml".to_owned())
        );
        assert_eq!(
            resolve_redirect(from, "/other/feed.yaml", true),
            Ok("https://feeds.example.org/other/feed.yaml".to_owned())
        );
        assert!(resolve_redirect(from, "http://feeds.example.org/f.yaml", true).is_err());
        assert!(resolve_redirect(from, "file:///etc/passwd", true).is_err());
        assert!(resolve_redirect(from, "feed2.yaml", true).is_err());
        assert!(resolve_redirect(from, "", true).is_err());
    }

    #[test]
    fn schemes() {
        assert_eq!(http_scheme("https://x/"), Some(true));
        assert_eq!(http_scheme("HTTP://x/"), Some(false));
        assert_eq!(http_scheme("file:///x"), None);
    }
}
