//! The blocker XDP program: [`shared`] parses, decides and counts; this
//! file holds the lookup tables (`blocker_common::layout`: a bitmap test
//! per address, hash probes only for addresses in a bucket that holds
//! prefixes) in two generations, and the control value that picks one.
//! The program reads its own global data first: one bitmap of both
//! generations' bits ([`BLK_UNION`]), then, for a frame past it, its copy
//! of the control value ([`BLK_LIVE`]). The object also holds the
//! controller's [`copy`] program, which it runs to move a patch's buckets.
#![no_std]
#![no_main]

mod copy;
mod shared;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, xdp_md},
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::map,
    maps::Array,
    programs::XdpContext,
};
use blocker_common::{
    Control, PrefixEntry, ProgramControl,
    layout::{
        self, BITMAP_WORDS, Bitmaps, Bucket4, Bucket6, NO_ENTRY, Probe, Probe4, Probe6, Shape,
        Short4, Tables, V4_SHORTS,
    },
};
use shared::{Found, Lookup};

/// Default size of each table; the controller sets the real ones (from
/// `guardrails.max_prefixes`) at load time.
const DEFAULT_BUCKETS: u32 = 1 << 10;
/// The controller writes the tables through a memory mapping.
const MMAP: u32 = BPF_F_MMAPABLE as u32;

/// Which generation is live, and how to hash into each: the controller
/// keeps it (`BLK_LIVE` is the program's copy).
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

/// Step 1's bitmaps as the program reads them, whichever generation is
/// live: a bit is set here when it is set in either generation's bitmap
/// (`BLK_V4_BITS_*`, `BLK_V6_BITS_*`, which the controller keeps for itself
/// and to make this from). The controller sets a generation's new bits
/// here before that generation goes live and clears bits only once neither
/// generation has them, so a clear bit is a miss in whichever generation a
/// frame then reads; a set bit that the live generation lacks only costs
/// that frame step 2.
///
/// Global data: a map of this program alone (`.bss`), read at a constant
/// address, without a map lookup or the control value. Not pinned: each
/// program the controller loads gets its own, which it fills before the
/// program is attached.
#[repr(C)]
struct Union {
    v4: [u64; BITMAP_WORDS as usize],
    v6: [u64; BITMAP_WORDS as usize],
}

#[unsafe(no_mangle)]
static mut BLK_UNION: Union = Union {
    v4: [0; BITMAP_WORDS as usize],
    v6: [0; BITMAP_WORDS as usize],
};

const _: () = assert!(BITMAP_WORDS.is_power_of_two());

/// The program's copy of `BLK_CONTROL`, which the controller writes after
/// the pinned value (global data, as [`BLK_UNION`]: read at a constant
/// address, not by a map lookup, for each frame past step 1).
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.control")]
static mut BLK_LIVE: ProgramControl = ProgramControl {
    control: Control {
        generation: 0,
        flags: 0,
        seed: [0; 4],
        v4_buckets: 0,
        v6_buckets: 0,
        capacity: 0,
        prefixes: [0; 4],
    },
    reserved: 0,
    v6_len_keys: [[0; 3]; 2],
};

/// Reads [`BLK_LIVE`] a field at a time, volatile: the compiler must not
/// assume the zeros it was built with.
struct Live;

impl Live {
    #[inline(always)]
    fn read<T>(field: *const T) -> T {
        // SAFETY: a field of BLK_LIVE, which the controller writes whole
        // while frames read it (each field old or new).
        unsafe { core::ptr::read_volatile(field) }
    }

    /// The live generation: 0 (`_A`) or 1 (`_B`).
    #[inline(always)]
    fn generation() -> usize {
        // SAFETY: a raw pointer to the field; nothing is read here.
        (Self::read(unsafe { &raw const BLK_LIVE.control.generation }) & 1) as usize
    }

    /// How generation `G` is hashed into, for addresses `A` (the other
    /// family's fields are left zero: volatile reads are never dropped,
    /// used or not).
    #[inline(always)]
    fn shape<G: Generation, A: Address>() -> Shape {
        // Not a zeroed literal: LLVM zeroes the 16 bytes of IPv6 keys with
        // a call to memset (a BPF-to-BPF call); these are constants.
        let mut shape = Shape::new(0, 0, 0, 0);
        // SAFETY: raw pointers to fields; `G::INDEX` is 0 or 1, so the
        // indices are in range.
        unsafe {
            let control = &raw const BLK_LIVE.control;
            if A::IPV6 {
                let keys = &raw const BLK_LIVE.v6_len_keys[G::INDEX];
                shape.v6_seed = Self::read(&raw const (*control).seed[2 * G::INDEX + 1]);
                shape.v6_buckets = Self::read(&raw const (*control).v6_buckets);
                shape.v6_len_keys = [
                    Self::read(&raw const (*keys)[0]),
                    Self::read(&raw const (*keys)[1]),
                    Self::read(&raw const (*keys)[2]),
                ];
            } else {
                shape.v4_seed = Self::read(&raw const (*control).seed[2 * G::INDEX]);
                shape.v4_buckets = Self::read(&raw const (*control).v4_buckets);
            }
        }
        shape
    }
}

