//! The control plane on the benchmark's feed: each stage of a from-scratch
//! load and of a 1% update, in process, and of another 1% update downloaded
//! from a real HTTP server as the daemon downloads it; then the real daemon
//! on the same feeds, from a `file://` URL and over HTTP, for its update's
//! time, its peak memory and the time of a scrape; and the daemon from a
//! file on through more updates, for its peak memory over a longer run.

use std::{
    fs,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use blocker::{
    compile::{Compiler, Enforcement, SlotTable},
    datapath::Datapath,
    feed::{self, Order},
    policy, signature,
    state::StateDir,
    sync::{Fetch, Intake},
};
use time::OffsetDateTime;

use crate::{
    bpffs::BpffsDir, feed_server::FeedServer, minisign::KeyPair, orders::feed_yaml, topology::Edge,
};

/// One prefix in this many changes in the update.
pub const UPDATE_EVERY: usize = 100;

/// Time per stage of taking one signed feed to the datapath.
#[derive(Clone, Debug, Default)]
pub struct Stages {
    /// With the daemon's work beside it (see [`stages`]).
    pub verify: Duration,
    /// Against the feed before, as the daemon parses (from scratch: whole),
    /// its bytes scanned beside the signature check already.
    pub parse: Duration,
    /// The same feed parsed whole, scan included, for comparison (not in
    /// the total).
    pub parse_whole: Duration,
    /// Orders taken from the feed before, whole or with target lines
    /// changed.
    pub taken: usize,
    pub evaluate: Duration,
    pub compile: Duration,
    /// Writing the idle generation and flipping it live (from scratch:
    /// and writing the other generation the same after).
    pub load: Duration,
    /// Only the change was compiled and written.
    pub patched: bool,
}

impl Stages {
    pub fn total(&self) -> Duration {
        self.verify + self.parse + self.evaluate + self.compile + self.load
    }

    /// What the daemon counts as an apply once a feed is parsed.
    pub fn apply(&self) -> Duration {
        self.evaluate + self.compile + self.load
    }
}

#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    pub prefixes: usize,
    pub feed_bytes: usize,
    /// Loading the program and making the maps (not part of a feed load).
    pub open: Duration,
    pub scratch: Stages,
    /// The median (by total) of [`UPDATES`] 1% updates, each feed parsed
    /// against the one before: the benchmark's update, then the feed it
    /// changed again, and so on.
    pub update: Stages,
    /// Those updates' totals, in the order applied.
    pub updates: Vec<Duration>,
    /// Another 1% update, downloaded over HTTP.
    pub download: Download,
    /// The guardrails' evaluation of the feed, with and without protected
    /// prefixes.
    pub guarded: Guarded,
    /// The median of [`ONE_ORDER_ROUNDS`] updates that add one new order
    /// to the feed (each taken out again before the next): the usual
    /// change from one feed to the next.
    pub one_order: Stages,
}

/// Updates in [`Pipeline::one_order`].
pub const ONE_ORDER_ROUNDS: usize = 3;

/// Protected prefixes in [`Guarded`]'s evaluation: an operator's own
/// infrastructure, resolvers, peers' networks, generously counted.
pub const PROTECTED: usize = 1_000;

/// Evaluations of the guardrails on the benchmark's orders: with nothing
/// protected (as in [`Stages`]), and with [`PROTECTED`] protected prefixes
/// (every target checked against them), in turn, medians of
/// [`GUARDED_ROUNDS`].
#[derive(Clone, Debug, Default)]
pub struct Guarded {
    pub protected: usize,
    /// Orders those refused (targets that overlap one).
    pub refused: usize,
    pub none: Duration,
    pub many: Duration,
}

const GUARDED_ROUNDS: usize = 3;

