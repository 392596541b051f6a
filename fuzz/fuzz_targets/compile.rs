//! The compiler (orders → lookup tables with ranked candidates and windows)
//! on arbitrary orders, checked packet by packet against the contract's
//! reference (`blocker::reference`), at arbitrary instants around the
//! orders' windows, in both enforcement modes; and compiled incrementally
//! (from the same orders less the first, each with its first target
//! dropped) to the same tables.
#![no_main]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use arbitrary::Arbitrary;
use blocker::{
    compile::{self, Compiler, Enforcement, SlotTable},
    feed::{Action, Direction, Order, Rung, Status},
};
use ipnetwork::IpNetwork;
use libfuzzer_sys::fuzz_target;
use time::{Duration, OffsetDateTime};

#[derive(Arbitrary, Debug)]
struct Input {
    orders: Vec<ArbOrder>,
    observe: bool,
    probes: Vec<(ArbAddr, ArbAddr)>,
    /// Tens of seconds after the base instant.
    now: u8,
    /// Compile once more against the first compile's slot table.
    recompile: bool,
}

#[derive(Arbitrary, Debug)]
struct ArbOrder {
    id: u8,
    drop: bool,
    direction: u8,
    targets: Vec<ArbPrefix>,
    from: Option<u8>,
    until: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct ArbPrefix {
    v6: bool,
    low: u16,
    len: u8,
}

/// Addresses in a small space (203.0.113.0/24, 2001:db8::/112) so that
/// targets and probes overlap often.
#[derive(Arbitrary, Debug)]
struct ArbAddr {
    v6: bool,
    low: u16,
}

impl ArbAddr {
    fn addr(&self) -> IpAddr {
        if self.v6 {
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, self.low).into()
        } else {
            Ipv4Addr::new(203, 0, 113, self.low as u8).into()
        }
    }
}

impl ArbPrefix {
    fn prefix(&self) -> IpNetwork {
        let addr = ArbAddr {
            v6: self.v6,
            low: self.low,
        }
        .addr();
        let len = if self.v6 {
            self.len % 129
        } else {
            self.len % 33
        };
        let net = IpNetwork::new(addr, len).expect("length in range");
        IpNetwork::new(net.network(), len).expect("length in range")
    }
}

fn base() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("base instant")
}

fn at(tens: u8) -> OffsetDateTime {
    base() + Duration::seconds(i64::from(tens) * 10)
}

fuzz_target!(|input: Input| {
    let mut orders: BTreeMap<String, Order> = BTreeMap::new();
    for o in input.orders.iter().take(8) {
        let targets: Vec<IpNetwork> = {
            let mut t: Vec<IpNetwork> = o.targets.iter().take(4).map(ArbPrefix::prefix).collect();
            t.sort();
            t.dedup();
            t
        };
        if targets.is_empty() {
            continue;
        }
        let effective_from = o.from.map(at);
        let expires_at = o.until.map(at);
        if let (Some(from), Some(until)) = (effective_from, expires_at)
            && from >= until
        {
            continue;
        }
        let id = format!("F-{:03}", o.id);
        orders.entry(id.clone()).or_insert(Order {
            id,
            rung: Rung::Datacenter,
            action: if o.drop {
                Action::Drop
            } else {
                Action::Monitor
            },
            direction: match o.direction % 3 {
                0 => Direction::Dst,
                1 => Direction::Src,
                _ => Direction::Both,
            },
            targets: targets.into(),
            status: Status::Active,
            effective_from,
            expires_at,
            reference: None,
        });
    }
    let refs: Vec<&Order> = orders.values().collect();
    let enforcement = if input.observe {
        Enforcement::Observe
    } else {
        Enforcement::Enforce
    };
    let mut compiled =
        compile::compile(&refs, enforcement, &SlotTable::new()).expect("orders compile");
    if input.recompile {
        compiled = compile::compile(&refs, enforcement, &compiled.slots).expect("recompile");
    }
    // The same tables by way of an incremental compile: from a feed that
    // lacks the first order and every order's first target.
    let fewer: Vec<Order> = refs
        .iter()
        .skip(1)
        .map(|o| Order {
            targets: o.targets.iter().skip(1).copied().collect(),
            ..(*o).clone()
        })
        .collect();
    let fewer: Vec<&Order> = fewer.iter().collect();
    let mut compiler = Compiler::new();
    let before = compiler
        .compile(&fewer, enforcement, &SlotTable::new())
        .expect("orders compile")
        .compiled
        .slots
        .clone();
    let step = compiler
        .compile(&refs, enforcement, &before)
        .expect("orders compile");
    let whole = compile::compile(&refs, enforcement, &before).expect("orders compile");
    let view = |c: &compile::Compiled| {
        let v4: Vec<_> = c.v4.iter().map(|&(n, l, e)| (n, l, *c.entry(e))).collect();
        let v6: Vec<_> = c.v6.iter().map(|&(n, l, e)| (n, l, *c.entry(e))).collect();
        (v4, v6, c.slots.clone(), c.overflow)
    };
    assert!(
        view(step.compiled) == view(&whole),
        "an incremental compile differs from one from scratch"
    );
    // More claims on one prefix than an entry holds are cut by rank: the
    // contract's answer may then differ by design (logged by the daemon).
    if compiled.overflow > 0 {
        return;
    }
    let now = at(input.now);
    let mut probes: Vec<(IpAddr, IpAddr)> = input
        .probes
        .iter()
        .take(16)
        .map(|(s, d)| (s.addr(), d.addr()))
        .filter(|(s, d)| s.is_ipv4() == d.is_ipv4())
        .collect();
    // The edges of every target, both ways round.
    for order in &refs {
        for t in order.targets.iter() {
            let other = if t.is_ipv4() {
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
            } else {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1))
            };
            for edge in [t.network(), t.broadcast()] {
                probes.push((edge, other));
                probes.push((other, edge));
            }
        }
    }
    for (src, dst) in probes {
        if let Err(disagreement) =
            compile::check_packet(&compiled, &refs, enforcement, src, dst, now)
        {
            panic!("{disagreement}");
        }
    }
});
