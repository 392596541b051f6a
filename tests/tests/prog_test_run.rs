//! The real XDP program under BPF_PROG_TEST_RUN: orders are compiled and
//! applied through `Datapath` exactly as the daemon does, then crafted frames
//! are run through the program and the verdict, the per-order counters and
//! the datapath statistics are checked frame by frame.

use std::{cell::RefCell, net::IpAddr, time::Duration};

use blocker::{
    compile::Enforcement,
    datapath::BATCH_SLOTS,
    feed::{self, Action, Direction, Order, Status},
    policy, reference,
};
use blocker_common::{COPY_CHUNK, OrderCounters, STAT_COUNT, Stat};
use blocker_tests::{
    frame::{self, ETH_HDR_LEN, ETH_P_8021Q, Frame, FrameSpec},
    orders::{drop_order, monitor_order, order, prefix},
    rig::Rig,
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use time::OffsetDateTime;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|err| panic!("bad address {text:?}: {err}"))
}

/// What these tests check of one frame run on the [`Rig`].
trait Expect {
    fn expect(
        &mut self,
        what: &str,
        frame: &[u8],
        verdict: u32,
        counted: Option<&str>,
        stats: &[Stat],
    );
    fn expect_drop(&mut self, what: &str, frame: &[u8], order: &str);
    fn expect_monitor(&mut self, what: &str, frame: &[u8], order: &str);
    fn expect_clean_pass(&mut self, what: &str, frame: &[u8]);
}

impl Expect for Rig {
    /// Runs `frame` once and checks everything it may change: the verdict,
    /// which order (if any) counted it with exactly its length in bytes, and
    /// the statistics (`stats` lists the non-zero increments; every other
    /// statistic must stay put).
    #[track_caller]
    fn expect(
        &mut self,
        what: &str,
        frame: &[u8],
        verdict: u32,
        counted: Option<&str>,
        stats: &[Stat],
    ) {
        let counters_before = self.all_counters();
        let stats_before = self.stats();
        let got = self.run(frame);
        let counters_after = self.all_counters();
        let stats_after = self.stats();
        assert_eq!(
            got,
            verdict,
            "{what}: verdict {} expected {}",
            name(got),
            name(verdict)
        );
        for (id, after) in &counters_after {
            let before = counters_before[id];
            let expected = if Some(id.as_str()) == counted {
                OrderCounters {
                    packets: before.packets + 1,
                    bytes: before.bytes + frame.len() as u64,
                }
            } else {
                before
            };
            assert_eq!(
                *after, expected,
                "{what}: counters of order {id} (the frame should be counted on {counted:?})"
            );
        }
        if let Some(counted) = counted {
            assert!(
                counters_after.contains_key(counted),
                "{what}: order {counted} is not among the applied orders"
            );
        }
        let mut expected = [0u64; STAT_COUNT as usize];
        expected[Stat::Seen as usize] = 1;
        for stat in stats {
            expected[*stat as usize] += 1;
        }
        let delta: Vec<u64> = stats_after
            .iter()
            .zip(stats_before)
            .map(|(after, before)| after - before)
            .collect();
        assert_eq!(
            delta,
            expected,
            "{what}: statistics delta (indices: {:?})",
            Stat::ALL.map(|(_, label)| label)
        );
    }

    #[track_caller]
    fn expect_drop(&mut self, what: &str, frame: &[u8], order: &str) {
        self.expect(
            what,
            frame,
            XDP_DROP,
            Some(order),
            &[Stat::Looked, Stat::Dropped],
        );
    }

    #[track_caller]
    fn expect_monitor(&mut self, what: &str, frame: &[u8], order: &str) {
        self.expect(
            what,
            frame,
            XDP_PASS,
            Some(order),
            &[Stat::Looked, Stat::Monitored, Stat::Passed],
        );
    }

    #[track_caller]
    fn expect_clean_pass(&mut self, what: &str, frame: &[u8]) {
        self.expect(what, frame, XDP_PASS, None, &[Stat::Looked, Stat::Passed]);
    }
}

fn name(action: u32) -> &'static str {
    match action {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "another action",
    }
}

fn udp(src: &str, dst: &str) -> FrameSpec {
    FrameSpec::udp(ip(src), ip(dst))
}

#[test]
fn ipv4_destination_drop_counts_frame_and_bytes() {
    let mut rig = Rig::with(
        &[drop_order("ATKM-1", Direction::Dst, &["203.0.113.7"])],
        Enforcement::Enforce,
    );
    let to = udp("192.0.2.1", "203.0.113.7").build();
    rig.expect_drop("UDP to the ordered address", &to.bytes, "ATKM-1");
    let syn = FrameSpec::tcp_syn(ip("192.0.2.1"), ip("203.0.113.7")).build();
    rig.expect_drop("TCP SYN to it", &syn.bytes, "ATKM-1");
    let echo = FrameSpec::icmp_echo(ip("192.0.2.1"), ip("203.0.113.7")).build();
    rig.expect_drop("ICMP echo to it", &echo.bytes, "ATKM-1");
    let big = udp("192.0.2.1", "203.0.113.7").payload_len(1400).build();
    rig.expect_drop("a 1400-byte payload to it", &big.bytes, "ATKM-1");
    assert_eq!(
        rig.counters("ATKM-1"),
        OrderCounters {
            packets: 4,
            bytes: (to.len() + syn.len() + echo.len() + big.len()) as u64,
        }
    );
    let from = udp("203.0.113.7", "192.0.2.1").build();
    rig.expect_clean_pass("from the address (order is dst only)", &from.bytes);
    let neighbour = udp("192.0.2.1", "203.0.113.8").build();
    rig.expect_clean_pass("to the next address", &neighbour.bytes);
}

#[test]
fn order_counters_read_at_once_are_each_slots_own() {
    // More orders than one batch read holds; a few of them, at both ends of
    // the batches, counted 1, 2, 3... times. A scrape reads them all at
    // once, a batch at a time: each slot must read as slot by slot.
    let total = BATCH_SLOTS as usize + 40;
    let orders: Vec<Order> = (0..total)
        .map(|n| {
            let target = format!("2001:db8:{:x}::1", n + 1);
            drop_order(&format!("N-{n}"), Direction::Dst, &[target.as_str()])
        })
        .collect();
    let mut rig = Rig::sized(2 * BATCH_SLOTS);
    rig.apply(&orders, Enforcement::Enforce);
    let by_slot = |slot: u32| {
        orders
            .iter()
            .find(|o| rig.slot(&o.id) == slot)
            .unwrap_or_else(|| panic!("no order holds slot {slot}"))
    };
    let batch = BATCH_SLOTS;
    let counted: Vec<Order> = [0, 1, batch - 1, batch, batch + 1, total as u32 - 1]
        .into_iter()
        .map(|slot| by_slot(slot).clone())
        .collect();
    for (n, order) in counted.iter().enumerate() {
        let target = order.targets[0].ip().to_string();
        let frame = udp("2001:db8:ffff::1", &target).payload_len(10 * n).build();
        for _ in 0..=n {
            rig.expect_drop("UDP to an ordered address", &frame.bytes, &order.id);
        }
    }
    let all = rig
        .dp
        .maps()
        .order_totals(total as u32)
        .unwrap_or_else(|err| panic!("reading the order counters at once: {err}"));
    assert_eq!(all.len(), total);
    for (n, order) in counted.iter().enumerate() {
        let one = rig.counters(&order.id);
        assert_eq!(one.packets, n as u64 + 1, "{}", order.id);
        assert_eq!(all[rig.slot(&order.id) as usize], one, "{}", order.id);
    }
    let packets: u64 = all.iter().map(|c| c.packets).sum();
    assert_eq!(
        packets,
        (1..=counted.len() as u64).sum::<u64>(),
        "no other slot counted"
    );
    // Fewer slots than a batch, and none.
    let few = rig.dp.maps().order_totals(batch - 1);
    assert!(few.is_ok_and(|few| few[..] == all[..batch as usize - 1]));
    assert!(rig.dp.maps().order_totals(0).is_ok_and(|t| t.is_empty()));
}

#[test]
fn ipv6_source_and_destination_orders() {
    let mut rig = Rig::with(
        &[
            drop_order("SRC-6", Direction::Src, &["2001:db8:7::/64"]),
            drop_order("DST-6", Direction::Dst, &["2001:db8:9::1"]),
        ],
        Enforcement::Enforce,
    );
    let from = udp("2001:db8:7::5", "2001:db8:1::1").build();
    rig.expect_drop("from inside the src prefix", &from.bytes, "SRC-6");
    let to = udp("2001:db8:1::1", "2001:db8:7::5").build();
    rig.expect_clean_pass("to the src prefix", &to.bytes);
    let to_host = FrameSpec::tcp_syn(ip("2001:db8:1::1"), ip("2001:db8:9::1")).build();
    rig.expect_drop("TCP to the dst host", &to_host.bytes, "DST-6");
    let from_host = udp("2001:db8:9::1", "2001:db8:1::1").build();
    rig.expect_clean_pass("from the dst host", &from_host.bytes);
    let outside = FrameSpec::icmp_echo(ip("2001:db8:1::1"), ip("2001:db8:7:1::5")).build();
    rig.expect_clean_pass("next /64", &outside.bytes);
}