/// [`Guarded`] on `orders`.
pub fn guarded(orders: &[Order], max_prefixes: u32) -> Guarded {
    let feed = feed::Feed {
        serial: 1,
        issued_at: OffsetDateTime::now_utc(),
        issuer: "bench".into(),
        orders: orders.to_vec(),
    };
    let none = policy::Guardrails {
        max_prefixes,
        ..policy::Guardrails::default()
    };
    let many = policy::Guardrails {
        protected: protected_prefixes(PROTECTED),
        ..none.clone()
    };
    let now = OffsetDateTime::now_utc();
    // The time of one evaluation, and the orders it refused.
    let evaluate = |guardrails: &policy::Guardrails| {
        let t = Instant::now();
        let evaluation = policy::evaluate(&feed, guardrails, now).expect("guardrails pass");
        (t.elapsed(), evaluation.count(policy::OrderState::Refused))
    };
    let mut refused = 0;
    let (mut none_times, mut many_times) = (Vec::new(), Vec::new());
    for _ in 0..GUARDED_ROUNDS {
        none_times.push(evaluate(&none).0);
        let (time, count) = evaluate(&many);
        many_times.push(time);
        refused = count;
    }
    let guarded = Guarded {
        protected: PROTECTED,
        refused,
        none: median(none_times),
        many: median(many_times),
    };
    eprintln!("bench: guardrails: {guarded:?}");
    guarded
}

/// `count` protected prefixes in documentation space: IPv4 hosts of its
/// three /24s, then IPv6 /64s of 2001:db8::/32.
fn protected_prefixes(count: usize) -> Vec<ipnetwork::IpNetwork> {
    let v4 = [0xc000_0200u32, 0xc633_6400, 0xcb00_7100]
        .into_iter()
        .flat_map(|net| (0..256).map(move |host| net | host))
        .map(|a| ipnetwork::IpNetwork::new(std::net::Ipv4Addr::from(a).into(), 32));
    let v6 = (0u128..).map(|i| {
        let bits = 0x2001_0db8u128 << 96 | i << 64;
        ipnetwork::IpNetwork::new(std::net::Ipv6Addr::from(bits).into(), 64)
    });
    v4.chain(v6)
        .take(count)
        .map(|p| p.expect("a documentation prefix"))
        .collect()
}

/// A 1% update downloaded from a real HTTP server on the loopback, as the
/// daemon downloads it.
#[derive(Clone, Debug, Default)]
pub struct Download {
    /// From the request to the feed in memory, with nothing done on its
    /// bytes as they arrive (medians of [`DOWNLOADS`]).
    pub plain: Duration,
    /// The same, with its digest taken (its fingerprint), its signature
    /// checked over it and its text scanned as its bytes arrive, as the
    /// daemon downloads.
    pub worked: Duration,
    /// From the end of that download (its signature checked) to the
    /// tables written.
    pub after: Stages,
}

/// The daemon on the same feeds.
#[derive(Clone, Debug, Default)]
pub struct DaemonRun {
    /// From exec to the 1M feed enforced.
    pub start_to_enforced: Duration,
    /// [`DAEMON_UPDATES`] 1% updates, each feed changed from the one before
    /// (the first is the loader's update), in the order applied.
    pub updates: Vec<DaemonUpdate>,
    /// After the last update.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// The same daemon through more updates (from a file only).
    pub long: Option<LongRun>,
    /// Median time of a whole `/metrics` scrape with the 1M feed's orders
    /// in force (curl's own time, [`SCRAPES`] scrapes).
    pub scrape: Duration,
    /// Whether [`DaemonRun::whole`] counts an update's fetch: a file's
    /// read does, a download (whose time is the link's) does not.
    pub counts_fetch: bool,
}

impl DaemonRun {
    /// The median update by [`DaemonRun::whole`] (one update reads a
    /// single spell of this shared machine).
    pub fn update(&self) -> DaemonUpdate {
        let mut updates = self.updates.clone();
        updates.sort_by(|a, b| self.whole(a).total_cmp(&self.whole(b)));
        updates.get(updates.len() / 2).cloned().unwrap_or_default()
    }

    /// From a file's read starting (over HTTP: the download's end) to the
    /// tables written: read, check, parse (its log) and apply (its metric).
    pub fn whole(&self, update: &DaemonUpdate) -> f64 {
        let fetch = if self.counts_fetch {
            update.fetch
        } else {
            Duration::ZERO
        };
        (fetch + update.verify + update.parse).as_secs_f64() + update.apply
    }
}

