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
        self, BITMAP_WORDS, Bucket4, Bucket6, NO_ENTRY, Probe, Probe4, Probe6, Shape, Short4,
        Tables, V4_SHORTS,
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
    ($name:ident, $index:literal, $bits4:ident, $v4:ident, $short4:ident, $bits6:ident, $v6:ident, $entries:ident) => {
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
            const INDEX: usize = $index;

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
    0,
    BLK_V4_BITS_A,
    BLK_V4_A,
    BLK_V4_SHORT_A,
    BLK_V6_BITS_A,
    BLK_V6_A,
    BLK_ENTRY_A
);
generation!(
    GenB,
    1,
    BLK_V4_BITS_B,
    BLK_V4_B,
    BLK_V4_SHORT_B,
    BLK_V6_BITS_B,
    BLK_V6_B,
    BLK_ENTRY_B
);

/// One table generation's maps: the lookup tables and the entries.
trait Generation: Tables + Default {
    /// Its index in `Control` (0: the `_A` maps, 1: the `_B` maps).
    const INDEX: usize;
    fn entry(index: u32) -> Option<&'static PrefixEntry>;
}

struct Blocker;

impl Lookup for Blocker {
    #[inline(always)]
    fn v4(dst: u32, src: u32) -> Result<Found, Skip> {
        both(dst, src)
    }

    #[inline(always)]
    fn v6(dst: (u64, u64), src: (u64, u64)) -> Result<Found, Skip> {
        both(dst, src)
    }
}

/// An address of one family, as the lookup's two steps take it.
trait Address: Copy {
    type Probe: Probe;
    /// Step 1: whether the address's bucket bit is set.
    fn marked<T: Tables>(self, tables: &T) -> bool;
    /// Step 2 on, for a marked address.
    fn start<T: Tables>(self, tables: &T, shape: &Shape) -> Result<Self::Probe, u32>;
}

impl Address for u32 {
    type Probe = Probe4;
    #[inline(always)]
    fn marked<T: Tables>(self, tables: &T) -> bool {
        layout::v4_marked(tables, self)
    }
    #[inline(always)]
    fn start<T: Tables>(self, tables: &T, shape: &Shape) -> Result<Probe4, u32> {
        layout::start_v4_marked(tables, shape, self)
    }
}

impl Address for (u64, u64) {
    type Probe = Probe6;
    #[inline(always)]
    fn marked<T: Tables>(self, tables: &T) -> bool {
        layout::v6_marked(tables, self.0)
    }
    #[inline(always)]
    fn start<T: Tables>(self, tables: &T, shape: &Shape) -> Result<Probe6, u32> {
        layout::start_v6_marked(tables, shape, self.0, self.1)
    }
}

/// The entries of a destination and a source in the live generation.
#[inline(always)]
fn both<A: Address>(dst: A, src: A) -> Result<Found, Skip> {
    let control = BLK_CONTROL.get(0).ok_or(Skip::Error)?;
    Ok(if control.live() == GenA::INDEX {
        in_generation::<GenA, A>(control, dst, src)
    } else {
        in_generation::<GenB, A>(control, dst, src)
    })
}

/// The entries of a destination and a source in generation `G`.
#[inline(always)]
fn in_generation<G: Generation, A: Address>(control: &Control, dst: A, src: A) -> Found {
    let tables = G::default();
    let marked = (dst.marked(&tables), src.marked(&tables));
    // Nearly every frame ends here, before the hash shape is read.
    if marked == (false, false) {
        return (None, None);
    }
    let shape = control.shape(G::INDEX);
    (
        entry(&tables, &shape, dst, marked.0),
        entry(&tables, &shape, src, marked.1),
    )
}

/// The entry of an address whose bitmap bit is `marked`. A function of its
/// own, not a closure: LLVM made a closure called twice a BPF-to-BPF call
/// (for IPv6, at 2 ns a hit).
#[inline(always)]
fn entry<G: Generation, A: Address>(
    tables: &G,
    shape: &Shape,
    addr: A,
    marked: bool,
) -> Option<&'static PrefixEntry> {
    if !marked {
        return None;
    }
    G::entry(finish::<G, A::Probe>(shape, addr.start(tables, shape)))
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