#[test]
fn direction_both_matches_either_address() {
    let mut rig = Rig::with(
        &[drop_order(
            "BOTH",
            Direction::Both,
            &["198.51.100.0/26", "2001:db8:5::/48"],
        )],
        Enforcement::Enforce,
    );
    for (what, src, dst) in [
        ("v4 to", "192.0.2.1", "198.51.100.10"),
        ("v4 from", "198.51.100.63", "192.0.2.1"),
        ("v4 within", "198.51.100.1", "198.51.100.2"),
        ("v6 to", "2001:db8:1::1", "2001:db8:5:ffff::1"),
        ("v6 from", "2001:db8:5::1", "2001:db8:1::1"),
    ] {
        rig.expect_drop(what, &udp(src, dst).build().bytes, "BOTH");
    }
    rig.expect_clean_pass(
        "v4 outside",
        &udp("192.0.2.1", "198.51.100.64").build().bytes,
    );
    rig.expect_clean_pass(
        "v6 outside",
        &udp("2001:db8:6::1", "2001:db8:1::1").build().bytes,
    );
}

#[test]
fn vlan_tags_are_parsed_and_counted_in_bytes() {
    let mut rig = Rig::with(
        &[
            drop_order("V4", Direction::Dst, &["203.0.113.7"]),
            monitor_order("V6", Direction::Src, &["2001:db8:7::/64"]),
        ],
        Enforcement::Enforce,
    );
    let mut bytes = 0;
    for depth in 0..=2 {
        let frame = udp("192.0.2.1", "203.0.113.7").vlan_depth(depth).build();
        assert_eq!(frame.l3, ETH_HDR_LEN + 4 * depth);
        rig.expect_drop(&format!("v4 behind {depth} tags"), &frame.bytes, "V4");
        bytes += frame.len() as u64;
        let frame = udp("2001:db8:7::1", "2001:db8:1::1")
            .vlan_depth(depth)
            .build();
        rig.expect_monitor(&format!("v6 behind {depth} tags"), &frame.bytes, "V6");
    }
    assert_eq!(rig.counters("V4").bytes, bytes, "bytes include VLAN tags");
    // The two 802.1Q tags the program accepts, not only 802.1ad + 802.1Q.
    let mut frame = udp("192.0.2.1", "203.0.113.7").qinq(10, 20).build();
    frame.bytes[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
    rig.expect_drop("802.1Q in 802.1Q", &frame.bytes, "V4");
}

#[test]
fn three_vlan_tags_pass_uncounted() {
    let mut rig = Rig::with(
        &[drop_order("V4", Direction::Both, &["203.0.113.7"])],
        Enforcement::Enforce,
    );
    let frame = udp("192.0.2.1", "203.0.113.7").vlan_depth(3).build();
    rig.expect(
        "blocked address behind three tags",
        &frame.bytes,
        XDP_PASS,
        None,
        &[Stat::TooManyVlans, Stat::Passed],
    );
    let frame = udp("2001:db8:1::1", "2001:db8:7::1").vlan_depth(3).build();
    rig.expect(
        "v6 behind three tags",
        &frame.bytes,
        XDP_PASS,
        None,
        &[Stat::TooManyVlans, Stat::Passed],
    );
}

#[test]
fn drop_prefix_containing_a_monitor_host_drops_it() {
    let mut rig = Rig::with(
        &[
            drop_order("NET-DROP", Direction::Dst, &["203.0.113.0/24"]),
            monitor_order("HOST-MON", Direction::Dst, &["203.0.113.7"]),
        ],
        Enforcement::Enforce,
    );
    let host = udp("192.0.2.1", "203.0.113.7").build();
    rig.expect_drop(
        "the monitored host: drop beats monitor",
        &host.bytes,
        "NET-DROP",
    );
    let other = udp("192.0.2.1", "203.0.113.200").build();
    rig.expect_drop("another host of the /24", &other.bytes, "NET-DROP");
    assert_eq!(rig.counters("HOST-MON").packets, 0);
}

#[test]
fn drop_host_inside_a_monitor_prefix() {
    let mut rig = Rig::with(
        &[
            monitor_order("NET-MON", Direction::Dst, &["203.0.113.0/24"]),
            drop_order("HOST-DROP", Direction::Dst, &["203.0.113.7"]),
        ],
        Enforcement::Enforce,
    );
    let host = udp("192.0.2.1", "203.0.113.7").build();
    rig.expect_drop("the dropped host", &host.bytes, "HOST-DROP");
    let other = udp("192.0.2.1", "203.0.113.9").build();
    rig.expect_monitor("another host of the /24", &other.bytes, "NET-MON");
}

#[test]
fn longest_prefix_gets_the_count() {
    let mut rig = Rig::with(
        &[
            drop_order(
                "A-WIDE",
                Direction::Dst,
                &["198.51.100.0/24", "2001:db8::/32"],
            ),
            drop_order(
                "Z-NARROW",
                Direction::Dst,
                &["198.51.100.128/25", "2001:db8:7::/64"],
            ),
            drop_order(
                "M-HOST",
                Direction::Dst,
                &["198.51.100.200", "2001:db8:7::1"],
            ),
        ],
        Enforcement::Enforce,
    );
    for (dst, order) in [
        ("198.51.100.1", "A-WIDE"),
        ("198.51.100.129", "Z-NARROW"),
        ("198.51.100.200", "M-HOST"),
    ] {
        rig.expect_drop(dst, &udp("192.0.2.1", dst).build().bytes, order);
    }
    for (dst, order) in [
        ("2001:db8:8::1", "A-WIDE"),
        ("2001:db8:7::2", "Z-NARROW"),
        ("2001:db8:7::1", "M-HOST"),
    ] {
        rig.expect_drop(dst, &udp("2001:db8:1::1", dst).build().bytes, order);
    }
}

#[test]
fn same_prefix_in_two_orders_counts_the_smallest_id() {
    let mut rig = Rig::with(
        &[
            drop_order("ORD-B", Direction::Dst, &["203.0.113.7", "2001:db8:7::1"]),
            drop_order("ORD-A", Direction::Dst, &["203.0.113.7", "2001:db8:7::1"]),
            monitor_order("MON-Z", Direction::Dst, &["198.51.100.7"]),
            monitor_order("MON-Y", Direction::Both, &["198.51.100.7"]),
        ],
        Enforcement::Enforce,
    );
    rig.expect_drop(
        "v4",
        &udp("192.0.2.1", "203.0.113.7").build().bytes,
        "ORD-A",
    );
    rig.expect_drop(
        "v6",
        &udp("2001:db8:1::1", "2001:db8:7::1").build().bytes,
        "ORD-A",
    );
    rig.expect_monitor(
        "monitor pair",
        &udp("192.0.2.1", "198.51.100.7").build().bytes,
        "MON-Y",
    );
}

#[test]
fn destination_beats_source_on_equal_length_then_length_decides() {
    let mut rig = Rig::with(
        &[
            // Ids chosen so the smallest-id rule alone would pick the source.
            drop_order("A-SRC-HOST", Direction::Src, &["192.0.2.1"]),
            drop_order("B-DST-HOST", Direction::Dst, &["203.0.113.7"]),
            drop_order("C-DST-NET", Direction::Dst, &["198.51.100.0/24"]),
            monitor_order("D-SRC-MON", Direction::Src, &["192.0.2.0/24"]),
            monitor_order("E-DST-MON", Direction::Dst, &["203.0.113.0/24"]),
        ],
        Enforcement::Enforce,
    );
    rig.expect_drop(
        "/32 src vs /32 dst",
        &udp("192.0.2.1", "203.0.113.7").build().bytes,
        "B-DST-HOST",
    );
    rig.expect_drop(
        "/32 src vs /24 dst",
        &udp("192.0.2.1", "198.51.100.9").build().bytes,
        "A-SRC-HOST",
    );
    rig.expect_monitor(
        "/24 src monitor vs /24 dst monitor",
        &udp("192.0.2.99", "203.0.113.99").build().bytes,
        "E-DST-MON",
    );
    rig.expect_drop(
        "drop src beats a dst monitor",
        &udp("192.0.2.1", "203.0.113.99").build().bytes,
        "A-SRC-HOST",
    );
}

#[test]
fn observe_mode_passes_and_counts_drop_orders() {
    let mut rig = Rig::with(
        &[
            drop_order(
                "DROP-1",
                Direction::Dst,
                &["203.0.113.7", "2001:db8:7::/64"],
            ),
            monitor_order("MON-1", Direction::Dst, &["198.51.100.0/24"]),
        ],
        Enforcement::Observe,
    );
    rig.expect_monitor(
        "v4 to a drop order's target",
        &udp("192.0.2.1", "203.0.113.7").build().bytes,
        "DROP-1",
    );
    rig.expect_monitor(
        "v6 to a drop order's target",
        &udp("2001:db8:1::1", "2001:db8:7::9").vlan(5).build().bytes,
        "DROP-1",
    );
    rig.expect_monitor(
        "to a monitor order's target",
        &udp("192.0.2.1", "198.51.100.1").build().bytes,
        "MON-1",
    );
    rig.expect_clean_pass("elsewhere", &udp("192.0.2.1", "203.0.113.8").build().bytes);
    // Switching the same orders to enforce drops at once; the count goes on.
    rig.apply(
        &[
            drop_order(
                "DROP-1",
                Direction::Dst,
                &["203.0.113.7", "2001:db8:7::/64"],
            ),
            monitor_order("MON-1", Direction::Dst, &["198.51.100.0/24"]),
        ],
        Enforcement::Enforce,
    );
    rig.expect_drop(
        "enforced now",
        &udp("192.0.2.1", "203.0.113.7").build().bytes,
        "DROP-1",
    );
    assert_eq!(rig.counters("DROP-1").packets, 3);
}

/// Every prefix of a blocked frame shorter than its headers passes, counted
/// as truncated and on no order. Frames shorter than an Ethernet header never
/// reach an XDP program: BPF_PROG_TEST_RUN refuses them (EINVAL), as a NIC
/// would never deliver them. At exactly the header length the program has
/// what it needs and drops.
#[test]
fn truncated_blocked_frames_pass_at_every_length() {
    let mut rig = Rig::with(
        &[drop_order(
            "TRUNC",
            Direction::Both,
            &["203.0.113.7", "2001:db8:7::1"],
        )],
        Enforcement::Enforce,
    );
    let frames: Vec<(&str, Frame)> = vec![
        ("v4", udp("192.0.2.1", "203.0.113.7").build()),
        (
            "v4 + options",
            udp("192.0.2.1", "203.0.113.7")
                .ipv4_options(&[0x94, 4, 0, 0, 1, 1, 1, 0])
                .build(),
        ),
        (
            "v4 + 1 tag",
            udp("203.0.113.7", "192.0.2.1").vlan(7).build(),
        ),
        (
            "v4 + 2 tags",
            udp("192.0.2.1", "203.0.113.7").qinq(7, 8).build(),
        ),
        ("v6", udp("2001:db8:1::1", "2001:db8:7::1").build()),
        (
            "v6 + 2 tags",
            FrameSpec::tcp_syn(ip("2001:db8:7::1"), ip("2001:db8:1::1"))
                .qinq(7, 8)
                .build(),
        ),
    ];
    for (what, frame) in &frames {
        for len in 0..ETH_HDR_LEN {
            assert!(
                rig.dp.test_run(&frame.truncated(len)).is_err(),
                "{what}: the kernel ran a {len}-byte frame"
            );
        }
        for len in ETH_HDR_LEN..frame.l4 {
            rig.expect(
                &format!("{what} cut to {len} of {} header bytes", frame.l4),
                &frame.truncated(len),
                XDP_PASS,
                None,
                &[Stat::Truncated, Stat::Passed],
            );
        }
        rig.expect_drop(
            &format!("{what} with headers only"),
            &frame.truncated(frame.l4),
            "TRUNC",
        );
        rig.expect_drop(&format!("{what} whole"), &frame.bytes, "TRUNC");
    }
}

#[test]
fn non_ip_frames_pass_uncounted() {
    let mut rig = Rig::with(
        &[drop_order("ALL", Direction::Both, &["192.0.2.0/24"])],
        Enforcement::Enforce,
    );
    let arp = frame::arp_request([192, 0, 2, 1], [192, 0, 2, 2], &[]);
    rig.expect("ARP", &arp, XDP_PASS, None, &[Stat::NonIp, Stat::Passed]);
    let tagged = frame::arp_request([192, 0, 2, 1], [192, 0, 2, 2], &[(ETH_P_8021Q, 3)]);
    rig.expect(
        "tagged ARP",
        &tagged,
        XDP_PASS,
        None,
        &[Stat::NonIp, Stat::Passed],
    );
    // An IPv4 packet behind an unknown EtherType (LLDP's) is not IP.
    let mut lldp = udp("192.0.2.1", "192.0.2.2").build().bytes;
    lldp[12..14].copy_from_slice(&0x88CCu16.to_be_bytes());
    rig.expect(
        "LLDP EtherType",
        &lldp,
        XDP_PASS,
        None,
        &[Stat::NonIp, Stat::Passed],
    );
}

/// Statistics that a program from before the frame counts left in
/// `BLK_STATS` (reused across an upgrade, as pins are) are still reported,
/// with what this program counts added; the stale `seen` such a program
/// kept is not (readers take passed + dropped).
#[test]
fn statistics_an_older_program_counted_are_added_to() {
    use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
    use blocker_common::{IfStats, map_names};

    let mut rig = Rig::with(
        &[drop_order("ALL", Direction::Both, &["192.0.2.0/24"])],
        Enforcement::Enforce,
    );
    let start = rig.stats();
    let pin = rig.dp.bpffs_dir().join("maps").join(map_names::STATS);
    let data = MapData::from_pin(&pin).expect("the pinned BLK_STATS");
    let mut older: PerCpuArray<MapData, IfStats> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array");
    let cpus = aya::util::nr_cpus().expect("the number of CPUs");
    // Indexed by Stat: seen (stale), passed, dropped, monitored, non_ip,
    // truncated, malformed, too_many_vlans, error, ip.
    let left = [999, 5, 3, 1, 2, 0, 1, 0, 1, 5];
    let mut values = vec![IfStats::default(); cpus];
    values[0].counters = left;
    values[cpus - 1].counters[Stat::Dropped as usize] += 10;
    values[cpus - 1].counters[Stat::Looked as usize] += 10;
    older
        .set(
            7,
            PerCpuValues::try_from(values).expect("one value a CPU"),
            0,
        )
        .expect("writing what an older program counted");
    let mut expected = start;
    for (total, value) in expected.iter_mut().zip(left).skip(1) {
        *total += value;
    }
    expected[Stat::Dropped as usize] += 10;
    expected[Stat::Looked as usize] += 10;
    expected[Stat::Seen as usize] =
        expected[Stat::Passed as usize] + expected[Stat::Dropped as usize];
    assert_eq!(rig.stats(), expected, "the older counts, added once");
    rig.expect_drop(
        "a drop after them",
        &udp("192.0.2.1", "198.51.100.1").build().bytes,
        "ALL",
    );
    let arp = frame::arp_request([192, 0, 2, 1], [192, 0, 2, 2], &[]);
    rig.expect(
        "ARP after them",
        &arp,
        XDP_PASS,
        None,
        &[Stat::NonIp, Stat::Passed],
    );
}

#[test]
fn malformed_ip_headers_pass_uncounted() {
    let mut rig = Rig::with(
        &[drop_order(
            "ALL",
            Direction::Both,
            &["192.0.2.0/24", "2001:db8::/32"],
        )],
        Enforcement::Enforce,
    );
    let v4 = udp("192.0.2.1", "192.0.2.2").vlan(9).build();
    for (what, first_byte) in [
        ("IPv4 version 5", 0x55),
        ("IPv4 version 6 under EtherType IPv4", 0x65),
        ("IPv4 IHL 4", 0x44),
        ("IPv4 IHL 0", 0x40),
    ] {
        let mut bytes = v4.bytes.clone();
        bytes[v4.l3] = first_byte;
        rig.expect(
            what,
            &bytes,
            XDP_PASS,
            None,
            &[Stat::Malformed, Stat::Passed],
        );
    }
    // IHL 15 (60 bytes) on a frame that ends before: truncated, not malformed.
    let mut bytes = v4.bytes.clone();
    bytes[v4.l3] = 0x4f;
    bytes.truncate(v4.l3 + 59);
    rig.expect(
        "IPv4 IHL 15, short frame",
        &bytes,
        XDP_PASS,
        None,
        &[Stat::Truncated, Stat::Passed],
    );
    let v6 = udp("2001:db8:1::1", "2001:db8:1::2").build();
    let mut bytes = v6.bytes.clone();
    bytes[v6.l3] = 0x45;
    rig.expect(
        "IPv4 header under EtherType IPv6",
        &bytes,
        XDP_PASS,
        None,
        &[Stat::Malformed, Stat::Passed],
    );
    // The same frames well formed are dropped: the order was in force.
    rig.expect_drop("well-formed v4", &v4.bytes, "ALL");
    rig.expect_drop("well-formed v6", &v6.bytes, "ALL");
}

/// Contract YAML through the whole pure pipeline (parse, orders in force at
/// `now`, compile) into the kernel: only orders in force act.
#[test]
fn feed_yaml_through_policy_and_compiler() {
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let rfc = |at: OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    let yaml = format!(
        r#"format: blocker-feed/v1
serial: 7
issued_at: {issued}
issuer: ATKM
orders:
  - id: ATKM-ACTIVE
    rung: server
    action: drop
    direction: dst
    targets: [203.0.113.1, "2001:db8:1::/64"]
    status: active
    effective_from: {past}
    expires_at: {future}
    reference: "Aanwijzing 2026/0001"
  - id: ATKM-PENDING
    rung: server
    action: drop
    direction: dst
    targets: [203.0.113.2]
    status: active
    effective_from: {future}
  - id: ATKM-EXPIRED
    rung: server
    action: drop
    direction: dst
    targets: [203.0.113.3]
    status: active
    expires_at: {past}
  - id: ATKM-SUSPENDED
    rung: server
    action: drop
    direction: dst
    targets: [203.0.113.4]
    status: suspended
  - id: ATKM-WITHDRAWN
    rung: rack
    action: drop
    direction: dst
    targets: [198.51.100.0/24]
    status: withdrawn
  - id: ATKM-MONITOR
    rung: rack
    action: monitor
    direction: src
    targets: [198.51.100.128/25]
    status: active
"#,
        issued = rfc(now - hour),
        past = rfc(now - hour),
        future = rfc(now + hour),
    );
    let feed = feed::parse(yaml.as_bytes()).unwrap_or_else(|err| panic!("parsing:\n{yaml}\n{err}"));
    assert_eq!(feed.serial, 7);
    assert_eq!(feed.orders.len(), 6);
    let evaluation = policy::evaluate(&feed, &policy::Guardrails::default(), now)
        .unwrap_or_else(|err| panic!("evaluating: {err}"));
    let in_force: Vec<&Order> = evaluation.in_force().collect();
    let ids: Vec<&str> = in_force.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "in force: {ids:?}");
    assert!(
        ids.contains(&"ATKM-ACTIVE") && ids.contains(&"ATKM-MONITOR"),
        "in force: {ids:?}"
    );

    // The daemon loads what is in force and what is pending (the datapath
    // opens a pending order's window by itself); do the same.
    let enforceable: Vec<&Order> = evaluation.enforceable().collect();
    assert_eq!(enforceable.len(), 3, "in force + pending");
    let mut rig = Rig::new();
    rig.apply_in_force(&enforceable, Enforcement::Enforce);
    rig.expect_drop(
        "active v4",
        &udp("192.0.2.1", "203.0.113.1").build().bytes,
        "ATKM-ACTIVE",
    );
    rig.expect_drop(
        "active v6",
        &udp("2001:db8:2::1", "2001:db8:1::9").build().bytes,
        "ATKM-ACTIVE",
    );
    for dst in ["203.0.113.2", "203.0.113.3", "203.0.113.4", "198.51.100.9"] {
        rig.expect_clean_pass(
            &format!("{dst}: order not in force (pending, expired, suspended or withdrawn)"),
            &udp("192.0.2.1", dst).build().bytes,
        );
    }
    rig.expect_monitor(
        "monitored source",
        &udp("198.51.100.200", "192.0.2.1").build().bytes,
        "ATKM-MONITOR",
    );
}