/// The daemon from a file through [`LONG_UPDATES`] more 1% updates after
/// the timed ones: what a daemon that runs for days holds, past several
/// sweeps of the entries no prefix uses any more (until stop 42, a compile
/// from scratch every 64 changes, which laid every table out again in the
/// running daemon).
#[derive(Clone, Debug, Default)]
pub struct LongRun {
    /// Over the whole run, the start included; and after the last update.
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
    /// Each update's apply metric, in the order applied (the timed ones
    /// first).
    pub applies: Vec<f64>,
}

impl LongRun {
    /// Updates in all, the timed ones included.
    pub fn updates(&self) -> usize {
        self.applies.len()
    }
}

/// Updates after the timed ones in [`LongRun`]: five timed and these make
/// 70 (three or four sweeps of the entries at the benchmark's 1M prefixes).
pub const LONG_UPDATES: usize = 65;

/// One 1% update in the daemon.
#[derive(Clone, Debug, Default)]
pub struct DaemonUpdate {
    /// `blocker_feed_last_apply_duration_seconds` after it.
    pub apply: f64,
    /// From SIGHUP to its serial reported.
    pub seen: Duration,
    /// Its fetch (the file's read or the download, with the signature
    /// checked, the bytes digested and scanned as they came), what is left of
    /// the check and the scan after it, and its parse (against the feed in
    /// force), and the orders it took from that feed: from the daemon's
    /// `feed parsed` log line.
    pub fetch: Duration,
    pub verify: Duration,
    pub parse: Duration,
    pub taken: usize,
}

/// 1% updates timed in each daemon run (odd, so that the median is one).
const DAEMON_UPDATES: usize = 5;

/// The seeds of the timed updates, each changing the feed before: the
/// loader's in process ([`UPDATES`]) and the daemon's take the same feeds.
const SEEDS: [u64; DAEMON_UPDATES] = [7, 11, 13, 17, 19];

/// The seed of the update [`Loader::downloaded`] downloads, after them.
const DOWNLOAD_SEED: u64 = 23;

/// Scrapes timed for [`DaemonRun::scrape`].
const SCRAPES: usize = 15;

struct Signed {
    /// Its file's name (`.minisig` added: its signature's).
    name: String,
    feed: Vec<u8>,
    signature: Vec<u8>,
}

fn signed(key: &KeyPair, dir: &std::path::Path, serial: u64, orders: &[Order]) -> Signed {
    let name = format!("feed-{serial}.yaml");
    let path = dir.join(&name);
    fs::write(&path, feed_yaml(serial, OffsetDateTime::now_utc(), orders))
        .expect("writing the feed");
    let signature = key.sign(&path);
    Signed {
        name,
        feed: fs::read(&path).expect("reading the feed"),
        signature: fs::read(signature).expect("reading the signature"),
    }
}

/// A feed applied, for the next to be parsed against.
struct Applied<'a> {
    signed: &'a Signed,
    parsed: feed::Parsed,
}

/// What feeds are taken into, as in the daemon.
struct Loader {
    dp: Datapath,
    compiler: Compiler,
    slots: SlotTable,
    max_prefixes: u32,
}

