//! What every XDP program of this crate does around its table lookup:
//! parse Ethernet (up to two VLAN tags) and the IPv4/IPv6 header, ask a
//! [`Lookup`] for the entries of the destination and source addresses, pick
//! the winning order by the contract's rule, count, and return the verdict.
//! The blocker program and the benchmark's LPM-trie reference share it, so
//! they differ in the lookup alone.
//!
//! Anything unexpected passes: traffic nobody ordered blocked must flow, so an
//! internal failure is counted and fails open.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_tai_ns,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use blocker_common::{
    CANDIDATES, Candidate, Count, FrameCounts, IF_SLOTS, IfStats, MAX_ORDERS, OrderCounters,
    OrderWindow, PrefixEntry,
};

pub const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;

#[map]
static BLK_ORDER_CNT: PerCpuArray<OrderCounters> = PerCpuArray::pinned(MAX_ORDERS, 0);
#[map]
static BLK_ORDER_WIN: Array<OrderWindow> = Array::pinned(MAX_ORDERS, 0);
/// What programs before [`BLK_FRAMES`] counted: declared so that it stays
/// pinned (readers add its counts), never written.
#[map]
static BLK_STATS: PerCpuArray<IfStats> = PerCpuArray::pinned(IF_SLOTS, 0);
#[map]
static BLK_FRAMES: PerCpuArray<FrameCounts> = PerCpuArray::pinned(IF_SLOTS, 0);

/// The table entries of a frame's (destination, source) addresses.
pub type Found = (Option<&'static PrefixEntry>, Option<&'static PrefixEntry>);

/// How a program finds the entries of a frame's addresses (host order).
pub trait Lookup {
    fn v4(dst: u32, src: u32) -> Found;
    /// Addresses as (upper, lower) 64 bits.
    fn v6(dst: (u64, u64), src: (u64, u64)) -> Found;
}

/// Why a frame was not looked up.
pub enum Skip {
    NonIp,
    Truncated,
    Malformed,
    TooManyVlans,
}

impl Skip {
    #[inline(always)]
    fn count(&self) -> Count {
        match self {
            Skip::NonIp => Count::NonIp,
            Skip::Truncated => Count::Truncated,
            Skip::Malformed => Count::Malformed,
            Skip::TooManyVlans => Count::TooManyVlans,
        }
    }
}

/// Runs one frame through parsing, `L`'s lookup and the decision.
#[inline(always)]
pub fn run<L: Lookup>(ctx: &XdpContext) -> u32 {
    let slot = (ctx.ingress_ifindex() as u32) % IF_SLOTS;
    // One count a frame, its outcome: readers make the statistics they
    // report from them (`blocker_common::IfStats::of`).
    let Some(stats) = BLK_FRAMES.get_ptr_mut(slot) else {
        // Cannot happen: `slot` is below IF_SLOTS, the map's size. Were it
        // to, there would be nowhere to count, so fail open at once: one
        // path through the program for the verifier and the CPU, not a
        // counted and an uncounted copy of all of it.
        return XDP_PASS;
    };
    let verdict = match parse::<L>(ctx, stats) {
        Ok(verdict) => verdict,
        Err(skip) => {
            bump(stats, skip.count());
            return XDP_PASS;
        }
    };
    bump(
        stats,
        if verdict == XDP_DROP {
            Count::Dropped
        } else {
            Count::Passed
        },
    );
    verdict
}

/// This CPU's frame counts of the frame's interface slot.
type Stats = *mut FrameCounts;

#[inline(always)]
fn bump(stats: Stats, count: Count) {
    // SAFETY: a value of the per-CPU map (`run` checked the lookup): no
    // other context writes it concurrently; the index is a constant below
    // COUNT_COUNT.
    unsafe { (*stats).counters[count as usize] += 1 };
}

