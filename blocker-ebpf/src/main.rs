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
        self, BITMAP_WORDS, Bucket4, Bucket6, NO_ENTRY, Probe, Shape, Short4, Tables, V4_SHORTS,
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

        impl Generation for $name {
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

/// One table generation's maps: the lookup tables and the entries.
trait Generation: Tables + Default {
    fn entry(index: u32) -> Option<&'static PrefixEntry>;
}

struct Blocker;

impl Lookup for Blocker {
    #[inline(always)]
    fn v4(dst: u32, src: u32) -> Result<Found, Skip> {
        let (generation, control) = control()?;
        Ok(if generation == 0 {
            v4_in::<GenA>(control, generation, dst, src)
        } else {
            v4_in::<GenB>(control, generation, dst, src)
        })
    }

    #[inline(always)]
    fn v6(dst: (u64, u64), src: (u64, u64)) -> Result<Found, Skip> {
        let (generation, control) = control()?;
        Ok(if generation == 0 {
            v6_in::<GenA>(control, generation, dst, src)
        } else {
            v6_in::<GenB>(control, generation, dst, src)
        })
    }
}

/// The entries of an IPv4 destination and source in generation `G`.
#[inline(always)]
fn v4_in<G: Generation>(control: &Control, generation: usize, dst: u32, src: u32) -> Found {
    let tables = G::default();
    let marked = (
        layout::v4_marked(&tables, dst),
        layout::v4_marked(&tables, src),
    );
    // Nearly every frame ends here, before the hash shape is read.
    if marked == (false, false) {
        return (None, None);
    }
    let shape = control.shape(generation);
    (
        v4_entry::<G>(&tables, &shape, dst, marked.0),
        v4_entry::<G>(&tables, &shape, src, marked.1),
    )
}

/// The entry of an IPv4 address whose bitmap bit is `marked`. A function
/// of its own, not a closure: LLVM could make a closure called twice a
/// BPF-to-BPF call (it did for IPv6, at 2-4 ns a hit).
#[inline(always)]
fn v4_entry<G: Generation>(
    tables: &G,
    shape: &Shape,
    addr: u32,
    marked: bool,
) -> Option<&'static PrefixEntry> {
    if !marked {
        return None;
    }
    G::entry(finish::<G, _>(
        shape,
        layout::start_v4_marked(tables, shape, addr),
    ))
}

/// The entries of an IPv6 destination and source in generation `G`.
#[inline(always)]
fn v6_in<G: Generation>(
    control: &Control,
    generation: usize,
    dst: (u64, u64),
    src: (u64, u64),
) -> Found {
    let tables = G::default();
    let marked = (
        layout::v6_marked(&tables, dst.0),
        layout::v6_marked(&tables, src.0),
    );
    if marked == (false, false) {
        return (None, None);
    }
    let shape = control.shape(generation);
    (
        v6_entry::<G>(&tables, &shape, dst, marked.0),
        v6_entry::<G>(&tables, &shape, src, marked.1),
    )
}

/// As [`v4_entry`], for an IPv6 address (upper, lower 64 bits).
#[inline(always)]
fn v6_entry<G: Generation>(
    tables: &G,
    shape: &Shape,
    (hi, lo): (u64, u64),
    marked: bool,
) -> Option<&'static PrefixEntry> {
    if !marked {
        return None;
    }
    G::entry(finish::<G, _>(
        shape,
        layout::start_v6_marked(tables, shape, hi, lo),
    ))
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

extern "C" fn step<T: Tables + Default, P: Probe>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Looking<P>` that `finish` passed to bpf_loop,
    // on its stack, for the duration of the loop.
    let ctx = unsafe { &mut *ctx.cast::<Looking<P>>() };
    i64::from(ctx.probe.step(&T::default(), &ctx.shape))
}

/// `layout::finish`, with the lengths after the longest tried under
/// bpf_loop: the longest inline (it nearly always decides), the rest
/// without unrolling a loop per length for the verifier.
#[inline(always)]
fn finish<T: Tables + Default, P: Probe>(shape: &Shape, start: Result<P, u32>) -> u32 {
    let mut probe = match start {
        Err(entry) => return entry,
        Ok(probe) => probe,
    };
    if probe.step(&T::default(), shape) {
        return probe.entry();
    }
    let mut ctx = Looking {
        shape: *shape,
        probe,
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = step::<T, P>;
    // SAFETY: a bounded loop calling `step` with `ctx`, which outlives it.
    unsafe { bpf_loop(P::STEPS, step as *mut c_void, (&raw mut ctx).cast(), 0) };
    ctx.probe.entry()
}

/// The live generation, and the control value (its hash shape is read
/// only when a lookup needs it).
#[inline(always)]
fn control() -> Result<(usize, &'static Control), Skip> {
    let control = BLK_CONTROL.get(0).ok_or(Skip::Error)?;
    Ok((control.live(), control))
}