/// Reads [`BLK_UNION`].
struct UnionBits;

impl UnionBits {
    #[inline(always)]
    fn word(words: *const [u64; BITMAP_WORDS as usize], index: u32) -> u64 {
        // SAFETY: the index is masked into the array; the controller writes
        // the map whole while frames read it (a word read during the write
        // is a superset of the live generation's either way), so the read
        // is volatile: the compiler must not assume the zeros it was built
        // with.
        unsafe {
            core::ptr::read_volatile(
                words
                    .cast::<u64>()
                    .add((index & (BITMAP_WORDS - 1)) as usize),
            )
        }
    }
}

impl Bitmaps for UnionBits {
    #[inline(always)]
    fn v4_bits(&self, index: u32) -> u64 {
        // SAFETY: a raw pointer to the field; nothing is read here.
        Self::word(unsafe { &raw const BLK_UNION.v4 }, index)
    }
    #[inline(always)]
    fn v6_bits(&self, index: u32) -> u64 {
        // SAFETY: as for IPv4.
        Self::word(unsafe { &raw const BLK_UNION.v6 }, index)
    }
}

/// The maps of one table generation, for `layout`'s lookups past step 1.
/// (Its bitmaps, `BLK_V4_BITS_*` and `BLK_V6_BITS_*`, are the controller's:
/// the program reads [`BLK_UNION`].)
macro_rules! generation {
    ($name:ident, $index:literal, $v4:ident, $short4:ident, $v6:ident, $entries:ident) => {
        #[derive(Default)]
        struct $name;

        impl Tables for $name {
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

generation!(GenA, 0, BLK_V4_A, BLK_V4_SHORT_A, BLK_V6_A, BLK_ENTRY_A);
generation!(GenB, 1, BLK_V4_B, BLK_V4_SHORT_B, BLK_V6_B, BLK_ENTRY_B);

/// One table generation's maps: the lookup tables and the entries.
trait Generation: Tables + Default {
    /// Its index in `Control` (0: the `_A` maps, 1: the `_B` maps).
    const INDEX: usize;
    fn entry(index: u32) -> Option<&'static PrefixEntry>;
}

struct Blocker;

impl Lookup for Blocker {
    #[inline(always)]
    fn v4(dst: u32, src: u32) -> Found {
        both(dst, src)
    }

    #[inline(always)]
    fn v6(dst: (u64, u64), src: (u64, u64)) -> Found {
        both(dst, src)
    }
}

/// An address of one family, as the lookup's two steps take it.
trait Address: Copy {
    type Probe: Probe;
    const IPV6: bool;
    /// Step 1: whether the address's bucket bit is set.
    fn marked(self) -> bool;
    /// Step 2 on, for a marked address.
    fn start<T: Tables>(self, tables: &T, shape: &Shape) -> Result<Self::Probe, u32>;
}

impl Address for u32 {
    type Probe = Probe4;
    const IPV6: bool = false;
    #[inline(always)]
    fn marked(self) -> bool {
        layout::v4_marked(&UnionBits, self)
    }
    #[inline(always)]
    fn start<T: Tables>(self, tables: &T, shape: &Shape) -> Result<Probe4, u32> {
        layout::start_v4_marked(tables, shape, self)
    }
}

impl Address for (u64, u64) {
    type Probe = Probe6;
    const IPV6: bool = true;
    #[inline(always)]
    fn marked(self) -> bool {
        layout::v6_marked(&UnionBits, self.0)
    }
    #[inline(always)]
    fn start<T: Tables>(self, tables: &T, shape: &Shape) -> Result<Probe6, u32> {
        layout::start_v6_marked(tables, shape, self.0, self.1)
    }
}

/// The entries of a destination and a source in the live generation.
#[inline(always)]
fn both<A: Address>(dst: A, src: A) -> Found {
    let marked = (dst.marked(), src.marked());
    // Nearly every frame ends here, before the control value is read.
    if marked == (false, false) {
        return (None, None);
    }
    if Live::generation() == GenA::INDEX {
        in_generation::<GenA, A>(dst, src, marked)
    } else {
        in_generation::<GenB, A>(dst, src, marked)
    }
}

/// The entries of a destination and a source in generation `G`, given
/// whether each is `marked`.
#[inline(always)]
fn in_generation<G: Generation, A: Address>(dst: A, src: A, marked: (bool, bool)) -> Found {
    let tables = G::default();
    let shape = Live::shape::<G, A>();
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

/// The entry point, written out: aya's `#[xdp]` puts the body in a nested
/// function, which LLVM kept as a BPF-to-BPF call (a second stack frame,
/// its prologue and epilogue, on every frame).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn blocker(ctx: *mut xdp_md) -> u32 {
    shared::run::<Blocker>(&XdpContext::new(ctx))
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