/// A pointer to a `T` at `offset` bytes into the frame, if the frame holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Skip> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Skip::Truncated);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Result<u16, Skip> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: ptr_at checked the two bytes lie inside the frame.
    Ok(u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
fn parse<L: Lookup>(ctx: &XdpContext, stats: Stats) -> Result<u32, Skip> {
    let mut ethertype = read_be16(ctx, 12)?;
    let mut offset = ETH_HDR_LEN;
    // Up to two tags (QinQ: 802.1ad outer, 802.1Q inner), unrolled.
    if is_vlan(ethertype) {
        ethertype = read_be16(ctx, offset + 2)?;
        offset += VLAN_HDR_LEN;
        if is_vlan(ethertype) {
            ethertype = read_be16(ctx, offset + 2)?;
            offset += VLAN_HDR_LEN;
            if is_vlan(ethertype) {
                return Err(Skip::TooManyVlans);
            }
        }
    }
    match ethertype {
        ETH_P_IPV4 => ipv4::<L>(ctx, offset, stats),
        ETH_P_IPV6 => ipv6::<L>(ctx, offset, stats),
        _ => Err(Skip::NonIp),
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[inline(always)]
fn ipv4<L: Lookup>(ctx: &XdpContext, offset: usize, stats: Stats) -> Result<u32, Skip> {
    let hdr = ptr_at::<[u8; IPV4_MIN_HDR_LEN]>(ctx, offset)?;
    // SAFETY: ptr_at checked the 20 bytes lie inside the frame.
    let hdr = unsafe { &*hdr };
    let version = hdr[0] >> 4;
    let header_len = usize::from(hdr[0] & 0x0f) * 4;
    if version != 4 || header_len < IPV4_MIN_HDR_LEN {
        return Err(Skip::Malformed);
    }
    if ctx.data() + offset + header_len > ctx.data_end() {
        return Err(Skip::Truncated);
    }
    let src = u32::from_be_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let dst = u32::from_be_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
    let (table_dst, table_src) = L::v4(dst, src);
    Ok(decide(ctx, stats, table_dst, table_src))
}

#[inline(always)]
fn ipv6<L: Lookup>(ctx: &XdpContext, offset: usize, stats: Stats) -> Result<u32, Skip> {
    let hdr = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, offset)?;
    // SAFETY: ptr_at checked the 40 bytes lie inside the frame.
    let hdr = unsafe { &*hdr };
    if hdr[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let src = (be64(hdr, 8), be64(hdr, 16));
    let dst = (be64(hdr, 24), be64(hdr, 32));
    let (table_dst, table_src) = L::v6(dst, src);
    Ok(decide(ctx, stats, table_dst, table_src))
}

/// Eight bytes of the header at `at`, as a big-endian integer.
#[inline(always)]
fn be64(hdr: &[u8; IPV6_HDR_LEN], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hdr[at..at + 8]);
    u64::from_be_bytes(bytes)
}

/// Combine the two lookups by the contract's attribution rule. Each entry
/// lists its candidates best first (drop over monitor, longer target,
/// smaller id: resolved by the controller); the first one whose order is
/// within its window wins its direction, then the higher rank wins, and on a
/// tie the destination.
#[inline(always)]
fn decide(
    ctx: &XdpContext,
    stats: Stats,
    dst: Option<&PrefixEntry>,
    src: Option<&PrefixEntry>,
) -> u32 {
    // The clock is read only for a candidate with a window (a miss, and a
    // hit on an order without one, cost none).
    let mut now = 0;
    let dst = match dst {
        Some(entry) => first_in_window(&entry.dst, &mut now),
        None => Candidate::NONE,
    };
    let src = match src {
        Some(entry) => first_in_window(&entry.src, &mut now),
        None => Candidate::NONE,
    };
    let winner = if dst.is_some() && (!src.is_some() || dst.strength() >= src.strength()) {
        dst
    } else {
        src
    };
    if !winner.is_some() {
        return XDP_PASS;
    }
    count(ctx, stats, winner.slot);
    if winner.is_drop() {
        XDP_DROP
    } else {
        bump(stats, Count::Monitored);
        XDP_PASS
    }
}

#[inline(always)]
fn first_in_window(candidates: &[Candidate; CANDIDATES], now: &mut u64) -> Candidate {
    // The first candidate alone, before the loop (which LLVM leaves
    // rolled): nearly every hit is an order without a window.
    let first = candidates[0];
    if !first.is_some() {
        return Candidate::NONE;
    }
    if first.windowless() {
        return first;
    }
    for candidate in candidates {
        if !candidate.is_some() {
            break;
        }
        // An order without a window needs neither it nor the clock.
        if candidate.windowless() {
            return *candidate;
        }
        let Some(window) = BLK_ORDER_WIN.get(candidate.slot) else {
            continue;
        };
        // An order without a window needs no clock (the read costs more
        // than the rest of a hit).
        if window.not_before == 0 && window.not_after == u64::MAX {
            return *candidate;
        }
        if *now == 0 {
            // SAFETY: a plain helper call with no arguments.
            *now = unsafe { bpf_ktime_get_tai_ns() };
        }
        if window.not_before <= *now && *now < window.not_after {
            return *candidate;
        }
    }
    Candidate::NONE
}

#[inline(always)]
fn count(ctx: &XdpContext, stats: Stats, slot: u32) {
    match BLK_ORDER_CNT.get_ptr_mut(slot) {
        Some(counters) => {
            let len = (ctx.data_end() - ctx.data()) as u64;
            // SAFETY: a per-CPU slot: no other context writes it concurrently.
            unsafe {
                (*counters).packets += 1;
                (*counters).bytes += len;
            }
        }
        None => bump(stats, Count::Errors),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