impl Loader {
    /// `signed`, its signature checked from its bytes at hand, parsed
    /// (against the feed `before`), evaluated, compiled and loaded.
    fn stages<'a>(
        &mut self,
        key: &signature::PublicKey,
        signed: &'a Signed,
        before: Option<&Applied<'_>>,
    ) -> (Stages, Applied<'a>) {
        // As the daemon does before it parses a feed: wait for the
        // background write the last apply left (a feed every few minutes
        // never waits).
        self.dp.settle();
        let mut stages = Stages::default();
        // As the daemon does: on a second thread while the signature is
        // checked (its digest the feed's fingerprint), the feed's bytes
        // scanned.
        let t = Instant::now();
        let text = std::thread::scope(|scope| {
            let beside = scope.spawn(|| feed::Text::scan_here(&signed.feed));
            signature::verify(key, &signed.feed, &signed.signature).expect("the feed verifies");
            beside.join().expect("the scan")
        });
        stages.verify = t.elapsed();
        let applied = self.take_text(&text, signed, before, &mut stages);
        self.dp.settle();
        let t = Instant::now();
        let whole = feed::parse(&signed.feed).expect("the feed parses");
        stages.parse_whole = t.elapsed();
        drop(whole);
        (stages, applied)
    }

    /// `signed` downloaded once from `server` as the daemon does (digested,
    /// checked and scanned as it arrives), then taken as [`Loader::stages`]
    /// does, timed from the download's end: `verify` is what is left of the
    /// check then. The download is then timed again, with and without that
    /// work, for comparison.
    fn downloaded<'a>(
        &mut self,
        key: &Arc<signature::PublicKey>,
        server: &FeedServer,
        signed: &'a Signed,
        before: Option<&Applied<'_>>,
    ) -> (Download, Applied<'a>) {
        self.dp.settle();
        let intake = Intake {
            key: Arc::clone(key),
        };
        let fetch = |intake: Option<&Intake>| {
            let mut source = server.source(&signed.name);
            if let Some(intake) = intake {
                source = source.with_intake(intake.clone());
            }
            let t = Instant::now();
            let Ok(Fetch::New(fetched)) = source.fetch(true) else {
                panic!("downloading the feed from {}", server.url(&signed.name));
            };
            assert_eq!(fetched.feed, signed.feed, "the download is the feed");
            (fetched, t.elapsed())
        };
        // As the daemon does: one download, then on to the tables.
        let (mut fetched, took) = fetch(Some(&intake));
        let mut worked = vec![took];
        let mut stages = Stages::default();
        let t = Instant::now();
        let (bytes, _, arrived) = fetched.take();
        let arrived = arrived.expect("worked on as it arrived");
        assert!(arrived.verified, "the signature verified as it arrived");
        let text = arrived.scanner.finish(&bytes);
        stages.verify = t.elapsed();
        let applied = self.take_text(&text, signed, before, &mut stages);
        drop(bytes);
        // Then the download again, each way in turn, for the medians (the
        // background write the apply left done first).
        self.dp.settle();
        let mut plain = Vec::new();
        for _ in 0..DOWNLOADS {
            plain.push(fetch(None).1);
            if worked.len() < DOWNLOADS {
                worked.push(fetch(Some(&intake)).1);
            }
        }
        (
            Download {
                plain: median(plain),
                worked: median(worked),
                after: stages,
            },
            applied,
        )
    }

    /// A feed's text, its signature checked, parsed (against the feed
    /// `before`), evaluated, compiled and loaded, as the daemon does: each
    /// stage timed into `stages`.
    fn take_text<'a>(
        &mut self,
        text: &feed::Text<'_>,
        signed: &'a Signed,
        before: Option<&Applied<'_>>,
        stages: &mut Stages,
    ) -> Applied<'a> {
        let t = Instant::now();
        let base = before.map(|b| {
            let shape = b
                .parsed
                .shape
                .as_ref()
                .expect("the feed before was read order by order");
            feed::Base::new(&b.signed.feed, &b.parsed.feed.orders, shape).expect("its shape fits")
        });
        let mut parsed = feed::parse_against(text, base.as_ref()).expect("the feed parses");
        stages.parse = t.elapsed();
        // As the daemon: the edits go to the compile, then (with the old
        // orders' targets they hold) away.
        let edits = std::mem::take(&mut parsed.edits);
        stages.taken = parsed.taken;
        let feed = &parsed.feed;
        let t = Instant::now();
        let guardrails = policy::Guardrails {
            max_prefixes: self.max_prefixes,
            ..policy::Guardrails::default()
        };
        let evaluation = policy::evaluate(feed, &guardrails, OffsetDateTime::now_utc())
            .expect("guardrails pass");
        let enforceable: Vec<&Order> = evaluation.enforceable().collect();
        stages.evaluate = t.elapsed();
        let t = Instant::now();
        let step = self
            .compiler
            .compile_edited(&enforceable, Enforcement::Enforce, &self.slots, &edits)
            .expect("compiles");
        stages.compile = t.elapsed();
        drop(edits);
        let fresh = step.compiled.fresh_slots(&self.slots);
        let t = Instant::now();
        let applied = self
            .dp
            .apply_step(step.compiled, step.version, step.change.as_ref(), &fresh)
            .expect("applies");
        stages.load = t.elapsed();
        stages.patched = applied.patched;
        self.slots = step.compiled.slots.clone();
        Applied { signed, parsed }
    }
}

