//! Programs for `cargo xtask bench` only (never attached by blocker):
//!
//! - `bench_empty`: returns XDP_PASS; the floor every figure is divided by.
//! - `bench_lpm`: the reference. The same parsing, decision and counting as
//!   blocker ([`shared`]), with one kernel LPM trie per family as the table.
//!   Loaded against blocker's pinned order maps, so both count alike.
//! - `bench_drive`: writes the next (source, destination) pair of a pool of
//!   addresses into the frame, then tail-calls the program under test. This
//!   varies the addresses per packet under BPF_PROG_TEST_RUN; the driver's
//!   own cost is measured by driving `bench_empty`.
//! - `bench_gen`: the same, then XDP_TX: under BPF_PROG_TEST_RUN with live
//!   frames it is a traffic generator (as xdp-trafficgen is) for the
//!   end-to-end comparison on a veth pair.
#![no_std]
#![no_main]

#[allow(dead_code)] // blocker's own error paths
mod shared;

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC,
        xdp_action::{XDP_ABORTED, XDP_PASS, XDP_TX},
        xdp_md,
    },
    macros::{map, xdp},
    maps::{
        Array, PerCpuArray, ProgramArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::XdpContext,
};
use core::mem::MaybeUninit;

use blocker_common::PrefixEntry;
use shared::{ETH_HDR_LEN, Found, Lookup, ptr_at};

const REF_MAX: u32 = 1 << 21;

#[map]
static REF_V4: LpmTrie<[u8; 4], PrefixEntry> =
    LpmTrie::with_max_entries(REF_MAX, BPF_F_NO_PREALLOC as u32);
#[map]
static REF_V6: LpmTrie<[u32; 4], PrefixEntry> =
    LpmTrie::with_max_entries(REF_MAX, BPF_F_NO_PREALLOC as u32);

/// Address pairs for the driver: IPv4 (source, destination) in bytes 0..8,
/// or IPv6 in bytes 0..32. The length is a power of two.
#[map]
static DRV_POOL: Array<[u8; 32]> = Array::with_max_entries(1 << 20, 0);
/// `[family (4 or 6), pool length]`.
#[map]
static DRV_CONFIG: Array<u32> = Array::with_max_entries(2, 0);
#[map]
static DRV_NEXT_INDEX: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// Slot 0: the program under test.
#[map]
static DRV_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

struct Reference;

impl Lookup for Reference {
    #[inline(always)]
    fn v4(dst: u32, src: u32) -> Found {
        (
            REF_V4.get(Key::new(32, dst.to_be_bytes())),
            REF_V4.get(Key::new(32, src.to_be_bytes())),
        )
    }

    #[inline(always)]
    fn v6(dst: (u64, u64), src: (u64, u64)) -> Found {
        // Each key is written in place a word at a time: merged or moved,
        // the words would be stored 8 bytes at a time at an offset of 4
        // (after the length), which the verifier refuses on the stack.
        let mut dst_key = MaybeUninit::<Key<[u32; 4]>>::uninit();
        let mut src_key = MaybeUninit::<Key<[u32; 4]>>::uninit();
        write_key(&mut dst_key, dst);
        write_key(&mut src_key, src);
        // SAFETY: write_key wrote every word of both keys.
        let (dst_key, src_key) = unsafe { (dst_key.assume_init_ref(), src_key.assume_init_ref()) };
        (REF_V6.get(dst_key), REF_V6.get(src_key))
    }
}

/// A /128 key of `(hi, lo)`, in network order, written word by word.
#[inline(always)]
fn write_key(key: &mut MaybeUninit<Key<[u32; 4]>>, (hi, lo): (u64, u64)) {
    let [a, b] = [hi.to_be(), lo.to_be()];
    let words = [128, a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32];
    let at = key.as_mut_ptr().cast::<u32>();
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: Key<[u32; 4]> is five u32s (repr(C, packed)).
        unsafe { at.add(i).write_volatile(word) };
    }
}

/// Written out as blocker's entry point is (see `main.rs`), so that the
/// two differ in the lookup alone.
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn bench_lpm(ctx: *mut xdp_md) -> u32 {
    shared::run::<Reference>(&XdpContext::new(ctx))
}

#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[xdp]
pub fn bench_drive(ctx: XdpContext) -> u32 {
    if drive(&ctx).is_none() {
        return XDP_ABORTED;
    }
    // SAFETY: a tail call with our own context; returns only on failure.
    unsafe { DRV_TARGET.tail_call(&ctx, 0) };
    XDP_ABORTED
}

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    if drive(&ctx).is_none() {
        return XDP_ABORTED;
    }
    XDP_TX
}

#[inline(always)]
fn drive(ctx: &XdpContext) -> Option<()> {
    let family = *DRV_CONFIG.get(0)?;
    let len = *DRV_CONFIG.get(1)?;
    let next = DRV_NEXT_INDEX.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; nothing else runs on it meanwhile.
    let index = unsafe {
        let index = *next;
        *next = index.wrapping_add(1);
        index
    };
    let pair = DRV_POOL.get(index & len.wrapping_sub(1))?;
    if family == 4 {
        let at = ptr_at::<[u8; 8]>(ctx, ETH_HDR_LEN + 12).ok()?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&pair[..8]);
        // SAFETY: ptr_at checked the 8 bytes lie inside the frame.
        unsafe { *at.cast_mut() = bytes };
    } else {
        let at = ptr_at::<[u8; 32]>(ctx, ETH_HDR_LEN + 8).ok()?;
        // SAFETY: as above, 32 bytes.
        unsafe { *at.cast_mut() = *pair };
    }
    Some(())
}