/// An order without a window is marked so the program skips its window;
/// the mark is no part of the rank: on equal length the destination wins.
#[test]
fn a_windowless_source_does_not_outrank_a_timed_destination() {
    let mut timed = drop_order("TIMED", Direction::Dst, &["203.0.113.7"]);
    timed.expires_at = Some(OffsetDateTime::now_utc() + Duration::from_secs(3600));
    let plain = drop_order("PLAIN", Direction::Src, &["198.51.100.9"]);
    let mut rig = Rig::with(&[timed, plain], Enforcement::Enforce);
    rig.expect_drop(
        "a timed destination and a windowless source",
        &udp("198.51.100.9", "203.0.113.7").build().bytes,
        "TIMED",
    );
    rig.expect_drop(
        "the windowless source alone",
        &udp("198.51.100.9", "192.0.2.1").build().bytes,
        "PLAIN",
    );
}

/// A /16 holding exact addresses alone is looked up by each address's own
/// /32: a hit drops, a neighbour in the same /24 passes. A /24 patched into
/// that /16 ends the shortcut: the neighbour is dropped by it, and the
/// exact address still by its own order (the longer target).
#[test]
fn exact_addresses_alone_in_their_16_then_with_a_24_patched_in() {
    let exact = drop_order(
        "EXACT",
        Direction::Dst,
        &["198.51.100.7", "198.51.100.200", "198.51.7.1"],
    );
    let mut rig = Rig::with(std::slice::from_ref(&exact), Enforcement::Enforce);
    let to_exact = udp("192.0.2.1", "198.51.100.7").build();
    let to_neighbour = udp("192.0.2.1", "198.51.100.8").build();
    rig.expect_drop("an exact address", &to_exact.bytes, "EXACT");
    rig.expect_drop(
        "another /24 of the /16",
        &udp("192.0.2.1", "198.51.7.1").build().bytes,
        "EXACT",
    );
    rig.expect_clean_pass("its neighbour", &to_neighbour.bytes);
    rig.expect_clean_pass(
        "an address of the /16 in no /24 held",
        &udp("192.0.2.1", "198.51.9.9").build().bytes,
    );

    let rack = drop_order("RACK", Direction::Dst, &["198.51.100.0/24"]);
    rig.apply(&[exact, rack], Enforcement::Enforce);
    assert!(
        rig.applied.is_some_and(|a| a.patched),
        "the /24 was patched in, not laid out whole"
    );
    rig.expect_drop("the neighbour, under the /24", &to_neighbour.bytes, "RACK");
    rig.expect_drop("the exact address, still", &to_exact.bytes, "EXACT");
}