/// Downloads of the update timed each way in [`Loader::downloaded`].
const DOWNLOADS: usize = 3;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// A from-scratch load of `orders` and a 1% update, stage by stage; then
/// another 1% update downloaded over HTTP.
pub fn pipeline(orders: &[Order], max_prefixes: u32) -> Pipeline {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = KeyPair::generate();
    let public = Arc::new(signature::PublicKey::from_file(&key.public_key()).expect("public key"));
    let first = signed(&key, dir.path(), 1, orders);
    // The updates in a row, each changed from the one before, as a
    // regulator's feeds come: each brings prefixes no feed before it held.
    // (Until stop 46 they went back and forth between two feeds, whose new
    // prefixes the tables had held two updates before: an apply about 6 ms
    // faster than in a row, as the daemon takes them.)
    let mut last = orders.to_vec();
    let chain: Vec<Signed> = (2..)
        .zip(SEEDS.into_iter().take(UPDATES))
        .map(|(serial, seed)| {
            last = super::workload::changed(&last, UPDATE_EVERY, seed);
            signed(&key, dir.path(), serial, &last)
        })
        .collect();
    let third_orders = super::workload::changed(&last, UPDATE_EVERY, DOWNLOAD_SEED);
    let third = signed(&key, dir.path(), 2 + UPDATES as u64, &third_orders);
    let server = FeedServer::start(dir.path());
    let bpffs = BpffsDir::new();
    let t = Instant::now();
    let dp = Datapath::open(bpffs.path(), max_prefixes).expect("loading blocker");
    let open = t.elapsed();
    let mut loader = Loader {
        dp,
        compiler: Compiler::new(),
        slots: SlotTable::new(),
        max_prefixes,
    };
    let (scratch, mut applied) = loader.stages(&public, &first, None);
    eprintln!("bench: from scratch {:?}: {scratch:?}", scratch.total());
    // One update reads a single spell of this shared machine: the median
    // of a few.
    let mut updates = Vec::new();
    for feed in &chain {
        let (update, now) = loader.stages(&public, feed, Some(&applied));
        eprintln!("bench: 1% update {:?}: {update:?}", update.total());
        updates.push(update);
        applied = now;
    }
    let totals: Vec<Duration> = updates.iter().map(Stages::total).collect();
    let update = median_run(updates);
    let (download, applied) = loader.downloaded(&public, &server, &third, Some(&applied));
    eprintln!("bench: 1% update over HTTP: {download:?}");
    let one_order = one_order(
        &mut loader,
        &key,
        dir.path(),
        &public,
        &third_orders,
        applied,
    );
    drop(loader);
    let guarded = guarded(orders, max_prefixes);
    Pipeline {
        prefixes: orders.iter().map(|o| o.targets.len()).sum(),
        feed_bytes: first.feed.len(),
        open,
        scratch,
        update,
        updates: totals,
        download,
        guarded,
        one_order,
    }
}

