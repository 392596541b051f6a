//! The blocker XDP program: [`shared`] parses, decides and counts; this
//! file holds the lookup tables (`blocker_common::layout`: a bitmap test
//! per address, hash probes only for addresses in a bucket that holds
//! prefixes) in two generations, and the control value that picks one.
#![no_std]
#![no_main]

mod shared;

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use blocker_common::{
    Control, PrefixEntry,
    layout::{
        self, BITMAP_WORDS, Bucket4, Bucket6, NO_ENTRY, Probe4, Probe6, Shape, Short4, Tables,
        V4_SHORTS, V4_STEPS, V6_STEPS,
    },
};
use shared::{Found, Lookup, Skip};

/// Default size of each table; the controller sets the real ones (from
/// `guardrails.max_prefixes`) at load time.
const DEFAULT_BUCKETS: u32 = 1 << 10;
/// The controller writes the tables through a memory mapping.
const MMAP: u32 = BPF_F_MMAPABLE as u32;

#[map]
static BLK_CONTROL: Array<Control> = Array::pinned(1, 0);
#[map]
static BLK_V4_BITS_A: Array<u64> = Array::pinned(BITMAP_WORDS, MMAP);
#[map]
static BLK_V4_BITS_B: Array<u64> = Array::pinned(BITMAP_WORDS, MMAP);
#[map]
static BLK_V4_A: Array<Bucket4> = Array::pinned(DEFAULT_BUCKETS, MMAP);
#[map]
static BLK_V4_B: Array<Bucket4> = Array::pinned(DEFAULT_BUCKETS, MMAP);
#[map]
static BLK_V6_BITS_A: Array<u64> = Array::pinned(BITMAP_WORDS, MMAP);
#[map]
static BLK_V6_BITS_B: Array<u64> = Array::pinned(BITMAP_WORDS, MMAP);
#[map]
static BLK_V6_A: Array<Bucket6> = Array::pinned(DEFAULT_BUCKETS, MMAP);
#[map]
static BLK_V6_B: Array<Bucket6> = Array::pinned(DEFAULT_BUCKETS, MMAP);
#[map]
static BLK_V4_SHORT_A: Array<Short4> = Array::pinned(V4_SHORTS, MMAP);
#[map]
static BLK_V4_SHORT_B: Array<Short4> = Array::pinned(V4_SHORTS, MMAP);
#[map]
static BLK_ENTRY_A: Array<PrefixEntry> = Array::pinned(DEFAULT_BUCKETS, MMAP);
#[map]
static BLK_ENTRY_B: Array<PrefixEntry> = Array::pinned(DEFAULT_BUCKETS, MMAP);

/// The maps of one table generation, for `layout`'s lookups.
macro_rules! generation {
    ($name:ident, $bits4:ident, $v4:ident, $short4:ident, $bits6:ident, $v6:ident, $entries:ident) => {
        #[derive(Default)]
        struct $name;

        impl Tables for $name {
            #[inline(always)]
            fn v4_bits(&self, index: u32) -> u64 {
                $bits4.get(index).copied().unwrap_or(0)
            }
            #[inline(always)]
            fn v6_bits(&self, index: u32) -> u64 {
                $bits6.get(index).copied().unwrap_or(0)
            }
            #[inline(always)]
            fn v4_bucket(&self, index: u32) -> Option<&Bucket4> {
                $v4.get(index)
            }
            #[inline(always)]
            fn v6_bucket(&self, index: u32) -> Option<&Bucket6> {
                $v6.get(index)
            }
            #[inline(always)]
            fn v4_short(&self, index: u32) -> Short4 {
                $short4.get(index).copied().unwrap_or_default()
            }
        }

        impl $name {
            #[inline(always)]
            fn entry(index: u32) -> Option<&'static PrefixEntry> {
                if index == NO_ENTRY {
                    None
                } else {
                    $entries.get(index)
                }
            }
        }
    };
}

generation!(
    GenA,
    BLK_V4_BITS_A,
    BLK_V4_A,
    BLK_V4_SHORT_A,
    BLK_V6_BITS_A,
    BLK_V6_A,
    BLK_ENTRY_A
);
generation!(
    GenB,
    BLK_V4_BITS_B,
    BLK_V4_B,
    BLK_V4_SHORT_B,
    BLK_V6_BITS_B,
    BLK_V6_B,
    BLK_ENTRY_B
);

struct Blocker;

