//! Types shared by the XDP program (`blocker-ebpf`) and the controller
//! (`blocker-userspace`): map names, keys, values and counter layouts.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of implicit padding and free
//! of `Option`/enums, so the kernel and userspace agree on every byte.
//!
//! The lookup structure ([`layout`]): per address family a bitmap of
//! buckets (IPv4 /24s; IPv6 /32s, hashed) that says which buckets hold any
//! prefix, and a two-choice hash table of 4-slot buckets (one cache line for
//! IPv4) keyed by (prefix length, network). A miss, nearly every packet,
//! costs one bit test per address. Table entries ([`PrefixEntry`]) live in an
//! array, deduplicated. Everything comes in two generations (A/B):
//! [`Control::generation`] names the one the program reads; the controller
//! writes the other one and flips the selector, so a packet always sees one
//! whole feed, never a half-applied one.
#![no_std]

/// No order: the slot value of an empty [`Candidate`].
pub const NO_SLOT: u32 = u32::MAX;

/// Order slots (per-order counters and metadata) the maps hold.
pub const MAX_ORDERS: u32 = 65_536;

/// Map names, as the XDP program declares them and as they are pinned.
pub mod map_names {
    pub const CONTROL: &str = "BLK_CONTROL";
    pub const V4_BITS: [&str; 2] = ["BLK_V4_BITS_A", "BLK_V4_BITS_B"];
    pub const V4_SHORT: [&str; 2] = ["BLK_V4_SHORT_A", "BLK_V4_SHORT_B"];
    pub const V4: [&str; 2] = ["BLK_V4_A", "BLK_V4_B"];
    pub const V6_BITS: [&str; 2] = ["BLK_V6_BITS_A", "BLK_V6_BITS_B"];
    pub const V6: [&str; 2] = ["BLK_V6_A", "BLK_V6_B"];
    pub const ENTRIES: [&str; 2] = ["BLK_ENTRY_A", "BLK_ENTRY_B"];
    pub const ORDER_COUNTERS: &str = "BLK_ORDER_CNT";
    pub const ORDER_WINDOWS: &str = "BLK_ORDER_WIN";
    /// Interface statistics as programs before the per-frame counts kept
    /// them: no longer written, still added to what readers report.
    pub const STATS: &str = "BLK_STATS";
    pub const FRAMES: &str = "BLK_FRAMES";
    /// The lookup tables of each generation: bitmaps, hash tables, entries
    /// and the IPv4 /16 array, in the order the datapath indexes them.
    pub const TABLES: [[&str; 6]; 2] = [
        [
            V4_BITS[0],
            V4[0],
            V6_BITS[0],
            V6[0],
            ENTRIES[0],
            V4_SHORT[0],
        ],
        [
            V4_BITS[1],
            V4[1],
            V6_BITS[1],
            V6[1],
            ENTRIES[1],
            V4_SHORT[1],
        ],
    ];
    /// Every map, in the order the datapath pins them: the control value,
    /// each generation's [`TABLES`], then the order and interface maps.
    pub const ALL: [&str; 17] = {
        let mut all = [CONTROL; 17];
        let mut i = 0;
        while i < 12 {
            all[1 + i] = TABLES[i / 6][i % 6];
            i += 1;
        }
        all[13] = ORDER_COUNTERS;
        all[14] = ORDER_WINDOWS;
        all[15] = STATS;
        all[16] = FRAMES;
        all
    };
}

/// Name of the XDP program function.
pub const PROGRAM_NAME: &str = "blocker";

/// Candidates kept per direction in a [`PrefixEntry`].
pub const CANDIDATES: usize = 4;

/// Rank bit of a drop order: drop beats monitor whatever the prefix length.
pub const RANK_DROP: u32 = 1 << 8;

/// Rank bit of an order without a window (no `effective_from`, no
/// `expires_at`): in force for as long as its entry is, so the program
/// reads no window for it. Not part of the order's
/// [strength](Candidate::strength).
pub const RANK_NO_WINDOW: u32 = 1 << 31;

