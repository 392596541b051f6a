//! `cargo xtask bench`: per-packet cost of blocker against an empty XDP
//! program and an LPM-trie reference at 0, 1k, 100k and 1M prefixes, hot
//! and with varied addresses; the control plane on a 1M-prefix feed; and the
//! real daemon's memory. Every figure is a ratio against a baseline measured
//! in the same run.

pub mod control;
pub mod kernel;
pub mod plot;
pub mod report;
pub mod wire;
pub mod workload;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Instant,
};

use kernel::{Kernel, Program, frame};
use report::{Report, Sample};
use workload::{PER_ORDER, PrefixSet};

/// What `blocker-bench` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sizes up to 100k, smaller pools, fewer repeats.
    pub quick: bool,
    pub out: PathBuf,
}

/// The tables' capacity throughout: the config's default `max_prefixes`.
pub const MAX_PREFIXES: u32 = 1_000_000;

struct Scale {
    sizes: Vec<usize>,
    pool: usize,
    hot_repeat: u32,
    rounds: usize,
    /// Workload sizes on the wire against nftables, and frames per run.
    wire_sizes: Vec<usize>,
    wire_frames: u32,
}

impl Scale {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                sizes: vec![0, 1_000, 100_000],
                pool: 1 << 16,
                hot_repeat: 200_000,
                rounds: 3,
                wire_sizes: vec![1_000],
                wire_frames: 500_000,
            }
        } else {
            Self {
                sizes: vec![0, 1_000, 100_000, 1_000_000],
                pool: 1 << 20,
                hot_repeat: 1_000_000,
                rounds: 7,
                wire_sizes: vec![1_000, 100_000, 1_000_000],
                wire_frames: 4_000_000,
            }
        }
    }
}