impl Lookup for Blocker {
    #[inline(always)]
    fn v4(dst: u32, src: u32) -> Result<Found, Skip> {
        let (generation, shape) = control()?;
        Ok(if generation == 0 {
            (
                GenA::entry(lookup_v4::<GenA>(&shape, dst)),
                GenA::entry(lookup_v4::<GenA>(&shape, src)),
            )
        } else {
            (
                GenB::entry(lookup_v4::<GenB>(&shape, dst)),
                GenB::entry(lookup_v4::<GenB>(&shape, src)),
            )
        })
    }

    #[inline(always)]
    fn v6(dst: (u64, u64), src: (u64, u64)) -> Result<Found, Skip> {
        let (generation, shape) = control()?;
        Ok(if generation == 0 {
            (
                GenA::entry(lookup_v6::<GenA>(&shape, dst)),
                GenA::entry(lookup_v6::<GenA>(&shape, src)),
            )
        } else {
            (
                GenB::entry(lookup_v6::<GenB>(&shape, dst)),
                GenB::entry(lookup_v6::<GenB>(&shape, src)),
            )
        })
    }
}

#[xdp]
pub fn blocker(ctx: XdpContext) -> u32 {
    shared::run::<Blocker>(&ctx)
}

/// A lookup past its descriptor, as `bpf_loop` hands it to each step: the
/// verifier checks a step once, not once per prefix length.
struct Looking<P> {
    shape: Shape,
    probe: P,
}

extern "C" fn step_v4<T: Tables + Default>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Looking<Probe4>` that `lookup_v4` passed to
    // bpf_loop, on its stack, for the duration of the loop.
    let ctx = unsafe { &mut *ctx.cast::<Looking<Probe4>>() };
    i64::from(layout::step_v4(&T::default(), &ctx.shape, &mut ctx.probe))
}

extern "C" fn step_v6<T: Tables + Default>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: as in `step_v4`, for `lookup_v6`.
    let ctx = unsafe { &mut *ctx.cast::<Looking<Probe6>>() };
    i64::from(layout::step_v6(&T::default(), &ctx.shape, &mut ctx.probe))
}

/// `layout::lookup_v4`, with the longer lengths tried under bpf_loop.
#[inline(always)]
fn lookup_v4<T: Tables + Default>(shape: &Shape, addr: u32) -> u32 {
    match layout::start_v4(&T::default(), shape, addr) {
        Err(entry) => entry,
        Ok(mut probe) => {
            // The longest length inline (it nearly always decides), the
            // rest under bpf_loop.
            if layout::step_v4(&T::default(), shape, &mut probe) {
                return probe.entry;
            }
            let mut ctx = Looking {
                shape: *shape,
                probe,
            };
            let step: extern "C" fn(u64, *mut c_void) -> i64 = step_v4::<T>;
            // SAFETY: a bounded loop calling `step` with `ctx`, which
            // outlives it.
            unsafe { bpf_loop(V4_STEPS, step as *mut c_void, (&raw mut ctx).cast(), 0) };
            ctx.probe.entry
        }
    }
}

/// `layout::lookup_v6`, with the longer lengths tried under bpf_loop.
#[inline(always)]
fn lookup_v6<T: Tables + Default>(shape: &Shape, (hi, lo): (u64, u64)) -> u32 {
    match layout::start_v6(&T::default(), shape, hi, lo) {
        Err(entry) => entry,
        Ok(mut probe) => {
            if layout::step_v6(&T::default(), shape, &mut probe) {
                return probe.entry;
            }
            let mut ctx = Looking {
                shape: *shape,
                probe,
            };
            let step: extern "C" fn(u64, *mut c_void) -> i64 = step_v6::<T>;
            // SAFETY: as in `lookup_v4`.
            unsafe { bpf_loop(V6_STEPS, step as *mut c_void, (&raw mut ctx).cast(), 0) };
            ctx.probe.entry
        }
    }
}

/// The live generation and how to hash into its tables.
#[inline(always)]
fn control() -> Result<(u32, Shape), Skip> {
    let control = BLK_CONTROL.get(0).ok_or(Skip::Error)?;
    let generation = control.generation & 1;
    Ok((
        generation,
        Shape {
            v4_seed: control.seed[2 * generation as usize],
            v6_seed: control.seed[2 * generation as usize + 1],
            v4_buckets: control.v4_buckets,
            v6_buckets: control.v6_buckets,
        },
    ))
}
