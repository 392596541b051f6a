//! The copy program's controller half (`blocker-ebpf/src/copy.rs`): a
//! patch's scattered hash-table buckets read from the live generation and
//! written to the idle one, a chunk at a time through staging maps that
//! stay mapped, by running the program with BPF_PROG_TEST_RUN.
//!
//! Reading those buckets through a mapping of the table costs what the
//! kernel spends inserting and removing every page of it (at 1M prefixes,
//! 20k pages for IPv6's table: 11 ms, of which the reads are 1), and a
//! batch update copies each value in on its own (about 300 ns a bucket).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

use aya::{
    Ebpf,
    programs::{ProgramFd, Xdp},
};
use blocker_common::{
    COPY_CHUNK, COPY_PROGRAM_NAME, CopyJob, CopyOp,
    layout::{Bucket4, Bucket6},
};

use super::{DatapathError, Mapped, Result, bpf, program_data};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// The program's answers: every bucket moved, or an index out of range.
const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

/// The loaded copy program and this controller's staging maps.
pub(super) struct Copier {
    program: ProgramFd,
    v4: Mutex<Stage<Bucket4>>,
    v6: Mutex<Stage<Bucket6>>,
}

/// One family's staging: [`COPY_CHUNK`] indices (each a u64, as the map
/// lays them out) and buckets, mapped writable for as long as the copier
/// lives (the mappings keep the maps).
pub(super) struct Stage<T> {
    at: Mapped<u64>,
    values: Mapped<T>,
}

impl<T: Copy> Stage<T> {
    /// The staging maps `at` and `values` of `ebpf`, mapped.
    fn map(ebpf: &Ebpf, at: &'static str, values: &'static str) -> Result<Self> {
        let chunk = COPY_CHUNK as usize;
        Ok(Self {
            at: Mapped::window(program_data::map(ebpf, at)?, at, 0, chunk, true)?,
            values: Mapped::window(program_data::map(ebpf, values)?, values, 0, chunk, true)?,
        })
    }
}

// SAFETY: the mappings are the stage's own, reached only through the
// copier's mutex around it.
unsafe impl<T> Send for Stage<T> {}

/// A bucket type the copy program moves.
pub(super) trait Staged: Copy + Sized {
    const GATHER: CopyOp;
    const SCATTER: CopyOp;
    fn stage(copier: &Copier) -> &Mutex<Stage<Self>>;
}

impl Staged for Bucket4 {
    const GATHER: CopyOp = CopyOp::Gather4;
    const SCATTER: CopyOp = CopyOp::Scatter4;
    fn stage(copier: &Copier) -> &Mutex<Stage<Self>> {
        &copier.v4
    }
}

impl Staged for Bucket6 {
    const GATHER: CopyOp = CopyOp::Gather6;
    const SCATTER: CopyOp = CopyOp::Scatter6;
    fn stage(copier: &Copier) -> &Mutex<Stage<Self>> {
        &copier.v6
    }
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

impl Copier {
    /// Loads the copy program of `ebpf` (loaded against the pinned tables)
    /// and maps its staging.
    pub(super) fn new(ebpf: &mut Ebpf) -> Result<Self> {
        let program: &mut Xdp = ebpf
            .program_mut(COPY_PROGRAM_NAME)
            .ok_or_else(|| DatapathError::Missing {
                what: "program",
                name: COPY_PROGRAM_NAME.to_owned(),
            })?
            .try_into()
            .map_err(DatapathError::Program)?;
        program.load().map_err(DatapathError::Program)?;
        let program = program
            .fd()
            .map_err(DatapathError::Program)?
            .try_clone()
            .map_err(|source| DatapathError::Io {
                path: PathBuf::from(COPY_PROGRAM_NAME),
                source,
            })?;
        let v4 = Stage::map(ebpf, "BLK_COPY4_AT", "BLK_COPY4")?;
        let v6 = Stage::map(ebpf, "BLK_COPY6_AT", "BLK_COPY6")?;
        Ok(Self {
            program,
            v4: Mutex::new(v4),
            v6: Mutex::new(v6),
        })
    }

    /// The buckets at `indices` of generation `generation`'s table, in
    /// order.
    pub(super) fn gather<T: Staged>(&self, generation: usize, indices: &[u32]) -> Result<Vec<T>> {
        let mut stage = T::stage(self)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut values = Vec::with_capacity(indices.len());
        for chunk in indices.chunks(COPY_CHUNK as usize) {
            for (to, &index) in stage.at.as_mut_slice().iter_mut().zip(chunk) {
                *to = u64::from(index);
            }
            self.run(T::GATHER, generation, chunk.len())?;
            values.extend_from_slice(&stage.values.as_slice()[..chunk.len()]);
        }
        Ok(values)
    }

    /// Writes each (index, bucket) into generation `generation`'s table.
    pub(super) fn scatter<T: Staged>(&self, generation: usize, values: &[(u32, T)]) -> Result<()> {
        let mut guard = T::stage(self)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stage = &mut *guard;
        for chunk in values.chunks(COPY_CHUNK as usize) {
            let (at, buckets) = (stage.at.as_mut_slice(), stage.values.as_mut_slice());
            for ((at, bucket), &(index, value)) in at.iter_mut().zip(buckets).zip(chunk) {
                *at = u64::from(index);
                *bucket = value;
            }
            self.run(T::SCATTER, generation, chunk.len())?;
        }
        Ok(())
    }

    /// Runs the program once on the job; an error unless every bucket
    /// moved.
    fn run(&self, op: CopyOp, generation: usize, count: usize) -> Result<()> {
        let job = CopyJob {
            op: op as u32,
            generation: generation as u32,
            count: count as u32,
            reserved: 0,
        };
        let frame = job.to_frame();
        let mut attr = TestRunAttr {
            prog_fd: self.program.as_fd().as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        let failed = |source| DatapathError::Io {
            path: PathBuf::from(format!(
                "{COPY_PROGRAM_NAME} ({op:?}, generation {generation})"
            )),
            source,
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).map_err(failed)?;
        match attr.retval {
            XDP_PASS => Ok(()),
            XDP_DROP => Err(failed(io::Error::other(
                "a bucket index past the table's end",
            ))),
            other => Err(failed(io::Error::other(format!(
                "refused the job (XDP action {other})"
            )))),
        }
    }
}
