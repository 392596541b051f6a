//! End to end on a veth pair: a generator in one namespace makes frames
//! in the kernel (BPF_PROG_TEST_RUN with live frames, as xdp-trafficgen
//! does: each run writes the next address pair of a pool and returns
//! XDP_TX, so the frame leaves on the veth), and the device under test on
//! the peer, in its own namespace, drops them: blocker (native XDP), an
//! nftables netdev-ingress interval set holding the same prefixes, or
//! xdp-filter (native XDP) holding exact addresses. The drop rate is what
//! the device under test counted as dropped over the generator's time.

use std::{fmt::Write as _, fs, process::Command, time::Instant};

use blocker::{config::AttachMode, feed::Order};
use blocker_common::Stat;
use ipnetwork::IpNetwork;

use super::{
    kernel::{Kernel, Program, frame, inside},
    workload::{PER_ORDER, Rng},
};
use crate::{
    netns::{NetNs, VethPair},
    output, run_ok,
};

/// Runs of the generator per device under test (the median counts).
const ROUNDS: u32 = 3;

/// One device under test, driven once.
#[derive(Clone, Debug)]
pub struct WireRun {
    pub dut: &'static str,
    /// Prefixes of the workload it was given (for the exact-address runs,
    /// the addresses).
    pub workload: usize,
    /// Prefixes (or addresses) the device held.
    pub prefixes: usize,
    pub sent: u64,
    pub dropped: u64,
    pub seconds: f64,
}

impl WireRun {
    /// Frames dropped per second, in millions.
    pub fn mpps(&self) -> f64 {
        self.dropped as f64 / self.seconds / 1e6
    }
}

/// A generator namespace, a device-under-test namespace and the veth pair
/// between them (removed on drop).
struct Wire {
    gen_ns: NetNs,
    dut_ns: NetNs,
    pair: VethPair,
}

impl Wire {
    fn new() -> Self {
        let gen_ns = NetNs::new();
        let dut_ns = NetNs::new();
        let pair = VethPair::new(&gen_ns, &dut_ns);
        Self {
            gen_ns,
            dut_ns,
            pair,
        }
    }

    fn dut_command(&self, program: &str) -> Command {
        self.dut_ns.command(program)
    }

    /// Sends `count` frames from the generator, in [`ROUNDS`] runs: the
    /// frames sent, and the seconds it took (the median run times the runs).
    fn send(&self, kernel: &mut Kernel, pool: &[[u8; 32]], count: u32) -> (u64, f64) {
        kernel.load_pool(pool, false);
        let per_round = count / ROUNDS;
        let mut times: Vec<f64> = (0..ROUNDS).map(|_| self.round(kernel, per_round)).collect();
        let sent = u64::from(per_round * ROUNDS);
        (sent, super::kernel::median(&mut times) * f64::from(ROUNDS))
    }

    /// One run of the generator: `frames` frames of the loaded pool; the
    /// seconds it took.
    fn round(&self, kernel: &mut Kernel, frames: u32) -> f64 {
        let template = pool_frame();
        let interface = self.pair.a.clone();
        inside(&self.gen_ns, || {
            let ifindex = blocker::datapath::ifindex(&interface).expect("generator interface");
            kernel.generate(ifindex, &template, frames)
        })
    }
}

/// Hosts inside the IPv4 targets of drop orders (every tenth order
/// monitors), as (source, destination) pairs; a power of two of them.
fn hit_pool(orders: &[Order], count: usize, seed: u64) -> Vec<[u8; 32]> {
    let targets: Vec<(u32, u8)> = orders
        .iter()
        .filter(|o| o.action == blocker::feed::Action::Drop)
        .flat_map(|o| o.targets.iter())
        .filter_map(|t| match t {
            IpNetwork::V4(p) => Some((u32::from(p.network()), p.prefix())),
            IpNetwork::V6(_) => None,
        })
        .collect();
    assert!(!targets.is_empty(), "no IPv4 drop targets");
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let (net, len) = targets[rng.below(targets.len() as u64) as usize];
            let host = if len == 32 {
                0
            } else {
                (rng.next_u64() as u32) & (u32::MAX >> len)
            };
            let mut pair = [0u8; 32];
            // Sources from TEST-NET-1: they match nothing in the workload's
            // drop decision either way (a destination drop wins).
            pair[..4].copy_from_slice(&[192, 0, 2, 1 + (rng.below(200) as u8)]);
            pair[4..8].copy_from_slice(&(net | host).to_be_bytes());
            pair
        })
        .collect()
}

/// The prefixes `orders` name.
fn prefixes(orders: &[Order]) -> usize {
    orders.iter().map(|o| o.targets.len()).sum()
}

/// A wire with blocker attached natively to the device under test, with
/// `orders` applied.
fn blocker_wire(kernel: &mut Kernel, orders: &[Order]) -> Wire {
    kernel.apply(orders);
    let wire = Wire::new();
    let interface = wire.pair.b.clone();
    inside(&wire.dut_ns, || {
        kernel
            .dp
            .attach(&interface, AttachMode::Native)
            .unwrap_or_else(|err| panic!("attaching blocker natively: {err}"))
    });
    wire
}

