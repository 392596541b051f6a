//! Fetching the feed and its signature from `feed.url`.
//!
//! - `file://` feeds are watched: a fetch reports [`Fetch::Unchanged`] unless
//!   the feed or its `.minisig` changed on disk (size, mtime or inode), or the
//!   caller forces a read.
//! - `http://` and `https://` feeds are polled with conditional GET (ETag /
//!   If-None-Match, Last-Modified / If-Modified-Since), but for a response
//!   made in the second its feed was last modified, whose validators cannot
//!   tell a second write within that second; `URL.minisig` is fetched
//!   alongside. Downloads are bounded in size and time; redirects are
//!   followed only within the same scheme.
//! - The feed's bytes are worked on as they arrive ([`Intake`]), downloaded
//!   or read from a file: its digest (what its signature signs, and its
//!   fingerprint) and its scan for plain text are taken while the download
//!   or the read lasts, so that little is left once it ends. The signature
//!   is fetched or read first for that, then the feed (over HTTP
//!   conditionally: an unchanged feed is a 304, its signature a few
//!   hundred bytes).
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
    sync::Arc,
    time::Duration,
};

use crate::{config::FeedConfig, feed, signature};

/// A signature file is a few hundred bytes; anything bigger is not one.
const MAX_SIGNATURE_BYTES: u64 = 16 * 1024;
/// Redirect hops followed at most.
const MAX_REDIRECTS: usize = 5;
/// A download is worked on in pieces of this many bytes (or fewer, at
/// its end): the work on a piece is done before the next is read.
const PIECE: u64 = 256 * 1024;
/// Pieces read ahead of the digest (the signature's check) at most.
const PIECES_AHEAD: usize = 16;

/// What a download works out from a feed's bytes as they arrive, for the
/// caller: its digest, whether its signature verifies over it (with
/// `key`), and its scan.
#[derive(Clone)]
pub struct Intake {
    pub key: Arc<signature::PublicKey>,
}

/// What was worked out from a downloaded feed as it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrived {
    /// The signature verifies over the feed. When not, or when it could
    /// not be checked piece by piece (a legacy signature), the caller
    /// verifies the whole feed, which names the problem.
    pub verified: bool,
    /// The feed's digest, checked or not: its fingerprint.
    pub digest: signature::Digest,
    /// The feed scanned as far as it arrived in whole lines.
    pub scanner: feed::Scanner,
}

/// A feed and its detached signature, as fetched (verified as it arrived,
/// or not yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub feed: Vec<u8>,
    pub signature: Vec<u8>,
    validators: Validators,
    /// Worked out from `feed` and `signature` as the feed arrived: taken
    /// with them ([`Fetched::take`]), never apart. Boxed: a fetch that
    /// finds nothing new stays small.
    arrived: Option<Box<Arrived>>,
}

impl Fetched {
    /// A fetched pair from bytes at hand (e.g. the last good feed on disk).
    pub fn from_bytes(feed: Vec<u8>, signature: Vec<u8>) -> Self {
        Self {
            feed,
            signature,
            validators: Validators::default(),
            arrived: None,
        }
    }

    /// What was worked out from the feed as it arrived, if it was.
    pub fn arrived(&self) -> Option<&Arrived> {
        self.arrived.as_deref()
    }

