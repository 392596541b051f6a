//! Random and malformed frames, built byte by byte, through the real XDP
//! program (BPF_PROG_TEST_RUN): random VLAN stacks, IPv4 with options, bad
//! versions and bad IHL, fragments, IPv6 extension-header chains, runts,
//! truncations and plain random bytes. Each verdict and each counter move
//! must equal a reference written here in plain Rust, from the bytes:
//!
//! - Ethernet: a frame is read only if it holds the 14-byte header.
//! - VLAN: up to two tags (TPID 0x8100 or 0x88A8, 4 bytes each) are skipped;
//!   a third tag means the frame is not looked up.
//! - IPv4 (0x0800): version 4, IHL at least 5, and the whole IHL*4-byte
//!   header present; then the addresses at bytes 12..20 of the header.
//!   Total length, flags, fragment offset, protocol and options do not
//!   matter (a fragment carries the same addresses).
//! - IPv6 (0x86DD): version 6 and the 40-byte fixed header present; then
//!   the addresses at bytes 8..40. Extension headers do not matter.
//! - Anything else, or a frame cut short of what it claims, is not looked
//!   up: it passes and no order counts it.
//! - A looked-up frame gets the contract's verdict
//!   (`blocker::reference::verdict`): drop when a drop order wins, and the
//!   winning order counts one packet and the frame's length in bytes.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use blocker::{
    compile::Enforcement,
    feed::{Action, Direction, Order},
    reference,
};
use blocker_tests::{orders::order, rig::Rig};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const V4_PREFIXES: &[&str] = &[
    "203.0.113.0/24",
    "203.0.113.0/29",
    "203.0.113.7/32",
    "198.51.100.64/26",
    "198.51.100.77/32",
    "192.0.2.128/25",
];
const V6_PREFIXES: &[&str] = &[
    "2001:db8:7::/48",
    "2001:db8:7::/64",
    "2001:db8:7::1/128",
    "2001:db8:8::/64",
];

fn v4_pool() -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![
        (0u8..16).prop_map(|h| [203, 0, 113, h]),
        any::<u8>().prop_map(|h| [198, 51, 100, h]),
        any::<u8>().prop_map(|h| [192, 0, 2, h]),
        any::<[u8; 4]>(),
    ]
}

fn v6_pool() -> impl Strategy<Value = [u8; 16]> {
    let addr = |net: u16, host: u16| Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host).octets();
    prop_oneof![
        (0u16..4).prop_map(move |h| addr(7, h)),
        (0u16..4).prop_map(move |h| addr(8, h)),
        any::<u16>().prop_map(move |h| addr(9, h)),
        any::<[u8; 16]>(),
    ]
}

/// The L3 part of a frame.
#[derive(Clone, Debug)]
enum L3 {
    V4 {
        version: u8,
        ihl: u8,
        /// Flags and fragment offset (MF, DF, any offset).
        fragment: u16,
        total_len: u16,
        protocol: u8,
        src: [u8; 4],
        dst: [u8; 4],
        options: Vec<u8>,
    },
    V6 {
        version: u8,
        payload_len: u16,
        /// Extension headers before the upper layer: 0 hop-by-hop, 43
        /// routing, 44 fragment, 60 destination options.
        extensions: Vec<(u8, u8)>,
        upper: u8,
        src: [u8; 16],
        dst: [u8; 16],
    },
    /// Whatever bytes follow an arbitrary ethertype.
    Other { ethertype: u16 },
}

#[derive(Clone, Debug)]
struct FrameParts {
    macs: [u8; 12],
    /// (TPID, TCI) of each tag, outermost first.
    tags: Vec<(u16, u16)>,
    l3: L3,
    payload: Vec<u8>,
    /// Cut the frame to this many bytes (if shorter).
    cut: Option<usize>,
}

