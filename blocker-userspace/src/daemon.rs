//! `blocker run`: attach, sync the feed, enforce, serve metrics.
//!
//! [`run`] takes its shutdown signal as an argument so tests can drive it.
//! Stopping never detaches: the program, links and maps stay pinned and in
//! force, and the next start takes them over without a gap.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::Arc,
    time::Duration,
};

use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    audit::{AuditError, AuditEvent, AuditLog},
    compile::{Compiler, SlotTable},
    config::Config,
    datapath::{self, ApplyStats, Datapath, DatapathError, Maps, Repair},
    feed::{self, Feed, Order},
    metrics::{CountedOrder, Metrics, MetricsError},
    policy::{self, Evaluation, Guardrails, OrderState},
    signature::{self, PublicKey},
    state::{DaemonLock, SavedFeed, StateDir, StateError, SyncStatus},
    sync::{FeedSource, Fetch, Fetched, Intake, SyncError},
};

/// How often a `file://` feed is checked for changes (a stat, no read).
const FILE_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// How often pins and attachments are checked (a few stats).
const REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// Applies patched in (an update that changed little) from one in which the
/// memory freed is handed back to the system to the next: the last of them
/// hands it back ([`HandBack`]).
const PATCHES_BETWEEN_HAND_BACKS: u32 = 8;

/// When the memory an apply freed goes back to the system: after tables
/// laid out from scratch (the first feed, a big change), whose memory no
/// update needs again, and after every [`PATCHES_BETWEEN_HAND_BACKS`]th
/// patch; the applies between keep it. An update takes most of what the
/// one before it freed again, and memory handed back costs a page fault a
/// page to take again (about 3 µs here; kept, the benchmark's 1% updates
/// of a million prefixes were 5-17 ms faster). Handing back now and then
/// keeps what the allocator holds in pieces too small to use from growing.
#[derive(Debug, Default)]
struct HandBack {
    /// Applies patched in since memory was last handed back.
    patches_kept: u32,
}

