//! The benchmark's figures, the goals as ratios between them, the
//! printed table and `report.json`.

use std::{fmt::Write as _, time::Duration};

use serde_json::{Value, json};

use super::{
    control::{DaemonRun, Pipeline},
    kernel::Program,
    wire::{ExactHits, WireRun},
};

/// One timing: mean nanoseconds per packet.
#[derive(Clone, Debug)]
pub struct Sample {
    pub program: Program,
    pub family: &'static str,
    /// `hot` (one frame repeated) or `varied` (a pool of addresses).
    pub mode: &'static str,
    /// `miss`, `drop` or `monitor`.
    pub matched: &'static str,
    pub prefixes: usize,
    pub ns: f64,
}

/// A hot drop hit on a target of one length at the largest size, and the
/// empty program's run in turn with it.
#[derive(Clone, Debug)]
pub struct LengthHit {
    pub family: &'static str,
    pub length: u8,
    pub ns: f64,
    pub empty_ns: f64,
}

impl LengthHit {
    pub fn ratio(&self) -> f64 {
        self.ns / self.empty_ns
    }
}

/// Misses of one family and mode timed with blocker at two sizes at once,
/// in turn with the empty program (`bench::sizes_in_turn`).
#[derive(Clone, Debug)]
pub struct InTurn {
    pub family: &'static str,
    /// `hot` or `varied`.
    pub mode: &'static str,
    /// The two workloads' sizes, in prefixes.
    pub large: usize,
    pub small: usize,
    pub empty_ns: f64,
    pub large_ns: f64,
    pub small_ns: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub quick: bool,
    pub samples: Vec<Sample>,
    /// (prefixes, compile, blocker apply, LPM fill).
    pub loads: Vec<(usize, Duration, Duration, Duration)>,
    /// (prefixes, kernel memory of blocker's maps, of the LPM reference's).
    pub map_bytes: Vec<(usize, u64, u64)>,
    pub control: Option<Pipeline>,
    pub wire: Vec<WireRun>,
    pub exact_hits: Option<ExactHits>,
    /// Hot drop hits by target length at the largest size.
    pub hits_by_length: Vec<LengthHit>,
    /// Misses at the largest size and at 1k, timed in turn.
    pub sizes_in_turn: Vec<InTurn>,
    /// The daemon on a `file://` feed, and on the same feeds over HTTP.
    pub daemon: Option<DaemonRun>,
    pub daemon_http: Option<DaemonRun>,
    pub seconds: f64,
}

/// One of the goals, judged.
#[derive(Clone, Debug)]
pub struct Goal {
    pub goal: String,
    pub value: f64,
    /// `<=` or `>=`.
    pub bound: &'static str,
    pub target: f64,
}

impl Goal {
    pub fn met(&self) -> bool {
        match self.bound {
            "<=" => self.value <= self.target,
            _ => self.value >= self.target,
        }
    }
}