/// Takes the last of `orders` (the feed `applied`) out, then adds one new
/// order of [`super::workload::PER_ORDER`] prefixes drawn afresh and takes
/// it out again, [`ONE_ORDER_ROUNDS`] times (the feed stays within its
/// `max_prefixes`): the median of the adds.
fn one_order(
    loader: &mut Loader,
    key: &KeyPair,
    dir: &std::path::Path,
    public: &signature::PublicKey,
    orders: &[Order],
    applied: Applied<'_>,
) -> Stages {
    let targets = super::workload::orders(super::workload::PER_ORDER, 0x0e_0de5)
        .iter()
        .flat_map(|o| o.targets.iter().copied())
        .collect();
    let fewer = &orders[..orders.len().saturating_sub(1)];
    let mut with = fewer.to_vec();
    with.push(super::workload::order(orders.len(), targets));
    let (without, with) = (signed(key, dir, 4, fewer), signed(key, dir, 5, &with));
    let (_, mut applied) = loader.stages(public, &without, Some(&applied));
    let mut adds = Vec::new();
    for _ in 0..ONE_ORDER_ROUNDS {
        let (add, now) = loader.stages(public, &with, Some(&applied));
        let (remove, now) = loader.stages(public, &without, Some(&now));
        eprintln!(
            "bench: one order added {:?}: {add:?}; taken out {:?}",
            add.total(),
            remove.total()
        );
        adds.push(add);
        applied = now;
    }
    median_run(adds)
}

/// The run of the median total.
fn median_run(mut runs: Vec<Stages>) -> Stages {
    runs.sort_by_key(Stages::total);
    runs.swap_remove(runs.len() / 2)
}

/// In-process 1% updates timed for [`Pipeline::update`] (odd, so that the
/// median is one run; no more than [`SEEDS`]).
const UPDATES: usize = 5;

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `blocker run` (the binary `BLOCKER_BIN` names) on `orders`, then on
/// [`DAEMON_UPDATES`] 1% updates in turn, taking its feeds `from` a file or
/// an HTTP server; from a file, then on [`LONG_UPDATES`] more
/// ([`LongRun`]).
pub fn daemon(orders: &[Order], max_prefixes: u32, from: DaemonFeed) -> DaemonRun {
    let edge = Edge::new(&[]);
    let mut config = edge.config();
    config.max_prefixes = max_prefixes;
    config.protected.clear();
    // Over HTTP: a real server on the edge namespace's loopback, serving
    // the directory the feed is published to.
    let server = (from == DaemonFeed::Http).then(|| {
        let server = FeedServer::start_in(&edge.edge, edge.dir.path());
        let name = edge.feed_path();
        let name = name
            .file_name()
            .and_then(|n| n.to_str())
            .expect("the feed's file name");
        config.feed_url = server.url(name);
        server
    });
    config.write(&edge.config_path());
    edge.publish(1, orders);
    let started = Instant::now();
    let daemon = edge.spawn_daemon();
    daemon.scrape_until("the feed enforced", Duration::from_secs(120), |s| {
        s.get("blocker_feed_serial", &[]) == Some(1.0)
    });
    let start_to_enforced = started.elapsed();
    let scrape_median = scrape_time(edge.edge.name(), edge.listen());
    let mut before = orders.to_vec();
    let mut updates = Vec::new();
    for (serial, seed) in (2..).zip(SEEDS) {
        let seen = next_update(&edge, &daemon, &mut before, serial, seed);
        let log = daemon.log_text();
        let parsed_line = format!("feed parsed serial={serial} ");
        let field = |name: &str| -> f64 {
            log.lines()
                .find(|l| l.contains(&parsed_line))
                .and_then(|l| {
                    l.split(' ')
                        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    panic!("no {name} in update {serial}'s `feed parsed` line:\n{log}")
                })
        };
        // One scrape after the update (not during it: a scrape costs the
        // 2-core machine tens of ms of CPU, which the apply would share).
        let scrape = daemon.scrape();
        assert_eq!(
            scrape.get("blocker_feed_serial", &[]),
            Some(serial as f64),
            "the metrics disagree with the status file"
        );
        updates.push(DaemonUpdate {
            apply: scrape
                .get("blocker_feed_last_apply_duration_seconds", &[])
                .unwrap_or(f64::NAN),
            seen,
            fetch: Duration::from_secs_f64(field("fetched_ms") / 1e3),
            verify: Duration::from_secs_f64(field("verified_ms") / 1e3),
            parse: Duration::from_secs_f64(field("parsed_ms") / 1e3),
            taken: field("taken_from_in_force") as usize,
        });
    }
    let (rss_kib, peak_rss_kib) = at_rest(daemon.pid());
    // From a file, on through more updates: what a daemon that runs for
    // days holds at its peak.
    let long = (from == DaemonFeed::File).then(|| {
        let mut applies: Vec<f64> = updates.iter().map(|u| u.apply).collect();
        for (serial, seed) in (2 + DAEMON_UPDATES as u64..).zip(1000..).take(LONG_UPDATES) {
            next_update(&edge, &daemon, &mut before, serial, seed);
            applies.push(
                daemon
                    .scrape()
                    .get("blocker_feed_last_apply_duration_seconds", &[])
                    .unwrap_or(f64::NAN),
            );
        }
        let (rss_kib, peak_rss_kib) = at_rest(daemon.pid());
        LongRun {
            peak_rss_kib,
            rss_kib,
            applies,
        }
    });
    let run = DaemonRun {
        start_to_enforced,
        updates,
        rss_kib,
        peak_rss_kib,
        long,
        scrape: scrape_median,
        counts_fetch: from == DaemonFeed::File,
    };
    eprintln!("bench: daemon ({from:?} feed) {run:?}");
    daemon.terminate();
    drop(server);
    run
}

