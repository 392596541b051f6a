//! The bitmap the program reads for step 1 (`BLK_UNION`, its `.bss`): a
//! bit is set when either generation's bitmap has it. The program reads
//! it before the control value, so a frame whose addresses both have a
//! clear bit (nearly every frame) never reads which generation is live.
//!
//! What keeps that right, whichever generation a frame then reads:
//! - new bits of the idle generation are added here before it goes live;
//! - bits go only when the two generations are level again (the one left
//!   is written once no packet can be reading it), set to their OR anew.
//!
//! A set bit the live generation lacks costs a frame step 2, nothing more.
//! The map belongs to one loaded program (global data is not pinned): each
//! daemon fills its own from the pinned bitmaps before it attaches.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::PathBuf,
};

use aya::maps::MapData;
use blocker_common::layout::{self, BITMAP_WORDS};

use super::{BPF_MAP_LOOKUP_ELEM, DatapathError, ElemAttr, Mapped, Result, Target, bpf, map_err};

/// The `.bss` map's name, as aya names a data section's map.
pub(super) const NAME: &str = ".bss";
const WORDS: usize = BITMAP_WORDS as usize;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

pub(super) struct Union {
    fd: OwnedFd,
    /// What the map holds: the IPv4 words, then the IPv6 words.
    words: Vec<u64>,
}

impl Union {
    /// Takes the map of a program just loaded (all zeros).
    pub(super) fn new(data: &MapData) -> Result<Self> {
        let info = data.info().map_err(map_err(NAME))?;
        let size = 2 * WORDS * size_of::<u64>();
        if info.value_size() as usize != size || info.max_entries() != 1 {
            return Err(DatapathError::Layout {
                path: PathBuf::from(NAME),
                detail: format!(
                    "the program's {NAME} is {} bytes, this build reads {size}",
                    info.value_size()
                ),
            });
        }
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| DatapathError::Io {
                path: PathBuf::from(NAME),
                source,
            })?;
        Ok(Self {
            fd,
            words: vec![0; 2 * WORDS],
        })
    }

    /// Sets every bit to the OR of the two generations' bitmaps as the
    /// maps hold them now (`generations`: each one's tables, as
    /// `Maps::targets` gives them).
    pub(super) fn level(&mut self, generations: [&[Target; 6]; 2]) -> Result<()> {
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
        self.store(words)
    }

    /// Adds the set bits of the bitmap words `v4` and `v6` (index, word),
    /// as about to be written to the idle generation.
    pub(super) fn add(&mut self, v4: &[(u32, u64)], v6: &[(u32, u64)]) -> Result<()> {
        let mut words = self.words.clone();
        for (family, writes) in [(0, v4), (1, v6)] {
            for &(index, word) in writes {
                if let Some(to) = words[family * WORDS..][..WORDS].get_mut(index as usize) {
                    *to |= word;
                }
            }
        }
        self.store(words)
    }

    /// Whether the map, as the kernel holds it, has the bit of `addr`'s
    /// bucket set.
    pub(super) fn marked(&self, addr: IpAddr) -> Result<bool> {
        let mut words = vec![0u64; 2 * WORDS];
        let key = 0u32;
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::from_ref(&key) as u64,
            value: words.as_mut_ptr() as u64,
            flags: 0,
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map_err(|source| DatapathError::Io {
            path: PathBuf::from(format!("lookup of the program's {NAME}")),
            source,
        })?;
        let (family, bit) = match addr {
            IpAddr::V4(a) => (0, layout::v4_bit(u32::from(a))),
            IpAddr::V6(a) => (1, layout::v6_bit((u128::from(a) >> 64) as u64)),
        };
        Ok(words[family * WORDS + (bit >> 6) as usize] >> (bit & 63) & 1 != 0)
    }

    /// Writes `words` over the map, when they differ from what it holds.
    /// The kernel copies the value in place while frames read it; each
    /// word read then is the old one or the new one, byte by byte, and
    /// both hold every bit of the live generation.
    fn store(&mut self, words: Vec<u64>) -> Result<()> {
        if words == self.words {
            return Ok(());
        }
        let key = 0u32;
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::from_ref(&key) as u64,
            value: words.as_ptr() as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(|source: io::Error| DatapathError::Io {
            path: PathBuf::from(format!("update of the program's {NAME}")),
            source,
        })?;
        self.words = words;
        Ok(())
    }
}
