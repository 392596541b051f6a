//! The controller's copy program: moves a family's hash-table buckets
//! between a table generation and this controller's staging maps, at the
//! bucket indices staged. Never attached: the controller runs it with
//! BPF_PROG_TEST_RUN, the job in the test frame's bytes. A patch reads and
//! writes tens of thousands of scattered buckets; mapping the tables to
//! reach them costs far more (the kernel inserts and removes every page
//! of a mapping), and the batch update copies a value at a time.

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
        xdp_md,
    },
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::map,
    maps::Array,
    programs::XdpContext,
};
use blocker_common::{
    COPY_CHUNK, CopyJob, CopyOp,
    layout::{Bucket4, Bucket6},
};

use crate::{BLK_V4_A, BLK_V4_B, BLK_V6_A, BLK_V6_B, MMAP};

/// Staging, per family: the bucket indices (as u64s: an array map's values
/// lie 8 bytes apart), and the buckets read or to write. Not pinned: each
/// controller has its own.
#[map]
static BLK_COPY4_AT: Array<u64> = Array::with_max_entries(COPY_CHUNK, MMAP);
#[map]
static BLK_COPY4: Array<Bucket4> = Array::with_max_entries(COPY_CHUNK, MMAP);
#[map]
static BLK_COPY6_AT: Array<u64> = Array::with_max_entries(COPY_CHUNK, MMAP);
#[map]
static BLK_COPY6: Array<Bucket6> = Array::with_max_entries(COPY_CHUNK, MMAP);

/// A table and its family's staging.
trait Staged {
    type Bucket: Copy + 'static;
    fn table() -> &'static Array<Self::Bucket>;
    fn at() -> &'static Array<u64>;
    fn staging() -> &'static Array<Self::Bucket>;
}

macro_rules! staged {
    ($name:ident, $bucket:ty, $table:ident, $at:ident, $staging:ident) => {
        struct $name;

        impl Staged for $name {
            type Bucket = $bucket;
            #[inline(always)]
            fn table() -> &'static Array<$bucket> {
                &$table
            }
            #[inline(always)]
            fn at() -> &'static Array<u64> {
                &$at
            }
            #[inline(always)]
            fn staging() -> &'static Array<$bucket> {
                &$staging
            }
        }
    };
}

const _: () = assert!(size_of::<Bucket4>() % 8 == 0 && size_of::<Bucket6>() % 8 == 0);

staged!(V4A, Bucket4, BLK_V4_A, BLK_COPY4_AT, BLK_COPY4);
staged!(V4B, Bucket4, BLK_V4_B, BLK_COPY4_AT, BLK_COPY4);
staged!(V6A, Bucket6, BLK_V6_A, BLK_COPY6_AT, BLK_COPY6);
staged!(V6B, Bucket6, BLK_V6_B, BLK_COPY6_AT, BLK_COPY6);

/// Moves bucket `i` of the staging, one way or the other; stops the loop
/// (and marks `failed`) at an index out of range.
#[inline(always)]
fn move_one<S: Staged>(i: u64, failed: *mut c_void, gather: bool) -> i64 {
    let i = i as u32;
    let pair = S::at().get(i).and_then(|&at| {
        let at = u32::try_from(at).ok()?;
        Some((S::table().get_ptr_mut(at)?, S::staging().get_ptr_mut(i)?))
    });
    let Some((table, staging)) = pair else {
        // SAFETY: `failed` is the run's flag on its stack (`blk_copy`).
        unsafe { *failed.cast::<u32>() = 1 };
        return 1;
    };
    let (from, to) = if gather {
        (table.cast_const(), staging)
    } else {
        (staging.cast_const(), table)
    };
    // A word at a time, volatile: LLVM makes a plain copy of the bucket a
    // call to a `memmove` subprogram that copies a byte a step.
    for word in 0..size_of::<S::Bucket>() / 8 {
        // SAFETY: both point to a whole bucket in an array map's values,
        // 8-byte aligned, a multiple of 8 bytes long.
        unsafe {
            let value = from.cast::<u64>().add(word).read_volatile();
            to.cast::<u64>().add(word).write_volatile(value);
        }
    }
    0
}

extern "C" fn gather<S: Staged>(i: u64, failed: *mut c_void) -> i64 {
    move_one::<S>(i, failed, true)
}

extern "C" fn scatter<S: Staged>(i: u64, failed: *mut c_void) -> i64 {
    move_one::<S>(i, failed, false)
}

/// XDP_PASS when every bucket of the job moved, XDP_DROP when an index was
/// out of range (those before it moved), XDP_ABORTED for a job it does not
/// know.
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn blk_copy(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    if ctx.data() + size_of::<CopyJob>() > ctx.data_end() {
        return XDP_ABORTED;
    }
    // SAFETY: the frame holds a `CopyJob` (checked just above).
    let job = unsafe { (ctx.data() as *const CopyJob).read_unaligned() };
    type Move = extern "C" fn(u64, *mut c_void) -> i64;
    let step: Move = match (job.op, job.generation) {
        (op, 0) if op == CopyOp::Gather4 as u32 => gather::<V4A>,
        (op, 1) if op == CopyOp::Gather4 as u32 => gather::<V4B>,
        (op, 0) if op == CopyOp::Scatter4 as u32 => scatter::<V4A>,
        (op, 1) if op == CopyOp::Scatter4 as u32 => scatter::<V4B>,
        (op, 0) if op == CopyOp::Gather6 as u32 => gather::<V6A>,
        (op, 1) if op == CopyOp::Gather6 as u32 => gather::<V6B>,
        (op, 0) if op == CopyOp::Scatter6 as u32 => scatter::<V6A>,
        (op, 1) if op == CopyOp::Scatter6 as u32 => scatter::<V6B>,
        _ => return XDP_ABORTED,
    };
    if job.count > COPY_CHUNK {
        return XDP_ABORTED;
    }
    let mut failed: u32 = 0;
    // SAFETY: a bounded loop calling `step` with the flag, which outlives it.
    unsafe { bpf_loop(job.count, step as *mut c_void, (&raw mut failed).cast(), 0) };
    if failed == 0 { XDP_PASS } else { XDP_DROP }
}