/// The daemon `pid`'s RSS at rest after its last update, and its peak so
/// far (KiB). It hands the apply's freed memory back after it writes its
/// status: they are read once that is surely done.
fn at_rest(pid: u32) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(500));
    (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"))
}

/// The next 1% update (`before` changed by `seed`) published as `serial`
/// and taken by `daemon` (told by SIGHUP): the time until its status
/// names it.
fn next_update(
    edge: &Edge,
    daemon: &crate::daemon::Daemon,
    before: &mut Vec<Order>,
    serial: u64,
    seed: u64,
) -> Duration {
    *before = super::workload::changed(before, UPDATE_EVERY, seed);
    edge.publish(serial, before);
    let hup = Instant::now();
    daemon.hangup();
    wait_for_serial(
        &edge.config().state_dir,
        serial,
        Duration::from_secs(120),
        || daemon.log_text(),
    );
    hup.elapsed()
}

/// Where [`daemon`]'s daemon takes its feed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonFeed {
    /// A `file://` URL: the signature is checked as the file is read.
    File,
    /// A real HTTP server: the signature is checked as the feed arrives.
    Http,
}

/// Waits (bounded) until the daemon's status file in `state_dir` names
/// `serial`, which it writes once the feed is applied. A small file read
/// every 10 ms, not a scrape every 100 ms: a scrape of 10k orders' series,
/// fetched by curl and parsed here, costs the 2-core machine tens of
/// milliseconds of CPU, which the daemon's apply, on two threads, would
/// share.
fn wait_for_serial(
    state_dir: &std::path::Path,
    serial: u64,
    timeout: Duration,
    log: impl Fn() -> String,
) {
    let state = StateDir::existing(state_dir).expect("the daemon's state_dir, made at its start");
    let deadline = Instant::now() + timeout;
    loop {
        // A status caught mid-write reads as an error: read again.
        let status = state.load_status().ok().flatten();
        if status.as_ref().and_then(|s| s.serial) == Some(serial) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for serial {serial} in {}: {status:?}; log:\n{}",
            state_dir.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The median of [`SCRAPES`] whole scrapes of `http://LISTEN/metrics` from
/// inside `ns`, each timed by curl (not the process start around it).
fn scrape_time(ns: &str, listen: SocketAddr) -> Duration {
    let url = format!("http://{listen}/metrics");
    let mut times: Vec<Duration> = (0..SCRAPES)
        .map(|_| {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "10"])
                .args(["-o", "/dev/null", "-w", "%{time_total}", &url])
                .output()
                .expect("running curl");
            assert!(out.status.success(), "scraping {url}: {out:?}");
            let seconds: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|err| panic!("curl's time for {url}: {err}"));
            Duration::from_secs_f64(seconds)
        })
        .collect();
    times.sort_unstable();
    times[SCRAPES / 2]
}
