//! Types shared by the XDP program (`blocker-ebpf`) and the controller
//! (`blocker-userspace`): map names, keys, values and counter layouts.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of implicit padding and free
//! of `Option`/enums, so the kernel and userspace agree on every byte.
//!
//! The lookup structure: two generations (A/B) of one LPM trie per address
//! family. [`Control::generation`] names the generation the program reads; the
//! controller fills the other one and flips the selector, so a packet always
//! sees one whole feed, never a half-applied one.
#![no_std]

/// No order: the slot value of an empty [`Match`].
pub const NO_SLOT: u32 = u32::MAX;

/// Order slots (per-order counters and metadata) the maps hold.
pub const MAX_ORDERS: u32 = 65_536;

/// Map names, as the XDP program declares them and as they are pinned.
pub mod map_names {
    pub const CONTROL: &str = "BLK_CONTROL";
    pub const V4: [&str; 2] = ["BLK_V4_A", "BLK_V4_B"];
    pub const V6: [&str; 2] = ["BLK_V6_A", "BLK_V6_B"];
    pub const ORDER_COUNTERS: &str = "BLK_ORDER_CNT";
    pub const STATS: &str = "BLK_STATS";
}

/// Name of the XDP program function.
pub const PROGRAM_NAME: &str = "blocker";

/// One order's claim on a prefix for one direction and action: the order slot
/// to count it on, and the length of the prefix through which it matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// Order slot, or [`NO_SLOT`].
    pub slot: u32,
    /// Length of the order target that matched (the attribution tie-break).
    pub prefix_len: u32,
}

impl Match {
    pub const NONE: Self = Self {
        slot: NO_SLOT,
        prefix_len: 0,
    };

    #[inline(always)]
    pub const fn is_some(&self) -> bool {
        self.slot != NO_SLOT
    }
}

/// The value stored under a prefix in the lookup tables: for an address whose
/// longest matching table prefix is this one, the already-resolved winner for
/// each direction and action among *all* orders in force that cover it
/// (including broader targets). The datapath only has to combine the
/// destination lookup with the source lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixEntry {
    /// Best drop order matching this address as a destination.
    pub dst_drop: Match,
    /// Best monitor order matching this address as a destination.
    pub dst_monitor: Match,
    /// Best drop order matching this address as a source.
    pub src_drop: Match,
    /// Best monitor order matching this address as a source.
    pub src_monitor: Match,
}

impl PrefixEntry {
    pub const EMPTY: Self = Self {
        dst_drop: Match::NONE,
        dst_monitor: Match::NONE,
        src_drop: Match::NONE,
        src_monitor: Match::NONE,
    };
}

/// The one-entry control array: which table generation is live.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Control {
    /// 0 = the `_A` tables, 1 = the `_B` tables.
    pub generation: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Per-order, per-CPU counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrderCounters {
    pub packets: u64,
    /// Frame length as XDP sees it (Ethernet header and VLAN tags included).
    pub bytes: u64,
}

/// Per-CPU datapath statistics, indexed by [`Stat`] value.
pub const STAT_COUNT: u32 = 10;

/// Indices into the statistics array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every frame the program saw.
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

const _: () = assert!(size_of::<Match>() == 8);
const _: () = assert!(size_of::<PrefixEntry>() == 32);
const _: () = assert!(size_of::<Control>() == 8);
const _: () = assert!(size_of::<OrderCounters>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers with no
    // padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::Match {}
    unsafe impl aya::Pod for super::PrefixEntry {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::OrderCounters {}
}