/// One order's claim on a prefix for one direction: the order slot to count
/// it on, and its rank: [`RANK_DROP`] for a drop order, plus the length of
/// the target through which it matched (a higher [strength](Self::strength)
/// wins), and [`RANK_NO_WINDOW`] for an order without a window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Order slot, or [`NO_SLOT`].
    pub slot: u32,
    pub rank: u32,
}

impl Candidate {
    pub const NONE: Self = Self {
        slot: NO_SLOT,
        rank: 0,
    };

    #[inline(always)]
    pub const fn is_some(&self) -> bool {
        self.slot != NO_SLOT
    }

    #[inline(always)]
    pub const fn is_drop(&self) -> bool {
        self.rank & RANK_DROP != 0
    }

    /// What the attribution rule compares: drop over monitor, then the
    /// longer target.
    #[inline(always)]
    pub const fn strength(&self) -> u32 {
        self.rank & !RANK_NO_WINDOW
    }

    /// The order has no window ([`RANK_NO_WINDOW`]).
    #[inline(always)]
    pub const fn windowless(&self) -> bool {
        self.rank & RANK_NO_WINDOW != 0
    }

    #[inline(always)]
    pub const fn prefix_len(&self) -> u32 {
        self.rank & 0xff
    }
}

/// The value stored under a prefix in the lookup tables. For an address
/// whose longest matching table prefix is this one: per direction, the
/// orders whose targets cover it (this prefix or a broader one), best first
/// by the contract's rule (drop over monitor, longer target, smaller id).
/// The datapath takes the first candidate whose order window
/// ([`OrderWindow`]) holds the current time, for the destination and the
/// source lookup, and combines the two (higher rank; on a tie, destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixEntry {
    pub dst: [Candidate; CANDIDATES],
    pub src: [Candidate; CANDIDATES],
}

impl PrefixEntry {
    pub const EMPTY: Self = Self {
        dst: [Candidate::NONE; CANDIDATES],
        src: [Candidate::NONE; CANDIDATES],
    };
}

/// When an order slot may be enforced, in CLOCK_TAI nanoseconds: from
/// `not_before` (inclusive) to `not_after` (exclusive). The datapath checks
/// it itself, so orders start and stop on time while the daemon is down.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrderWindow {
    pub not_before: u64,
    pub not_after: u64,
}

impl OrderWindow {
    pub const ALWAYS: Self = Self {
        not_before: 0,
        not_after: u64::MAX,
    };
}

/// The one-entry control array: which table generation is live, and how
/// to hash into each generation's tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Control {
    /// 0 = the `_A` tables, 1 = the `_B` tables.
    pub generation: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// Hash seeds: `[A IPv4, A IPv6, B IPv4, B IPv6]`.
    pub seed: [u32; 4],
    /// Buckets in each IPv4 hash table (fixed at load).
    pub v4_buckets: u32,
    /// Buckets in each IPv6 hash table (fixed at load).
    pub v6_buckets: u32,
    /// Prefixes per family the tables were made for (`max_prefixes`).
    pub capacity: u32,
    /// Prefixes each generation holds: `[A IPv4, A IPv6, B IPv4, B IPv6]`.
    pub prefixes: [u32; 4],
}

impl Control {
    /// The live generation: 0 (`_A`) or 1 (`_B`).
    #[inline(always)]
    pub const fn live(&self) -> usize {
        (self.generation & 1) as usize
    }

    /// How generation `generation` (0 or 1) is hashed into.
    #[inline(always)]
    pub const fn shape(&self, generation: usize) -> layout::Shape {
        layout::Shape::new(
            self.seed[2 * generation],
            self.seed[2 * generation + 1],
            self.v4_buckets,
            self.v6_buckets,
        )
    }
}

/// The program's own copy of [`Control`] (global data, not pinned), with
/// what the controller works out from it once so that the program need not
/// for each frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProgramControl {
    pub control: Control,
    /// Zero.
    pub reserved: u32,
    /// Each generation's [`layout::Shape::v6_len_keys`]: `[A, B]`.
    pub v6_len_keys: [[u64; 3]; 2],
}

impl ProgramControl {
    pub const fn new(control: Control) -> Self {
        Self {
            control,
            reserved: 0,
            v6_len_keys: [control.shape(0).v6_len_keys, control.shape(1).v6_len_keys],
        }
    }
}