impl Report {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            ..Self::default()
        }
    }

    pub fn ns(
        &self,
        program: Program,
        family: &str,
        mode: &str,
        matched: &str,
        prefixes: usize,
    ) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.program == program
                    && s.family == family
                    && s.mode == mode
                    && s.matched == matched
                    && s.prefixes == prefixes
            })
            .map(|s| s.ns)
    }

    fn largest(&self) -> usize {
        self.samples.iter().map(|s| s.prefixes).max().unwrap_or(0)
    }

    /// The workloads run on the wire against nftables, smallest first.
    fn wire_sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = self
            .wire
            .iter()
            .filter(|r| r.dut == "nftables")
            .map(|r| r.workload)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The drop rate of `dut` on the wire with `workload`, in millions of
    /// frames a second.
    fn wire_rate(&self, dut: &str, workload: usize) -> Option<f64> {
        self.wire
            .iter()
            .find(|r| r.dut == dut && r.workload == workload)
            .map(WireRun::mpps)
    }

    /// Blocker's miss of `family` in `mode` at `big` prefixes and at 1k:
    /// as timed in turn when they were, else from the sizes' own runs.
    fn sizes_compared(&self, family: &str, mode: &str, big: usize) -> (Option<f64>, Option<f64>) {
        match self
            .sizes_in_turn
            .iter()
            .find(|t| t.family == family && t.mode == mode && t.large == big && t.small == 1000)
        {
            Some(t) => (Some(t.large_ns), Some(t.small_ns)),
            None => (
                self.ns(Program::Blocker, family, mode, "miss", big),
                self.ns(Program::Blocker, family, mode, "miss", 1000),
            ),
        }
    }

    /// How the goals comparing two sizes were timed, for their lines.
    fn how_compared(&self) -> &'static str {
        if self.sizes_in_turn.is_empty() {
            ""
        } else {
            ", timed in turn"
        }
    }

    /// The goals, at the largest size measured (1M; 100k in quick
    /// mode).
    pub fn goals(&self) -> Vec<Goal> {
        let big = self.largest();
        let mut goals = Vec::new();
        let mut ratio = |goal: String, num: Option<f64>, den: Option<f64>, bound, target| {
            if let (Some(n), Some(d)) = (num, den) {
                goals.push(Goal {
                    goal,
                    value: n / d,
                    bound,
                    target,
                });
            }
        };
        use Program::{Blocker, Empty, Lpm};
        for (family, hot_bound) in [("ipv4", 1.5), ("ipv6", 2.0)] {
            ratio(
                format!("{family} hot miss at {big}: blocker / empty"),
                self.ns(Blocker, family, "hot", "miss", big),
                self.ns(Empty, family, "hot", "miss", big),
                "<=",
                hot_bound,
            );
            let (hot_large, hot_small) = self.sizes_compared(family, "hot", big);
            ratio(
                format!(
                    "{family} hot miss: blocker at {big} / at 1000{}",
                    self.how_compared()
                ),
                hot_large,
                hot_small,
                "<=",
                1.1,
            );
            for matched in ["drop", "monitor", "source drop"] {
                ratio(
                    format!("{family} hot {matched} hit at {big}: blocker / empty"),
                    self.ns(Blocker, family, "hot", matched, big),
                    self.ns(Empty, family, "hot", "miss", big),
                    "<=",
                    3.0,
                );
            }
            if let Some(slowest) = self
                .hits_by_length
                .iter()
                .filter(|h| h.family == family)
                .max_by(|a, b| a.ratio().total_cmp(&b.ratio()))
            {
                ratio(
                    format!(
                        "{family} hot drop hit at {big}, slowest target length (/{}): blocker / empty",
                        slowest.length
                    ),
                    Some(slowest.ns),
                    Some(slowest.empty_ns),
                    "<=",
                    3.0,
                );
            }
            ratio(
                format!("{family} varied miss at {big}: LPM reference / blocker"),
                self.ns(Lpm, family, "varied", "miss", big),
                self.ns(Blocker, family, "varied", "miss", big),
                ">=",
                5.0,
            );
            let (varied_large, varied_small) = self.sizes_compared(family, "varied", big);
            ratio(
                format!(
                    "{family} varied miss: blocker at {big} / at 1000{}",
                    self.how_compared()
                ),
                varied_large,
                varied_small,
                "<=",
                1.5,
            );
        }
        // Against nftables at the largest workload on the wire.
        let wired = self.wire_sizes().last().copied().unwrap_or(0);
        ratio(
            format!("wire drop rate at {wired}: blocker / nftables interval set"),
            self.wire_rate("blocker", wired),
            self.wire_rate("nftables", wired),
            ">=",
            3.0,
        );
        let exact = self
            .wire
            .iter()
            .find(|r| r.dut == "xdp-filter")
            .map_or(0, |r| r.workload);
        ratio(
            "wire drop rate on exact addresses: blocker / xdp-filter".to_owned(),
            self.wire_rate("blocker (exact addresses)", exact),
            self.wire_rate("xdp-filter", exact),
            ">=",
            1.0,
        );
        if let Some(control) = &self.control {
            goals.push(Goal {
                goal: format!(
                    "{} prefixes from scratch (verify..load), seconds",
                    control.prefixes
                ),
                value: control.scratch.total().as_secs_f64(),
                bound: "<=",
                target: 2.0,
            });
            goals.push(Goal {
                goal: format!(
                    "1% update, whole (verify..load), median of {}, seconds",
                    control.updates.len()
                ),
                value: control.update.total().as_secs_f64(),
                bound: "<=",
                target: 0.1,
            });
            goals.push(Goal {
                goal: "1% update, apply (evaluate, compile, load) of that median one, seconds"
                    .to_owned(),
                value: control.update.apply().as_secs_f64(),
                bound: "<=",
                target: 0.1,
            });
            goals.push(Goal {
                goal: "1% update over HTTP, from the download's end (signature checked as it arrived) to load, seconds".to_owned(),
                value: control.download.after.total().as_secs_f64(),
                bound: "<=",
                target: 0.1,
            });
        }
        if let Some(daemon) = &self.daemon {
            goals.push(Goal {
                goal: format!("1% update in the daemon from a file, from its read's start (its log's read, checked as it reads, the rest of the scan and the parse, its apply metric), median of {}, seconds", daemon.updates.len()),
                value: daemon.whole(&daemon.update()),
                bound: "<=",
                target: 0.1,
            });
        }
        if let Some(daemon) = &self.daemon_http {
            goals.push(Goal {
                goal: format!("1% update in the daemon over HTTP, from the download's end (its log's rest of the scan and parse, its apply metric), median of {}, seconds", daemon.updates.len()),
                value: daemon.whole(&daemon.update()),
                bound: "<=",
                target: 0.1,
            });
        }
        let peak = [&self.daemon, &self.daemon_http]
            .into_iter()
            .flatten()
            .map(|d| d.peak_rss_kib)
            .max();
        if let Some(peak) = peak {
            goals.push(Goal {
                goal: "daemon peak RSS (the larger of its two runs), MB".to_owned(),
                value: megabytes(peak),
                bound: "<=",
                target: 300.0,
            });
        }
        if let Some(long) = self.daemon.as_ref().and_then(|d| d.long.as_ref()) {
            goals.push(Goal {
                goal: format!(
                    "daemon peak RSS through {} updates from a file, MB",
                    long.updates()
                ),
                value: megabytes(long.peak_rss_kib),
                bound: "<=",
                target: 300.0,
            });
        }
        goals
    }

    /// The per-packet table and the goals, for the terminal and the README.
    pub fn table(&self) -> String {
        let sizes: Vec<usize> = {
            let mut s: Vec<usize> = self.samples.iter().map(|s| s.prefixes).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let mut out = String::new();
        let _ = write!(out, "| family | mode | packets | program |");
        for size in &sizes {
            let _ = write!(out, " {} |", human(*size));
        }
        let _ = writeln!(out);
        let _ = write!(out, "|---|---|---|---|");
        for _ in &sizes {
            let _ = write!(out, "---:|");
        }
        let _ = writeln!(out);
        for family in ["ipv4", "ipv6"] {
            for (mode, matched) in [
                ("hot", "miss"),
                ("hot", "drop"),
                ("hot", "monitor"),
                ("hot", "source drop"),
                ("varied", "miss"),
            ] {
                for program in [Program::Empty, Program::Lpm, Program::Blocker] {
                    if sizes
                        .iter()
                        .all(|&n| self.ns(program, family, mode, matched, n).is_none())
                    {
                        continue;
                    }
                    let _ = write!(
                        out,
                        "| {family} | {mode} | {matched} | {} |",
                        program.as_str()
                    );
                    for &size in &sizes {
                        match self.ns(program, family, mode, matched, size) {
                            Some(ns) => {
                                let _ = write!(out, " {ns:.1} ns |");
                            }
                            None => {
                                let _ = write!(out, " – |");
                            }
                        }
                    }
                    let _ = writeln!(out);
                }
            }
        }
        let _ = writeln!(
            out,
            "\n| goal | measured | target | met |\n|---|---:|---:|---|"
        );
        for goal in self.goals() {
            let _ = writeln!(
                out,
                "| {} | {:.3} | {} {} | {} |",
                goal.goal,
                goal.value,
                goal.bound,
                goal.target,
                if goal.met() { "yes" } else { "**no**" }
            );
        }
        for family in ["ipv4", "ipv6"] {
            let hits: Vec<String> = self
                .hits_by_length
                .iter()
                .filter(|h| h.family == family)
                .map(|h| format!("/{} {:.2}", h.length, h.ratio()))
                .collect();
            listed(
                &mut out,
                &format!("{family} hot drop hits by target length, blocker / empty"),
                &hits,
                ", ",
            );
        }
        let wired: Vec<String> = self
            .wire_sizes()
            .into_iter()
            .filter_map(|size| {
                let blocker = self.wire_rate("blocker", size)?;
                let nftables = self.wire_rate("nftables", size)?;
                Some(format!(
                    "{}: blocker {blocker:.2}, nftables {nftables:.2} ({:.2}x)",
                    human(size),
                    blocker / nftables
                ))
            })
            .collect();
        listed(
            &mut out,
            "Drop rate on the wire by workload, million frames a second",
            &wired,
            "; ",
        );
        let in_turn: Vec<String> = self
            .sizes_in_turn
            .iter()
            .map(|t| {
                format!(
                    "{} {}: empty {:.1} ns, blocker at {} {:.1} ns, at {} {:.1} ns ({:.2}x)",
                    t.family,
                    t.mode,
                    t.empty_ns,
                    human(t.large),
                    t.large_ns,
                    human(t.small),
                    t.small_ns,
                    t.large_ns / t.small_ns
                )
            })
            .collect();
        listed(
            &mut out,
            "Misses with blocker at two sizes at once, timed in turn (two blockers loaded, swapping workloads between passes)",
            &in_turn,
            "; ",
        );
        if let Some(control) = &self.control {
            let g = &control.guarded;
            let _ = writeln!(
                out,
                "\nThe guardrails' evaluation of {} prefixes: {:.1} ms with nothing protected, {:.1} ms with {} protected prefixes ({:.2}x; {} orders refused).",
                human(control.prefixes),
                g.none.as_secs_f64() * 1e3,
                g.many.as_secs_f64() * 1e3,
                g.protected,
                g.many.as_secs_f64() / g.none.as_secs_f64(),
                g.refused
            );
            let one = &control.one_order;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let _ = writeln!(
                out,
                "\nAn update that adds one order of {} prefixes to the {} feed (one of its orders out, to make room), median of {}: {:.1} ms (verify {:.1}, parse {:.1}, evaluate {:.1}, compile {:.1}, load {:.1}).",
                super::workload::PER_ORDER,
                human(control.prefixes),
                super::control::ONE_ORDER_ROUNDS,
                ms(one.total()),
                ms(one.verify),
                ms(one.parse),
                ms(one.evaluate),
                ms(one.compile),
                ms(one.load)
            );
        }
        if let Some(hits) = &self.exact_hits {
            let _ = writeln!(
                out,
                "\nA drop hit on one of {} exact addresses, behind the driver: empty {:.1} ns, xdp-filter {:.1} ns, blocker {:.1} ns.",
                hits.addresses, hits.empty_ns, hits.xdp_filter_ns, hits.blocker_ns
            );
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let samples: Vec<Value> = self
            .samples
            .iter()
            .map(|s| {
                json!({
                    "program": s.program.as_str(),
                    "family": s.family,
                    "mode": s.mode,
                    "match": s.matched,
                    "prefixes": s.prefixes,
                    "ns_per_packet": s.ns,
                })
            })
            .collect();
        let goals: Vec<Value> = self
            .goals()
            .iter()
            .map(|g| json!({"goal": g.goal, "value": g.value, "bound": g.bound, "target": g.target, "met": g.met()}))
            .collect();
        let loads: Vec<Value> = self
            .loads
            .iter()
            .map(|(n, c, a, l)| {
                json!({"prefixes": n, "compile_s": c.as_secs_f64(), "blocker_apply_s": a.as_secs_f64(), "lpm_fill_s": l.as_secs_f64()})
            })
            .collect();
        let memory: Vec<Value> = self
            .map_bytes
            .iter()
            .map(|(n, b, l)| json!({"prefixes": n, "blocker_map_bytes": b, "lpm_reference_map_bytes": l}))
            .collect();
        let stages = |s: &super::control::Stages| {
            json!({
                "verify_s": s.verify.as_secs_f64(),
                "parse_s": s.parse.as_secs_f64(),
                "parse_whole_s": s.parse_whole.as_secs_f64(),
                "orders_taken_from_the_feed_before": s.taken,
                "evaluate_s": s.evaluate.as_secs_f64(),
                "compile_s": s.compile.as_secs_f64(),
                "load_s": s.load.as_secs_f64(),
                "total_s": s.total().as_secs_f64(),
            })
        };
        json!({
            "quick": self.quick,
            "machine": machine(),
            "seconds": self.seconds,
            "per_packet": samples,
            "goals": goals,
            "loads": loads,
            "kernel_memory": memory,
            "control_plane": self.control.as_ref().map(|c| json!({
                "prefixes": c.prefixes,
                "feed_bytes": c.feed_bytes,
                "program_load_s": c.open.as_secs_f64(),
                "from_scratch": stages(&c.scratch),
                "update_1_percent": stages(&c.update),
                "update_1_percent_runs_s": c.updates.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                "update_1_percent_over_http": json!({
                    "download_s": c.download.worked.as_secs_f64(),
                    "download_nothing_done_as_it_arrives_s": c.download.plain.as_secs_f64(),
                    "after_the_download": stages(&c.download.after),
                }),
                "guardrails": json!({
                    "protected_prefixes": c.guarded.protected,
                    "orders_refused": c.guarded.refused,
                    "evaluate_nothing_protected_s": c.guarded.none.as_secs_f64(),
                    "evaluate_protected_s": c.guarded.many.as_secs_f64(),
                }),
                "update_one_order_added": stages(&c.one_order),
            })),
            "daemon": self.daemon.as_ref().map(daemon_json),
            "daemon_over_http": self.daemon_http.as_ref().map(daemon_json),
            "sizes_in_turn": self.sizes_in_turn.iter().map(|t| json!({
                "family": t.family,
                "mode": t.mode,
                "match": "miss",
                "large_prefixes": t.large,
                "small_prefixes": t.small,
                "empty_ns_per_packet": t.empty_ns,
                "blocker_large_ns_per_packet": t.large_ns,
                "blocker_small_ns_per_packet": t.small_ns,
                "apart_ratio": self.ns(Program::Blocker, t.family, t.mode, "miss", t.large)
                    .zip(self.ns(Program::Blocker, t.family, t.mode, "miss", t.small))
                    .map(|(large, small)| large / small),
            })).collect::<Vec<_>>(),
            "hits_by_length": self.hits_by_length.iter().map(|h| json!({
                "family": h.family,
                "length": h.length,
                "ns_per_packet": h.ns,
                "empty_ns_per_packet": h.empty_ns,
                "ratio": h.ratio(),
            })).collect::<Vec<_>>(),
            "exact_hits": self.exact_hits.map(|h| json!({
                "addresses": h.addresses,
                "driver_and_empty_ns": h.empty_ns,
                "driver_and_blocker_ns": h.blocker_ns,
                "driver_and_xdp_filter_ns": h.xdp_filter_ns,
            })),
            "wire": self.wire.iter().map(|r| json!({
                "dut": r.dut,
                "workload_prefixes": r.workload,
                "prefixes": r.prefixes,
                "frames_sent": r.sent,
                "dropped": r.dropped,
                "seconds": r.seconds,
                "mpps_dropped": r.mpps(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// A paragraph of `items` after `heading`, unless there are none.
fn listed(out: &mut String, heading: &str, items: &[String], separator: &str) {
    if !items.is_empty() {
        let _ = writeln!(out, "\n{heading}: {}", items.join(separator));
    }
}

fn human(n: usize) -> String {
    match n {
        0 => "0".to_owned(),
        n if n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({"cpus": cpus, "cpu": model, "kernel": kernel.trim()})
}

/// `kib` KiB in MB (10^6 bytes), as the RSS bound is given.
fn megabytes(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// A daemon run, for the JSON report: the median update's figures, and
/// every update's whole.
fn daemon_json(d: &DaemonRun) -> Value {
    let u = d.update();
    json!({
        "start_to_enforced_s": d.start_to_enforced.as_secs_f64(),
        "update_apply_s": u.apply,
        "update_seen_s": u.seen.as_secs_f64(),
        "update_fetch_s": u.fetch.as_secs_f64(),
        "update_verify_s": u.verify.as_secs_f64(),
        "update_parse_s": u.parse.as_secs_f64(),
        "update_whole_s": d.whole(&u),
        "update_orders_taken_from_in_force": u.taken,
        "updates_whole_s": d.updates.iter().map(|u| d.whole(u)).collect::<Vec<_>>(),
        "updates_apply_s": d.updates.iter().map(|u| u.apply).collect::<Vec<_>>(),
        "rss_kib": d.rss_kib,
        "peak_rss_kib": d.peak_rss_kib,
        "long_run": d.long.as_ref().map(|long| json!({
            "updates": long.updates(),
            "peak_rss_kib": long.peak_rss_kib,
            "rss_kib": long.rss_kib,
            "updates_apply_s": long.applies,
        })),
        "scrape_s": d.scrape.as_secs_f64(),
    })
}
