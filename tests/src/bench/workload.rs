//! The benchmark's synthetic feed: a million prefixes shaped like the issue
//! describes (70% IPv4, mostly /32 and /24 with a spread of /16../31; 30%
//! IPv6, mostly /128, /64 and /48), grouped 100 to an order, and pools of
//! addresses that match none of them.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use blocker::feed::{Action, Direction, Order, Rung, Status};
use ipnetwork::IpNetwork;

/// Prefixes per order.
pub const PER_ORDER: usize = 100;

/// splitmix64: small, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn v4_len(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..45 => 32,
        45..80 => 24,
        _ => 16 + rng.below(16) as u8,
    }
}

fn v6_len(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..40 => 128,
        40..70 => 64,
        70..90 => 48,
        _ => 29 + rng.below(99) as u8,
    }
}

fn random_prefix(rng: &mut Rng) -> IpNetwork {
    if rng.below(10) < 7 {
        let len = v4_len(rng);
        let addr = (rng.next_u64() as u32) & (u32::MAX << (32 - u32::from(len)));
        IpNetwork::new(IpAddr::V4(Ipv4Addr::from(addr)), len).expect("valid IPv4 prefix")
    } else {
        let len = v6_len(rng);
        let bits = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let addr = bits & (u128::MAX << (128 - u32::from(len)));
        IpNetwork::new(IpAddr::V6(Ipv6Addr::from(addr)), len).expect("valid IPv6 prefix")
    }
}

/// `count` distinct prefixes in orders of [`PER_ORDER`]: every tenth order
/// monitors, the rest drop; all apply to both directions. The first `n`
/// orders of the result are the workload of `n * PER_ORDER` prefixes.
pub fn orders(count: usize, seed: u64) -> Vec<Order> {
    let mut rng = Rng::new(seed);
    let mut seen = HashSet::with_capacity(count);
    let mut orders = Vec::with_capacity(count / PER_ORDER + 1);
    let mut targets = Vec::with_capacity(PER_ORDER);
    while seen.len() < count {
        let prefix = random_prefix(&mut rng);
        if !seen.insert(prefix) {
            continue;
        }
        targets.push(prefix);
        if targets.len() == PER_ORDER || seen.len() == count {
            orders.push(order(orders.len(), std::mem::take(&mut targets)));
        }
    }
    orders
}

pub fn order(index: usize, targets: Vec<IpNetwork>) -> Order {
    Order {
        id: format!("BENCH-{index:06}"),
        rung: Rung::Datacenter,
        action: if index % 10 == 9 {
            Action::Monitor
        } else {
            Action::Drop
        },
        direction: Direction::Both,
        targets: targets.into(),
        status: Status::Active,
        effective_from: None,
        expires_at: None,
        reference: None,
    }
}

/// The same orders with one target in `every` replaced by a fresh prefix:
/// the benchmark's update.
pub fn changed(orders: &[Order], every: usize, seed: u64) -> Vec<Order> {
    let mut rng = Rng::new(seed);
    let mut seen: HashSet<IpNetwork> = orders
        .iter()
        .flat_map(|o| o.targets.iter().copied())
        .collect();
    let mut n = 0usize;
    orders
        .iter()
        .map(|o| {
            let mut o = o.clone();
            let mut targets = o.targets.to_vec();
            for target in &mut targets {
                n += 1;
                if n.is_multiple_of(every) {
                    let fresh = loop {
                        let p = random_prefix(&mut rng);
                        if seen.insert(p) {
                            break p;
                        }
                    };
                    *target = fresh;
                }
            }
            o.targets = targets.into();
            o
        })
        .collect()
}

/// Every (network, length) of the orders, for miss checks.
pub struct PrefixSet {
    v4: Family,
    v6: Family,
}

/// One family's prefixes, address bits left-aligned in 128, and the
/// lengths present.
#[derive(Default)]
struct Family {
    prefixes: HashSet<(u128, u8)>,
    lens: Vec<u8>,
}

impl Family {
    fn insert(&mut self, bits: u128, len: u8) {
        self.prefixes.insert((bits, len));
        self.lens.push(len);
    }

    fn contains(&self, bits: u128) -> bool {
        self.lens.iter().any(|&len| {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            self.prefixes.contains(&(bits & mask, len))
        })
    }
}

impl PrefixSet {
    pub fn new(orders: &[Order]) -> Self {
        let (mut v4, mut v6) = (Family::default(), Family::default());
        for target in orders.iter().flat_map(|o| o.targets.iter()) {
            match target {
                IpNetwork::V4(p) => v4.insert(u128::from(u32::from(p.network())) << 96, p.prefix()),
                IpNetwork::V6(p) => v6.insert(u128::from(p.network()), p.prefix()),
            }
        }
        for lens in [&mut v4.lens, &mut v6.lens] {
            lens.sort_unstable();
            lens.dedup();
        }
        Self { v4, v6 }
    }

    pub fn contains_v4(&self, addr: u32) -> bool {
        self.v4.contains(u128::from(addr) << 96)
    }

    pub fn contains_v6(&self, addr: u128) -> bool {
        self.v6.contains(addr)
    }
}

/// `count` (source, destination) pairs of addresses that no prefix of `set`
/// contains, as the driver reads them: IPv4 in bytes 0..8, IPv6 in 0..32.
pub fn miss_pool(set: &PrefixSet, ipv6: bool, count: usize, seed: u64) -> Vec<[u8; 32]> {
    let mut rng = Rng::new(seed);
    let mut pool = Vec::with_capacity(count);
    while pool.len() < count {
        let mut pair = [0u8; 32];
        if ipv6 {
            let mut addr = || loop {
                let a = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                if !set.contains_v6(a) {
                    break a;
                }
            };
            pair[..16].copy_from_slice(&addr().to_be_bytes());
            pair[16..].copy_from_slice(&addr().to_be_bytes());
        } else {
            let mut addr = || loop {
                let a = rng.next_u64() as u32;
                if !set.contains_v4(a) {
                    break a;
                }
            };
            pair[..4].copy_from_slice(&addr().to_be_bytes());
            pair[4..8].copy_from_slice(&addr().to_be_bytes());
        }
        pool.push(pair);
    }
    pool
}
