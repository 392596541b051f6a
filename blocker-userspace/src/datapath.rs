//! The datapath room: the only module that touches aya and file descriptors.
//!
//! [`Datapath`] loads the XDP program against the maps pinned under
//! `bpffs_dir` (creating them on first start), attaches it to interfaces
//! through pinned bpf_links, and writes compiled tables into the idle
//! generation before flipping the live one (a patch's hash-table buckets
//! moved by the object's copy program, [`copier`]). [`Maps`] is the map set
//! alone, which `status` and `check` open from the pins without loading
//! anything.
//!
//! Layout under `bpffs_dir`: `maps/<NAME>`, `prog`, `links/<mode>/<interface>`.

use std::{
    collections::BTreeMap,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use blocker_common::{
    Control, FrameCounts, IF_SLOTS, IfStats, MAX_ORDERS, OrderCounters, OrderWindow, PROGRAM_NAME,
    PrefixEntry, STAT_COUNT,
    layout::{self, Bucket4, Bucket6, Short4},
    map_names,
};
use time::OffsetDateTime;

use crate::{
    compile::{Change, Compiled},
    config::AttachMode,
    fasthash::FastMap,
    layout::{Geometry, LayoutError, Part, Patch, Placed, Table, Values},
};

mod copier;
mod program_data;

/// The XDP object built by `build.rs` from the `blocker-ebpf` crate.
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blocker"));

/// The benchmark's programs (`blocker-ebpf/src/bench.rs`): an empty
/// program, the LPM-trie reference and the address driver. Never attached.
pub static BENCH_PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blocker-bench"));

/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How long a table generation stays untouched after it stopped being live:
/// packets that read the old generation number finish their lookups long
/// before (XDP runs to completion in microseconds).
const GENERATION_GRACE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{path} is not on a bpf filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`) or set bpffs_dir below it. (`ip netns exec` hides /sys/fs/bpf by remounting /sys: enter a namespace with `nsenter --net=/run/netns/NAME` instead)"
    )]
    NotBpffs { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("loading the XDP program: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the XDP program object has no {what} named {name}")]
    Missing { what: &'static str, name: String },
    #[error("XDP program: {0}")]
    Program(#[source] ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "no blocker maps pinned under {path}: is blocker running (or has it run) with this bpffs_dir?"
    )]
    NotPinned { path: PathBuf },
    #[error("interface {interface}: attaching XDP in {mode} mode failed: {source}")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(
        "the maps pinned under {path} have another layout ({detail}) than this build of blocker: they were made by a different version. `blocker detach --config ...` (lifts enforcement) and start again"
    )]
    Layout { path: PathBuf, detail: String },
    #[error(
        "the feed compiles to {count} {family} prefixes but the maps hold at most {capacity}; raise guardrails.max_prefixes (and `blocker detach` to resize)"
    )]
    Capacity {
        family: &'static str,
        count: usize,
        capacity: u32,
    },
    #[error("{0}")]
    Tables(#[from] LayoutError),
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Io {
        path: path.to_owned(),
        source,
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// How an interface is attached, as resolved from the configured [`AttachMode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachedMode::Native => XdpMode::Driver,
            AttachedMode::Generic => XdpMode::Skb,
        }
    }
}

/// One pinned attachment found under `bpffs_dir/links`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachedMode,
    pin: PathBuf,
}

/// Totals of one apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub ipv4: usize,
    pub ipv6: usize,
    pub generation: u32,
    /// Hash-table keys (descriptors and longer prefixes): (IPv4, IPv6).
    pub keys: (usize, usize),
    /// Distinct table entries.
    pub entries: usize,
    /// Laying the tables out and writing the idle generation.
    pub written: Duration,
    /// The idle generation was patched (only what changed written), not
    /// laid out from scratch.
    pub patched: bool,
    /// Hash-table buckets a patch wrote: (IPv4, IPv6); every bucket for a
    /// layout from scratch.
    pub buckets: (usize, usize),
}

/// The pinned map set.
pub struct Maps {
    control: Array<MapData, Control>,
    /// Each generation's lookup tables, in `map_names::TABLES` order.
    tables: [[MapData; 6]; 2],
    counters: PerCpuArray<MapData, OrderCounters>,
    windows: Array<MapData, OrderWindow>,
    /// What programs before `BLK_FRAMES` counted (see [`IfStats::of`]).
    stats: PerCpuArray<MapData, IfStats>,
    /// The program's frame counts; `None` only for the pins of a daemon
    /// from before them.
    frames: Option<PerCpuArray<MapData, FrameCounts>>,
    geometry: Geometry,
}

impl Maps {
    /// Opens the maps a daemon pinned under `bpffs_dir`, loading nothing.
    pub fn open_pinned(bpffs_dir: &Path) -> Result<Self> {
        let dir = maps_dir(bpffs_dir);
        if !dir.join(map_names::CONTROL).exists() {
            return Err(DatapathError::NotPinned {
                path: bpffs_dir.to_owned(),
            });
        }
        check_pinned_layout(&dir)?;
        Self::build(
            |name| {
                let map = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
                Map::from_map_data(map).map_err(map_err(name))
            },
            |name| dir.join(name).exists(),
        )
    }

    fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(
            |name| {
                ebpf.take_map(name).ok_or_else(|| DatapathError::Missing {
                    what: "map",
                    name: name.to_owned(),
                })
            },
            |_| true,
        )
    }

    /// The maps `take` gives by name; `BLK_FRAMES` only where `has` it.
    fn build(
        mut take: impl FnMut(&'static str) -> Result<Map>,
        has: impl Fn(&'static str) -> bool,
    ) -> Result<Self> {
        fn typed<T: TryFrom<Map, Error = MapError>>(map: Map, name: &'static str) -> Result<T> {
            T::try_from(map).map_err(map_err(name))
        }
        let mut array = |name: &'static str| -> Result<MapData> {
            match take(name)? {
                Map::Array(data) => Ok(data),
                _ => Err(DatapathError::Missing {
                    what: "array map",
                    name: name.to_owned(),
                }),
            }
        };
        let mut generation = |g: usize| -> Result<[MapData; 6]> {
            let [a, b, c, d, e, f] = map_names::TABLES[g];
            Ok([
                array(a)?,
                array(b)?,
                array(c)?,
                array(d)?,
                array(e)?,
                array(f)?,
            ])
        };
        let tables = [generation(0)?, generation(1)?];
        let max_entries = |data: &MapData, name: &'static str| -> Result<u32> {
            Ok(data.info().map_err(map_err(name))?.max_entries())
        };
        let geometry = Geometry {
            v4_buckets: max_entries(&tables[0][1], map_names::V4[0])?,
            v6_buckets: max_entries(&tables[0][3], map_names::V6[0])?,
            entries: max_entries(&tables[0][4], map_names::ENTRIES[0])?,
        };
        Ok(Self {
            control: typed(take(map_names::CONTROL)?, map_names::CONTROL)?,
            tables,
            counters: typed(take(map_names::ORDER_COUNTERS)?, map_names::ORDER_COUNTERS)?,
            windows: typed(take(map_names::ORDER_WINDOWS)?, map_names::ORDER_WINDOWS)?,
            stats: typed(take(map_names::STATS)?, map_names::STATS)?,
            frames: if has(map_names::FRAMES) {
                Some(typed(take(map_names::FRAMES)?, map_names::FRAMES)?)
            } else {
                None
            },
            geometry,
        })
    }

    fn control(&self) -> Result<Control> {
        self.control.get(&0, 0).map_err(map_err(map_names::CONTROL))
    }

    /// The live table generation (0 or 1).
    pub fn generation(&self) -> Result<u32> {
        Ok(self.control()?.live() as u32)
    }

    /// Prefixes per family the tables were made for.
    pub fn capacity(&self) -> Result<u32> {
        Ok(self.control()?.capacity)
    }

    /// Sizes of each generation's tables.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Counters of one order slot, summed over CPUs.
    pub fn order_counters(&self, slot: u32) -> Result<OrderCounters> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .map_err(map_err(map_names::ORDER_COUNTERS))?;
        Ok(summed(per_cpu.iter()))
    }

    /// Counters of the order slots `0..slots`, each summed over CPUs, read
    /// [`BATCH_SLOTS`] at a time (BPF_MAP_LOOKUP_BATCH; aya 0.14 has no batch
    /// operations) instead of one call per slot: with 10k orders a whole
    /// scrape took a median of 28-38 ms slot by slot, 23.6-29.4 ms so.
    pub fn order_totals(&self, slots: u32) -> Result<Vec<OrderCounters>> {
        use std::os::fd::{AsFd as _, AsRawFd as _};

        use aya::maps::IterableMap as _;
        let slots = slots.min(self.counters.len()) as usize;
        let cpus = possible_cpus()?;
        let fd = self.counters.map().fd().as_fd().as_raw_fd();
        let batch = slots.min(BATCH_SLOTS as usize);
        let mut keys = vec![0u32; batch];
        let mut values = vec![OrderCounters::default(); batch * cpus];
        let mut totals = Vec::with_capacity(slots);
        let batch_error = |source| DatapathError::Io {
            path: PathBuf::from(format!("batch lookup of map {}", map_names::ORDER_COUNTERS)),
            source,
        };
        // The kernel's token for where the next batch starts: the last slot read.
        let mut last = None;
        while totals.len() < slots {
            let want = (slots - totals.len()).min(batch);
            let (got, token) =
                lookup_batch_fd(fd, last, &mut keys[..want], &mut values[..want * cpus])
                    .map_err(batch_error)?;
            let in_order = keys[..got]
                .iter()
                .zip(totals.len()..)
                .all(|(&key, slot)| key as usize == slot);
            if got == 0 || !in_order {
                return Err(batch_error(io::Error::other(format!(
                    "{want} slots asked from slot {}: {got} given, or out of order",
                    totals.len()
                ))));
            }
            totals.extend(
                values[..got * cpus]
                    .chunks_exact(cpus)
                    .map(|c| summed(c.iter())),
            );
            last = Some(token);
        }
        Ok(totals)
    }

    /// Datapath statistics of all interfaces, summed over CPUs, indexed by
    /// `blocker_common::Stat`.
    pub fn stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        let mut totals = [0u64; STAT_COUNT as usize];
        for slot in 0..IF_SLOTS {
            for (total, value) in totals.iter_mut().zip(self.slot_stats(slot)?) {
                *total += value;
            }
        }
        Ok(totals)
    }

    /// Datapath statistics of the interface with `ifindex` (and of any other
    /// interface sharing its slot: `ifindex % IF_SLOTS`).
    pub fn interface_stats(&self, ifindex: u32) -> Result<[u64; STAT_COUNT as usize]> {
        self.slot_stats(ifindex % IF_SLOTS)
    }

    fn slot_stats(&self, slot: u32) -> Result<[u64; STAT_COUNT as usize]> {
        let mut before = IfStats::default();
        let per_cpu = self
            .stats
            .get(&slot, 0)
            .map_err(map_err(map_names::STATS))?;
        for cpu in per_cpu.iter() {
            add_up(&mut before.counters, &cpu.counters);
        }
        let mut counts = FrameCounts::default();
        if let Some(frames) = &self.frames {
            let per_cpu = frames.get(&slot, 0).map_err(map_err(map_names::FRAMES))?;
            for cpu in per_cpu.iter() {
                add_up(&mut counts.counters, &cpu.counters);
            }
        }
        Ok(IfStats::of(&before, &counts).counters)
    }

    /// The entry the program finds for `addr` in the live generation: that
    /// of the longest table prefix containing it.
    pub fn lookup(&self, addr: IpAddr) -> Result<Option<PrefixEntry>> {
        Ok(self.lookup_all(&[addr])?.pop().flatten())
    }

    /// [`Maps::lookup`] for each of `addrs`, the tables mapped once.
    pub fn lookup_all(&self, addrs: &[IpAddr]) -> Result<Vec<Option<PrefixEntry>>> {
        let control = self.control()?;
        let g = control.live();
        let tables = MappedTables::map(&self.tables[g], g)?;
        let shape = control.shape(g);
        Ok(addrs
            .iter()
            .map(|&addr| {
                let index = layout::lookup(&tables, &shape, addr);
                (index != layout::NO_ENTRY)
                    .then(|| tables.entries.as_slice().get(index as usize).copied())
                    .flatten()
            })
            .collect())
    }

    /// Number of prefixes in the live generation: (IPv4, IPv6).
    pub fn live_prefixes(&self) -> Result<(usize, usize)> {
        let control = self.control()?;
        let g = control.live();
        Ok((
            control.prefixes[2 * g] as usize,
            control.prefixes[2 * g + 1] as usize,
        ))
    }

    fn zero_counters(&mut self, slots: &[u32]) -> Result<()> {
        let cpus = possible_cpus()?;
        for &slot in slots {
            let zeros =
                PerCpuValues::try_from(vec![OrderCounters::default(); cpus]).map_err(|source| {
                    DatapathError::Io {
                        path: PathBuf::from("per-CPU values"),
                        source,
                    }
                })?;
            self.counters
                .set(slot, zeros, 0)
                .map_err(map_err(map_names::ORDER_COUNTERS))?;
        }
        Ok(())
    }

    /// Generation `g`'s tables, to write, their value sizes checked.
    fn targets(&self, g: usize) -> Result<[Target; 6]> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let maps = &self.tables[g];
        let names = map_names::TABLES[g];
        let values = [
            values_of::<u64>(&maps[0], names[0])?,
            values_of::<Bucket4>(&maps[1], names[1])?,
            values_of::<u64>(&maps[2], names[2])?,
            values_of::<Bucket6>(&maps[3], names[3])?,
            values_of::<PrefixEntry>(&maps[4], names[4])?,
            values_of::<Short4>(&maps[5], names[5])?,
        ];
        Ok(std::array::from_fn(|i| Target {
            fd: maps[i].fd().as_fd().as_raw_fd(),
            name: names[i],
            values: values[i],
        }))
    }

    /// Writes each order's window, converted to the CLOCK_TAI nanoseconds
    /// the program reads, where it differs from what `written` says the
    /// slot holds (and records it there).
    fn set_windows(
        &mut self,
        compiled: &Compiled,
        written: &mut FastMap<u32, OrderWindow>,
    ) -> Result<()> {
        let offset = tai_offset_ns();
        let to_tai = |at: OffsetDateTime| -> u64 {
            let ns = at.unix_timestamp_nanos() + offset;
            u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
        };
        for order in &compiled.orders {
            let window = OrderWindow {
                not_before: order.effective_from.map_or(0, to_tai),
                not_after: order.expires_at.map_or(u64::MAX, to_tai),
            };
            if written.get(&order.slot) == Some(&window) {
                continue;
            }
            // Forgotten first: should the write fail, the slot is written
            // again next time.
            written.remove(&order.slot);
            self.windows
                .set(order.slot, window, 0)
                .map_err(map_err(map_names::ORDER_WINDOWS))?;
            written.insert(order.slot, window);
        }
        Ok(())
    }

    fn set_control(&mut self, control: Control) -> Result<()> {
        self.control
            .set(0, control, 0)
            .map_err(map_err(map_names::CONTROL))
    }
}

/// Some of an array map's values mapped into our memory (the table maps
/// are BPF_F_MMAPABLE): lookups map a whole table read-only and read the
/// few pages they touch; writes go through windows of it.
struct Mapped<T> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    bytes: usize,
}

impl<T: Copy> Mapped<T> {
    /// The whole map, read-only.
    fn map(data: &MapData, name: &'static str) -> Result<Self> {
        let len = values_of::<T>(data, name)?;
        Self::window(data, name, 0, len, false)
    }