impl HandBack {
    /// Whether to hand memory back after an apply that wrote the tables
    /// (`Some(patched)`) or left them as they were (`None`: little was
    /// freed).
    fn after(&mut self, patched: Option<bool>) -> bool {
        match patched {
            None => false,
            Some(true) if self.patches_kept + 1 < PATCHES_BETWEEN_HAND_BACKS => {
                self.patches_kept += 1;
                false
            }
            Some(_) => {
                self.patches_kept = 0;
                true
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("feed.public_key: {0}")]
    PublicKey(#[source] signature::SignatureError),
    #[error("installing signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("no interface could be attached: {0}")]
    NoInterface(String),
}

/// Why a fetched feed was not applied; the `reason` label of
/// `blocker_feed_sync_failures_total` and of the audit record.
#[derive(Debug)]
pub struct Refusal {
    pub reason: &'static str,
    pub serial: Option<u64>,
    pub detail: String,
}

/// The feed in force and what it compiled to.
struct InForce {
    fingerprint: Fingerprint,
    feed: Feed,
    evaluation: Evaluation,
    /// Since when each order in force has been enforced without interruption.
    since: BTreeMap<String, OffsetDateTime>,
}

/// What one load put in the datapath.
struct Loaded {
    stats: ApplyStats,
    counted: Vec<CountedOrder>,
}

/// Tells a fetched feed is the one in force without comparing its bytes
/// (a large feed is tens of megabytes).
#[derive(Clone, Debug)]
struct Fingerprint {
    len: usize,
    /// The feed's BLAKE2b-512, which its signature's check takes anyway.
    digest: signature::Digest,
    signature: Vec<u8>,
    /// Its text and where its orders lie in it, kept once it is applied
    /// when it was read order by order: the next feed is parsed against it.
    layout: Option<Arc<Layout>>,
}

/// A feed's text and the shape its parse gave.
#[derive(Debug)]
struct Layout {
    text: Vec<u8>,
    shape: feed::Shape,
}

pub struct Daemon {
    config: Config,
    guardrails: Guardrails,
    public_key: Arc<PublicKey>,
    state: StateDir,
    audit: AuditLog,
    datapath: Datapath,
    metrics: Arc<Metrics>,
    source: FeedSource,
    slots: SlotTable,
    /// The slot table `state_dir` holds (last written or read).
    slots_on_disk: SlotTable,
    /// Remembers the last compile, so a small change is patched in.
    compiler: Compiler,
    current: Option<InForce>,
    status: SyncStatus,
    /// Consecutive failed fetches (drives the backoff).
    fetch_failures: u32,
    /// Repairs that failed, logged once until they succeed.
    repair_failures: BTreeSet<String>,
    hand_back: HandBack,
    /// Whether the buffer the next feed is read into is still to be made
    /// for the feed in force, the first taken ([`Daemon::make_room`]).
    room_due: bool,
    _lock: DaemonLock,
}

impl Daemon {
    /// Opens state, takes over (or creates) the pinned datapath, re-applies
    /// the last good feed, syncs once, and attaches to every interface.
    pub fn start(config: Config, metrics: Arc<Metrics>) -> Result<Self, DaemonError> {
        let state = StateDir::open(&config.state_dir)?;
        let lock = state.lock()?;
        // An audit log that cannot be opened (state_dir read-only or full)
        // does not stop enforcement: every record tries again, and each
        // failure is logged and counted.
        let audit = AuditLog::deferred(&state.audit_log_path());
        let public_key = Arc::new(
            PublicKey::from_file(&config.feed.public_key).map_err(DaemonError::PublicKey)?,
        );
        let mut datapath = Datapath::open(&config.bpffs_dir, config.guardrails.max_prefixes)?;
        // Before any table is written: a previous daemon's program (an
        // older build's, after an upgrade) must not read this build's.
        datapath.adopt_pinned_links()?;
        metrics.set_maps(Maps::open_pinned(&config.bpffs_dir)?);
        metrics.set_capacity(datapath.capacity());
        for reason in [
            "fetch",
            "too_large",
            "signature",
            "parse",
            "serial",
            "guardrails",
            "apply",
            "redirect",
            "config",
        ] {
            metrics.declare_failure_reason(reason);
        }
        let source = FeedSource::new(&config.feed)?.with_intake(Intake {
            key: Arc::clone(&public_key),
        });
        let slots = state.load_slots()?;
        let guardrails = config.guardrails.to_policy();
        let mut daemon = Self {
            config,
            guardrails,
            public_key,
            state,
            audit,
            datapath,
            metrics,
            source,
            slots_on_disk: slots.clone(),
            slots,
            compiler: Compiler::new(),
            current: None,
            status: SyncStatus::default(),
            fetch_failures: 0,
            repair_failures: BTreeSet::new(),
            hand_back: HandBack::default(),
            room_due: false,
            _lock: lock,
        };
        daemon.record(AuditEvent::DaemonStart {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        });
        daemon.restore_last_good();
        daemon.sync(true);
        daemon.attach_all()?;
        Ok(daemon)
    }

    /// Re-verifies and re-applies the feed saved in `state_dir`.
    fn restore_last_good(&mut self) {
        let saved = match self.state.load_feed() {
            Ok(Some(saved)) => saved,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(error = %err, "last good feed unreadable");
                return;
            }
        };
        let mut fetched = Fetched::from_bytes(saved.feed, saved.signature);
        match self.consider(&mut fetched, "state", Duration::ZERO) {
            Ok(()) => tracing::info!(serial = saved.serial, "last good feed restored"),
            Err(refusal) => self.refused(refusal),
        }
    }

    fn attach_all(&mut self) -> Result<(), DaemonError> {
        let mut failures = Vec::new();
        let interfaces = self.config.interfaces.clone();
        // An interface taken out of the config is detached: the config says
        // where blocker enforces.
        for stale in datapath::attachments(&self.config.bpffs_dir)?
            .into_iter()
            .filter(|a| !interfaces.iter().any(|i| i.name == a.interface))
        {
            self.datapath.detach_interface(&stale)?;
            tracing::info!(interface = %stale.interface, "detached: no longer in the config");
            self.record(AuditEvent::Detached {
                interfaces: vec![stale.interface.clone()],
            });
        }
        for interface in &interfaces {
            match self.datapath.attach(&interface.name, interface.mode) {
                Ok(mode) => {
                    tracing::info!(interface = %interface.name, mode = mode.as_str(), "attached");
                    self.metrics
                        .set_attached(&interface.name, mode.as_str(), true);
                    self.record(AuditEvent::Attached {
                        interface: interface.name.clone(),
                        mode: mode.as_str().to_owned(),
                    });
                }
                Err(err) => {
                    tracing::error!(interface = %interface.name, error = %err, "attach failed");
                    failures.push(err.to_string());
                }
            }
        }
        if failures.len() == interfaces.len() {
            return Err(DaemonError::NoInterface(failures.join("; ")));
        }
        self.index_interfaces();
        Ok(())
    }

    /// Tells the metrics which ifindex each configured interface has now.
    fn index_interfaces(&self) {
        let indexed: Vec<(String, u32)> = self
            .config
            .interfaces
            .iter()
            .filter_map(|i| datapath::ifindex(&i.name).map(|index| (i.name.clone(), index)))
            .collect();
        for (i, a) in indexed.iter().enumerate() {
            let Some(b) = indexed[i + 1..]
                .iter()
                .find(|b| a.1 % blocker_common::IF_SLOTS == b.1 % blocker_common::IF_SLOTS)
            else {
                continue;
            };
            tracing::warn!(first = %a.0, second = %b.0, "interfaces share a statistics slot; their per-interface frames add up");
        }
        self.metrics.set_interfaces(indexed);
    }

    /// Puts back what was removed under the daemon's feet (pins removed by
    /// hand, an interface deleted and recreated); see [`Datapath::repair`].
    pub fn repair(&mut self) {
        let repairs = self.datapath.repair(
            self.config
                .interfaces
                .iter()
                .map(|i| (i.name.as_str(), i.mode)),
        );
        let mut failures = BTreeSet::new();
        let mut reindex = false;
        for repair in repairs {
            match repair {
                Repair::Pin(path) => self.repinned("pin", path),
                Repair::Link { interface } => self.repinned("link", interface),
                Repair::Reattached { interface, mode } => {
                    tracing::warn!(%interface, mode = mode.as_str(), "interface is back; attached again");
                    self.metrics.repaired("attach");
                    self.metrics.set_attached(&interface, mode.as_str(), true);
                    self.record(AuditEvent::Attached {
                        interface,
                        mode: mode.as_str().to_owned(),
                    });
                    reindex = true;
                }
                Repair::Gone { interface, mode } => {
                    tracing::error!(%interface, "interface gone; the program returns when it does");
                    self.metrics.set_attached(&interface, mode.as_str(), false);
                    self.record(AuditEvent::InterfaceGone { interface });
                    reindex = true;
                }
                Repair::Failed { what, error } => {
                    let key = format!("{what}: {error}");
                    if !self.repair_failures.contains(&key) {
                        tracing::error!(%what, %error, "cannot restore enforcement plumbing");
                    }
                    failures.insert(key);
                }
            }
        }
        self.repair_failures = failures;
        if reindex {
            self.index_interfaces();
        }
    }

    /// A pin (`what`: pin or link) was removed by hand and is back.
    fn repinned(&mut self, what: &'static str, detail: String) {
        tracing::warn!(what, %detail, "pin removed by hand; pinned again (the program stayed attached)");
        self.metrics.repaired(what);
        self.record(AuditEvent::Repaired {
            what: what.to_owned(),
            detail,
        });
    }

    /// Fetches the feed (if changed, or always when `force`) and applies it
    /// when it is newer and valid; otherwise counts and audits the refusal.
    pub fn sync(&mut self, force: bool) {
        self.make_room();
        let started = std::time::Instant::now();
        self.sync_inner(force);
        self.metrics.observe_sync(started.elapsed().as_secs_f64());
    }

    /// After the first feed, at the next poll (the start's work done: the
    /// idle generation caught up), the buffer the next feed is read into is
    /// made and its pages taken, as every later feed leaves the one it
    /// replaced. The first update after a start then reads into pages the
    /// daemon holds, as the rest do, not into 8,000 fresh ones (a feed of
    /// 30 MB); and what the catching up freed stays with the allocator for
    /// that update's parse and apply.
    fn make_room(&mut self) {
        if std::mem::take(&mut self.room_due)
            && let Some(current) = &self.current
        {
            self.datapath.settle();
            self.source.make_room(current.fingerprint.len);
        }
    }

    fn sync_inner(&mut self, force: bool) {
        let fetch_started = std::time::Instant::now();
        let mut fetched = match self.source.fetch(force) {
            Ok(Fetch::Unchanged) => {
                self.fetch_failures = 0;
                if self.source.is_remote() {
                    self.sync_ok();
                }
                return;
            }
            Ok(Fetch::New(fetched)) => fetched,
            Err(err) => {
                self.fetch_failures = self.fetch_failures.saturating_add(1);
                self.refused(Refusal {
                    reason: err.reason(),
                    serial: None,
                    detail: err.to_string(),
                });
                return;
            }
        };
        self.fetch_failures = 0;
        if self.in_force(&fetched) {
            self.source.commit(&fetched);
            self.source.recycle(fetched.take().0);
            self.sync_ok();
            return;
        }
        match self.consider(&mut fetched, "feed", fetch_started.elapsed()) {
            Ok(()) => self.source.commit(&fetched),
            Err(refusal) => {
                // A file is re-read when it changes; a refused download is
                // fetched whole again next poll (its signature may be fixed).
                if !self.source.is_remote() {
                    self.source.commit(&fetched);
                }
                self.refused(refusal);
            }
        }
    }

    fn sync_ok(&mut self) {
        self.metrics.sync_succeeded(unix_now());
        self.status.last_success = Some(unix_now());
        self.status.last_failure = None;
        self.save_status();
    }

    /// How long until the next fetch: a `file://` feed is checked every
    /// second (a stat); a remote one every `poll_interval`, sooner with
    /// exponential backoff and jitter while fetches fail.
    pub fn next_poll(&self) -> Duration {
        if !self.source.is_remote() {
            return FILE_WATCH_INTERVAL;
        }
        let interval = self.config.feed.poll_interval;
        if self.fetch_failures == 0 {
            return interval;
        }
        let backoff = Duration::from_secs(1)
            .saturating_mul(1u32 << self.fetch_failures.min(16))
            .min(interval);
        // +-20% jitter so a fleet of routers does not poll in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let factor = 0.8 + 0.4 * (f64::from(nanos % 1000) / 1000.0);
        backoff.mul_f64(factor)
    }

    /// Verifies, parses and applies a fetched feed (its bytes are taken:
    /// a feed held once, not twice; its validators stay for `commit`),
    /// whose fetch (the download or the read, with what was worked out as
    /// it arrived) took `fetch_took`.
    fn consider(
        &mut self,
        fetched: &mut Fetched,
        origin: &str,
        fetch_took: Duration,
    ) -> Result<(), Refusal> {
        // The last apply's background write is done (it is, unless feeds
        // come back to back). What it held stays with the allocator, for
        // this feed's parse and apply to take without a page fault each.
        self.datapath.settle();
        let (bytes, sig, arrived) = fetched.take();
        let at_hand = std::time::Instant::now();
        let (verified, text) = match arrived {
            // A download verified as it arrived, its digest (the
            // fingerprint) and scan worked out then too.
            Some(arrived) if arrived.verified => {
                (Ok(arrived.digest), arrived.scanner.finish(&bytes))
            }
            // The bytes' scan (nothing is parsed) worked out on the second
            // core while the signature is checked (tens of ms each for a
            // large feed).
            _ => crate::parallel::join(
                bytes.len() / feed::AVERAGE_LINE,
                || signature::verify(&self.public_key, &bytes, &sig),
                || feed::Text::scan_here(&bytes),
            ),
        };
        let digest = verified.map_err(|err| Refusal {
            reason: "signature",
            serial: None,
            detail: format!("{origin}: {err}"),
        })?;
        let parse_started = std::time::Instant::now();
        let base = self.current.as_ref().and_then(|current| {
            let layout = current.fingerprint.layout.as_ref()?;
            feed::Base::new(&layout.text, &current.feed.orders, &layout.shape)
        });
        let parsed = feed::parse_against(&text, base.as_ref()).map_err(|err| Refusal {
            reason: "parse",
            serial: None,
            detail: format!("{origin}: {err}"),
        })?;
        drop((base, text));
        let feed = parsed.feed;
        let edits = parsed.edits;
        tracing::info!(
            serial = feed.serial,
            orders = feed.orders.len(),
            taken_from_in_force = parsed.taken,
            fetched_ms = millis(fetch_took),
            verified_ms = millis(parse_started - at_hand),
            parsed_ms = millis(parse_started.elapsed()),
            "feed parsed"
        );
        if let Some(current) = &self.current
            && feed.serial <= current.feed.serial
        {
            return Err(Refusal {
                reason: "serial",
                serial: Some(feed.serial),
                detail: format!(
                    "{origin}: serial {} is not larger than serial {} in force (rollback or replay refused)",
                    feed.serial, current.feed.serial
                ),
            });
        }
        let saved = SavedFeed {
            serial: feed.serial,
            feed: bytes,
            signature: sig,
        };
        let fingerprint = Fingerprint {
            len: saved.feed.len(),
            digest,
            signature: saved.signature.clone(),
            layout: None,
        };
        self.apply(
            fingerprint,
            Some((saved, parsed.shape)),
            feed,
            edits,
            OffsetDateTime::now_utc(),
        )
    }

    /// Whether `fetched` is the feed in force: its length and signature are
    /// compared first, so that a new feed is not hashed here (nor one
    /// digested as it downloaded).
    fn in_force(&self, fetched: &Fetched) -> bool {
        self.current.as_ref().is_some_and(|current| {
            let known = &current.fingerprint;
            known.len == fetched.feed.len()
                && known.signature == fetched.signature
                && known.digest
                    == fetched
                        .arrived()
                        .map_or_else(|| signature::Digest::of(&fetched.feed), |a| a.digest)
        })
    }

    /// Re-evaluates the feed in force at `now` (an order's window opened or
    /// closed) and applies the result.
    pub fn reevaluate(&mut self, now: OffsetDateTime) {
        let Some(current) = self.current.take() else {
            return;
        };
        let (fingerprint, feed) = (current.fingerprint.clone(), current.feed.clone());
        // Put it back first: a failed apply leaves the current state as is.
        self.current = Some(current);
        if let Err(refusal) = self.apply(fingerprint, None, feed, feed::Edits::default(), now) {
            self.refused(refusal);
        }
    }

    /// Applies `feed` (whose bytes `fingerprint` tells) as evaluated at
    /// `now`: a new feed (`saved`, kept in `state_dir` once applied; `edits`
    /// tell how its parse changed orders of the feed in force), or the one
    /// in force re-evaluated (`None`).
    fn apply(
        &mut self,
        mut fingerprint: Fingerprint,
        saved: Option<(SavedFeed, Option<feed::Shape>)>,
        feed: Feed,
        edits: feed::Edits,
        now: OffsetDateTime,
    ) -> Result<(), Refusal> {
        let new_feed = saved.is_some();
        let serial = feed.serial;
        let started = std::time::Instant::now();
        let evaluation = policy::evaluate(&feed, &self.guardrails, now).map_err(|err| Refusal {
            reason: "guardrails",
            serial: Some(serial),
            detail: err.to_string(),
        })?;
        let in_force: Vec<_> = evaluation.in_force().collect();
        // Pending orders too: the datapath starts each on time by itself.
        let enforceable: Vec<_> = evaluation.enforceable().collect();
        // A re-evaluation in which no order joins or leaves the tables (a
        // pending order's window opened: the datapath started it on time by
        // itself) leaves them as they are: the same orders compile to the
        // same tables, so nothing is compiled or written.
        let tables_unchanged = !new_feed
            && self.current.as_ref().is_some_and(|c| {
                c.evaluation
                    .enforceable()
                    .map(|o| &o.id)
                    .eq(enforceable.iter().map(|o| &o.id))
            });
        let loaded = if tables_unchanged {
            None
        } else {
            Some(self.load(&enforceable, &edits, serial, started)?)
        };
        // The old orders' targets it holds go before the memory is handed
        // back.
        drop(edits);
        if let Some((saved, shape)) = saved {
            if let Err(err) = self.state.save_feed(&saved) {
                // Enforcement is right; only the restart copy is stale.
                tracing::error!(error = %err, "saving the last good feed");
                self.metrics.state_write_failed("feed");
            }
            fingerprint.layout = shape.map(|shape| {
                Arc::new(Layout {
                    text: saved.feed,
                    shape,
                })
            });
        }

        let before: BTreeSet<String> = self
            .current
            .as_ref()
            .map(|c| c.evaluation.in_force().map(|o| o.id.clone()).collect())
            .unwrap_or_default();
        let after: BTreeSet<String> = in_force.iter().map(|o| o.id.clone()).collect();
        let mut since = self
            .current
            .as_ref()
            .map(|c| c.since.clone())
            .unwrap_or_default();
        since.retain(|id, _| after.contains(id));
        // This apply's audit events, written at once (one fsync).
        let mut events = Vec::new();
        for id in after.difference(&before) {
            since.insert(id.clone(), now);
            events.push(AuditEvent::OrderEnteredForce {
                order: id.clone(),
                serial,
            });
            tracing::info!(order = %id, serial, "order entered force");
        }
        let mut left = before.difference(&after).peekable();
        if left.peek().is_some() {
            let states: HashMap<&str, &str> = evaluation
                .orders
                .iter()
                .map(|o| (o.id.as_str(), o.state.as_str()))
                .collect();
            for id in left {
                let state = states.get(id.as_str()).copied().unwrap_or("removed");
                events.push(AuditEvent::OrderLeftForce {
                    order: id.clone(),
                    serial,
                    state: state.to_owned(),
                });
                tracing::info!(order = %id, serial, state, "order left force");
            }
        }
        let applied = new_feed && loaded.is_some();
        let patched = loaded.as_ref().map(|l| l.stats.patched);
        if new_feed && let Some(Loaded { stats, .. }) = &loaded {
            for order in evaluation
                .orders
                .iter()
                .filter(|o| o.state == OrderState::Refused)
            {
                let reason = order.reasons.join("; ");
                tracing::warn!(order = %order.id, serial, %reason, "order refused");
                events.push(AuditEvent::OrderRefused {
                    order: order.id.clone(),
                    serial,
                    reason,
                });
            }
            events.push(AuditEvent::FeedApplied {
                serial,
                in_force: after.iter().cloned().collect(),
                ipv4_prefixes: stats.ipv4,
                ipv6_prefixes: stats.ipv6,
            });
            tracing::info!(
                serial,
                in_force = after.len(),
                ipv4 = stats.ipv4,
                ipv6 = stats.ipv6,
                table_keys = stats.keys.0 + stats.keys.1,
                entries = stats.entries,
                written_ms = stats.written.as_millis(),
                "feed applied"
            );
        }
        self.record_all(&events);
        if applied {
            self.metrics.set_feed(serial, unix_now());
            self.status.last_success = Some(unix_now());
            self.status.last_failure = None;
        }
        self.status.serial = Some(serial);
        self.status.last_apply = Some(unix_now());
        self.save_status();
        if let Some(Loaded { stats, counted }) = loaded {
            self.metrics.set_counted_orders(counted);
            self.metrics.set_prefixes(stats.ipv4, stats.ipv6);
        }
        self.metrics.set_evaluation(&evaluation);
        self.metrics.set_enforced_since(
            &since
                .iter()
                .map(|(id, at)| (id.clone(), at.unix_timestamp()))
                .collect::<Vec<_>>(),
        );
        let replaced = self.current.replace(InForce {
            fingerprint,
            feed,
            evaluation,
            since,
        });
        // What this apply freed goes back to the system, when it should;
        // what the feed replaced held is let go of after that, and stays
        // with the allocator for the next feed: its text as the buffer that
        // feed is read into, its orders' target lists for that feed's parse
        // to take. (A re-evaluation shares the text with the feed in force.)
        if self.hand_back.after(patched) {
            release_free_memory();
        }
        let Some(replaced) = replaced else {
            // The first feed: the buffer for the next is made at the next
            // poll.
            self.room_due = true;
            return Ok(());
        };
        if let Some(layout) = replaced.fingerprint.layout
            && let Ok(layout) = Arc::try_unwrap(layout)
        {
            self.source.recycle(layout.text);
        }
        Ok(())
    }

    /// Compiles `enforceable` (told how the parse changed orders by
    /// `edits`) and writes it to the datapath.
    fn load(
        &mut self,
        enforceable: &[&Order],
        edits: &feed::Edits,
        serial: u64,
        started: std::time::Instant,
    ) -> Result<Loaded, Refusal> {
        let apply_error = |detail: String| Refusal {
            reason: "apply",
            serial: Some(serial),
            detail,
        };
        // A compile that changed little since the last is patched into the
        // tables; should that fail, everything is compiled and laid out
        // again once.
        let mut again = false;
        loop {
            let step = self
                .compiler
                .compile_edited(enforceable, self.config.enforcement, &self.slots, edits)
                .map_err(|err| apply_error(err.to_string()))?;
            let compiled = step.compiled;
            let fresh = compiled.fresh_slots(&self.slots);
            // Slots first: after a crash past this point the table in the
            // kernel and the slot table on disk still agree. A state_dir
            // that cannot be written does not hold enforcement back: the
            // orders are applied, the failure is logged and counted.
            // (Unchanged, as in most updates: nothing to write.)
            if compiled.slots != self.slots_on_disk {
                match self.state.save_slots(&compiled.slots) {
                    Ok(()) => self.slots_on_disk = compiled.slots.clone(),
                    Err(err) => {
                        tracing::error!(error = %err, "saving the slot table; applying anyway");
                        self.metrics.state_write_failed("slots");
                    }
                }
            }
            if compiled.overflow > 0 {
                tracing::warn!(
                    serial,
                    cut = compiled.overflow,
                    "more orders cover one prefix than an entry holds; the lowest-ranked were cut"
                );
            }
            let stats = match self.datapath.apply_step(
                compiled,
                step.version,
                step.change.as_ref(),
                &fresh,
            ) {
                Ok(stats) => stats,
                Err(err) if step.change.is_some() && !again => {
                    tracing::warn!(error = %err, "applying a change failed; compiling everything again");
                    self.compiler.forget();
                    again = true;
                    continue;
                }
                Err(err) => return Err(apply_error(err.to_string())),
            };
            self.slots = compiled.slots.clone();
            self.metrics
                .set_apply_duration(started.elapsed().as_secs_f64());
            let counted = compiled
                .orders
                .iter()
                .map(|o| CountedOrder {
                    id: o.id.clone(),
                    slot: o.slot,
                    action: o.action,
                })
                .collect();
            return Ok(Loaded { stats, counted });
        }
    }

    fn refused(&mut self, refusal: Refusal) {
        tracing::warn!(
            reason = refusal.reason,
            serial = refusal.serial,
            detail = %refusal.detail,
            "feed refused; what is in force stays"
        );
        self.metrics.sync_failed(refusal.reason);
        self.status.last_failure = Some(format!("{}: {}", refusal.reason, refusal.detail));
        self.save_status();
        self.record(AuditEvent::FeedRefused {
            serial: refusal.serial,
            reason: refusal.reason.to_owned(),
            detail: refusal.detail,
        });
    }

    fn save_status(&self) {
        if let Err(err) = self.state.save_status(&self.status) {
            tracing::error!(error = %err, "saving sync status");
            self.metrics.state_write_failed("status");
        }
    }

    fn record(&mut self, event: AuditEvent) {
        self.record_all(std::slice::from_ref(&event));
    }

    /// Writes `events` to the audit log at once; a failure is logged (with
    /// how many events it lost and the first of them) and counted.
    fn record_all(&mut self, events: &[AuditEvent]) {
        if let Err(err) = self.audit.record_all(OffsetDateTime::now_utc(), events) {
            tracing::error!(
                error = %err,
                events = events.len(),
                first = ?events.first(),
                "audit log write failed"
            );
            self.metrics.state_write_failed("audit");
        }
    }

    /// When the set of orders in force changes next without a new feed.
    pub fn next_change(&self) -> Option<OffsetDateTime> {
        self.current.as_ref()?.evaluation.next_change
    }

    pub fn serial(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.feed.serial)
    }

    pub fn stop(&mut self) {
        self.record(AuditEvent::DaemonStop);
    }
}

/// Hands memory freed by a feed's apply (in several threads' malloc
/// arenas) back to the system now: after it, what the daemon holds is the
/// feed in force and what the feed it replaced held (kept for the next),
/// not the high-water mark of its last apply.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages; it has no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A duration in milliseconds, to a tenth, for the log.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e4).round() / 10.0
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::new()?);
    let listener = tokio::net::TcpListener::bind(config.metrics.listen)
        .await
        .map_err(|source| MetricsError::Listen {
            addr: config.metrics.listen,
            source,
        })?;
    let mut daemon = tokio::task::block_in_place(|| Daemon::start(config, Arc::clone(&metrics)))?;
    let mut server = tokio::spawn(Arc::clone(&metrics).serve_on(listener));
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    tokio::pin!(shutdown);
    let mut next_poll = tokio::time::Instant::now() + daemon.next_poll();
    let mut repair = tokio::time::interval(REPAIR_INTERVAL);
    repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let lifecycle = daemon.next_change().map(|at| {
            let wait = at - OffsetDateTime::now_utc();
            tokio::time::Instant::now() + wait.try_into().unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: syncing now");
                tokio::task::block_in_place(|| daemon.sync(true));
                next_poll = tokio::time::Instant::now() + daemon.next_poll();
            }
            () = tokio::time::sleep_until(next_poll) => {
                // Fetch and apply are blocking (HTTP, map syscalls); the
                // metrics listener keeps serving on the other worker.
                tokio::task::block_in_place(|| daemon.sync(false));
                next_poll = tokio::time::Instant::now() + daemon.next_poll();
            }
            _ = repair.tick() => {
                tokio::task::block_in_place(|| daemon.repair());
            }
            () = sleep_until_opt(lifecycle) => {
                tokio::task::block_in_place(|| daemon.reevaluate(OffsetDateTime::now_utc()));
            }
            result = &mut server => {
                let detail = match result {
                    Ok(Ok(())) => "metrics listener stopped".to_owned(),
                    Ok(Err(err)) => err.to_string(),
                    Err(err) => err.to_string(),
                };
                tracing::error!(%detail, "metrics listener failed");
                break;
            }
        }
    }
    daemon.stop();
    server.abort();
    tracing::info!(
        serial = daemon.serial(),
        "stopped; enforcement stays pinned"
    );
    Ok(())
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Re-exported for the CLI: detach everything pinned under `bpffs_dir`.
pub use datapath::detach;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_goes_back_after_a_layout_from_scratch_and_every_eighth_patch() {
        let every = PATCHES_BETWEEN_HAND_BACKS as usize;
        let mut hand_back = HandBack::default();
        // The first feed, laid out from scratch.
        assert!(hand_back.after(Some(false)));
        for round in 0..3 {
            let told: Vec<bool> = (0..every).map(|_| hand_back.after(Some(true))).collect();
            assert_eq!(
                told.iter().position(|&back| back),
                Some(every - 1),
                "round {round}: {told:?}"
            );
            assert_eq!(told.iter().filter(|&&back| back).count(), 1);
        }
        // Three patches counted, and tables left as they were between them
        // count for nothing.
        for _ in 0..3 {
            assert!(!hand_back.after(Some(true)));
            assert!(!hand_back.after(None));
        }
        // A big change hands back at once, and the count starts again.
        assert!(hand_back.after(Some(false)));
        let told: Vec<bool> = (0..every).map(|_| hand_back.after(Some(true))).collect();
        assert_eq!(told.iter().position(|&back| back), Some(every - 1));
    }
}