/// Frames blocker has dropped, on every interface.
fn blocker_dropped(kernel: &Kernel) -> u64 {
    kernel.dp.maps().stats().expect("statistics")[Stat::Dropped as usize]
}

/// blocker, attached natively, with `orders` applied.
fn blocker(
    kernel: &mut Kernel,
    orders: &[Order],
    pool: &[[u8; 32]],
    count: u32,
    name: &'static str,
) -> WireRun {
    let wire = blocker_wire(kernel, orders);
    let before = blocker_dropped(kernel);
    let (sent, seconds) = wire.send(kernel, pool, count);
    let after = blocker_dropped(kernel);
    let held = prefixes(orders);
    WireRun {
        dut: name,
        workload: held,
        prefixes: held,
        sent,
        dropped: after - before,
        seconds,
    }
}

/// An nftables netdev-ingress chain dropping packets to and from an
/// interval set of the IPv4 targets of `orders` (an XDP_PASS program on
/// the device lets the veth take XDP frames).
fn nftables(kernel: &mut Kernel, orders: &[Order], pool: &[[u8; 32]], count: u32) -> WireRun {
    let wire = Wire::new();
    let interface = wire.pair.b.clone();
    inside(&wire.dut_ns, || kernel.attach_pass(&interface));
    let targets: Vec<String> = orders
        .iter()
        .filter(|o| o.action == blocker::feed::Action::Drop)
        .flat_map(|o| o.targets.iter())
        .filter(|t| t.is_ipv4())
        .map(ToString::to_string)
        .collect();
    let mut rules = String::new();
    let _ = writeln!(rules, "table netdev blocker_bench {{");
    let _ = writeln!(
        rules,
        "  set blocked {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}",
        targets.join(", ")
    );
    let _ = writeln!(
        rules,
        "  chain ingress {{ type filter hook ingress device \"{interface}\" priority 0; policy accept;"
    );
    let _ = writeln!(rules, "    ip daddr @blocked counter drop");
    let _ = writeln!(rules, "    ip saddr @blocked counter drop");
    let _ = writeln!(rules, "  }}\n}}");
    let file = std::env::temp_dir().join(format!("blocker-bench-{}.nft", std::process::id()));
    fs::write(&file, rules).expect("writing the ruleset");
    let loaded = Instant::now();
    run_ok(wire.dut_command("nft").arg("-f").arg(&file));
    eprintln!(
        "bench: nft loaded {} prefixes in {:?}",
        targets.len(),
        loaded.elapsed()
    );
    let _ = fs::remove_file(&file);
    let (sent, seconds) = wire.send(kernel, pool, count);
    let listing = run_ok(wire.dut_command("nft").args([
        "list",
        "chain",
        "netdev",
        "blocker_bench",
        "ingress",
    ]));
    let dropped: u64 = listing
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    WireRun {
        dut: "nftables",
        workload: prefixes(orders),
        prefixes: targets.len(),
        sent,
        dropped,
        seconds,
    }
}

/// The cost of one drop hit on an exact address under BPF_PROG_TEST_RUN,
/// behind the benchmark's driver (so addresses vary over the pool as on
/// the wire): what each program adds to the generator's work per frame.
#[derive(Clone, Copy, Debug)]
pub struct ExactHits {
    pub addresses: usize,
    /// The driver in front of the empty program.
    pub empty_ns: f64,
    pub blocker_ns: f64,
    pub xdp_filter_ns: f64,
}

/// xdp-filter (native, IPv4 feature only) on a wire's device under test,
/// holding `addresses` as destinations; unloaded on drop.
struct XdpFilter {
    wire: Wire,
    interface: String,
}

impl XdpFilter {
    fn load(addresses: &[u32]) -> Self {
        let wire = Wire::new();
        let interface = wire.pair.b.clone();
        clear_stale_xdp_filter_lock();
        run_ok(wire.dut_command("xdp-filter").args([
            "load",
            "--mode",
            "native",
            "--features",
            "ipv4",
            &interface,
        ]));
        for addr in addresses {
            let text = std::net::Ipv4Addr::from(*addr).to_string();
            run_ok(
                wire.dut_command("xdp-filter")
                    .args(["ip", "--mode", "dst", &text]),
            );
        }
        Self { wire, interface }
    }