    /// Values `start..start + len` (`start` on a page boundary).
    fn window(
        data: &MapData,
        name: &'static str,
        start: usize,
        len: usize,
        writable: bool,
    ) -> Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        Self::window_fd(data.fd().as_fd().as_raw_fd(), name, start, len, writable)
    }

    /// As [`Mapped::window`], of the map whose descriptor is `fd`.
    fn window_fd(
        fd: std::os::fd::RawFd,
        name: &'static str,
        start: usize,
        len: usize,
        writable: bool,
    ) -> Result<Self> {
        let bytes = (len * size_of::<T>()).next_multiple_of(page_size());
        let offset = libc::off_t::try_from(start * size_of::<T>()).unwrap_or(libc::off_t::MAX);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's value area; the kernel
        // checks offset and length against the map and keeps the map alive
        // while the mapping exists.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        let mapping_error = |source| DatapathError::Io {
            path: PathBuf::from(format!("mmap of map {name}")),
            source,
        };
        if ptr == libc::MAP_FAILED {
            return Err(mapping_error(io::Error::last_os_error()));
        }
        let ptr = std::ptr::NonNull::new(ptr.cast())
            .ok_or_else(|| mapping_error(io::Error::other("null mapping")))?;
        Ok(Self { ptr, len, bytes })
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: `len` values of `T` (plain integers, any bit pattern
        // valid) lie at `ptr`, mapped for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The values, to change. Only on a window mapped writable.
    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`; `&mut self` is the only access to it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Stores `value(i)` as value `i` of the window where they differ
    /// (pages that do not change are not dirtied). Only on a window mapped
    /// writable.
    fn store(&mut self, value: impl Fn(usize) -> T)
    where
        T: PartialEq,
    {
        for (i, to) in self.as_mut_slice().iter_mut().enumerate() {
            let from = value(i);
            if *to != from {
                *to = from;
            }
        }
    }

    /// Stores each `(index, value)`, for a window whose first value is the
    /// table's value `start` (indices outside the window are left). Only on
    /// a window mapped writable.
    fn store_at<'a>(&mut self, start: usize, values: impl Iterator<Item = &'a (u32, T)>)
    where
        T: 'a,
    {
        let target = self.as_mut_slice();
        for &(index, value) in values {
            if let Some(slot) = (index as usize)
                .checked_sub(start)
                .and_then(|at| target.get_mut(at))
            {
                *slot = value;
            }
        }
    }
}

impl Mapped<u64> {
    /// The values as atomics: for values that frames read while they are
    /// written.
    fn atomics(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: `AtomicU64` has the size and alignment of `u64`; `len`
        // values are mapped for as long as `self` lives, and atomics assume
        // nothing about who else reads or writes them. (A store needs a
        // window mapped writable.)
        unsafe {
            std::slice::from_raw_parts(
                self.ptr.as_ptr().cast::<std::sync::atomic::AtomicU64>(),
                self.len,
            )
        }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `window` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The number of values of map `data`, after checking they are `T`s.
fn values_of<T>(data: &MapData, name: &'static str) -> Result<usize> {
    let info = data.info().map_err(map_err(name))?;
    let size = size_of::<T>();
    if info.value_size() as usize != size || !size.is_multiple_of(8) {
        return Err(DatapathError::Layout {
            path: PathBuf::from(name),
            detail: format!(
                "{name} values are {} bytes, this build uses {size}",
                info.value_size()
            ),
        });
    }
    Ok(info.max_entries() as usize)
}

/// Bytes of a map mapped at once while writing: the window is unmapped
/// before the next, so writing a table never holds more of it in our memory.
const WRITE_WINDOW: usize = 4 << 20;

/// A table to write: a descriptor of the map (which must outlive the
/// writes), its name and how many values of the type written it holds.
#[derive(Clone, Copy)]
struct Target {
    fd: std::os::fd::RawFd,
    name: &'static str,
    values: usize,
}

/// Writes `len` values, `value(i)` each, to the start of `target`, window
/// by window.
fn write_mapped<T: Copy + PartialEq>(
    target: Target,
    len: usize,
    value: impl Fn(usize) -> T,
) -> Result<()> {
    let len = len.min(target.values);
    let per_window = values_per_window::<T>();
    let mut start = 0;
    while start < len {
        let count = per_window.min(len - start);
        Mapped::window_fd(target.fd, target.name, start, count, true)?.store(|i| value(start + i));
        start += count;
    }
    Ok(())
}

/// Writes a whole laid-out generation to `targets` (its tables, idle).
fn write_generation(
    targets: &[Target; 6],
    entries: &[PrefixEntry],
    keys: &crate::layout::Keys,
    v4: &Placed,
    v6: &Placed,
) -> Result<()> {
    write_mapped(targets[1], v4.slots.len(), |b| v4.bucket4(keys, b))?;
    write_mapped(targets[3], v6.slots.len(), |b| v6.bucket6(keys, b))?;
    write_mapped(targets[0], keys.v4_bits.len(), |i| keys.v4_bits[i])?;
    write_mapped(targets[2], keys.v6_bits.len(), |i| keys.v6_bits[i])?;
    write_mapped(targets[4], entries.len(), |i| entries[i])?;
    write_mapped(targets[5], keys.v4_short.len(), |i| keys.v4_short[i])
}

/// Values of `T` in a mapping window: a whole number of pages, so that
/// every window starts on a page boundary.
fn values_per_window<T>() -> usize {
    let size = size_of::<T>();
    let step = page_size() / gcd(page_size(), size);
    (WRITE_WINDOW / (step * size)).max(1) * step
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One generation's tables, mapped.
struct MappedTables {
    v4_bits: Mapped<u64>,
    v4: Mapped<Bucket4>,
    v6_bits: Mapped<u64>,
    v6: Mapped<Bucket6>,
    entries: Mapped<PrefixEntry>,
    v4_short: Mapped<Short4>,
}

impl MappedTables {
    fn map(maps: &[MapData; 6], generation: usize) -> Result<Self> {
        let [n0, n1, n2, n3, n4, n5] = map_names::TABLES[generation];
        Ok(Self {
            v4_bits: Mapped::map(&maps[0], n0)?,
            v4: Mapped::map(&maps[1], n1)?,
            v6_bits: Mapped::map(&maps[2], n2)?,
            v6: Mapped::map(&maps[3], n3)?,
            entries: Mapped::map(&maps[4], n4)?,
            v4_short: Mapped::map(&maps[5], n5)?,
        })
    }
}

impl layout::Bitmaps for MappedTables {
    fn v4_bits(&self, index: u32) -> u64 {
        self.v4_bits
            .as_slice()
            .get(index as usize)
            .copied()
            .unwrap_or(0)
    }
    fn v6_bits(&self, index: u32) -> u64 {
        self.v6_bits
            .as_slice()
            .get(index as usize)
            .copied()
            .unwrap_or(0)
    }
}

impl layout::Tables for MappedTables {
    fn v4_bucket(&self, index: u32) -> Option<&Bucket4> {
        self.v4.as_slice().get(index as usize)
    }
    fn v6_bucket(&self, index: u32) -> Option<&Bucket6> {
        self.v6.as_slice().get(index as usize)
    }
    fn v4_short(&self, index: u32) -> Short4 {
        self.v4_short
            .as_slice()
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// One generation's tables as a patch reads them: a value at a time
/// (BPF_MAP_LOOKUP_ELEM), or many at once: hash-table buckets gathered by
/// the copy program ([`copier`]), bitmap words window by window (a patch
/// reads thousands of scattered values; mapping whole tables to read them
/// would map, and count as ours, hundreds of megabytes).
struct LiveTables<'a> {
    maps: &'a [MapData; 6],
    names: [&'static str; 6],
    copier: &'a copier::Copier,
    generation: usize,
}

impl crate::layout::Source for LiveTables<'_> {
    fn v4_bits(&mut self, index: u32) -> Option<u64> {
        lookup(&self.maps[0], index).ok()
    }
    fn v6_bits(&mut self, index: u32) -> Option<u64> {
        lookup(&self.maps[2], index).ok()
    }
    fn v4_bucket(&mut self, index: u32) -> Option<Bucket4> {
        lookup(&self.maps[1], index).ok()
    }
    fn v6_bucket(&mut self, index: u32) -> Option<Bucket6> {
        lookup(&self.maps[3], index).ok()
    }
    fn v4_short(&mut self, index: u32) -> Option<Short4> {
        lookup(&self.maps[5], index).ok()
    }
    fn many(&mut self, table: Table, indices: &[u32]) -> Option<Values> {
        let (m, n) = (&self.maps, &self.names);
        match table {
            Table::V4Bits => read_mapped(&m[0], n[0], indices).map(Values::Words),
            Table::V4 => self.copier.gather(self.generation, indices).map(Values::V4),
            Table::V6Bits => read_mapped(&m[2], n[2], indices).map(Values::Words),
            Table::V6 => self.copier.gather(self.generation, indices).map(Values::V6),
            Table::V4Short => read_mapped(&m[5], n[5], indices).map(Values::Shorts),
        }
        .ok()
    }
}

/// The values at `indices` (sorted, each in range) of the array map
/// `data`, in order, mapping one window at a time.
fn read_mapped<T: Copy>(data: &MapData, name: &'static str, indices: &[u32]) -> Result<Vec<T>> {
    let len = values_of::<T>(data, name)?;
    if indices.last().is_some_and(|&i| i as usize >= len) {
        return Err(DatapathError::Layout {
            path: PathBuf::from(name),
            detail: format!(
                "{name} has {len} values, not {}",
                indices[indices.len() - 1] + 1
            ),
        });
    }
    let per_window = values_per_window::<T>();
    let mut values = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while let Some(&first) = rest.first() {
        let start = first as usize / per_window * per_window;
        let count = per_window.min(len - start);
        let inside = rest.partition_point(|&i| (i as usize) < start + count);
        let window = Mapped::<T>::window(data, name, start, count, false)?;
        let mapped = window.as_slice();
        values.extend(rest[..inside].iter().map(|&i| mapped[i as usize - start]));
        rest = &rest[inside..];
    }
    Ok(values)
}

/// `union bpf_attr` for BPF_MAP_LOOKUP_ELEM.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One order slot's counters, summed over CPUs.
fn summed<'a>(per_cpu: impl Iterator<Item = &'a OrderCounters>) -> OrderCounters {
    per_cpu.fold(OrderCounters::default(), |sum, c| OrderCounters {
        packets: sum.packets + c.packets,
        bytes: sum.bytes + c.bytes,
    })
}

/// `union bpf_attr` for BPF_MAP_UPDATE_BATCH and BPF_MAP_LOOKUP_BATCH.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl BatchAttr {
    /// A batch of `count` keys and their values on the map `fd`, from the
    /// map's start.
    fn new<K, V>(fd: std::os::fd::RawFd, keys: *const K, values: *const V, count: usize) -> Self {
        Self {
            in_batch: 0,
            out_batch: 0,
            keys: keys as u64,
            values: values as u64,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        }
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Order slots per batch read: values for 1024 slots on each possible CPU
/// (2 MiB of buffer on a 128-CPU router), whatever the number of orders.
pub const BATCH_SLOTS: u32 = 1024;

fn bpf<A>(command: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is the bpf_attr layout `command` reads, and its size is
    // passed along; the pointers inside it are valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<A>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Value `index` of the array map `data` (whose values are `T`s).
fn lookup<T: Copy + Default>(data: &MapData, index: u32) -> io::Result<T> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let mut value = T::default();
    let value_ptr = std::ptr::from_mut(&mut value) as u64;
    array_elem(
        BPF_MAP_LOOKUP_ELEM,
        data.fd().as_fd().as_raw_fd(),
        index,
        value_ptr,
    )?;
    Ok(value)
}

/// BPF_MAP_LOOKUP_ELEM or BPF_MAP_UPDATE_ELEM (`command`) of value `index`
/// of the array map `fd`, read into or written from the address `value`
/// (which must hold a whole value).
fn array_elem(
    command: libc::c_long,
    fd: std::os::fd::RawFd,
    index: u32,
    value: u64,
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: std::ptr::from_ref(&index) as u64,
        value,
        flags: 0,
    };
    bpf(command, &mut attr)
}

/// Writes `(index, value)` pairs to the array map `fd` in one call
/// (BPF_MAP_UPDATE_BATCH; aya 0.14 has no batch operations), the value
/// size unchecked.
fn update_batch_fd<T: Copy>(fd: std::os::fd::RawFd, values: &[(u32, T)]) -> io::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let (indices, values): (Vec<u32>, Vec<T>) = values.iter().copied().unzip();
    let mut attr = BatchAttr::new(fd, indices.as_ptr(), values.as_ptr(), indices.len());
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// Reads up to `keys.len()` entries of the per-CPU array `fd` in one call
/// (BPF_MAP_LOOKUP_BATCH), starting after slot `last` (or at the first):
/// how many were read, and the token for the next call. `values` holds a
/// value per possible CPU for each key.
fn lookup_batch_fd<T: Copy>(
    fd: std::os::fd::RawFd,
    last: Option<u32>,
    keys: &mut [u32],
    values: &mut [T],
) -> io::Result<(usize, u32)> {
    // Per key, a value for each possible CPU, each rounded up to 8 bytes.
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let mut next = 0u32;
    let mut attr = BatchAttr {
        in_batch: last
            .as_ref()
            .map_or(0, |token| std::ptr::from_ref(token) as u64),
        out_batch: std::ptr::from_mut(&mut next) as u64,
        ..BatchAttr::new(fd, keys.as_mut_ptr(), values.as_mut_ptr(), keys.len())
    };
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        // ENOENT: the batch reached the map's end.
        Err(err) if err.raw_os_error() != Some(libc::ENOENT) => Err(err),
        _ => Ok(((attr.count as usize).min(keys.len()), next)),
    }
}

/// The number of possible CPUs: how many values a per-CPU map holds per key.
fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(path, source)| DatapathError::Io {
        path: PathBuf::from(path),
        source,
    })
}

/// An attachment this daemon holds open: besides the pin, our own handle
/// on the link keeps the program attached if the pin is removed by hand.
struct HeldLink {
    mode: AttachedMode,
    /// The interface's index when attached: another index under the same
    /// name means the interface was deleted and recreated.
    ifindex: u32,
    link: FdLink,
}

/// What [`Datapath::repair`] found missing and put back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// A map or program pin was removed; pinned again from our handle.
    Pin(String),
    /// An interface's link pin was removed; pinned again from our handle
    /// (the program never left the interface).
    Link { interface: String },
    /// The interface was deleted and recreated; the program is attached to
    /// the new one.
    Reattached {
        interface: String,
        mode: AttachedMode,
    },
    /// The interface does not exist (any more); attached again when it is back.
    Gone {
        interface: String,
        mode: AttachedMode,
    },
    /// Something is missing and could not be put back.
    Failed { what: String, error: String },
}

/// The loaded program with its maps, pinned under `bpffs_dir`.
pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    bpffs_dir: PathBuf,
    last_flip: Option<Instant>,
    /// The compile ([`Step::version`]) whose tables are live, when it was
    /// applied by [`Datapath::apply_step`].
    applied: Option<u64>,
    /// The idle generation holds what the live one does (the thread
    /// catching it up wrote the last patch); else it is not known to.
    idle_level: bool,
    /// A thread writing the last patch into the generation it left idle
    /// (once no packet can be reading it): it returns whether it did.
    catching_up: Option<thread::JoinHandle<bool>>,
    /// Moves a patch's hash-table buckets.
    copier: Arc<copier::Copier>,
    /// The program's copy of the control value.
    live_control: program_data::LiveControl,
    /// The program's step-1 bitmap: both generations' bits.
    union: Arc<Mutex<program_data::Union>>,
    /// Hash-table keys of the live generation: (IPv4, IPv6).
    keys: (usize, usize),
    /// The window this daemon last wrote to each order slot.
    windows: FastMap<u32, OrderWindow>,
    /// Kernel ids of the pinned maps, to pin them again if a pin goes.
    map_ids: Vec<(&'static str, u32)>,
    links: BTreeMap<String, HeldLink>,
}

impl Datapath {
    /// Loads the XDP program against the maps pinned under `bpffs_dir`
    /// (creating and pinning them on first use) and pins the program. Does not
    /// attach and does not change what is enforced.
    pub fn open(bpffs_dir: &Path, max_prefixes: u32) -> Result<Self> {
        let maps_dir = maps_dir(bpffs_dir);
        let existing = bpffs_dir
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(bpffs_dir);
        if !is_bpffs(existing) {
            return Err(DatapathError::NotBpffs {
                path: bpffs_dir.to_owned(),
            });
        }
        fs::create_dir_all(&maps_dir).map_err(io_err(&maps_dir))?;
        fs::create_dir_all(links_dir(bpffs_dir)).map_err(io_err(bpffs_dir))?;
        check_pinned_layout(&maps_dir)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&maps_dir);
        let geometry = Geometry::for_capacity(max_prefixes);
        for g in 0..2 {
            loader.map_max_entries(map_names::V4[g], geometry.v4_buckets);
            loader.map_max_entries(map_names::V6[g], geometry.v6_buckets);
            loader.map_max_entries(map_names::ENTRIES[g], geometry.entries);
        }
        loader.map_max_entries(map_names::ORDER_COUNTERS, MAX_ORDERS);
        let union_pin = program_data::UnionPin::new(PROGRAM, bpffs_dir)?;
        loader.map_pin_path(program_data::UNION, union_pin.path());
        let loaded = loader.load(PROGRAM);
        drop(union_pin);
        let mut ebpf = loaded.map_err(|e| DatapathError::Load(Box::new(e)))?;
        let program = xdp_program(&mut ebpf)?;
        program.load().map_err(DatapathError::Program)?;
        let prog_pin = bpffs_dir.join("prog");
        if prog_pin.exists() {
            fs::remove_file(&prog_pin).map_err(io_err(&prog_pin))?;
        }
        program
            .pin(&prog_pin)
            .map_err(|source| DatapathError::Pin {
                path: prog_pin.clone(),
                source,
            })?;
        let copier = Arc::new(copier::Copier::new(&mut ebpf)?);
        let mut maps = Maps::from_ebpf(&mut ebpf)?;
        let mut control = maps.control()?;
        if control.v4_buckets == 0 {
            // Maps made just now: record their shape. (Pinned maps keep
            // theirs: the pinned tables may be enforcing right now.)
            let geometry = maps.geometry;
            control.v4_buckets = geometry.v4_buckets;
            control.v6_buckets = geometry.v6_buckets;
            control.capacity = max_prefixes;
            maps.set_control(control)?;
        }
        // The program's own data, filled from the pinned maps before the
        // program is attached anywhere.
        let live_control = program_data::LiveControl::new(&ebpf)?;
        live_control.set(&maps.control()?)?;
        let union = program_data::Union::new(&ebpf)?;
        union.level([&maps.targets(0)?, &maps.targets(1)?])?;
        let mut map_ids = Vec::with_capacity(map_names::ALL.len());
        for name in map_names::ALL {
            let info = aya::maps::MapInfo::from_pin(maps_dir.join(name)).map_err(map_err(name))?;
            map_ids.push((name, info.id()));
        }
        Ok(Self {
            ebpf,
            maps,
            bpffs_dir: bpffs_dir.to_owned(),
            last_flip: None,
            applied: None,
            idle_level: false,
            catching_up: None,
            copier,
            live_control,
            union: Arc::new(Mutex::new(union)),
            keys: (0, 0),
            windows: FastMap::default(),
            map_ids,
            links: BTreeMap::new(),
        })
    }

    /// Prefixes each family's table holds at most.
    pub fn capacity(&self) -> u32 {
        self.maps.capacity().unwrap_or(0)
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    /// Attaches the program to `interface`. When a link for it is pinned
    /// already (a previous daemon's), the new program is swapped into that
    /// link atomically (`bpf_link_update`): enforcement never pauses.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<AttachedMode> {
        // Ours already (adopted at start, `adopt_pinned_links`): the same
        // interface, its link still pinned.
        if let Some(held) = self.links.get(interface)
            && ifindex(interface) == Some(held.ifindex)
            && link_pin_path(&self.bpffs_dir, held.mode, interface).exists()
        {
            return Ok(held.mode);
        }
        let existing = attachments(&self.bpffs_dir)?
            .into_iter()
            .find(|a| a.interface == interface);
        if let Some(existing) = existing {
            match self.take_over(&existing) {
                Ok(link) => {
                    self.keep(interface, existing.mode, link);
                    return Ok(existing.mode);
                }
                Err(err) => {
                    // The interface went away (a link to a deleted device is
                    // defunct) or the pin is foreign: start afresh.
                    tracing::warn!(interface, error = %err, "pinned link unusable, attaching anew");
                    fs::remove_file(&existing.pin).map_err(io_err(&existing.pin))?;
                }
            }
        }
        let candidates: &[AttachedMode] = match mode {
            AttachMode::Native => &[AttachedMode::Native],
            AttachMode::Generic => &[AttachedMode::Generic],
            AttachMode::Auto => &[AttachedMode::Native, AttachedMode::Generic],
        };
        let mut last_error = None;
        for &candidate in candidates {
            match self.attach_new(interface, candidate) {
                Ok(()) => return Ok(candidate),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or(DatapathError::Missing {
            what: "attach mode",
            name: interface.to_owned(),
        }))
    }

    /// Swaps this program into every link a previous daemon pinned, at
    /// once, before any table is written. This program reads tables an
    /// older build wrote exactly as that build did; the reverse does not
    /// hold (an older program would rank a `RANK_NO_WINDOW` candidate
    /// above any other), so no older program may run on tables this build
    /// writes. A link that cannot be taken over is left to [`Self::attach`].
    pub fn adopt_pinned_links(&mut self) -> Result<()> {
        for existing in attachments(&self.bpffs_dir)? {
            match self.take_over(&existing) {
                Ok(link) => self.keep(&existing.interface, existing.mode, link),
                Err(err) => {
                    tracing::debug!(interface = %existing.interface, error = %err, "pinned link not adopted");
                }
            }
        }
        Ok(())
    }

    /// Swaps our program into the pinned link of `existing`; returns our
    /// handle on that link.
    fn take_over(&mut self, existing: &Attachment) -> Result<FdLink> {
        let pinned = PinnedLink::from_pin(&existing.pin).map_err(|e| DatapathError::Attach {
            interface: existing.interface.clone(),
            mode: existing.mode.as_str(),
            source: ProgramError::IOError(io::Error::other(e)),
        })?;
        let fd_link: FdLink = pinned.into();
        let attach_error = |source| DatapathError::Attach {
            interface: existing.interface.clone(),
            mode: existing.mode.as_str(),
            source,
        };
        let link = XdpLink::try_from(fd_link)
            .map_err(|e| attach_error(ProgramError::IOError(io::Error::other(e))))?;
        let program = xdp_program(&mut self.ebpf)?;
        let id = program.attach_to_link(link).map_err(attach_error)?;
        let link = program.take_link(id).map_err(attach_error)?;
        FdLink::try_from(link).map_err(|e| attach_error(ProgramError::IOError(io::Error::other(e))))
    }

    fn attach_new(&mut self, interface: &str, mode: AttachedMode) -> Result<()> {
        let attach_error = |source| DatapathError::Attach {
            interface: interface.to_owned(),
            mode: mode.as_str(),
            source,
        };
        let program = xdp_program(&mut self.ebpf)?;
        let id = program
            .attach(interface, mode.xdp_mode())
            .map_err(attach_error)?;
        let link = program.take_link(id).map_err(attach_error)?;
        let fd_link = FdLink::try_from(link)
            .map_err(|e| attach_error(ProgramError::IOError(io::Error::other(e))))?;
        let link = pin_link(&self.bpffs_dir, mode, interface, fd_link)?;
        self.keep(interface, mode, link);
        Ok(())
    }

    fn keep(&mut self, interface: &str, mode: AttachedMode, link: FdLink) {
        self.links.insert(
            interface.to_owned(),
            HeldLink {
                mode,
                ifindex: ifindex(interface).unwrap_or(0),
                link,
            },
        );
    }

    /// Detaches `interface` (taken out of the config): removes its pin and
    /// lets go of our handle, so the program leaves it.
    pub fn detach_interface(&mut self, attachment: &Attachment) -> Result<()> {
        self.links.remove(&attachment.interface);
        detach_one(attachment)
    }

    /// Puts back what was removed under the daemon's feet: map and program
    /// pins, link pins, and attachments to interfaces that were deleted and
    /// recreated. `interfaces` are the configured ones. Cheap when nothing
    /// is missing (a few stats).
    pub fn repair<'a>(
        &mut self,
        interfaces: impl IntoIterator<Item = (&'a str, AttachMode)>,
    ) -> Vec<Repair> {
        let outcome = |path: &Path, pinned: Result<(), String>| match pinned {
            Ok(()) => Repair::Pin(path.display().to_string()),
            Err(error) => Repair::Failed {
                what: path.display().to_string(),
                error,
            },
        };
        let mut done = Vec::new();
        let maps_dir = maps_dir(&self.bpffs_dir);
        if let Err(err) = fs::create_dir_all(&maps_dir) {
            done.push(outcome(&maps_dir, Err(err.to_string())));
            return done;
        }
        for &(name, id) in &self.map_ids {
            let path = maps_dir.join(name);
            if !path.exists() {
                let pinned = MapData::from_id(id)
                    .map_err(|e| e.to_string())
                    .and_then(|map| map.pin(&path).map_err(|e| e.to_string()));
                done.push(outcome(&path, pinned));
            }
        }
        let prog_pin = self.bpffs_dir.join("prog");
        if !prog_pin.exists() {
            let pinned = xdp_program(&mut self.ebpf)
                .map_err(|e| e.to_string())
                .and_then(|p| p.pin(&prog_pin).map_err(|e| e.to_string()));
            done.push(outcome(&prog_pin, pinned));
        }
        for (interface, mode) in interfaces {
            done.extend(self.repair_link(interface, mode));
        }
        done
    }

    fn repair_link(&mut self, interface: &str, mode: AttachMode) -> Option<Repair> {
        let index = ifindex(interface);
        let held = self.links.remove(interface);
        let Some(index) = index else {
            // The link of a deleted interface is defunct; let it go.
            return held.map(|held| {
                let _ = fs::remove_file(link_pin_path(&self.bpffs_dir, held.mode, interface));
                Repair::Gone {
                    interface: interface.to_owned(),
                    mode: held.mode,
                }
            });
        };
        if let Some(held) = held {
            let pin = link_pin_path(&self.bpffs_dir, held.mode, interface);
            if held.ifindex != index {
                // Recreated: the old link is defunct.
                let _ = fs::remove_file(&pin);
            } else if pin.exists() {
                self.links.insert(interface.to_owned(), held);
                return None;
            } else {
                match pin_link(&self.bpffs_dir, held.mode, interface, held.link) {
                    Ok(link) => {
                        self.keep(interface, held.mode, link);
                        return Some(Repair::Link {
                            interface: interface.to_owned(),
                        });
                    }
                    // Our handle went with the failed pin: attach anew.
                    Err(error) => {
                        tracing::warn!(interface, %error, "pinning the link again failed")
                    }
                }
            }
        }
        Some(match self.attach(interface, mode) {
            Ok(mode) => Repair::Reattached {
                interface: interface.to_owned(),
                mode,
            },
            Err(err) => Repair::Failed {
                what: format!("attaching {interface}"),
                error: err.to_string(),
            },
        })
    }

    /// Replaces what is enforced with `compiled`, atomically for packets: the
    /// idle generation is filled, then made live with one map write.
    /// `fresh_slots` are slots newly given to an order id; their counters are
    /// zeroed first so a reused slot does not inherit counts.
    pub fn apply(&mut self, compiled: &Compiled, fresh_slots: &[u32]) -> Result<ApplyStats> {
        self.settle();
        let (stats, _) = self.apply_whole(compiled, fresh_slots)?;
        self.applied = None;
        self.idle_level = false;
        Ok(stats)
    }

    /// As [`Datapath::apply`], for compile `version` of a
    /// [`Compiler`](crate::compile::Compiler), which changed `change` since
    /// the compile before. When that compile is the one live, only what
    /// changed is written (a [`Patch`] of the idle generation, once the
    /// thread catching it up has made it level with the live one).
    /// Otherwise the tables are laid out from scratch, and the other
    /// generation is then written the same, so that the next change can be
    /// a patch.
    pub fn apply_step(
        &mut self,
        compiled: &Compiled,
        version: u64,
        change: Option<&Change>,
        fresh_slots: &[u32],
    ) -> Result<ApplyStats> {
        self.settle();
        if let Some(change) = change
            && self.applied == Some(change.from)
            && self.idle_level
        {
            match self.apply_patch(compiled, change, fresh_slots) {
                Ok(Some(stats)) => {
                    self.applied = Some(version);
                    return Ok(stats);
                }
                Ok(None) => {}
                Err(err) => {
                    // The idle generation may be half written: lay out
                    // from scratch, which writes it whole.
                    tracing::warn!(error = %err, "patching the tables failed; laying them out whole");
                    self.idle_level = false;
                }
            }
        }
        self.applied = None;
        self.idle_level = false;
        let (stats, (keys, v4, v6)) = self.apply_whole(compiled, fresh_slots)?;
        // The generation just left: the same tables, written in the
        // background once no packet can be reading it. The feed is enforced
        // already: should this fail, the next apply is laid out whole too.
        let targets = match self.maps.targets(1 - stats.generation as usize) {
            Ok(targets) => targets,
            Err(err) => {
                tracing::warn!(error = %err, "the idle tables cannot be written level with the live ones; the next apply lays them out whole");
                return Ok(stats);
            }
        };
        let entries = compiled.entries.clone();
        self.applied = Some(version);
        let leveller = self.leveller();
        self.catching_up = Some(thread::spawn(move || {
            thread::sleep(GENERATION_GRACE);
            let written = write_generation(&targets, &entries, &keys, &v4, &v6);
            if let Err(err) = &written {
                tracing::warn!(error = %err, "writing the idle tables level with the live ones; the next apply lays them out whole");
            }
            Leveller::level_in_background(leveller);
            written.is_ok()
        }));
        Ok(stats)
    }

    /// Waits for the thread catching the idle generation up, if any (an
    /// apply does so first anyway).
    pub fn settle(&mut self) {
        if let Some(thread) = self.catching_up.take() {
            self.idle_level = matches!(thread.join(), Ok(true));
        }
    }

    /// Writes `control` to the pinned value, then to the program's copy
    /// (which the program reads): a restart takes the pinned one, and the
    /// generation either names is whole.
    fn set_control(&mut self, control: &Control) -> Result<()> {
        self.maps.set_control(*control)?;
        self.live_control.set(control)
    }

    /// The maps of the loaded program's own data (not pinned): its step-1
    /// bitmap and its copy of the control value.
    pub fn program_data(&self) -> Vec<&MapData> {
        [program_data::UNION, program_data::LIVE_CONTROL]
            .into_iter()
            .filter_map(|name| program_data::map(&self.ebpf, name).ok())
            .collect()
    }

    /// Whether the program's step-1 bitmap, as the kernel holds it, has
    /// the bit of `addr`'s bucket set, once the generation left idle by the
    /// last apply has caught up.
    pub fn step1_marked(&mut self, addr: IpAddr) -> Result<bool> {
        self.settle();
        self.union
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .marked(addr)
    }

    /// Sets the program's step-1 bitmap to both generations' bits, as
    /// the maps hold them now.
    fn level_union(&self) -> Result<()> {
        self.leveller()?.level()
    }

    /// What levels the program's step-1 bitmap from another thread.
    fn leveller(&self) -> Result<Leveller> {
        Ok(Leveller {
            union: Arc::clone(&self.union),
            generations: [self.maps.targets(0)?, self.maps.targets(1)?],
        })
    }

    fn wait_for_grace(&self) {
        if let Some(flipped) = self.last_flip {
            let since = flipped.elapsed();
            if since < GENERATION_GRACE {
                thread::sleep(GENERATION_GRACE - since);
            }
        }
    }

    /// Checks the feed fits the tables made for `capacity` prefixes per
    /// family.
    fn check_capacity(compiled: &Compiled, capacity: u32) -> Result<()> {
        for (family, count) in [("IPv4", compiled.v4.len()), ("IPv6", compiled.v6.len())] {
            if count > capacity as usize {
                return Err(DatapathError::Capacity {
                    family,
                    count,
                    capacity,
                });
            }
        }
        Ok(())
    }

    /// Lays `compiled` out from scratch into the idle generation and flips
    /// it live; returns the layout too.
    fn apply_whole(
        &mut self,
        compiled: &Compiled,
        fresh_slots: &[u32],
    ) -> Result<(ApplyStats, (crate::layout::Keys, Placed, Placed))> {
        let mut control = self.maps.control()?;
        Self::check_capacity(compiled, control.capacity)?;
        // Lay the tables out before touching any map: a feed that does not
        // fit leaves the datapath exactly as it was.
        let started = Instant::now();
        let geometry = self.maps.geometry;
        let keys = crate::layout::prepare(compiled, &geometry)?;
        // The two families are placed side by side.
        let (v4, v6) = crate::parallel::join(
            keys.v4.len() + keys.v6.len(),
            || crate::layout::place_v4(&keys, &geometry),
            || crate::layout::place_v6(&keys, &geometry),
        );
        let (v4, v6) = (v4?, v6?);
        let laid_out = started.elapsed();
        self.maps.zero_counters(fresh_slots)?;
        self.maps.set_windows(compiled, &mut self.windows)?;
        self.wait_for_grace();
        let idle = 1 - control.live();
        let writing = Instant::now();
        write_generation(
            &self.maps.targets(idle)?,
            &compiled.entries,
            &keys,
            &v4,
            &v6,
        )?;
        self.level_union()?;
        let written = laid_out + writing.elapsed();
        self.flip(&mut control, idle, [v4.seed, v6.seed], compiled)?;
        self.keys = (keys.v4.len(), keys.v6.len());
        let stats = self.stats(compiled, idle, written, None);
        Ok((stats, (keys, v4, v6)))
    }

    /// The totals of an apply of `compiled` that made `generation` live:
    /// a patch that wrote `buckets`, or (`None`) a layout from scratch.
    fn stats(
        &self,
        compiled: &Compiled,
        generation: usize,
        written: Duration,
        buckets: Option<(usize, usize)>,
    ) -> ApplyStats {
        let geometry = self.maps.geometry;
        ApplyStats {
            ipv4: compiled.v4.len(),
            ipv6: compiled.v6.len(),
            generation: generation as u32,
            keys: self.keys,
            entries: compiled.entries.len() - 1,
            written,
            patched: buckets.is_some(),
            buckets: buckets
                .unwrap_or((geometry.v4_buckets as usize, geometry.v6_buckets as usize)),
        }
    }

    /// Makes the idle generation `idle` live, hashed with `seeds`.
    fn flip(
        &mut self,
        control: &mut Control,
        idle: usize,
        seeds: [u32; 2],
        compiled: &Compiled,
    ) -> Result<()> {
        // The idle generation's seeds and counts first, the flip alone
        // after: a packet reading the control value while it is copied sees
        // either generation with its own seeds.
        control.seed[2 * idle] = seeds[0];
        control.seed[2 * idle + 1] = seeds[1];
        control.prefixes[2 * idle] = u32::try_from(compiled.v4.len()).unwrap_or(u32::MAX);
        control.prefixes[2 * idle + 1] = u32::try_from(compiled.v6.len()).unwrap_or(u32::MAX);
        self.set_control(control)?;
        control.generation = idle as u32;
        self.set_control(control)?;
        self.last_flip = Some(Instant::now());
        Ok(())
    }

    /// Patches the idle generation to `compiled` and flips it live.
    /// `Ok(None)`: the change cannot be patched (nothing was written).
    fn apply_patch(
        &mut self,
        compiled: &Compiled,
        change: &Change,
        fresh_slots: &[u32],
    ) -> Result<Option<ApplyStats>> {
        let mut control = self.maps.control()?;
        Self::check_capacity(compiled, control.capacity)?;
        let started = Instant::now();
        let live = control.live();
        let shape = control.shape(live);
        let source = || LiveTables {
            maps: &self.maps.tables[live],
            names: map_names::TABLES[live],
            copier: &self.copier,
            generation: live,
        };
        let (mut v4_source, mut v6_source) = (source(), source());
        let idle = 1 - live;
        // Both generations' tables, named once before anything is written:
        // the idle one's written now, the one left behind caught up after
        // the flip, and the step-1 bitmap levelled from both.
        let leveller = self.leveller()?;
        let (targets, left) = (leveller.generations[idle], leveller.generations[live]);
        self.wait_for_grace();
        // Written from here on: level again once caught up (below).
        self.idle_level = false;
        let union = &self.union;
        let failed = Mutex::new(None);
        // Each table is written as soon as the patch has worked it out, on
        // the thread that did (the kernel copies each value of a hash table
        // in on the calling thread): IPv6's tables and the IPv4 /16s while
        // the other thread still works out IPv4's buckets. The program's
        // step-1 bitmap gains each bitmap's bits once that is written. All
        // before the flip; should the patch fail, `apply_step` lays the
        // idle generation out whole.
        let sink = |part: Part<'_>| {
            let add = |v4: &[(u32, u64)], v6: &[(u32, u64)]| {
                union
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add(v4, v6)
            };
            let written =
                write_part(&targets, &self.copier, idle, part).and_then(|()| match part {
                    Part::V4Bits(words) => add(words, &[]),
                    Part::V6Bits(words) => add(&[], words),
                    _ => Ok(()),
                });
            if let Err(err) = written {
                failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(err);
            }
        };
        let patch = match crate::layout::patch(
            compiled,
            change,
            &shape,
            self.maps.geometry.entries as usize,
            [&mut v4_source, &mut v6_source],
            &sink,
        ) {
            Ok(patch) => patch,
            Err(reason) => {
                tracing::debug!(%reason, "laying the tables out whole");
                return Ok(None);
            }
        };
        if let Some(err) = failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
            return Err(err);
        }
        write_values(targets[4], &patch.entries)?;
        self.maps.zero_counters(fresh_slots)?;
        self.maps.set_windows(compiled, &mut self.windows)?;
        self.flip(&mut control, idle, [shape.v4_seed, shape.v6_seed], compiled)?;
        self.keys = (
            self.keys.0.saturating_add_signed(patch.keys.0),
            self.keys.1.saturating_add_signed(patch.keys.1),
        );
        // The generation just left lags by this patch: written in the
        // background once no packet can be reading it, so the next apply
        // has only its own change to write.
        let buckets = (patch.v4.len(), patch.v6.len());
        let stats = self.stats(compiled, idle, started.elapsed(), Some(buckets));
        let copier = Arc::clone(&self.copier);
        self.catching_up = Some(thread::spawn(move || {
            thread::sleep(GENERATION_GRACE);
            let written = write_patch(left, &patch, &copier, live);
            if let Err(err) = &written {
                tracing::warn!(error = %err, "catching the idle tables up; the next apply lays them out whole");
            }
            Leveller::level_in_background(Ok(leveller));
            written.is_ok()
        }));
        Ok(Some(stats))
    }
}

/// Levels the program's step-1 bitmap ([`program_data::Union::level`]), from any
/// thread: the tables' descriptors outlive it, as the datapath waits for
/// the thread catching up before it drops them.
struct Leveller {
    union: Arc<Mutex<program_data::Union>>,
    generations: [[Target; 6]; 2],
}

impl Leveller {
    /// [`Leveller::level`] from the thread catching a generation up: a
    /// failure is logged, and leaves bits neither generation has set
    /// (lookups stay right; a few frames take step 2 for nothing).
    fn level_in_background(leveller: Result<Self>) {
        if let Err(err) = leveller.and_then(|leveller| leveller.level()) {
            tracing::warn!(error = %err, "levelling the program's step-1 bitmap");
        }
    }

    fn level(&self) -> Result<()> {
        let [a, b] = &self.generations;
        self.union
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .level([a, b])
    }
}

/// Writes `patch` into generation `generation`'s tables (`targets`, in
/// `map_names::TABLES` order).
fn write_patch(
    targets: [Target; 6],
    patch: &Patch,
    copier: &copier::Copier,
    generation: usize,
) -> Result<()> {
    for part in patch.parts() {
        write_part(&targets, copier, generation, part)?;
    }
    write_values(targets[4], &patch.entries)
}

/// Writes one table of a patch into generation `generation`'s tables
/// (`targets`, in `map_names::TABLES` order): the hash tables' buckets by
/// `copier`, the rest by [`write_values`].
fn write_part(
    targets: &[Target; 6],
    copier: &copier::Copier,
    generation: usize,
    part: Part<'_>,
) -> Result<()> {
    match part {
        Part::V4Bits(words) => write_values(targets[0], words),
        Part::V4(buckets) => copier.scatter(generation, buckets),
        Part::V6Bits(words) => write_values(targets[2], words),
        Part::V6(buckets) => copier.scatter(generation, buckets),
        Part::V4Short(shorts) => write_values(targets[5], shorts),
    }
}

/// Writes `(index, value)` pairs to `target` (whose values are `T`s). A
/// table that fits a window (the bitmaps, the /16s) is mapped, 256 KiB at
/// a time, and written a store a value, instead of the kernel copying each
/// value in by syscall: mapping a page costs about what copying one or two
/// values in does, and a patch writes many values a page there. The
/// entries, whose table is larger, are written by batch. (A patch's
/// hash-table buckets go by the copy program: [`copier`].)
fn write_values<T: Copy>(target: Target, values: &[(u32, T)]) -> Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    if target.values * size_of::<T>() > WRITE_WINDOW {
        return update_batch_fd(target.fd, values).map_err(|source| DatapathError::Io {
            path: PathBuf::from(format!("batch update of map {}", target.name)),
            source,
        });
    }
    if let Some(&(index, _)) = values.iter().find(|&&(i, _)| i as usize >= target.values) {
        return Err(DatapathError::Layout {
            path: PathBuf::from(target.name),
            detail: format!(
                "{} has {} values, not {}",
                target.name,
                target.values,
                index + 1
            ),
        });
    }
    // A window at a time, so that the writes add little to what the
    // daemon holds mapped (a window with nothing to write is not mapped).
    let per_window = (SMALL_WINDOW / size_of::<T>()).max(1);
    for start in (0..target.values).step_by(per_window) {
        let window = start..target.values.min(start + per_window);
        let inside = || {
            values
                .iter()
                .filter(|&&(i, _)| window.contains(&(i as usize)))
        };
        if inside().next().is_some() {
            Mapped::window_fd(target.fd, target.name, start, window.len(), true)?
                .store_at(start, inside());
        }
    }
    Ok(())
}

/// Bytes of a table [`write_values`] maps at once.
const SMALL_WINDOW: usize = 256 << 10;

impl Drop for Datapath {
    fn drop(&mut self) {
        // The thread writes through this datapath's map descriptors.
        self.settle();
    }
}

impl Datapath {
    /// The loaded XDP program (the benchmark times it and tail-calls it).
    pub fn program(&mut self) -> Result<&mut Xdp> {
        xdp_program(&mut self.ebpf)
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN and returns
    /// the XDP action (1 = XDP_DROP, 2 = XDP_PASS).
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32> {
        self.test_run_repeat(frame, 1).map(|(action, _)| action)
    }

    /// Runs the program `repeat` times on `frame`; returns the action and the
    /// kernel's mean duration per run.
    pub fn test_run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let program = xdp_program(&mut self.ebpf)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.data_out = Some(&mut out);
        options.repeat = repeat;
        let result = program.test_run(options).map_err(DatapathError::Program)?;
        Ok((result.return_value, result.duration))
    }
}

/// The index of `interface` in this network namespace.
pub fn ifindex(interface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: a valid C string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// CLOCK_TAI minus CLOCK_REALTIME, in nanoseconds (37 s where the kernel
/// knows the leap seconds, 0 where nobody told it).
fn tai_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    let realtime = read(libc::CLOCK_REALTIME);
    let tai = read(libc::CLOCK_TAI);
    // Rounded to whole seconds: the offset is an integer number of seconds.
    ((tai - realtime + 500_000_000).div_euclid(1_000_000_000)) * 1_000_000_000
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| DatapathError::Missing {
            what: "program",
            name: PROGRAM_NAME.to_owned(),
        })?;
    program.try_into().map_err(DatapathError::Program)
}

/// Refuses pinned maps whose entries differ from this build's: the program
/// would misread them.
fn check_pinned_layout(maps_dir: &Path) -> Result<()> {
    let expected = [
        (map_names::CONTROL, size_of::<Control>()),
        (map_names::V4[0], size_of::<Bucket4>()),
        (map_names::ENTRIES[0], size_of::<PrefixEntry>()),
        (map_names::ORDER_WINDOWS, size_of::<OrderWindow>()),
        (map_names::ORDER_COUNTERS, size_of::<OrderCounters>()),
        (map_names::STATS, size_of::<IfStats>()),
        (map_names::FRAMES, size_of::<FrameCounts>()),
    ];
    for (name, value_size) in expected {
        let path = maps_dir.join(name);
        if !path.exists() {
            // The frame counts came after the rest: this build makes them.
            let newer = name == map_names::FRAMES;
            if name != map_names::CONTROL && !newer && maps_dir.join(map_names::CONTROL).exists() {
                return Err(DatapathError::Layout {
                    path: maps_dir.to_owned(),
                    detail: format!("no {name} map"),
                });
            }
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        if info.value_size() as usize != value_size {
            return Err(DatapathError::Layout {
                path: maps_dir.to_owned(),
                detail: format!(
                    "{name} values are {} bytes, this build uses {value_size}",
                    info.value_size()
                ),
            });
        }
    }
    Ok(())
}

/// Adds `values` into `totals`, wrapping as the kernel's counters do.
fn add_up(totals: &mut [u64], values: &[u64]) {
    for (total, value) in totals.iter_mut().zip(values) {
        *total = total.wrapping_add(*value);
    }
}

fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

fn links_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("links")
}

/// Where the link of `interface` attached in `mode` is pinned.
fn link_pin_path(bpffs_dir: &Path, mode: AttachedMode, interface: &str) -> PathBuf {
    links_dir(bpffs_dir).join(mode.as_str()).join(interface)
}

/// Pins `link` at [`link_pin_path`] (creating the directory) and returns our
/// handle on it.
fn pin_link(bpffs_dir: &Path, mode: AttachedMode, interface: &str, link: FdLink) -> Result<FdLink> {
    let pin = link_pin_path(bpffs_dir, mode, interface);
    if let Some(dir) = pin.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let pinned = link.pin(&pin).map_err(|source| DatapathError::Pin {
        path: pin.clone(),
        source,
    })?;
    Ok(pinned.into())
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a valid C string.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The attachments pinned under `bpffs_dir/links/<mode>/<interface>`
/// (bpffs refuses names with dots, so the mode is a directory).
pub fn attachments(bpffs_dir: &Path) -> Result<Vec<Attachment>> {
    let mut found = Vec::new();
    for mode in [AttachedMode::Native, AttachedMode::Generic] {
        let dir = links_dir(bpffs_dir).join(mode.as_str());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err(&dir)(err)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(interface) = entry.file_name().to_str() {
                found.push(Attachment {
                    interface: interface.to_owned(),
                    mode,
                    pin: entry.path(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.interface.cmp(&b.interface));
    Ok(found)
}

/// Removes the pinned link of one attachment: the program leaves that
/// interface.
pub fn detach_one(attachment: &Attachment) -> Result<()> {
    fs::remove_file(&attachment.pin).map_err(io_err(&attachment.pin))
}

/// Removes every link, the program and the maps pinned under `bpffs_dir`:
/// enforcement ends. Returns the interfaces that were detached.
pub fn detach(bpffs_dir: &Path) -> Result<Vec<String>> {
    let detached = attachments(bpffs_dir)?;
    for attachment in &detached {
        fs::remove_file(&attachment.pin).map_err(io_err(&attachment.pin))?;
    }
    for path in [
        links_dir(bpffs_dir),
        bpffs_dir.join("prog"),
        maps_dir(bpffs_dir),
    ] {
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(&path)(err)),
        }
    }
    // A union map pinned for a program that never finished loading (its
    // process died in between: `program_data::UnionPin`).
    for entry in fs::read_dir(bpffs_dir).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(program_data::UNION_PIN_PREFIX)
        {
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    match fs::remove_dir(bpffs_dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err(bpffs_dir)(err)),
    }
    Ok(detached.into_iter().map(|a| a.interface).collect())
}
