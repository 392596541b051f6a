//! Data of one loaded program, not pinned (global data: each program the
//! controller loads has its own, which it fills before attaching it), read
//! by the program at a constant address without a map lookup:
//!
//! - [`Union`]: the bitmap the program reads for step 1 (`BLK_UNION`, its
//!   `.bss`).
//! - [`LiveControl`]: its copy of the pinned control value
//!   (`BLK_LIVE`, its `.bss.control`), read for a frame past step 1.
//!
//! The union: a bit is set when either generation's bitmap has it. The
//! program reads it before the control value, so a frame whose addresses
//! both have a clear bit (nearly every frame) never reads which generation
//! is live. What keeps that right, whichever generation a frame then reads:
//! - new bits of the idle generation are added here before it goes live;
//! - bits go only when the two generations are level again (the one left
//!   is written once no packet can be reading it), set to their OR anew.
//!
//! A set bit the live generation lacks costs a frame step 2, nothing more.

use std::{
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use blocker_common::{
    Control, ProgramControl,
    layout::{self, BITMAP_WORDS},
};

use super::{
    BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, DatapathError, Mapped, Result, Target, array_elem,
    map_err,
};

/// The maps' names, as aya names a data section's map.
pub(super) const UNION: &str = ".bss";
pub(super) const LIVE_CONTROL: &str = ".bss.control";
const WORDS: usize = BITMAP_WORDS as usize;

/// The data map `name` of the program `ebpf` loaded.
pub(super) fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData> {
    match ebpf.map(name) {
        Some(Map::Array(data)) => Ok(data),
        _ => Err(DatapathError::Missing {
            what: "array map",
            name: name.to_owned(),
        }),
    }
}

/// A descriptor of the data map `name` of the program `ebpf` loaded, after
/// checking that its one value is `size` bytes.
fn checked_fd(ebpf: &Ebpf, name: &'static str, size: usize) -> Result<OwnedFd> {
    let data = map(ebpf, name)?;
    let info = data.info().map_err(map_err(name))?;
    if info.value_size() as usize != size || info.max_entries() != 1 {
        return Err(DatapathError::Layout {
            path: PathBuf::from(name),
            detail: format!(
                "the program's {name} is {} bytes, this build writes {size}",
                info.value_size()
            ),
        });
    }
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DatapathError::Io {
            path: PathBuf::from(name),
            source,
        })
}

/// Copies `value` over the one value of the map `fd` (BPF_MAP_UPDATE_ELEM):
/// the kernel copies it in place while frames read it.
fn store<T>(fd: &OwnedFd, name: &'static str, value: *const T) -> Result<()> {
    array_elem(BPF_MAP_UPDATE_ELEM, fd.as_raw_fd(), 0, value as u64).map_err(|source| {
        DatapathError::Io {
            path: PathBuf::from(format!("update of the program's {name}")),
            source,
        }
    })
}

/// The program's copy of the control value.
pub(super) struct LiveControl {
    fd: OwnedFd,
}

impl LiveControl {
    pub(super) fn new(ebpf: &Ebpf) -> Result<Self> {
        Ok(Self {
            fd: checked_fd(ebpf, LIVE_CONTROL, size_of::<ProgramControl>())?,
        })
    }

    /// Writes `control` over the program's copy. A frame reading it
    /// meanwhile reads each field old or new, byte by byte: the controller
    /// changes the idle generation's fields in one write and the
    /// generation alone in the next, as it does the pinned value.
    pub(super) fn set(&self, control: &Control) -> Result<()> {
        store(&self.fd, LIVE_CONTROL, &ProgramControl::new(*control))
    }
}

/// The program's step-1 bitmap. It keeps no copy: each change reads the
/// map, or works it out anew, and writes it whole (4 MiB for a moment,
/// not for as long as the daemon runs).
pub(super) struct Union {
    fd: OwnedFd,
}

impl Union {
    /// Takes the map of the program `ebpf` loaded.
    pub(super) fn new(ebpf: &Ebpf) -> Result<Self> {
        Ok(Self {
            fd: checked_fd(ebpf, UNION, 2 * WORDS * size_of::<u64>())?,
        })
    }

    /// Sets every bit to the OR of the two generations' bitmaps as the
    /// maps hold them now (`generations`: each one's tables, as
    /// `Maps::targets` gives them).
    pub(super) fn level(&self, generations: [&[Target; 6]; 2]) -> Result<()> {
        let mut words = vec![0; 2 * WORDS];
        // The bitmaps are tables 0 (IPv4) and 2 (IPv6).
        for (family, table) in [(0, 0), (1, 2)] {
            let union = &mut words[family * WORDS..][..WORDS];
            for tables in generations {
                let bits = tables[table];
                let map =
                    Mapped::<u64>::window_fd(bits.fd, bits.name, 0, bits.values.min(WORDS), false)?;
                for (to, from) in union.iter_mut().zip(map.as_slice()) {
                    *to |= from;
                }
            }
        }
        self.store(&words)
    }

    /// Adds the set bits of the bitmap words `v4` and `v6` (index, word),
    /// as about to be written to the idle generation.
    pub(super) fn add(&self, v4: &[(u32, u64)], v6: &[(u32, u64)]) -> Result<()> {
        if v4.is_empty() && v6.is_empty() {
            return Ok(());
        }
        let mut words = self.load()?;
        for (family, writes) in [(0, v4), (1, v6)] {
            for &(index, word) in writes {
                if let Some(to) = words[family * WORDS..][..WORDS].get_mut(index as usize) {
                    *to |= word;
                }
            }
        }
        self.store(&words)
    }

    /// Whether the map has the bit of `addr`'s bucket set (step 1, as the
    /// program takes it).
    pub(super) fn marked(&self, addr: IpAddr) -> Result<bool> {
        let words = Words(self.load()?);
        Ok(match addr {
            IpAddr::V4(a) => layout::v4_marked(&words, u32::from(a)),
            IpAddr::V6(a) => layout::v6_marked(&words, (u128::from(a) >> 64) as u64),
        })
    }

    /// What the map holds: the IPv4 words, then the IPv6 words.
    fn load(&self) -> Result<Vec<u64>> {
        let mut words = vec![0u64; 2 * WORDS];
        let value = words.as_mut_ptr() as u64;
        array_elem(BPF_MAP_LOOKUP_ELEM, self.fd.as_raw_fd(), 0, value).map_err(|source| {
            DatapathError::Io {
                path: PathBuf::from(format!("lookup of the program's {UNION}")),
                source,
            }
        })?;
        Ok(words)
    }

    /// Writes `words` over the map. A frame reading a word meanwhile reads
    /// it old or new, byte by byte: both hold every bit of the live
    /// generation.
    fn store(&self, words: &[u64]) -> Result<()> {
        store(&self.fd, UNION, words.as_ptr())
    }
}

/// The union's words as [`Union::load`] gives them (the IPv4 words, then the
/// IPv6 words), read as step 1 reads a bitmap.
struct Words(Vec<u64>);

impl layout::Bitmaps for Words {
    fn v4_bits(&self, index: u32) -> u64 {
        self.0[..WORDS].get(index as usize).copied().unwrap_or(0)
    }
    fn v6_bits(&self, index: u32) -> u64 {
        self.0[WORDS..].get(index as usize).copied().unwrap_or(0)
    }
}