/// The datapath enforces each order only inside its window, by the kernel's
/// clock: loaded once, an order starts and stops on time with no apply.
#[test]
fn order_window_opens_and_closes_without_an_apply() {
    let now = OffsetDateTime::now_utc();
    let opens = now + Duration::from_millis(1500);
    let closes = now + Duration::from_millis(3000);
    let mut timed = drop_order("TIMED", Direction::Dst, &["203.0.113.7", "2001:db8:7::1"]);
    timed.effective_from = Some(opens);
    timed.expires_at = Some(closes);
    let mut rig = Rig::with(
        &[
            timed,
            monitor_order("ALWAYS", Direction::Dst, &["203.0.113.0/24"]),
        ],
        Enforcement::Enforce,
    );
    let v4 = udp("192.0.2.1", "203.0.113.7").build();
    let v6 = udp("2001:db8:1::1", "2001:db8:7::1").build();
    let wait_until = |at: OffsetDateTime| {
        let left = at - OffsetDateTime::now_utc();
        if left.is_positive() {
            std::thread::sleep(left.unsigned_abs());
        }
    };
    assert!(
        OffsetDateTime::now_utc() < opens - Duration::from_millis(500),
        "set-up too slow for the window under test"
    );
    rig.expect_monitor(
        "before the window: the broader monitor order",
        &v4.bytes,
        "ALWAYS",
    );
    rig.expect_clean_pass("before the window, v6", &v6.bytes);
    wait_until(opens + Duration::from_millis(200));
    rig.expect_drop("inside the window", &v4.bytes, "TIMED");
    rig.expect_drop("inside the window, v6", &v6.bytes, "TIMED");
    wait_until(closes + Duration::from_millis(200));
    rig.expect_monitor("after the window", &v4.bytes, "ALWAYS");
    rig.expect_clean_pass("after the window, v6", &v6.bytes);
    assert_eq!(rig.counters("TIMED").packets, 2);
}

/// A feed of `orders`, issued `now`.
fn test_feed(orders: Vec<Order>, now: OffsetDateTime) -> feed::Feed {
    feed::Feed {
        serial: 1,
        issued_at: now,
        issuer: "BLKT-TEST".to_owned(),
        orders,
    }
}

/// An order in force must act even when more higher-ranked orders than an
/// entry holds cover the same address but are not in force yet (the daemon
/// loads pending orders with their windows).
#[test]
fn in_force_order_behind_many_pending_orders_is_enforced() {
    let now = OffsetDateTime::now_utc();
    let tomorrow = now + time::Duration::days(1);
    let mut orders: Vec<Order> = ["A", "B", "C", "D", "E", "F"]
        .iter()
        .map(|id| {
            let mut pending =
                drop_order(&format!("PENDING-{id}"), Direction::Dst, &["203.0.113.7"]);
            pending.effective_from = Some(tomorrow);
            pending
        })
        .collect();
    orders.push(drop_order(
        "ZZ-IN-FORCE",
        Direction::Dst,
        &["203.0.113.0/24"],
    ));
    let feed = test_feed(orders, now);
    let evaluation = policy::evaluate(&feed, &policy::Guardrails::default(), now)
        .unwrap_or_else(|err| panic!("evaluating: {err}"));
    let enforceable: Vec<&Order> = evaluation.enforceable().collect();
    let in_force: Vec<&Order> = evaluation.in_force().collect();
    assert_eq!((enforceable.len(), in_force.len()), (7, 1));
    let winner = reference::verdict(
        &in_force,
        Enforcement::Enforce,
        ip("192.0.2.1"),
        ip("203.0.113.7"),
    )
    .expect("the reference drops the packet");
    assert_eq!(winner.order, "ZZ-IN-FORCE");
    let mut rig = Rig::new();
    rig.apply_in_force(&enforceable, Enforcement::Enforce);
    rig.expect_drop(
        "another host of the /24",
        &udp("192.0.2.1", "203.0.113.8").build().bytes,
        "ZZ-IN-FORCE",
    );
    rig.expect_drop(
        "the host six pending /32 orders name",
        &udp("192.0.2.1", "203.0.113.7").build().bytes,
        "ZZ-IN-FORCE",
    );
}