/// Per-order, per-CPU counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrderCounters {
    pub packets: u64,
    /// Frame length as XDP sees it (Ethernet header and VLAN tags included).
    pub bytes: u64,
}

/// Statistics kept per frame outcome ([`Stat`]).
pub const STAT_COUNT: u32 = 10;

/// Interface slots of the statistics array: a frame counts in slot
/// `ingress ifindex % IF_SLOTS` (one array lookup per frame; the controller
/// maps slots back to the configured interfaces).
pub const IF_SLOTS: u32 = 256;

/// Per-CPU statistics of one interface slot, indexed by [`Stat`] value:
/// what readers report ([`IfStats::of`]), and how programs before
/// [`FrameCounts`] counted in `BLK_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfStats {
    pub counters: [u64; STAT_COUNT as usize],
}

impl IfStats {
    /// The statistics of a slot: those an older program counted in
    /// `BLK_STATS` (`before`) plus those the frame `counts` make. Every
    /// reported value is a sum of counters that only grow, so no read, however
    /// it interleaves with the program's increments, reports less than
    /// the read before it.
    pub fn of(before: &IfStats, counts: &FrameCounts) -> IfStats {
        // What each count adds to: a frame's outcome is also its verdict,
        // and a looked-up frame's verdict is also `Looked`.
        const ADDS_TO: [(Count, &[Stat]); COUNT_COUNT] = [
            (Count::Passed, &[Stat::Passed, Stat::Looked]),
            (Count::Dropped, &[Stat::Dropped, Stat::Looked]),
            (Count::Monitored, &[Stat::Monitored]),
            (Count::NonIp, &[Stat::NonIp, Stat::Passed]),
            (Count::Truncated, &[Stat::Truncated, Stat::Passed]),
            (Count::Malformed, &[Stat::Malformed, Stat::Passed]),
            (Count::TooManyVlans, &[Stat::TooManyVlans, Stat::Passed]),
            (Count::Errors, &[Stat::Errors]),
        ];
        let mut stats = *before;
        for (count, stats_of_it) in ADDS_TO {
            for &stat in stats_of_it {
                let total = &mut stats.counters[stat as usize];
                *total = total.wrapping_add(counts.counters[count as usize]);
            }
        }
        // Every frame ends passed or dropped.
        stats.counters[Stat::Seen as usize] = stats.counters[Stat::Passed as usize]
            .wrapping_add(stats.counters[Stat::Dropped as usize]);
        stats
    }
}

/// Counts the program keeps per frame outcome ([`Count`]).
pub const COUNT_COUNT: usize = 8;

/// Per-CPU frame counts of one interface slot (`BLK_FRAMES`), indexed by
/// [`Count`] value. A frame makes one increment, a monitor match or an
/// internal failure one more: readers derive the rest ([`IfStats::of`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameCounts {
    pub counters: [u64; COUNT_COUNT],
}

/// Indices into [`FrameCounts`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// IP frames looked up and passed (no order, or a monitor order).
    Passed = 0,
    /// Frames dropped by a drop order.
    Dropped = 1,
    /// Frames that matched a monitor order (also counted [`Count::Passed`]).
    Monitored = 2,
    /// The skip reasons of [`Stat`]: each frame so counted passed, unlooked.
    NonIp = 3,
    Truncated = 4,
    Malformed = 5,
    TooManyVlans = 6,
    /// Internal failures (also counted passed or dropped).
    Errors = 7,
}

/// Indices into [`IfStats`]: the statistics readers report, which
/// [`IfStats::of`] makes from the program's [`Count`]s (and which programs
/// before those counted themselves).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every frame the program saw: [`Stat::Passed`] + [`Stat::Dropped`]
    /// (every frame ends passed or dropped).
    Seen = 0,
    /// Frames passed (including monitor matches and unparsed frames).
    Passed = 1,
    /// Frames dropped by a drop order.
    Dropped = 2,
    /// Frames that matched a monitor order (and passed).
    Monitored = 3,
    /// Frames that are not IPv4/IPv6 (ARP, LLDP, MPLS, ...).
    NonIp = 4,
    /// Frames too short for the headers their EtherType announces.
    Truncated = 5,
    /// IP frames whose header is inconsistent (version, IHL).
    Malformed = 6,
    /// More VLAN tags than the program parses (two).
    TooManyVlans = 7,
    /// Internal failures (a map lookup that cannot fail, failed); fail open.
    Errors = 8,
    /// IPv4 and IPv6 frames looked up.
    Looked = 9,
}