    /// Its program, as loaded.
    fn program() -> aya::programs::ProgramInfo {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.name_as_str().is_some_and(|n| n.starts_with("xdpfilt")))
            .expect("xdp-filter's program among the loaded ones")
    }

    /// Frames it has dropped.
    fn dropped(&self) -> u64 {
        let status = output(self.wire.dut_command("xdp-filter").arg("status"));
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        text.lines()
            .find(|l| l.trim_start().starts_with("XDP_DROP"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = output(
            self.wire
                .dut_command("xdp-filter")
                .args(["unload", &self.interface]),
        );
    }
}

/// Generator runs per device in the exact-address comparison.
const EXACT_ROUNDS: u32 = 7;

/// blocker and xdp-filter on the same exact addresses, each on a wire of
/// its own, the generator's runs alternating between the two so that a
/// noisy spell on the machine falls on both; and the cost of a hit with
/// each behind the driver.
fn exact(
    kernel: &mut Kernel,
    order: &Order,
    addresses: &[u32],
    pool: &[[u8; 32]],
    count: u32,
) -> ([WireRun; 2], ExactHits) {
    let blocker_wire = blocker_wire(kernel, std::slice::from_ref(order));
    let filter = XdpFilter::load(addresses);
    kernel.load_pool(pool, false);
    let hit = pool_frame();
    let (empty_ns, _) = kernel.varied(Program::Empty, &hit, HIT_REPEAT, 3);
    let (blocker_ns, verdict) = kernel.varied(Program::Blocker, &hit, HIT_REPEAT, 3);
    assert_eq!(verdict, 1, "blocker passed a frame to an address it holds");
    let fd = XdpFilter::program()
        .fd()
        .expect("a descriptor of xdp-filter's program");
    let (xdp_filter_ns, verdict) = kernel.varied_fd(&fd, "xdp-filter", &hit, HIT_REPEAT, 3);
    assert_eq!(
        verdict, 1,
        "xdp-filter passed a frame to an address it holds"
    );

    let per_round = count / EXACT_ROUNDS;
    let before = (blocker_dropped(kernel), filter.dropped());
    let (mut blocker_times, mut filter_times) = (Vec::new(), Vec::new());
    for _ in 0..EXACT_ROUNDS {
        blocker_times.push(blocker_wire.round(kernel, per_round));
        filter_times.push(filter.wire.round(kernel, per_round));
    }
    let after = (blocker_dropped(kernel), filter.dropped());
    let sent = u64::from(per_round * EXACT_ROUNDS);
    let seconds = |times: &mut Vec<f64>| super::kernel::median(times) * f64::from(EXACT_ROUNDS);
    let runs = [
        WireRun {
            dut: "blocker (exact addresses)",
            workload: addresses.len(),
            prefixes: addresses.len(),
            sent,
            dropped: after.0 - before.0,
            seconds: seconds(&mut blocker_times),
        },
        WireRun {
            dut: "xdp-filter",
            workload: addresses.len(),
            prefixes: addresses.len(),
            sent,
            dropped: after.1.saturating_sub(before.1),
            seconds: seconds(&mut filter_times),
        },
    ];
    let hits = ExactHits {
        addresses: addresses.len(),
        empty_ns,
        blocker_ns,
        xdp_filter_ns,
    };
    (runs, hits)
}

/// Runs of the driver per hit-cost timing.
const HIT_REPEAT: u32 = 1 << 22;

/// The frame the generator and the driver rewrite: its addresses come
/// from the loaded pool.
fn pool_frame() -> Vec<u8> {
    frame(
        std::net::IpAddr::from([192, 0, 2, 1]),
        std::net::IpAddr::from([192, 0, 2, 2]),
    )
}

/// xdp-filter refuses to start while its lock file names a process, even
/// a dead one (a run killed half-way leaves it behind).
fn clear_stale_xdp_filter_lock() {
    let lock = std::path::Path::new("/run/xdp-filter.lck");
    let Ok(text) = fs::read_to_string(lock) else {
        return;
    };
    let alive = text
        .trim()
        .parse::<u32>()
        .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    if !alive {
        eprintln!(
            "bench: removing xdp-filter's stale lock file {}",
            lock.display()
        );
        let _ = fs::remove_file(lock);
    }
}

/// Every run: blocker and nftables on the workload of each of `sizes`
/// (the first orders of `orders`); blocker and xdp-filter on `exact_count`
/// /32 addresses, and their hit costs.
pub fn run(
    kernel: &mut Kernel,
    orders: &[Order],
    sizes: &[usize],
    exact_count: usize,
    count: u32,
) -> (Vec<WireRun>, ExactHits) {
    let mut runs = Vec::new();
    for &size in sizes {
        let orders = &orders[..size.div_ceil(PER_ORDER)];
        let pool = hit_pool(orders, 1 << 16, 11);
        runs.push(blocker(kernel, orders, &pool, count, "blocker"));
        runs.push(nftables(kernel, orders, &pool, count));
    }
    // Documentation space: 198.51.100.0/24 and 203.0.113.0/24.
    let addresses: Vec<u32> = [0xc633_6400u32, 0xcb00_7100]
        .iter()
        .flat_map(|net| (0..256).map(move |host| net | host))
        .take(exact_count)
        .collect();
    let exact_order = super::workload::order(
        0,
        addresses
            .iter()
            .map(|a| IpNetwork::new(std::net::Ipv4Addr::from(*a).into(), 32).expect("a /32"))
            .collect(),
    );
    let exact_pool = hit_pool(std::slice::from_ref(&exact_order), 1 << 16, 17);
    let (exact_runs, hits) = exact(kernel, &exact_order, &addresses, &exact_pool, count);
    runs.extend(exact_runs);
    for r in &runs {
        eprintln!("bench: wire {r:?}: {:.2} Mpps dropped", r.mpps());
    }
    eprintln!("bench: {hits:?}");
    (runs, hits)
}