/// The program as the verifier leaves it calls no helper but the clock
/// (for an order with a window): every map lookup is inlined, a few
/// instructions for an array, and so is `bpf_loop`. LLVM once merged the
/// two table generations' entry lookups of a source address into one call
/// reached with either map, which the verifier cannot inline: every source
/// hit then paid a helper call and an indirect one through the map's
/// operations, 15 ns, as much again as the rest of the hit.
#[test]
fn the_program_calls_no_helper_but_the_clock() {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let mut rig = Rig::new();
    let program = rig.dp.program().expect("the XDP program");
    let fd = program.fd().expect("its descriptor").as_fd().as_raw_fd();
    let symbols = kernel_symbols();
    let base = *symbols
        .iter()
        .find_map(|(address, name)| (name == "__bpf_call_base").then_some(address))
        .expect("__bpf_call_base in /proc/kallsyms");
    assert_ne!(
        base, 0,
        "/proc/kallsyms hides addresses (kptr_restrict): run as root"
    );
    let mut called = std::collections::BTreeSet::new();
    for insn in translated(fd) {
        let (code, src_reg, imm) = (
            insn[0],
            insn[1] >> 4,
            i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]),
        );
        // BPF_JMP | BPF_CALL with source 0: a helper, `imm` its address
        // from __bpf_call_base (1 is a call within the program).
        if code == 0x85 && src_reg == 0 {
            let address = base.wrapping_add_signed(i64::from(imm));
            called.insert(
                symbols
                    .get(&address)
                    .cloned()
                    .unwrap_or_else(|| format!("{address:#x}")),
            );
        }
    }
    assert_eq!(
        called.into_iter().collect::<Vec<_>>(),
        ["bpf_ktime_get_tai_ns"],
        "helpers the program calls once the verifier has inlined what it can"
    );
}

/// The kernel's symbols by address (text symbols, as `/proc/kallsyms` lists them).
fn kernel_symbols() -> std::collections::HashMap<u64, String> {
    let text = std::fs::read_to_string("/proc/kallsyms").expect("reading /proc/kallsyms");
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            let name = fields.next()?;
            kind.eq_ignore_ascii_case("t")
                .then(|| (address, name.to_owned()))
        })
        .collect()
}

/// The instructions of the program `fd` as the verifier left them (before
/// the JIT), 8 bytes each: BPF_OBJ_GET_INFO_BY_FD's `xlated_prog_insns`.
fn translated(fd: std::os::fd::RawFd) -> Vec<[u8; 8]> {
    /// The head of `struct bpf_prog_info`, up to the translated instructions.
    #[repr(C)]
    #[derive(Default)]
    struct InfoHead {
        kind: u32,
        id: u32,
        tag: [u8; 8],
        jited_prog_len: u32,
        xlated_prog_len: u32,
        jited_prog_insns: u64,
        xlated_prog_insns: u64,
    }
    /// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let get = |head: &mut InfoHead| {
        let mut attr = InfoAttr {
            bpf_fd: fd as u32,
            info_len: size_of::<InfoHead>() as u32,
            info: std::ptr::from_mut(head) as u64,
        };
        // SAFETY: `attr` and the buffers it names outlive the call, which
        // writes at most `info_len` bytes of `head` and `xlated_prog_len`
        // bytes of the buffer `head` points to.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                std::ptr::from_mut(&mut attr),
                size_of::<InfoAttr>(),
            )
        };
        assert_eq!(
            rc,
            0,
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
    };
    let mut head = InfoHead::default();
    get(&mut head);
    let mut insns = vec![[0u8; 8]; head.xlated_prog_len as usize / 8];
    assert!(
        !insns.is_empty(),
        "the kernel reports no translated instructions"
    );
    head = InfoHead {
        xlated_prog_len: (insns.len() * 8) as u32,
        xlated_prog_insns: insns.as_mut_ptr() as u64,
        ..InfoHead::default()
    };
    get(&mut head);
    insns
}

/// Feed 1, then feed 2 which moves an order's target, adds an order and
/// drops one: verdicts follow the feed in force, an order present in both
/// keeps its slot and its count, a new order starts from zero.
#[test]
fn apply_swaps_generations_and_keeps_counters() {
    let feed1 = [
        drop_order("KEEP", Direction::Dst, &["203.0.113.7", "2001:db8:7::1"]),
        monitor_order("MON", Direction::Dst, &["198.51.100.0/24"]),
        drop_order("GONE", Direction::Dst, &["203.0.113.99"]),
    ];
    let feed2 = [
        drop_order("KEEP", Direction::Dst, &["203.0.113.9", "2001:db8:7::1"]),
        monitor_order("MON", Direction::Dst, &["198.51.100.0/24"]),
        drop_order("NEW", Direction::Src, &["192.0.2.66"]),
    ];
    let mut rig = Rig::with(&feed1, Enforcement::Enforce);
    let keep_slot = rig.slot("KEEP");
    let mon_slot = rig.slot("MON");
    let to_7 = udp("192.0.2.1", "203.0.113.7").build();
    let to_9 = udp("192.0.2.1", "203.0.113.9").build();
    let to_v6 = udp("2001:db8:1::1", "2001:db8:7::1").build();
    let to_mon = udp("192.0.2.1", "198.51.100.1").build();
    let from_66 = udp("192.0.2.66", "198.51.100.1").build();
    rig.expect_drop("feed 1: .7", &to_7.bytes, "KEEP");
    rig.expect_drop("feed 1: v6", &to_v6.bytes, "KEEP");
    rig.expect_clean_pass("feed 1: .9", &to_9.bytes);
    rig.expect_monitor("feed 1: monitored", &to_mon.bytes, "MON");
    rig.expect_monitor("feed 1: .66 only monitored", &from_66.bytes, "MON");
    rig.expect_drop(
        "feed 1: .99",
        &udp("192.0.2.1", "203.0.113.99").build().bytes,
        "GONE",
    );

    rig.apply(&feed2, Enforcement::Enforce);
    assert_eq!(
        rig.slot("KEEP"),
        keep_slot,
        "an order keeps its slot across feeds"
    );
    assert_eq!(
        rig.slot("MON"),
        mon_slot,
        "an order keeps its slot across feeds"
    );
    assert_eq!(
        rig.counters("NEW"),
        OrderCounters::default(),
        "a new order starts from zero"
    );
    rig.expect_clean_pass("feed 2: .7 no longer ordered", &to_7.bytes);
    rig.expect_clean_pass(
        "feed 2: .99 no longer ordered",
        &udp("192.0.2.1", "203.0.113.99").build().bytes,
    );
    rig.expect_drop("feed 2: .9", &to_9.bytes, "KEEP");
    rig.expect_drop("feed 2: v6", &to_v6.bytes, "KEEP");
    rig.expect_monitor("feed 2: monitored", &to_mon.bytes, "MON");
    rig.expect_drop("feed 2: from .66", &from_66.bytes, "NEW");
    assert_eq!(
        rig.counters("KEEP"),
        OrderCounters {
            packets: 4,
            bytes: (2 * to_v6.len() + to_7.len() + to_9.len()) as u64
        },
        "KEEP counted across both feeds"
    );
    assert_eq!(
        rig.counters("MON").packets,
        3,
        "MON counted across both feeds"
    );

    // And back: the generation flips again and feed 1's verdicts return.
    rig.apply(&feed1, Enforcement::Enforce);
    rig.expect_drop("feed 1 again: .7", &to_7.bytes, "KEEP");
    rig.expect_clean_pass("feed 1 again: .9", &to_9.bytes);
    assert_eq!(rig.counters("KEEP").packets, 5);
}

// ---------------------------------------------------------------------------
// Property test: the kernel agrees with the reference implementation.

const V4_PREFIXES: &[&str] = &[
    "203.0.113.0/24",
    "203.0.113.0/25",
    "203.0.113.128/26",
    "203.0.113.8/29",
    "203.0.113.7/32",
    "198.51.100.0/24",
    "198.51.100.64/26",
    "198.51.100.77/32",
    "192.0.2.128/25",
    "192.0.2.1/32",
    // Prefixes of /16../23: alone in their /16 or not, holding the
    // addresses below or beside them.
    "203.0.112.0/23",
    "203.0.0.0/20",
    "198.51.0.0/16",
    "198.51.96.0/21",
];
const V6_PREFIXES: &[&str] = &[
    "2001:db8::/32",
    "2001:db8:7::/48",
    "2001:db8:7::/64",
    "2001:db8:7:1::/64",
    "2001:db8:7::1/128",
    "2001:db8:8::/64",
    "2001:db8:1::1/128",
];
const V4_ADDRESSES: &[&str] = &[
    "203.0.113.7",
    "203.0.113.9",
    "203.0.113.130",
    "203.0.113.200",
    "198.51.100.77",
    "198.51.100.65",
    "198.51.100.3",
    "192.0.2.1",
    "192.0.2.200",
    "192.0.2.5",
    "203.0.5.5",
];
const V6_ADDRESSES: &[&str] = &[
    "2001:db8:7::1",
    "2001:db8:7::2",
    "2001:db8:7:1::5",
    "2001:db8:7:2::5",
    "2001:db8:8::9",
    "2001:db8:9::1",
    "2001:db8:1::1",
];

#[derive(Clone, Debug)]
struct Packet {
    vlans: usize,
    src: IpAddr,
    dst: IpAddr,
    kind: u8,
    payload: usize,
}