impl Stat {
    /// Every statistic, in index order, with its metric label.
    pub const ALL: [(Stat, &'static str); STAT_COUNT as usize] = [
        (Stat::Seen, "seen"),
        (Stat::Passed, "passed"),
        (Stat::Dropped, "dropped"),
        (Stat::Monitored, "monitored"),
        (Stat::NonIp, "non_ip"),
        (Stat::Truncated, "truncated"),
        (Stat::Malformed, "malformed"),
        (Stat::TooManyVlans, "too_many_vlans"),
        (Stat::Errors, "error"),
        (Stat::Looked, "ip"),
    ];
}

const _: () = assert!(size_of::<Candidate>() == 8);
const _: () = assert!(size_of::<PrefixEntry>() == 64);
const _: () = assert!(size_of::<OrderWindow>() == 16);
const _: () = assert!(size_of::<Control>() == 52);
const _: () = assert!(size_of::<ProgramControl>() == 104);
const _: () = assert!(size_of::<layout::Bucket4>() == 64);
const _: () = assert!(size_of::<layout::Bucket6>() == 160);
const _: () = assert!(size_of::<IfStats>() == 80);
const _: () = assert!(size_of::<FrameCounts>() == 64);
const _: () = assert!(size_of::<OrderCounters>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers with no
    // padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::Candidate {}
    unsafe impl aya::Pod for super::OrderWindow {}
    unsafe impl aya::Pod for super::PrefixEntry {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::OrderCounters {}
    unsafe impl aya::Pod for super::IfStats {}
    unsafe impl aya::Pod for super::FrameCounts {}
    unsafe impl aya::Pod for super::layout::Bucket4 {}
    unsafe impl aya::Pod for super::layout::Bucket6 {}
    unsafe impl aya::Pod for super::layout::Short4 {}
}

pub mod layout;

/// Name of the controller's copy program (`blocker-ebpf/src/copy.rs`):
/// never attached, only run by BPF_PROG_TEST_RUN.
pub const COPY_PROGRAM_NAME: &str = "blk_copy";

/// Buckets one run of the copy program moves at most: the size of its
/// staging maps. A run holds its CPU (preemption off, as any BPF program
/// does) for about 25 µs (IPv4) to 50 µs (IPv6) at 512: a router's packets
/// on that CPU wait no longer than that. 4096 took up to 0.77 ms a run and
/// saved nothing.
pub const COPY_CHUNK: u32 = 512;

/// What the copy program does, as the controller hands it over in the
/// bytes of its test frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyJob {
    /// A [`CopyOp`].
    pub op: u32,
    /// The table generation: 0 (the `_A` maps) or 1 (`_B`).
    pub generation: u32,
    /// Buckets to move, from the staging maps' start (at most
    /// [`COPY_CHUNK`]).
    pub count: u32,
    pub reserved: u32,
}

impl CopyJob {
    /// The job as the test frame's bytes, which the program reads as a
    /// `CopyJob` (an Ethernet header's worth: a test run wants one).
    pub fn to_frame(self) -> [u8; 16] {
        let mut frame = [0u8; 16];
        let words = [self.op, self.generation, self.count, self.reserved];
        for (bytes, word) in frame.chunks_exact_mut(4).zip(words) {
            bytes.copy_from_slice(&word.to_ne_bytes());
        }
        frame
    }
}

const _: () = assert!(size_of::<CopyJob>() == 16);

/// The copy program's moves: a family's buckets at the staged indices,
/// read into the staged values (gather) or written from them (scatter).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyOp {
    Gather4 = 1,
    Scatter4 = 2,
    Gather6 = 3,
    Scatter6 = 4,
}