impl FrameParts {
    fn bytes(&self) -> Vec<u8> {
        let mut f = self.macs.to_vec();
        let ethertype = match &self.l3 {
            L3::V4 { .. } => 0x0800,
            L3::V6 { .. } => 0x86DD,
            L3::Other { ethertype } => *ethertype,
        };
        // On the wire: MACs, (TPID, TCI) per tag, then the ethertype.
        for (tpid, tci) in &self.tags {
            f.extend(tpid.to_be_bytes());
            f.extend(tci.to_be_bytes());
        }
        f.extend(u16::to_be_bytes(ethertype));
        match &self.l3 {
            L3::V4 {
                version,
                ihl,
                fragment,
                total_len,
                protocol,
                src,
                dst,
                options,
            } => {
                f.push((version << 4) | (ihl & 0x0f));
                f.push(0);
                f.extend(total_len.to_be_bytes());
                f.extend([0x12, 0x34]);
                f.extend(fragment.to_be_bytes());
                f.push(64);
                f.push(*protocol);
                f.extend([0, 0]);
                f.extend(src);
                f.extend(dst);
                f.extend(options);
            }
            L3::V6 {
                version,
                payload_len,
                extensions,
                upper,
                src,
                dst,
            } => {
                let first = extensions.first().map_or(*upper, |(kind, _)| *kind);
                f.extend([version << 4, 0, 0, 0]);
                f.extend(payload_len.to_be_bytes());
                f.push(first);
                f.push(64);
                f.extend(src);
                f.extend(dst);
                for (i, (kind, len)) in extensions.iter().enumerate() {
                    let next = extensions.get(i + 1).map_or(*upper, |(k, _)| *k);
                    if *kind == 44 {
                        // Fragment header: fixed 8 bytes, offset and M flag.
                        f.extend([next, 0, 0, 0x09, 0, 0, 0, 1]);
                    } else {
                        let body = usize::from(*len) * 8 + 6;
                        f.extend([next, *len]);
                        f.extend(std::iter::repeat_n(0x01, body));
                    }
                }
            }
            L3::Other { .. } => {}
        }
        f.extend(&self.payload);
        if let Some(cut) = self.cut {
            f.truncate(cut);
        }
        f
    }
}

fn tag_strategy() -> impl Strategy<Value = (u16, u16)> {
    (
        prop_oneof![
            3 => Just(0x8100u16),
            3 => Just(0x88A8u16),
            1 => Just(0x9100u16),
            1 => any::<u16>(),
        ],
        any::<u16>(),
    )
}

fn l3_strategy() -> impl Strategy<Value = L3> {
    let v4 = (
        prop_oneof![8 => Just(4u8), 1 => 0u8..16],
        prop_oneof![4 => Just(5u8), 4 => 5u8..16, 1 => 0u8..5],
        prop_oneof![Just(0u16), Just(0x4000), Just(0x2000), any::<u16>()],
        any::<u16>(),
        prop_oneof![Just(17u8), Just(6), Just(1), any::<u8>()],
        v4_pool(),
        v4_pool(),
        prop::collection::vec(any::<u8>(), 40),
    )
        .prop_map(
            |(version, ihl, fragment, total_len, protocol, src, dst, mut options)| {
                options.truncate(usize::from(ihl).saturating_sub(5) * 4);
                L3::V4 {
                    version,
                    ihl,
                    fragment,
                    total_len,
                    protocol,
                    src,
                    dst,
                    options,
                }
            },
        );
    let v6 = (
        prop_oneof![8 => Just(6u8), 1 => 0u8..16],
        any::<u16>(),
        prop::collection::vec((prop::sample::select(vec![0u8, 43, 44, 60]), 0u8..3), 0..4),
        prop_oneof![Just(17u8), Just(6), Just(58), any::<u8>()],
        v6_pool(),
        v6_pool(),
    )
        .prop_map(
            |(version, payload_len, extensions, upper, src, dst)| L3::V6 {
                version,
                payload_len,
                extensions,
                upper,
                src,
                dst,
            },
        );
    prop_oneof![
        4 => v4,
        4 => v6,
        1 => any::<u16>().prop_map(|ethertype| L3::Other { ethertype }),
    ]
}

fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    let built = (
        any::<[u8; 12]>(),
        prop_oneof![
            4 => Just(Vec::new()),
            6 => prop::collection::vec(tag_strategy(), 1..=4),
        ],
        l3_strategy(),
        prop::collection::vec(any::<u8>(), 0..48),
        prop_oneof![3 => Just(None), 1 => (0usize..120).prop_map(Some)],
    )
        .prop_map(|(macs, tags, l3, payload, cut)| {
            FrameParts {
                macs,
                tags,
                l3,
                payload,
                cut,
            }
            .bytes()
        });
    prop_oneof![
        9 => built,
        1 => prop::collection::vec(any::<u8>(), 14..128),
    ]
}