impl Packet {
    fn frame(&self) -> Frame {
        let spec = match self.kind {
            0 => FrameSpec::udp(self.src, self.dst),
            1 => FrameSpec::tcp_syn(self.src, self.dst),
            _ => FrameSpec::icmp_echo(self.src, self.dst),
        };
        spec.vlan_depth(self.vlans)
            .payload_len(self.payload)
            .build()
    }
}

/// Order windows relative to the test's `now`: (effective_from, expires_at)
/// in hours, `None` open. Weighted towards orders in force.
const WINDOWS: &[(Option<i64>, Option<i64>)] = &[
    (None, None),
    (None, None),
    (Some(-1), None),
    (None, Some(1)),
    (Some(-2), Some(2)),
    (Some(1), None),      // pending
    (Some(1), Some(2)),   // pending
    (None, Some(-1)),     // expired
    (Some(-2), Some(-1)), // expired
];
const STATUSES: &[Status] = &[
    Status::Active,
    Status::Active,
    Status::Active,
    Status::Active,
    Status::Suspended,
    Status::Withdrawn,
];

type OrderParts = (bool, u8, Vec<&'static str>, usize, Status);

fn order_strategy() -> impl Strategy<Value = OrderParts> {
    let prefixes: Vec<&'static str> = V4_PREFIXES.iter().chain(V6_PREFIXES).copied().collect();
    (
        any::<bool>(),
        0u8..3,
        prop::sample::subsequence(prefixes, 1..=3),
        0..WINDOWS.len(),
        prop::sample::select(STATUSES),
    )
}

/// The order `id` of a random case: drop or monitor, its direction (0
/// `dst`, 1 `src`, else `both`), its targets, its window (an index into
/// [`WINDOWS`], around `now`) and its status.
fn drawn_order(
    id: &str,
    (drop, direction, targets, window, status): (
        bool,
        u8,
        impl IntoIterator<Item = ipnetwork::IpNetwork>,
        usize,
        Status,
    ),
    now: OffsetDateTime,
) -> Order {
    let (from, until) = WINDOWS[window];
    Order {
        targets: targets.into_iter().collect(),
        effective_from: from.map(|h| now + time::Duration::hours(h)),
        expires_at: until.map(|h| now + time::Duration::hours(h)),
        status,
        ..order(
            id,
            if drop { Action::Drop } else { Action::Monitor },
            match direction {
                0 => Direction::Dst,
                1 => Direction::Src,
                _ => Direction::Both,
            },
            &[],
        )
    }
}

/// Up to six orders with unique ids, random actions, directions, targets,
/// windows (around `now`) and statuses, in random feed order.
fn feed_strategy(now: OffsetDateTime) -> impl Strategy<Value = Vec<Order>> {
    prop::collection::btree_map(0u8..24, order_strategy(), 1..=6)
        .prop_map(move |orders| {
            orders
                .into_iter()
                .map(|(n, (drop, direction, targets, window, status))| {
                    let targets = targets.iter().map(|t| prefix(t));
                    drawn_order(
                        &format!("P-{n:02}"),
                        (drop, direction, targets, window, status),
                        now,
                    )
                })
                .collect::<Vec<_>>()
        })
        // The feed's order must not matter; ids stay unique.
        .prop_shuffle()
}

fn packet_strategy() -> impl Strategy<Value = Packet> {
    let v4 = (
        prop::sample::select(V4_ADDRESSES),
        prop::sample::select(V4_ADDRESSES),
    );
    let v6 = (
        prop::sample::select(V6_ADDRESSES),
        prop::sample::select(V6_ADDRESSES),
    );
    (prop_oneof![v4, v6], 0usize..=2, 0u8..3, 0usize..48).prop_map(
        |((src, dst), vlans, kind, payload)| Packet {
            vlans,
            src: ip(src),
            dst: ip(dst),
            kind,
            payload,
        },
    )
}

/// One case of the kernel's verdicts against the reference: `orders`
/// evaluated at `now` and applied to `rig` as the daemon does (most cases
/// after the last are patched in: counted in `patched`), then each of
/// `packets` run through the program, its verdict and the order counted
/// compared with `reference::verdict`.
fn verdicts_agree(
    rig: &RefCell<Rig>,
    now: OffsetDateTime,
    orders: Vec<Order>,
    observe: bool,
    packets: &[Packet],
    patched: &std::cell::Cell<usize>,
) -> Result<(), TestCaseError> {
    let enforcement = if observe {
        Enforcement::Observe
    } else {
        Enforcement::Enforce
    };
    // As the daemon does: evaluate at `now`, load what is in force or
    // pending (the kernel keeps pending orders closed by their window).
    let feed = test_feed(orders, now);
    let evaluation = policy::evaluate(&feed, &policy::Guardrails::default(), now)
        .map_err(|err| TestCaseError::fail(format!("evaluating: {err}")))?;
    let enforceable: Vec<&Order> = evaluation.enforceable().collect();
    let in_force: Vec<&Order> = evaluation.in_force().collect();
    let mut rig = rig.borrow_mut();
    rig.apply_in_force(&enforceable, enforcement);
    if rig.applied.is_some_and(|a| a.patched) {
        patched.set(patched.get() + 1);
    }
    // More orders on one prefix than an entry holds is covered by
    // `in_force_order_behind_many_pending_orders_is_enforced`.
    prop_assume!(rig.compiled.as_ref().is_some_and(|c| c.overflow == 0));
    for packet in packets {
        let frame = packet.frame();
        let expected = reference::verdict(&in_force, enforcement, packet.src, packet.dst);
        let before = rig.all_counters();
        let verdict = rig.run(&frame.bytes);
        let after = rig.all_counters();
        let expected_verdict = match &expected {
            Some(w) if w.action == Action::Drop && enforcement == Enforcement::Enforce => XDP_DROP,
            _ => XDP_PASS,
        };
        prop_assert_eq!(
            verdict,
            expected_verdict,
            "verdict for {:?} (reference: {:?})",
            packet,
            expected
        );
        let counted: Vec<&String> = after
            .iter()
            .filter(|(id, c)| **c != before[*id])
            .map(|(id, _)| id)
            .collect();
        let expected_counted: Vec<&String> = expected.iter().map(|w| &w.order).collect();
        prop_assert_eq!(
            &counted,
            &expected_counted,
            "counted order for {:?} (reference: {:?})",
            packet,
            expected
        );
        if let Some(id) = counted.first() {
            let (b, a) = (before[*id], after[*id]);
            prop_assert_eq!(a.packets - b.packets, 1);
            prop_assert_eq!(a.bytes - b.bytes, frame.len() as u64);
        }
    }
    Ok(())
}

/// Runs `cases` cases of `strategy` through `check` (which runs
/// [`verdicts_agree`] on the rig once or more, counting its patches) on
/// one rig; at least `min_patched` applies must have been patched in, and
/// all within `limit`.
fn verdicts_agree_over<S: Strategy>(
    what: &str,
    cases: u32,
    min_patched: usize,
    limit: Duration,
    strategy: S,
    check: impl Fn(&RefCell<Rig>, S::Value, &std::cell::Cell<usize>) -> Result<(), TestCaseError>,
) {
    let rig = RefCell::new(Rig::new());
    let config = Config {
        cases,
        max_shrink_iters: 400,
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    // Each case's feed replaces the last: most are patched into the tables.
    let patched = std::cell::Cell::new(0);
    let result = runner.run(&strategy, |value| check(&rig, value, &patched));
    if let Err(err) = result {
        panic!("{what}: the XDP program disagrees with reference::verdict: {err}");
    }
    // A feed of another enforcement mode is laid out whole; the rest are
    // patches.
    assert!(
        patched.get() >= min_patched,
        "{what}: only {} applies in {cases} cases were patches",
        patched.get()
    );
    assert!(
        started.elapsed() < limit,
        "{what}: {cases} cases took {:?}",
        started.elapsed()
    );
}

#[test]
fn kernel_verdicts_match_the_reference() {
    let now = OffsetDateTime::now_utc();
    let strategy = (
        feed_strategy(now),
        any::<bool>(),
        prop::collection::vec(packet_strategy(), 1..=24),
    );
    verdicts_agree_over(
        "curated prefixes",
        300,
        100,
        Duration::from_secs(240),
        strategy,
        |rig, (orders, observe, packets), patched| {
            verdicts_agree(rig, now, orders, observe, &packets, patched)
        },
    );
}

/// IPv4 /16s that [`any_prefix`] draws from, and the bits (from the
/// most significant, 0) an address in them may have set: few, so that
/// prefixes of every length from /16 to /32 nest, overlap, share /16s,
/// buckets and /20s, or lie alone in them.
const V4_BLOCKS: [u32; 3] = [0xcb00_0000, 0xc633_0000, 0xc000_0000];
const V4_BITS: [u32; 10] = [16, 18, 20, 22, 23, 24, 26, 28, 30, 31];
/// The same for IPv6, in 2001:db8::/29..: bits past /32, at the lengths the
/// lookup treats apart (the /32 bucket, /48, /64) and between them.
const V6_BASE: u128 = 0x2001_0db8 << 96;
const V6_BITS: [u32; 12] = [32, 36, 40, 47, 52, 56, 63, 64, 80, 96, 112, 127];

/// A prefix of any length a datacenter order may hold (IPv4 /16../32,
/// IPv6 /29../128), in the few blocks above.
fn any_prefix() -> impl Strategy<Value = ipnetwork::IpNetwork> {
    any_prefix_spread(0)
}

/// [`any_prefix`], its IPv4 /16 and its IPv6 /32 spread over the
/// `2^spread` next to those of the few blocks (with `spread` random bits
/// just above them): more /16s and /32s to hold a table's prefixes, so
/// that some hold one prefix, or a few, and a change adds the first or
/// takes the last.
fn any_prefix_spread(spread: u32) -> impl Strategy<Value = ipnetwork::IpNetwork> {
    // Half the lengths any, half those the lookup treats apart.
    let v4_len = prop_oneof![16u8..=32, prop::sample::select(&[16u8, 20, 24, 32][..])];
    let v6_len = prop_oneof![29u8..=128, prop::sample::select(&[32u8, 48, 64, 128][..])];
    let above = 0..1u32 << spread;
    let v4 = (0..V4_BLOCKS.len(), any::<u16>(), v4_len, above.clone()).prop_map(
        move |(block, bits, len, above)| {
            let block = V4_BLOCKS[block] ^ above << 16;
            let addr = with_bits(u128::from(block), bits, &V4_BITS, 32) as u32;
            let net = addr & (u32::MAX << (32 - u32::from(len)));
            ipnetwork::IpNetwork::new(std::net::Ipv4Addr::from(net).into(), len).expect("a prefix")
        },
    );
    let v6 = (any::<u16>(), v6_len, above).prop_map(|(bits, len, above)| {
        let base = V6_BASE ^ u128::from(above) << 96;
        let addr = with_bits(base, bits, &V6_BITS, 128);
        let net = addr & (u128::MAX << (128 - u32::from(len)));
        ipnetwork::IpNetwork::new(std::net::Ipv6Addr::from(net).into(), len).expect("a prefix")
    });
    prop_oneof![v4, v6]
}

/// `base` (an address `width` bits wide) with the bits at `positions`
/// (from the most significant, 0) set where `bits` has theirs (bit `i`
/// for `positions[i]`).
fn with_bits(base: u128, bits: u16, positions: &[u32], width: u32) -> u128 {
    positions
        .iter()
        .enumerate()
        .filter(|(i, _)| bits >> i & 1 != 0)
        .fold(base, |a, (_, p)| a | 1 << (width - 1 - p))
}

/// Up to ten orders of one to five prefixes each from [`any_prefix`],
/// with random actions, directions, windows and statuses.
fn any_length_feed(now: OffsetDateTime) -> impl Strategy<Value = Vec<Order>> {
    feed_of(now, 32, 1..=10, 1..=5, any_prefix())
}

/// `orders` orders (ids drawn below `ids`) of `targets` prefixes each from
/// `prefix`, with random actions, directions, windows and statuses.
fn feed_of(
    now: OffsetDateTime,
    ids: u8,
    orders: std::ops::RangeInclusive<usize>,
    targets: std::ops::RangeInclusive<usize>,
    prefix: impl Strategy<Value = ipnetwork::IpNetwork>,
) -> impl Strategy<Value = Vec<Order>> {
    let one = (
        any::<bool>(),
        0u8..3,
        prop::collection::btree_set(prefix, targets),
        0..WINDOWS.len(),
        prop::sample::select(STATUSES),
    );
    prop::collection::btree_map(0..ids, one, orders).prop_map(move |orders| {
        orders
            .into_iter()
            .map(|(n, drawn)| drawn_order(&format!("L-{n:03}"), drawn, now))
            .collect()
    })
}

/// Addresses at and around each target of `orders`: its first and last
/// address, one in its middle, and the addresses just outside it.
fn around_targets(orders: &[Order]) -> Vec<IpAddr> {
    around(orders.iter().flat_map(|o| o.targets.iter()))
}

/// Addresses at and around each of `targets` (as [`around_targets`]).
fn around<'t>(targets: impl Iterator<Item = &'t ipnetwork::IpNetwork>) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = targets
        .flat_map(|target| {
            // Both families as numbers, IPv4 wrapping at its own width.
            let (first, last, all) = match target {
                ipnetwork::IpNetwork::V4(p) => (
                    u128::from(u32::from(p.network())),
                    u128::from(u32::from(p.broadcast())),
                    u128::from(u32::MAX),
                ),
                ipnetwork::IpNetwork::V6(p) => (
                    u128::from(p.network()),
                    u128::from(p.broadcast()),
                    u128::MAX,
                ),
            };
            [
                first,
                last,
                first + (last - first) / 2,
                first.wrapping_sub(1) & all,
                last.wrapping_add(1) & all,
            ]
            .map(|a| match u32::try_from(a) {
                Ok(v4) if target.is_ipv4() => IpAddr::from(std::net::Ipv4Addr::from(v4)),
                _ => IpAddr::from(std::net::Ipv6Addr::from(a)),
            })
        })
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

/// A packet drawn before the addresses it may go between are known:
/// indices into them, and the rest of its frame.
#[derive(Clone, Debug)]
struct Pick {
    dst: prop::sample::Index,
    src: prop::sample::Index,
    vlans: usize,
    kind: u8,
    payload: usize,
}

fn pick_strategy() -> impl Strategy<Value = Pick> {
    (
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0usize..=2,
        0u8..3,
        0usize..48,
    )
        .prop_map(|(dst, src, vlans, kind, payload)| Pick {
            dst,
            src,
            vlans,
            kind,
            payload,
        })
}

impl Pick {
    /// The packet to one of `addresses` from one of its family there
    /// (`addresses` is not empty).
    fn packet(&self, addresses: &[IpAddr]) -> Packet {
        let dst = *self.dst.get(addresses);
        let same: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == dst.is_ipv4())
            .collect();
        Packet {
            vlans: self.vlans,
            src: *self.src.get(&same),
            dst,
            kind: self.kind,
            payload: self.payload,
        }
    }
}

