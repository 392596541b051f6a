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
//!
//! The union's map is made here, before the program is loaded
//! ([`UnionPin`]), so that its words can be read and written in place.

use std::{
    fs,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use blocker_common::{
    Control, ProgramControl,
    layout::{self, BITMAP_WORDS},
};

use super::{BPF_MAP_UPDATE_ELEM, DatapathError, Mapped, Result, Target, array_elem, map_err};

/// The maps' names, as aya names a data section's map.
pub(super) const UNION: &str = ".bss";
pub(super) const LIVE_CONTROL: &str = ".bss.control";
/// How [`UnionPin`] names its pin in `bpffs_dir`, the process id after it.
pub(super) const UNION_PIN_PREFIX: &str = "union-loading-";
const WORDS: usize = BITMAP_WORDS as usize;
/// The union's bytes: the IPv4 words, then the IPv6 words.
const UNION_BYTES: usize = 2 * WORDS * size_of::<u64>();

/// The array map `name` of the object `ebpf` loaded (a data section's,
/// or the copy program's staging).
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

    /// Writes `control` over the program's copy (BPF_MAP_UPDATE_ELEM: the
    /// kernel copies it in place). A frame reading it meanwhile reads each
    /// field old or new, byte by byte: the controller changes the idle
    /// generation's fields in one write and the generation alone in the
    /// next, as it does the pinned value.
    pub(super) fn set(&self, control: &Control) -> Result<()> {
        let value = ProgramControl::new(*control);
        array_elem(
            BPF_MAP_UPDATE_ELEM,
            self.fd.as_raw_fd(),
            0,
            (&raw const value) as u64,
        )
        .map_err(|source| DatapathError::Io {
            path: PathBuf::from(format!("update of the program's {LIVE_CONTROL}")),
            source,
        })
    }
}

/// The map of the program's step-1 bitmap, made by us rather than by the
/// loader: the array of one value the loader would make for `.bss`, but
/// BPF_F_MMAPABLE, so that a change reads and writes only the words it
/// changes, in place. (Read or written by syscall, the 4 MiB value goes
/// through a 4 MiB buffer the kernel allocates for each copy. On a virtual
/// machine that hands free memory back to its host, as this one does, a
/// copy after a few idle seconds took up to 50 ms, each way, in an update
/// that otherwise takes 60.)
///
/// It is pinned for the loader to find (`EbpfLoader::map_pin_path`, which
/// takes a map pinned at the path given instead of making one) until this
/// is dropped, once the program is loaded: the map is the program's alone,
/// as before.
pub(super) struct UnionPin {
    path: PathBuf,
}