    /// Takes the feed, its signature and what was worked out from them as
    /// the feed arrived (its validators stay, for [`FeedSource::commit`]).
    pub fn take(&mut self) -> (Vec<u8>, Vec<u8>, Option<Arrived>) {
        (
            std::mem::take(&mut self.feed),
            std::mem::take(&mut self.signature),
            self.arrived.take().map(|arrived| *arrived),
        )
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
    intake: Option<Intake>,
    /// What the next feed is read or downloaded into
    /// ([`FeedSource::recycle`]).
    spare: Vec<u8>,
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
            intake: None,
            spare: Vec::new(),
        })
    }

    /// Keeps `buffer` (the bytes of a feed no longer needed) for the next
    /// feed to be read or downloaded into: its pages are the process's
    /// already, where tens of MB read into fresh memory stop at every 4 KiB
    /// page for the kernel to give one (about 3 µs each on a virtual
    /// machine, 8,000 for a feed of 30 MB). The larger buffer is kept.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if buffer.capacity() > self.spare.capacity() {
            buffer.clear();
            self.spare = buffer;
        }
    }

    /// Makes the buffer the next feed is read or downloaded into ready for
    /// one of `len` bytes, as a read would ([`room_for`]), its pages taken
    /// now, where a feed replaced leaves its own ([`FeedSource::recycle`])
    /// only from the second feed on.
    pub fn make_room(&mut self, len: usize) {
        self.spare = room_for(std::mem::take(&mut self.spare), len);
        // Written once, each page is the process's (not only reserved).
        let room = self.spare.capacity();
        self.spare.resize(room, 0);
        self.spare.clear();
    }

    /// Works on each downloaded feed's bytes as they arrive, for
    /// [`Fetched::take`] to hand over.
    pub fn with_intake(mut self, intake: Intake) -> Self {
        self.intake = Some(intake);
        self
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
                // The signature first, as over HTTP: the feed is checked
                // against it as it is read. A problem with the feed itself
                // is still the one reported.
                let signature = read_bounded(signature, MAX_SIGNATURE_BYTES);
                let (feed, arrived) = Self::take_in(
                    self.intake.as_ref(),
                    &mut self.spare,
                    open_bounded(feed, self.max_bytes)?,
                    self.max_bytes,
                    &signature,
                )?;
                Ok(Fetch::New(Fetched {
                    feed,
                    signature: signature?,
                    validators: stamps,
                    arrived,
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
                // The signature first (a few hundred bytes): the feed's
                // body is checked against it as it arrives. Should it not
                // come, the feed is still fetched and read, so that an
                // unchanged feed stays unchanged and a problem with the
                // feed itself (too large, cut short) is the one reported,
                // as ever. Each is read whole before the next request, as
                // a server that serves one connection at a time needs.
                let signature_url = format!("{url}.minisig");
                let signature = get(agent, &signature_url, *https, Conditional::default())
                    .and_then(|response| {
                        response.ok_or(SyncError::Status {
                            url: signature_url,
                            status: 304,
                        })
                    })
                    .and_then(|response| {
                        read_pieces(
                            Incoming::http(response.body, &response.url),
                            MAX_SIGNATURE_BYTES,
                            Vec::new(),
                            |_| {},
                        )
                    });
                let Some(feed) = get(agent, url, *https, conditional)? else {
                    return Ok(Fetch::Unchanged);
                };
                let (body, arrived) = Self::take_in(
                    self.intake.as_ref(),
                    &mut self.spare,
                    Incoming::http(feed.body, &feed.url),
                    self.max_bytes,
                    &signature,
                )?;
                let signature = signature?;
                Ok(Fetch::New(Fetched {
                    feed: body,
                    signature,
                    validators: Validators::Http {
                        etag: feed.etag,
                        last_modified: feed.last_modified,
                    },
                    arrived,
                }))
            }
        }
    }

    /// Reads the feed from `incoming` into the `spare` buffer (taken),
    /// worked on as it arrives when there is an `intake` and the
    /// `signature` came.
    fn take_in(
        intake: Option<&Intake>,
        spare: &mut Vec<u8>,
        incoming: Incoming<'_, impl io::Read>,
        max_bytes: u64,
        signature: &Result<Vec<u8>, SyncError>,
    ) -> Result<(Vec<u8>, Option<Box<Arrived>>), SyncError> {
        let into = std::mem::take(spare);
        Ok(match (intake, signature) {
            (Some(intake), Ok(signature)) => {
                let (body, arrived) = intake.read(incoming, max_bytes, into, signature)?;
                (body, Some(Box::new(arrived)))
            }
            _ => (read_pieces(incoming, max_bytes, into, |_| {})?, None),
        })
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

/// A response whose body is yet to be read.
struct Response {
    body: ureq::Body,
    /// Where it came from (after redirects).
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// The validators of a 200 response (its `ETag` and `Last-Modified`, by
/// `header`) to send with the next request, or none: a `Last-Modified` in
/// the very second of the response's `Date` cannot tell a rewrite later in
/// that second (RFC 9110, 8.8.2), nor can an `ETag` made from the same
/// time, as common servers make theirs; so a feed published twice within
/// one second, polled between, would be answered 304 until the next
/// publish. Without validators the next poll downloads the feed whole, and
/// the daemon finds it is the one in force.
fn validators(header: &impl Fn(&str) -> Option<String>) -> (Option<String>, Option<String>) {
    let last_modified = header("last-modified");
    if last_modified.is_some() && header("date") == last_modified {
        return (None, None);
    }
    (header("etag"), last_modified)
}

/// GETs `url` (following same-scheme redirects); `None` on 304.
fn get(
    agent: &ureq::Agent,
    url: &str,
    https: bool,
    conditional: Conditional<'_>,
) -> Result<Option<Response>, SyncError> {
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
                let (etag, last_modified) = validators(&header);
                return Ok(Some(Response {
                    body: response.into_body(),
                    url: current,
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

impl Intake {
    /// Reads a feed from `incoming`, worked on as it arrives against
    /// `signature`: its digest (the most work) on a second thread, handed
    /// each piece, then the signature checked over it; the scan on this one.
    fn read(
        &self,
        incoming: Incoming<'_, impl io::Read>,
        max_bytes: u64,
        into: Vec<u8>,
        signature: &[u8],
    ) -> Result<(Vec<u8>, Arrived), SyncError> {
        let decoded = signature::Decoded::new(signature).ok();
        let check = decoded.as_ref().and_then(|d| self.key.over_digest(d));
        let mut scanner = feed::Scanner::default();
        std::thread::scope(|scope| {
            // A few pieces in flight at most: the digest keeps up with all
            // but the fastest downloads.
            let (pieces, digesting) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIECES_AHEAD);
            let digested = crate::parallel::beside(scope, move || {
                let mut digest = signature::Digesting::default();
                for piece in digesting {
                    digest.update(&piece);
                }
                let digest = digest.finish();
                (check.is_some_and(|check| check.verifies(&digest)), digest)
            });
            let mut taken = 0;
            let body = read_pieces(incoming, max_bytes, into, |so_far| {
                // The digest ends short (and unverified) only if its
                // thread did: taken again below.
                let _ = pieces.send(so_far[taken..].to_vec());
                scanner.advance(so_far);
                taken = so_far.len();
            });
            drop(pieces);
            let digested = digested.join();
            let body = body?;
            let (verified, digest) =
                digested.unwrap_or_else(|_| (false, signature::Digest::of(&body)));
            let arrived = Arrived {
                verified,
                digest,
                scanner,
            };
            Ok((body, arrived))
        })
    }
}

/// Bytes to read in pieces: a response's body or a file.
struct Incoming<'a, R> {
    reader: R,
    /// The length announced or on disk, when known before reading.
    len: Option<u64>,
    from: Whence<'a>,
}

/// Where [`Incoming`] bytes come from, for errors.
#[derive(Clone, Copy)]
enum Whence<'a> {
    Url(&'a str),
    Path(&'a Path),
}

impl<'a> Incoming<'a, ureq::BodyReader<'static>> {
    fn http(body: ureq::Body, url: &'a str) -> Self {
        Self {
            len: body.content_length(),
            reader: body.into_reader(),
            from: Whence::Url(url),
        }
    }
}

impl Whence<'_> {
    fn failed(self, source: io::Error) -> SyncError {
        match self {
            Whence::Url(url) => SyncError::Http {
                url: url.to_owned(),
                detail: format!("reading the body: {source} (truncated download?)"),
            },
            Whence::Path(path) => SyncError::Read {
                path: path.to_owned(),
                source,
            },
        }
    }

    fn too_large(self, max: u64) -> SyncError {
        SyncError::TooLarge {
            what: match self {
                Whence::Url(url) => url.to_owned(),
                Whence::Path(path) => path.display().to_string(),
            },
            max,
        }
    }
}

/// `bytes` emptied, when it has room for a feed of `len` bytes (0: not
/// known), else a buffer of its own (not `bytes` grown, which would copy
/// what it held) with a sixteenth more, for the feeds after it, which tend
/// to grow. A buffer of more than twice that room (kept from a far larger
/// feed) is let go of too: the pages it was written to would stay the
/// process's.
fn room_for(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    bytes.clear();
    if bytes.capacity() < len || (len > 0 && bytes.capacity() / 2 > len) {
        // The old one let go of before the new one is made.
        drop(std::mem::take(&mut bytes));
        bytes = Vec::with_capacity(len.saturating_add(len / 16));
    }
    bytes
}

/// Reads `incoming` whole (at most `max_bytes`), in pieces, into `bytes`
/// (what it held dropped): `arrived` is given what has been read so far
/// after each.
fn read_pieces(
    incoming: Incoming<'_, impl io::Read>,
    max_bytes: u64,
    mut bytes: Vec<u8>,
    mut arrived: impl FnMut(&[u8]),
) -> Result<Vec<u8>, SyncError> {
    let Incoming { reader, len, from } = incoming;
    // Room for the whole of it when its length is known (and allowed).
    let len = len
        .filter(|&len| len <= max_bytes)
        .map_or(0, |len| len as usize);
    bytes = room_for(bytes, len);
    let mut reader = reader.take(max_bytes + 1);
    loop {
        let read = (&mut reader)
            .take(PIECE)
            .read_to_end(&mut bytes)
            .map_err(|e| from.failed(e))?;
        if read == 0 {
            break;
        }
        arrived(&bytes);
    }
    if bytes.len() as u64 > max_bytes {
        return Err(from.too_large(max_bytes));
    }
    Ok(bytes)
}

/// The file at `path` opened to be read, refused when it holds more than
/// `max` bytes (and read no further than that, should it grow).
fn open_bounded(path: &Path, max: u64) -> Result<Incoming<'_, fs::File>, SyncError> {
    let from = Whence::Path(path);
    let file = fs::File::open(path).map_err(|e| from.failed(e))?;
    let len = file.metadata().map_err(|e| from.failed(e))?.len();
    if len > max {
        return Err(from.too_large(max));
    }
    Ok(Incoming {
        reader: file,
        len: Some(len),
        from,
    })
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, SyncError> {
    read_pieces(open_bounded(path, max)?, max, Vec::new(), |_| {})
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