/// Prefixes of every length an order may hold, nesting and overlapping in
/// a few blocks (unlike the curated list of the test above), and frames to
/// and from addresses at, in and just outside each of them.
#[test]
fn kernel_verdicts_match_the_reference_at_every_length() {
    let now = OffsetDateTime::now_utc();
    let strategy = (any_length_feed(now), any::<bool>()).prop_flat_map(|(orders, observe)| {
        let addresses = around_targets(&orders);
        let packet = pick_strategy().prop_map(move |pick| pick.packet(&addresses));
        (
            Just(orders),
            Just(observe),
            prop::collection::vec(packet, 1..=32),
        )
    });
    verdicts_agree_over(
        "prefixes of every length",
        400,
        120,
        Duration::from_secs(240),
        strategy,
        |rig, (orders, observe, packets), patched| {
            verdicts_agree(rig, now, orders, observe, &packets, patched)
        },
    );
}

/// One edit of a feed, drawn before the feed it edits is known: which
/// order and which of its targets (indices into whatever is there), what
/// to do (`kind`), and the prefix, window and status it may need.
#[derive(Clone, Debug)]
struct Edit {
    order: prop::sample::Index,
    target: prop::sample::Index,
    kind: u8,
    prefix: ipnetwork::IpNetwork,
    window: usize,
    status: Status,
}

fn edit_strategy(
    prefix: impl Strategy<Value = ipnetwork::IpNetwork>,
) -> impl Strategy<Value = Edit> {
    (
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0u8..7,
        prefix,
        0..WINDOWS.len(),
        prop::sample::select(STATUSES),
    )
        .prop_map(|(order, target, kind, prefix, window, status)| Edit {
            order,
            target,
            kind,
            prefix,
            window,
            status,
        })
}

impl Edit {
    /// Makes the edit in `orders` (not empty; ids and each order's targets
    /// stay unique, `added` numbers the orders it adds): a target replaced,
    /// added or taken out, a status or window changed, an order taken out
    /// or added. Returns the targets whose verdicts it may change.
    fn make(
        &self,
        orders: &mut Vec<Order>,
        added: &mut u32,
        now: OffsetDateTime,
    ) -> Vec<ipnetwork::IpNetwork> {
        let i = self.order.index(orders.len());
        let mut targets = orders[i].targets.to_vec();
        let j = self.target.index(targets.len());
        let absent = !targets.contains(&self.prefix);
        let touched = match self.kind {
            0 if absent => vec![std::mem::replace(&mut targets[j], self.prefix), self.prefix],
            1 if absent => {
                targets.push(self.prefix);
                vec![self.prefix]
            }
            2 if targets.len() > 1 => vec![targets.remove(j)],
            3 => {
                orders[i].status = self.status;
                targets.clone()
            }
            4 => {
                let (from, until) = WINDOWS[self.window];
                orders[i].effective_from = from.map(|h| now + time::Duration::hours(h));
                orders[i].expires_at = until.map(|h| now + time::Duration::hours(h));
                targets.clone()
            }
            5 if orders.len() > 1 => return orders.remove(i).targets.to_vec(),
            6 => {
                *added += 1;
                let n = *added;
                // Drop or monitor, and each direction, by turns.
                let (drop, direction) = (n.is_multiple_of(2), (n % 3) as u8);
                let drawn = (drop, direction, [self.prefix], self.window, self.status);
                orders.push(drawn_order(&format!("N-{n:03}"), drawn, now));
                return vec![self.prefix];
            }
            _ => Vec::new(),
        };
        orders[i].targets = targets.into();
        touched
    }
}