/// The addresses the program looks up in `frame`, if it looks any up:
/// the rules in this file's header, read straight from the bytes.
fn reference_addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
    };
    let is_tag = |t: u16| t == 0x8100 || t == 0x88A8;
    let mut ethertype = be16(12)?;
    let mut l3 = 14;
    let mut tags = 0;
    while is_tag(ethertype) {
        tags += 1;
        if tags > 2 {
            return None;
        }
        ethertype = be16(l3 + 2)?;
        l3 += 4;
    }
    match ethertype {
        0x0800 => {
            let header = frame.get(l3..l3 + 20)?;
            let ihl = usize::from(header[0] & 0x0f) * 4;
            if header[0] >> 4 != 4 || ihl < 20 || frame.len() < l3 + ihl {
                return None;
            }
            let src: [u8; 4] = header[12..16].try_into().ok()?;
            let dst: [u8; 4] = header[16..20].try_into().ok()?;
            Some((Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into()))
        }
        0x86DD => {
            let header = frame.get(l3..l3 + 40)?;
            if header[0] >> 4 != 6 {
                return None;
            }
            let src: [u8; 16] = header[8..24].try_into().ok()?;
            let dst: [u8; 16] = header[24..40].try_into().ok()?;
            Some((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
        }
        _ => None,
    }
}

fn orders_strategy() -> impl Strategy<Value = Vec<Order>> {
    let prefixes: Vec<&'static str> = V4_PREFIXES.iter().chain(V6_PREFIXES).copied().collect();
    prop::collection::btree_map(
        0u8..16,
        (
            any::<bool>(),
            0u8..3,
            prop::sample::subsequence(prefixes, 1..=3),
        ),
        1..=5,
    )
    .prop_map(|orders| {
        orders
            .into_iter()
            .map(|(n, (drop, direction, targets))| {
                order(
                    &format!("M-{n:02}"),
                    if drop { Action::Drop } else { Action::Monitor },
                    match direction {
                        0 => Direction::Dst,
                        1 => Direction::Src,
                        _ => Direction::Both,
                    },
                    &targets,
                )
            })
            .collect()
    })
}

/// Runs `frame` on `rig` and checks verdict and counters against the
/// reference.
fn check(rig: &mut Rig, orders: &[&Order], frame: &[u8]) -> Result<(), String> {
    let expected = reference_addresses(frame)
        .and_then(|(src, dst)| reference::verdict(orders, Enforcement::Enforce, src, dst));
    if frame.len() < 14 {
        // Shorter than an Ethernet header: the kernel refuses to run it.
        return match rig.dp.test_run(frame) {
            Err(_) => Ok(()),
            Ok(verdict) => Err(format!(
                "the kernel ran a {}-byte frame ({verdict})",
                frame.len()
            )),
        };
    }
    let before = rig.all_counters();
    let verdict = rig
        .dp
        .test_run(frame)
        .map_err(|err| format!("running a {}-byte frame: {err}", frame.len()))?;
    let after = rig.all_counters();
    let want = match &expected {
        Some(w) if w.action == Action::Drop => XDP_DROP,
        _ => XDP_PASS,
    };
    if verdict != want {
        return Err(format!(
            "verdict {verdict}, reference {want} ({expected:?}) for {frame:02x?}"
        ));
    }
    for (id, a) in &after {
        let b = before[id];
        let (packets, bytes) = (a.packets - b.packets, a.bytes - b.bytes);
        let counted = expected.as_ref().is_some_and(|w| &w.order == id);
        let want = if counted {
            (1, frame.len() as u64)
        } else {
            (0, 0)
        };
        if (packets, bytes) != want {
            return Err(format!(
                "order {id} counted {packets} packets / {bytes} bytes, the reference {want:?} ({expected:?}) for {frame:02x?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn random_and_malformed_frames_get_the_reference_verdict() {
    let rig = std::cell::RefCell::new(Rig::new());
    let config = Config {
        cases: 400,
        max_shrink_iters: 300,
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let frames = std::cell::Cell::new(0usize);
    let looked_up = std::cell::Cell::new(0usize);
    let runts = std::cell::Cell::new(0usize);
    let strategy = (
        orders_strategy(),
        prop::collection::vec(frame_strategy(), 1..=24),
    );
    let result = runner.run(&strategy, |(orders, batch)| {
        let refs: Vec<&Order> = orders.iter().collect();
        let mut rig = rig.borrow_mut();
        rig.apply_in_force(&refs, Enforcement::Enforce);
        for frame in &batch {
            check(&mut rig, &refs, frame).map_err(TestCaseError::fail)?;
            frames.set(frames.get() + 1);
            if frame.len() < 14 {
                runts.set(runts.get() + 1);
            }
            if reference_addresses(frame).is_some() {
                looked_up.set(looked_up.get() + 1);
            }
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("the XDP program disagrees with the reference: {err}");
    }
    eprintln!(
        "malformed frames: {} frames ({} looked up) in {:?}",
        frames.get(),
        looked_up.get(),
        started.elapsed()
    );
    assert!(frames.get() >= 4000, "{} frames", frames.get());
    assert!(
        runts.get() > 0 && runts.get() * 2 < frames.get(),
        "some, not most, frames are runts ({})",
        runts.get()
    );
    assert!(
        looked_up.get() * 4 >= frames.get(),
        "enough frames reach the lookup ({} of {})",
        looked_up.get(),
        frames.get()
    );
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "took {:?}",
        started.elapsed()
    );
}

fn parts(tags: Vec<(u16, u16)>, l3: L3) -> FrameParts {
    FrameParts {
        macs: [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2],
        tags,
        l3,
        payload: vec![0; 8],
        cut: None,
    }
}

fn v4(ihl: u8, fragment: u16, dst: [u8; 4]) -> L3 {
    L3::V4 {
        version: 4,
        ihl,
        fragment,
        total_len: 60,
        protocol: 17,
        src: [192, 0, 2, 1],
        dst,
        options: vec![1; usize::from(ihl).saturating_sub(5) * 4],
    }
}

#[test]
fn nasty_frames_to_a_blocked_address() {
    let mut rig = Rig::new();
    let blocked = order(
        "NASTY",
        Action::Drop,
        Direction::Dst,
        &["203.0.113.7", "2001:db8:7::1"],
    );
    let refs = [&blocked];
    rig.apply_in_force(&refs, Enforcement::Enforce);
    let target4 = [203, 0, 113, 7];
    let target6 = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 1).octets();
    let v6 = |extensions: Vec<(u8, u8)>| L3::V6 {
        version: 6,
        payload_len: 16,
        extensions,
        upper: 17,
        src: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).octets(),
        dst: target6,
    };
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "IPv4, IHL 5",
            parts(vec![], v4(5, 0, target4)).bytes(),
            XDP_DROP,
        ),
        (
            "IPv4, IHL 4",
            parts(vec![], v4(4, 0, target4)).bytes(),
            XDP_PASS,
        ),
        (
            "IPv4, IHL 15 with 40 option bytes",
            parts(vec![], v4(15, 0, target4)).bytes(),
            XDP_DROP,
        ),
        (
            "IPv4, IHL 15 cut inside the options",
            FrameParts {
                cut: Some(14 + 30),
                ..parts(vec![], v4(15, 0, target4))
            }
            .bytes(),
            XDP_PASS,
        ),
        (
            "IPv4 later fragment",
            parts(vec![], v4(5, 0x00b9, target4)).bytes(),
            XDP_DROP,
        ),
        (
            "IPv4 first fragment (MF)",
            parts(vec![], v4(5, 0x2000, target4)).bytes(),
            XDP_DROP,
        ),
        (
            "IPv6 with a fragment header",
            parts(vec![], v6(vec![(44, 0)])).bytes(),
            XDP_DROP,
        ),
        (
            "IPv6 with hop-by-hop, routing, destination options",
            parts(vec![], v6(vec![(0, 0), (43, 1), (60, 2)])).bytes(),
            XDP_DROP,
        ),
        (
            "two tags",
            parts(vec![(0x88A8, 1), (0x8100, 2)], v4(5, 0, target4)).bytes(),
            XDP_DROP,
        ),
        (
            "three tags",
            parts(
                vec![(0x88A8, 1), (0x8100, 2), (0x8100, 3)],
                v4(5, 0, target4),
            )
            .bytes(),
            XDP_PASS,
        ),
        (
            "tag 0x9100 (not parsed)",
            parts(vec![(0x9100, 1)], v4(5, 0, target4)).bytes(),
            XDP_PASS,
        ),
        (
            "Ethernet header only, IPv4 ethertype",
            FrameParts {
                cut: Some(14),
                ..parts(vec![], v4(5, 0, target4))
            }
            .bytes(),
            XDP_PASS,
        ),
    ];
    for (what, frame, want) in &cases {
        let got = rig.dp.test_run(frame).expect("test run");
        assert_eq!(got, *want, "{what}");
        check(&mut rig, &refs, frame).unwrap_or_else(|err| panic!("{what}: {err}"));
    }
}