impl UnionPin {
    /// Makes the map for the `.bss` of the program object `program` and
    /// pins it in `dir` (a bpf filesystem).
    pub(super) fn new(program: &[u8], dir: &Path) -> Result<Self> {
        use object::{Object as _, ObjectSection as _};
        // The section's size from its header (aya-obj's whole parse would
        // also make the section's 4 MiB of zeros, only to drop them).
        let bss = object::File::parse(program)
            .ok()
            .and_then(|file| Some(file.section_by_name(UNION)?.size()));
        let Some(bss) = bss else {
            return Err(DatapathError::Missing {
                what: "data section",
                name: UNION.to_owned(),
            });
        };
        if bss != UNION_BYTES as u64 {
            return Err(DatapathError::Layout {
                path: PathBuf::from(UNION),
                detail: format!(
                    "the program's {UNION} is {bss} bytes, this build writes {UNION_BYTES}"
                ),
            });
        }
        // The map aya-obj describes for a `.bss` (an array of one value),
        // mappable.
        let map = aya_obj::Map::Legacy(aya_obj::maps::LegacyMap {
            def: aya_obj::maps::bpf_map_def {
                map_type: aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
                key_size: size_of::<u32>() as u32,
                value_size: UNION_BYTES as u32,
                max_entries: 1,
                map_flags: aya_obj::generated::BPF_F_MMAPABLE,
                ..Default::default()
            },
            inner_def: None,
            section_index: 0,
            section_kind: aya_obj::EbpfSectionKind::Bss,
            symbol_index: None,
            data: Vec::new(),
        });
        let data = MapData::create(map, UNION, None).map_err(map_err(UNION))?;
        let path = dir.join(format!("{UNION_PIN_PREFIX}{}", std::process::id()));
        // Left by a process of the same id that died loading: not ours.
        if path.exists() {
            fs::remove_file(&path).map_err(super::io_err(&path))?;
        }
        data.pin(&path).map_err(|source| DatapathError::Pin {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnionPin {
    fn drop(&mut self) {
        // The loaded program holds the map; a pin left behind (this
        // failing, or the process dying while its program loads) holds
        // only a map no program uses, taken by no later load (each pins its
        // own under its process id), and `blocker detach` removes it.
        let _ = fs::remove_file(&self.path);
    }
}

/// The program's step-1 bitmap. It keeps no copy: each change maps the
/// map's value (made by [`UnionPin`]) a window at a time and reads and
/// writes it in place, a word at a time, while frames read it.
pub(super) struct Union {
    fd: OwnedFd,
}

impl Union {
    /// Takes the map of the program `ebpf` loaded.
    pub(super) fn new(ebpf: &Ebpf) -> Result<Self> {
        Ok(Self {
            fd: checked_fd(ebpf, UNION, UNION_BYTES)?,
        })
    }

    /// Words `start..start + len` of the map (the IPv4 words, then the
    /// IPv6 words), mapped for the moment.
    fn window(&self, start: usize, len: usize, writable: bool) -> Result<Mapped<u64>> {
        Mapped::window_fd(self.fd.as_raw_fd(), UNION, start, len, writable)
    }

    /// Sets every bit to the OR of the two generations' bitmaps as the
    /// maps hold them now (`generations`: each one's tables, as
    /// `Maps::targets` gives them).
    pub(super) fn level(&self, generations: [&[Target; 6]; 2]) -> Result<()> {
        for start in (0..2 * WORDS).step_by(WINDOW) {
            let union = self.window(start, WINDOW, true)?;
            // The bitmaps are tables 0 (IPv4) and 2 (IPv6).
            let (table, at) = (start / WORDS * 2, start % WORDS);
            let [a, b] = generations.map(|tables| bitmap_window(tables[table], at));
            let (a, b) = (a?, b?);
            let word = |bits: &Option<Mapped<u64>>, i: usize| {
                bits.as_ref()
                    .and_then(|bits| bits.as_slice().get(i).copied())
                    .unwrap_or(0)
            };
            for (i, to) in union.atomics().iter().enumerate() {
                let word = word(&a, i) | word(&b, i);
                if to.load(Ordering::Relaxed) != word {
                    to.store(word, Ordering::Relaxed);
                }
            }
        }
        Self::written();
        Ok(())
    }

    /// Adds the set bits of the bitmap words `v4` and `v6` (index, word),
    /// as about to be written to the idle generation.
    pub(super) fn add(&self, v4: &[(u32, u64)], v6: &[(u32, u64)]) -> Result<()> {
        let mut writes: Vec<(usize, u64)> = [(0, v4), (WORDS, v6)]
            .into_iter()
            .flat_map(|(first, words)| {
                words
                    .iter()
                    .filter(|&&(index, _)| (index as usize) < WORDS)
                    .map(move |&(index, word)| (first + index as usize, word))
            })
            .collect();
        writes.sort_unstable_by_key(|&(at, _)| at);
        let mut rest = &writes[..];
        while let Some(&(first, _)) = rest.first() {
            let start = first / WINDOW * WINDOW;
            let inside = rest.partition_point(|&(at, _)| at < start + WINDOW);
            let union = self.window(start, WINDOW, true)?;
            let words = union.atomics();
            for &(at, word) in &rest[..inside] {
                let to = &words[at - start];
                let old = to.load(Ordering::Relaxed);
                if old | word != old {
                    to.store(old | word, Ordering::Relaxed);
                }
            }
            rest = &rest[inside..];
        }
        Self::written();
        Ok(())
    }

    /// The words stored are seen before whatever the caller writes next
    /// (the flip that makes a generation live). A frame reading a word
    /// meanwhile reads it old or new, whole: both hold every bit of the live
    /// generation.
    fn written() {
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Whether the map has the bit of `addr`'s bucket set (step 1, as the
    /// program takes it).
    pub(super) fn marked(&self, addr: IpAddr) -> Result<bool> {
        let union = self.window(0, 2 * WORDS, false)?;
        let words = Words(union.atomics());
        Ok(match addr {
            IpAddr::V4(a) => layout::v4_marked(&words, u32::from(a)),
            IpAddr::V6(a) => layout::v6_marked(&words, (u128::from(a) >> 64) as u64),
        })
    }
}

/// Union words a change maps at a time (256 KiB), and as many of each
/// generation's bitmap when levelling: what it holds mapped at once, and
/// counted as the daemon's memory meanwhile, whatever the bitmap's size.
const WINDOW: usize = 1 << 15;

const _: () = assert!(WORDS.is_multiple_of(WINDOW));

/// Words `at..at + WINDOW` of the bitmap `bits` (fewer at its end; `None`
/// past it), mapped read-only.
fn bitmap_window(bits: Target, at: usize) -> Result<Option<Mapped<u64>>> {
    if at >= bits.values {
        return Ok(None);
    }
    Mapped::window_fd(bits.fd, bits.name, at, WINDOW.min(bits.values - at), false).map(Some)
}

/// The union's words as [`Union::window`] gives them (the IPv4 words, then
/// the IPv6 words), read as step 1 reads a bitmap.
struct Words<'a>(&'a [AtomicU64]);

impl layout::Bitmaps for Words<'_> {
    fn v4_bits(&self, index: u32) -> u64 {
        self.0[..WORDS]
            .get(index as usize)
            .map_or(0, |w| w.load(Ordering::Relaxed))
    }
    fn v6_bits(&self, index: u32) -> u64 {
        self.0[WORDS..]
            .get(index as usize)
            .map_or(0, |w| w.load(Ordering::Relaxed))
    }
}