/// A big feed (tens of orders, hundreds of prefixes of every length that
/// crowd the same /16s, /24s and /32s) changed a few edits at a time, as a
/// regulator's feed changes: each change is compiled against the last and
/// patched into the tables, then frames around the targets it touched, and
/// around any target, get the reference's verdict.
#[test]
fn kernel_verdicts_match_the_reference_as_a_big_feed_changes() {
    let now = OffsetDateTime::now_utc();
    // Half crowded into the few /16s and /32s, half spread over more.
    let prefix = || prop_oneof![any_prefix(), any_prefix_spread(4)];
    let strategy = (
        feed_of(now, 200, 20..=60, 1..=12, prefix()),
        any::<bool>(),
        prop::collection::vec(prop::collection::vec(edit_strategy(prefix()), 1..=6), 1..=4),
        prop::collection::vec(pick_strategy(), 16..=32),
    );
    verdicts_agree_over(
        "a big feed changing",
        BIG_FEED_CASES,
        BIG_FEED_CASES as usize,
        Duration::from_secs(240),
        strategy,
        |rig, (mut orders, observe, changes, picks), patched| {
            let mut added = 0;
            for edits in std::iter::once(&Vec::new()).chain(&changes) {
                let touched: Vec<_> = edits
                    .iter()
                    .flat_map(|edit| edit.make(&mut orders, &mut added, now))
                    .collect();
                let focus = around(touched.iter());
                let all = around_targets(&orders);
                // Every other frame around what the change touched.
                let packets: Vec<Packet> = picks
                    .iter()
                    .enumerate()
                    .map(|(k, pick)| {
                        pick.packet(if k % 2 == 0 && !focus.is_empty() {
                            &focus
                        } else {
                            &all
                        })
                    })
                    .collect();
                verdicts_agree(rig, now, orders.clone(), observe, &packets, patched)?;
            }
            Ok(())
        },
    );
}

/// Cases of [`kernel_verdicts_match_the_reference_as_a_big_feed_changes`]:
/// each applies a feed and up to four changes of it.
const BIG_FEED_CASES: u32 = 150;

/// The program's step-1 bitmap is a map of its own program: made by the
/// datapath (to be mappable) and pinned only while the program loads. What
/// an open leaves under `bpffs_dir` is the maps, the links and the
/// program, also when a second program is loaded over the same pins (as at
/// a restart), and the new program's bitmap starts with the live bits.
#[test]
fn opening_pins_only_maps_links_and_program() {
    let kept = drop_order("KEPT", Direction::Dst, &["198.51.100.7"]);
    let rig = Rig::with(std::slice::from_ref(&kept), Enforcement::Enforce);
    let dir = rig.dp.bpffs_dir().to_owned();
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| {
                entry
                    .expect("a bpffs entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(), ["links", "maps", "prog"], "after the first open");
    let mut again = blocker::datapath::Datapath::open(&dir, rig.dp.capacity())
        .unwrap_or_else(|err| panic!("loading the program again: {err}"));
    assert_eq!(names(), ["links", "maps", "prog"], "after the second open");
    assert!(
        again
            .step1_marked(ip("198.51.100.7"))
            .expect("reading the new program's step-1 bit"),
        "the new program's bitmap lacks the live prefix's bit"
    );
    assert!(
        !again
            .step1_marked(ip("203.0.113.9"))
            .expect("reading the new program's step-1 bit"),
        "the new program's bitmap has a bit no generation has"
    );
}

/// The program's step-1 bitmap holds a bucket's bit while either table
/// generation has the bucket: a patch adding a prefix in a new bucket sets
/// it before that generation goes live (the first frame is dropped), and
/// once a later patch has taken an IPv4 prefix out and the generation left
/// has caught up, the bit is clear again. (A patch leaves an IPv6 bit set:
/// it is a hash that other buckets may share, cleared by a whole layout.)
#[test]
fn step_one_bits_follow_patches_in_and_out() {
    let kept = drop_order("KEPT", Direction::Dst, &["198.51.100.7"]);
    let mut rig = Rig::with(std::slice::from_ref(&kept), Enforcement::Enforce);
    let (v4, v6) = (ip("203.0.113.9"), ip("2001:db8:9::9"));
    let marked = |rig: &mut Rig, addr: IpAddr| {
        rig.dp
            .step1_marked(addr)
            .unwrap_or_else(|err| panic!("reading the step-1 bit of {addr}: {err}"))
    };
    for addr in [v4, v6] {
        assert!(!marked(&mut rig, addr), "{addr}: marked before any order");
    }

    let added = drop_order("ADDED", Direction::Dst, &["203.0.113.9", "2001:db8:9::9"]);
    rig.apply(&[kept.clone(), added], Enforcement::Enforce);
    assert!(
        rig.applied.is_some_and(|a| a.patched),
        "the new buckets were patched in"
    );
    rig.expect_drop(
        "the new IPv4 address",
        &udp("192.0.2.1", "203.0.113.9").build().bytes,
        "ADDED",
    );
    rig.expect_drop(
        "the new IPv6 address",
        &udp("2001:db8:1::1", "2001:db8:9::9").build().bytes,
        "ADDED",
    );
    for addr in [v4, v6] {
        assert!(marked(&mut rig, addr), "{addr}: not marked while in force");
    }

    rig.apply(std::slice::from_ref(&kept), Enforcement::Enforce);
    assert!(
        rig.applied.is_some_and(|a| a.patched),
        "the buckets were patched out"
    );
    rig.expect_clean_pass(
        "the IPv4 address taken out",
        &udp("192.0.2.1", "203.0.113.9").build().bytes,
    );
    assert!(
        !marked(&mut rig, v4),
        "{v4}: still marked once both generations dropped it"
    );
    assert!(
        marked(&mut rig, ip("198.51.100.7")),
        "the order kept lost its bit"
    );
    rig.expect_drop(
        "the address kept",
        &udp("192.0.2.1", "198.51.100.7").build().bytes,
        "KEPT",
    );
}

/// A patch reads and writes thousands of hash-table buckets in each family,
/// more than the copy program moves in one run (`COPY_CHUNK`): read from
/// the live generation and written to the idle one a chunk at a time, then
/// written again into the generation left behind, which the next patch
/// starts from. After each of two patches in a row, every old and new
/// prefix's first and last address finds the entry a layout from scratch
/// gives it, in userspace, and the kernel's verdicts agree on a sample.
#[test]
fn patches_of_many_buckets_move_them_in_chunks() {
    use blocker_tests::bench::workload;

    const PREFIXES: usize = 80_000;
    let feeds = {
        let first = workload::orders(PREFIXES, 31);
        // One target in eighteen replaced: a ninth of the claims, below the
        // share past which the compiler lays out whole.
        let second = workload::changed(&first, 18, 32);
        let third = workload::changed(&second, 18, 33);
        [first, second, third]
    };
    let mut rig = Rig::sized(PREFIXES as u32);
    rig.apply(&feeds[0], Enforcement::Enforce);
    let mut probes: Vec<IpAddr> = Vec::new();
    for (round, orders) in feeds.iter().enumerate().skip(1) {
        rig.apply(orders, Enforcement::Enforce);
        let applied = rig.applied.expect("applied");
        assert!(
            applied.patched,
            "update {round} was laid out whole, not patched"
        );
        let (v4, v6) = applied.buckets;
        assert!(
            v4.min(v6) > COPY_CHUNK as usize,
            "update {round} wrote ({v4}, {v6}) buckets: not more than a chunk in each family"
        );
        // This round's prefixes and those it took out, beside the last
        // round's.
        for prefix in feeds[round - 1]
            .iter()
            .chain(orders)
            .flat_map(|o| o.targets.iter())
        {
            probes.push(prefix.network());
            probes.push(prefix.broadcast());
        }
        probes.sort_unstable();
        probes.dedup();
        let mut whole = Rig::sized(PREFIXES as u32);
        whole.apply(orders, Enforcement::Enforce);
        for order in orders {
            assert_eq!(
                rig.slot(&order.id),
                whole.slot(&order.id),
                "slot of {}",
                order.id
            );
        }
        let lookups = |rig: &Rig| {
            rig.dp
                .maps()
                .lookup_all(&probes)
                .unwrap_or_else(|err| panic!("looking up {} addresses: {err}", probes.len()))
        };
        let (patched, expected) = (lookups(&rig), lookups(&whole));
        let found = expected.iter().filter(|e| e.is_some()).count();
        assert!(
            found > PREFIXES,
            "update {round}: only {found} of {} addresses are in a prefix",
            probes.len()
        );
        for ((addr, got), want) in probes.iter().zip(&patched).zip(&expected) {
            assert_eq!(got, want, "update {round}: the entry of {addr}");
        }
        for addr in probes.iter().step_by(probes.len() / 2000) {
            let frame = match addr {
                IpAddr::V4(_) => udp("192.0.2.1", &addr.to_string()),
                IpAddr::V6(_) => udp("2001:db8:1::1", &addr.to_string()),
            }
            .build()
            .bytes;
            assert_eq!(
                name(rig.run(&frame)),
                name(whole.run(&frame)),
                "update {round}: the verdict for a frame to {addr}"
            );
        }
    }
}