fn v4(bytes: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

fn v6(bytes: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&bytes[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// The (source, destination) pair the first of `pool` holds: a miss.
fn first_pair(pool: &[[u8; 32]], ipv6: bool) -> (IpAddr, IpAddr) {
    if ipv6 {
        (v6(&pool[0][..16]), v6(&pool[0][16..]))
    } else {
        (v4(&pool[0][..4]), v4(&pool[0][4..8]))
    }
}

/// The first host address of a target of `order` in `family`.
fn target_host(order: &blocker::feed::Order, ipv6: bool) -> IpAddr {
    order
        .targets
        .iter()
        .find(|t| t.is_ipv6() == ipv6)
        .map(|t| t.network())
        .unwrap_or_else(|| panic!("order {} has no target of that family", order.id))
}

/// IPv6 target lengths timed by [`hits_by_length`] (IPv4's are all of
/// /16../32): the workload's three common ones and a spread between.
const V6_HIT_LENGTHS: [u8; 9] = [32, 40, 48, 56, 64, 80, 96, 112, 128];

/// A hot drop hit on a destination of each target length present in
/// `orders` (those the kernel holds), the empty program's run in turn with
/// them: what a hit costs by where its prefix sits in the tables.
fn hits_by_length(
    kernel: &mut Kernel,
    orders: &[blocker::feed::Order],
    pools: &[Vec<[u8; 32]>; 2],
    scale: &Scale,
) -> Vec<report::LengthHit> {
    let drop_targets = || {
        orders
            .iter()
            .filter(|o| o.action == blocker::feed::Action::Drop)
            .flat_map(|o| o.targets.iter())
    };
    let mut hits = Vec::new();
    for (family, ipv6, lengths) in [
        ("ipv4", false, (16..=32).collect::<Vec<u8>>()),
        ("ipv6", true, V6_HIT_LENGTHS.to_vec()),
    ] {
        let (src, dst) = first_pair(&pools[usize::from(ipv6)], ipv6);
        let mut frames = vec![(0u8, Program::Empty, frame(src, dst))];
        for len in lengths {
            if let Some(target) = drop_targets().find(|t| t.is_ipv6() == ipv6 && t.prefix() == len)
            {
                frames.push((len, Program::Blocker, frame(src, target.network())));
            }
        }
        let runs: Vec<(Program, &[u8])> = frames
            .iter()
            .map(|(_, program, frame)| (*program, frame.as_slice()))
            .collect();
        let timed = kernel.hot_in_turn(&runs, scale.hot_repeat, scale.rounds);
        let empty_ns = timed[0].0;
        for ((len, _, _), (ns, verdict)) in frames.iter().zip(&timed).skip(1) {
            assert_eq!(*verdict, 1, "blocker on a hot {family} /{len} drop hit");
            hits.push(report::LengthHit {
                family,
                length: *len,
                ns: *ns,
                empty_ns,
            });
        }
    }
    hits
}

/// The size the largest is compared with.
const SMALL: usize = 1_000;

/// Passes of [`sizes_in_turn`], the two blockers swapping workloads
/// between passes.
const PASSES_IN_TURN: usize = 4;

/// Rounds of each program's varied run in each pass of [`sizes_in_turn`]
/// (a round is two passes over the pool).
const VARIED_ROUNDS_IN_TURN: usize = 3;

/// The hot and varied miss of each family with blocker holding the
/// `largest` workload and [`SMALL`]'s at once (a second blocker beside the
/// first), the empty program and the two taking their rounds in turn.
/// The two blockers swap workloads between passes, and each size's median
/// is taken over every pass's rounds, so that whatever differs between the
/// two programs loaded, or from one pass to the next, weighs on both sizes
/// alike. The first blocker holds the largest workload again after.
fn sizes_in_turn(
    kernel: &mut Kernel,
    orders: &[blocker::feed::Order],
    pools: &[Vec<[u8; 32]>; 2],
    scale: &Scale,
    largest: usize,
) -> Vec<report::InTurn> {
    let large = &orders[..largest.div_ceil(PER_ORDER)];
    let small = &orders[..SMALL.div_ceil(PER_ORDER)];
    kernel.load_beside(MAX_PREFIXES);
    kernel.apply_beside(small);
    // By family, then mode (hot, varied): the empty program's, the large
    // workload's and the small one's timings.
    let mut pooled: [[[Vec<f64>; 3]; 2]; 2] = Default::default();
    let mut first_holds_large = true;
    for pass in 0..PASSES_IN_TURN {
        if pass > 0 {
            first_holds_large = !first_holds_large;
            let (first, second) = if first_holds_large {
                (large, small)
            } else {
                (small, large)
            };
            kernel.apply(first);
            kernel.apply_beside(second);
        }
        let holding = if first_holds_large {
            [Program::Empty, Program::Blocker, Program::BlockerBeside]
        } else {
            [Program::Empty, Program::BlockerBeside, Program::Blocker]
        };
        for (family, ipv6) in [("ipv4", false), ("ipv6", true)] {
            let pool = &pools[usize::from(ipv6)];
            let (src, dst) = first_pair(pool, ipv6);
            let miss = frame(src, dst);
            let runs: Vec<(Program, &[u8])> =
                holding.iter().map(|&p| (p, miss.as_slice())).collect();
            let hot = kernel.hot_rounds_in_turn(&runs, scale.hot_repeat, scale.rounds);
            kernel.load_pool(pool, ipv6);
            let repeat = u32::try_from(pool.len() * 2).expect("repeat");
            let varied = kernel.varied_rounds_in_turn(
                &holding,
                &miss,
                repeat,
                scale.rounds.min(VARIED_ROUNDS_IN_TURN),
            );
            for (m, (mode, timed)) in [("hot", hot), ("varied", varied)].into_iter().enumerate() {
                for (i, (program, (times, verdict))) in holding.iter().zip(timed).enumerate() {
                    assert_eq!(verdict, 2, "{} on a {mode} {family} miss", program.as_str());
                    pooled[usize::from(ipv6)][m][i].extend(times);
                }
            }
        }
    }
    kernel.unload_beside();
    if !first_holds_large {
        kernel.apply(large);
    }
    let mut timed = Vec::new();
    for (family, by_mode) in ["ipv4", "ipv6"].into_iter().zip(&mut pooled) {
        for (mode, [empty, at_large, at_small]) in ["hot", "varied"].into_iter().zip(by_mode) {
            timed.push(report::InTurn {
                family,
                mode,
                large: largest,
                small: SMALL,
                empty_ns: kernel::median(empty),
                large_ns: kernel::median(at_large),
                small_ns: kernel::median(at_small),
            });
        }
    }
    timed
}

/// Only the control plane and the daemons at 1M prefixes (their figures
/// are printed as they are taken): for work on the control plane.
pub fn control_only() {
    let orders = workload::orders(1_000_000, 1);
    control::pipeline(&orders, MAX_PREFIXES);
    control::daemon(&orders, MAX_PREFIXES, control::DaemonFeed::File);
    control::daemon(&orders, MAX_PREFIXES, control::DaemonFeed::Http);
}

/// Only the end-to-end runs, with 1k prefixes against nftables and the
/// 512 exact addresses against xdp-filter, printed: for work on the
/// kernel's hit path.
pub fn wire_only() {
    let orders = workload::orders(1_000, 1);
    let mut kernel = Kernel::new(MAX_PREFIXES);
    wire::run(&mut kernel, &orders, &[1_000], 512, 3_000_000);
}

pub fn run(options: &Options) -> Report {
    let scale = Scale::new(options.quick);
    let largest = *scale.sizes.last().expect("sizes");
    let mut report = Report::new(options.quick);
    let started = Instant::now();

    eprintln!("bench: generating {largest} prefixes and miss pools");
    let orders = workload::orders(largest, 1);
    let set = PrefixSet::new(&orders);
    let pools = [
        workload::miss_pool(&set, false, scale.pool, 2),
        workload::miss_pool(&set, true, scale.pool, 3),
    ];
    drop(set);

    let mut kernel = Kernel::new(MAX_PREFIXES);
    for &size in &scale.sizes {
        let subset = &orders[..size.div_ceil(PER_ORDER)];
        let (compiled, compile_time, apply_time) = kernel.apply(subset);
        let lpm_started = Instant::now();
        kernel.load_reference(&compiled);
        eprintln!(
            "bench: {size} prefixes: compile {compile_time:?}, blocker apply {apply_time:?}, LPM fill {:?}",
            lpm_started.elapsed()
        );
        report
            .loads
            .push((size, compile_time, apply_time, lpm_started.elapsed()));
        for (family, ipv6) in [("ipv4", false), ("ipv6", true)] {
            let pool = &pools[usize::from(ipv6)];
            let (src, dst) = first_pair(pool, ipv6);
            let miss = frame(src, dst);
            let mut sample =
                |program: Program, mode: &'static str, matched: &'static str, ns: f64| {
                    report.samples.push(Sample {
                        program,
                        family,
                        mode,
                        matched,
                        prefixes: size,
                        ns,
                    });
                };
            // Every hot run of this size and family, their rounds in turn:
            // the misses, then each hit (order 0 drops, order 9 monitors:
            // see workload::order), on the destination and, for the drop,
            // on the source (the traffic a blocked server sends back).
            let programs = [Program::Empty, Program::Lpm, Program::Blocker];
            let mut runs: Vec<(Program, &'static str, Vec<u8>, u32)> = programs
                .iter()
                .map(|&program| (program, "miss", miss.clone(), 2))
                .collect();
            if size >= 10 * PER_ORDER {
                for (matched, order, on_source, want) in [
                    ("drop", &subset[0], false, 1),
                    ("monitor", &subset[9], false, 2),
                    ("source drop", &subset[0], true, 1),
                ] {
                    let host = target_host(order, ipv6);
                    let hit = if on_source {
                        frame(host, dst)
                    } else {
                        frame(src, host)
                    };
                    for program in [Program::Lpm, Program::Blocker] {
                        runs.push((program, matched, hit.clone(), want));
                    }
                }
            }
            let frames: Vec<(Program, &[u8])> = runs
                .iter()
                .map(|(program, _, frame, _)| (*program, frame.as_slice()))
                .collect();
            let timed = kernel.hot_in_turn(&frames, scale.hot_repeat, scale.rounds);
            for ((program, matched, _, want), (ns, verdict)) in runs.iter().zip(timed) {
                assert_eq!(verdict, *want, "{} on a hot {matched}", program.as_str());
                sample(*program, "hot", matched, ns);
            }
            kernel.load_pool(pool, ipv6);
            let repeat = u32::try_from(pool.len() * 2).expect("repeat");
            // Each program's varied rounds in a row, not in turn: a round
            // after another program's would start with its caches cold.
            for program in programs {
                let (ns, verdict) = kernel.varied(program, &miss, repeat, scale.rounds.min(3));
                assert_eq!(verdict, 2, "{} dropped a varied miss", program.as_str());
                sample(program, "varied", "miss", ns);
            }
        }
        report.map_bytes.push((
            size,
            kernel.blocker_map_bytes(),
            kernel.reference_map_bytes(),
        ));
    }
    // The goals that compare blocker at the largest size with itself at
    // 1k: both sizes held at once (a second blocker beside the first) and
    // timed in turn, in the same spells.
    if largest > SMALL && scale.sizes.contains(&SMALL) {
        report.sizes_in_turn = sizes_in_turn(&mut kernel, &orders, &pools, &scale, largest);
    }
    report.hits_by_length = hits_by_length(
        &mut kernel,
        &orders[..largest.div_ceil(PER_ORDER)],
        &pools,
        &scale,
    );
    eprintln!("bench: per-packet figures took {:?}", started.elapsed());
    let (wire, exact_hits) = wire::run(
        &mut kernel,
        &orders,
        &scale.wire_sizes,
        512,
        scale.wire_frames,
    );
    report.wire = wire;
    report.exact_hits = Some(exact_hits);
    drop(kernel);

    report.control = Some(control::pipeline(&orders, MAX_PREFIXES));
    report.daemon = Some(control::daemon(
        &orders,
        MAX_PREFIXES,
        control::DaemonFeed::File,
    ));
    report.daemon_http = Some(control::daemon(
        &orders,
        MAX_PREFIXES,
        control::DaemonFeed::Http,
    ));
    report.seconds = started.elapsed().as_secs_f64();
    report
}
