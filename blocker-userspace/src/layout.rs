//! Lays compiled prefixes out in the datapath's lookup tables
//! (`blocker_common::layout`): bitmaps, descriptors and two-choice hash
//! buckets (the entries array is the compiler's, as it is). Pure: the
//! datapath writes the result into the idle generation's maps, making each
//! bucket from the placement as it goes.

#[cfg(test)]
use blocker_common::PrefixEntry;
use blocker_common::layout::{
    self, BITMAP_WORDS, Bucket4, Bucket6, SLOTS, Short4, Slot4, Slot6, V4_BUCKET_LEN, V4_SHORT_LEN,
    V4_SHORTS, V6_BUCKET_LEN, v4_inside,
};

use crate::compile::Compiled;

mod patch;
pub use patch::{Part, Patch, Source, Table, Unpatchable, Values, patch};

/// Sizes of one generation's tables, fixed when the maps are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub v4_buckets: u32,
    pub v6_buckets: u32,
    /// Length of the entries array (index 0 unused).
    pub entries: u32,
}

/// Hash seeds tried before a layout gives up.
const SEEDS: u32 = 8;
/// Evictions one insertion may make before the seed is given up.
const MAX_KICKS: usize = 500;

impl Geometry {
    /// Tables for `max_prefixes` prefixes per family: hash slots for two
    /// keys per prefix (a descriptor and a longer prefix each, at worst;
    /// two-choice buckets of four fill to over 95%), and an entry
    /// per prefix (prefixes with the same orders share one; descriptors
    /// reuse their prefix's), so the entries never run out.
    pub fn for_capacity(max_prefixes: u32) -> Self {
        // Two keys per prefix at most (a descriptor and the prefix), and
        // room to spare for cuckoo placement.
        let slots = u64::from(max_prefixes) * 2 * 20 / 19;
        let buckets = u32::try_from(slots.div_ceil(SLOTS as u64))
            .unwrap_or(u32::MAX)
            .max(1024);
        Self {
            v4_buckets: buckets,
            v6_buckets: buckets,
            entries: max_prefixes.clamp(1024, 1 << 24) + 1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "the feed needs {needed} {family} hash-table keys (a descriptor per /{bucket} bucket, expanded for shorter targets, plus one per longer target); the tables hold about {capacity}: raise guardrails.max_prefixes (and `blocker detach` to resize)"
    )]
    TableFull {
        family: &'static str,
        bucket: u32,
        needed: usize,
        capacity: usize,
    },
    #[error(
        "the feed needs {needed} distinct table entries (distinct sets of orders per prefix); the entries array holds {capacity}: raise guardrails.max_prefixes (and `blocker detach` to resize)"
    )]
    EntriesFull { needed: usize, capacity: usize },
}

/// One generation's tables whole, in memory (tests; the datapath writes
/// them family by family).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub shape: layout::Shape,
    pub v4_bits: Vec<u64>,
    pub v4: Vec<Bucket4>,
    pub v4_short: Vec<Short4>,
    pub v6_bits: Vec<u64>,
    pub v6: Vec<Bucket6>,
    pub entries: Vec<PrefixEntry>,
    /// Keys in the hash tables: (IPv4, IPv6).
    pub keys: (usize, usize),
}

#[cfg(test)]
impl layout::Bitmaps for Tables {
    fn v4_bits(&self, index: u32) -> u64 {
        self.v4_bits.get(index as usize).copied().unwrap_or(0)
    }
    fn v6_bits(&self, index: u32) -> u64 {
        self.v6_bits.get(index as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
impl layout::Tables for Tables {
    fn v4_bucket(&self, index: u32) -> Option<&Bucket4> {
        self.v4.get(index as usize)
    }
    fn v6_bucket(&self, index: u32) -> Option<&Bucket6> {
        self.v6.get(index as usize)
    }
    fn v4_short(&self, index: u32) -> Short4 {
        self.v4_short
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
impl Tables {
    /// The entry the datapath finds for `addr`.
    pub fn lookup(&self, addr: std::net::IpAddr) -> Option<PrefixEntry> {
        let index = layout::lookup(self, &self.shape, addr);
        (index != layout::NO_ENTRY).then(|| self.entries[index as usize])
    }
}

/// A descriptor being built: the longest covering prefix no longer than the
/// bucket (its length and entry) and the longer lengths inside; how many
/// prefixes those are and the index of the last, in case it is the only
/// one ([`layout::v4_lone`], [`layout::v6_lone`]).
#[derive(Clone, Copy, Default)]
struct Descriptor {
    short_len: Option<u32>,
    entry: u32,
    longer: [u64; 2],
    inside: u32,
    last: u32,
}

impl Descriptor {
    fn cover(&mut self, len: u32, entry: u32) {
        if self.short_len.is_none_or(|l| l < len) {
            self.short_len = Some(len);
            self.entry = entry;
        }
    }

    /// Both descriptors of one bucket in one.
    fn merge(&mut self, other: &Descriptor) {
        if let Some(len) = other.short_len {
            self.cover(len, other.entry);
        }
        self.longer[0] |= other.longer[0];
        self.longer[1] |= other.longer[1];
        if other.inside != 0 {
            self.inside += other.inside;
            self.last = other.last;
        }
    }
}

/// A key in one family's hash table, as a slot.
trait Slot: Copy + Default {
    fn hash(&self, seed: u32) -> u64;
}

impl Slot for Slot4 {
    fn hash(&self, seed: u32) -> u64 {
        layout::hash4(self.net, self.len, seed)
    }
}

impl Slot for Slot6 {
    fn hash(&self, seed: u32) -> u64 {
        layout::hash6(self.hi, self.lo, self.len, seed)
    }
}

/// Keys placed in two-choice buckets of [`SLOTS`]: each slot holds a key's
/// index in its list plus one, 0 when free. A table of indices is a quarter
/// (IPv4) or a tenth (IPv6) of the buckets it stands for; each bucket is
/// made from it as it is written.
pub struct Placed {
    pub seed: u32,
    pub slots: Vec<[u32; SLOTS]>,
}

impl Placed {
    fn bucket<S: Slot>(&self, keys: &[S], index: usize) -> [S; SLOTS] {
        self.slots[index].map(|k| match k {
            0 => S::default(),
            k => keys[k as usize - 1],
        })
    }

    /// IPv4 bucket `index` (the keys placed are `keys.v4`).
    pub fn bucket4(&self, keys: &Keys, index: usize) -> Bucket4 {
        Bucket4 {
            slots: self.bucket(&keys.v4, index),
        }
    }

    /// IPv6 bucket `index` (the keys placed are `keys.v6`).
    pub fn bucket6(&self, keys: &Keys, index: usize) -> Bucket6 {
        Bucket6 {
            slots: self.bucket(&keys.v6, index),
        }
    }
}

/// Places `keys` in `buckets` two-choice buckets (cuckoo insertion). `None`
/// when this seed does not fit them all.
fn place_seeded<S: Slot>(keys: &[S], buckets: u32, seed: u32) -> Option<Vec<[u32; SLOTS]>> {
    let mut table = vec![[0u32; SLOTS]; buckets as usize];
    let mut rng = u64::from(seed) | 1;
    for index in 0..keys.len() {
        let mut key = u32::try_from(index + 1).ok()?;
        let mut placed = false;
        for _ in 0..MAX_KICKS {
            let choices = layout::choices(keys[key as usize - 1].hash(seed), buckets);
            for b in choices {
                if let Some(free) = table[b as usize].iter_mut().find(|s| **s == 0) {
                    *free = key;
                    placed = true;
                    break;
                }
            }
            if placed {
                break;
            }
            // xorshift: pick a bucket and a slot to evict.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let b = choices[(rng & 1) as usize] as usize;
            let s = ((rng >> 1) % SLOTS as u64) as usize;
            std::mem::swap(&mut table[b][s], &mut key);
        }
        if !placed {
            return None;
        }
    }
    Some(table)
}

/// Places one family's keys, trying [`SEEDS`] seeds.
fn place<S: Slot>(
    keys: &[S],
    buckets: u32,
    family: &'static str,
    bucket: u32,
) -> Result<Placed, LayoutError> {
    let capacity = buckets as usize * SLOTS;
    if keys.len() <= capacity * 19 / 20 {
        for seed in 1..=SEEDS {
            if let Some(slots) = place_seeded(keys, buckets, seed) {
                return Ok(Placed { seed, slots });
            }
        }
    }
    Err(LayoutError::TableFull {
        family,
        bucket,
        needed: keys.len(),
        capacity: capacity * 19 / 20,
    })
}

/// Places the IPv4 keys of `keys`.
pub fn place_v4(keys: &Keys, geometry: &Geometry) -> Result<Placed, LayoutError> {
    place(&keys.v4, geometry.v4_buckets, "IPv4", V4_BUCKET_LEN)
}

/// Places the IPv6 keys of `keys`.
pub fn place_v6(keys: &Keys, geometry: &Geometry) -> Result<Placed, LayoutError> {
    place(&keys.v6, geometry.v6_buckets, "IPv6", V6_BUCKET_LEN)
}

/// Marks a bucket as holding prefixes.
fn set_bit(bits: &mut [u64], bit: u32) {
    bits[(bit >> 6) as usize] |= 1 << (bit & 63);
}

/// Everything of a generation but the hash buckets and the entries (the
/// compiler's, as they are): the keys to place (in a deterministic order)
/// and the bitmaps.
pub struct Keys {
    pub v4: Vec<Slot4>,
    pub v4_short: Vec<Short4>,
    pub v6: Vec<Slot6>,
    pub v4_bits: Vec<u64>,
    pub v6_bits: Vec<u64>,
}

/// Descriptors, keys and bitmaps for `compiled`, a family per thread.
pub fn prepare(compiled: &Compiled, geometry: &Geometry) -> Result<Keys, LayoutError> {
    if compiled.entries.len() > geometry.entries as usize {
        return Err(LayoutError::EntriesFull {
            needed: compiled.entries.len() - 1,
            capacity: geometry.entries as usize - 1,
        });
    }
    let ((v4, v4_short, v4_bits), (v6, v6_bits)) = crate::parallel::join(
        compiled.v4.len() + compiled.v6.len(),
        || prepare_v4(&compiled.v4),
        || prepare_v6(&compiled.v6),
    );
    Ok(Keys {
        v4,
        v4_short,
        v6,
        v4_bits,
        v6_bits,
    })
}

/// The /16 of an IPv4 address.
fn short_of(net: u32) -> u32 {
    net >> (32 - V4_SHORT_LEN)
}

/// The cover key ([`layout::V4_COVER_KEY`]) of the `at`th /20 of the /16
/// of `net`, holding nothing yet.
fn cover_key(net: u32, at: u32) -> Slot4 {
    Slot4 {
        net: short_of(net) << (32 - V4_SHORT_LEN) | at << (32 - layout::V4_COVER_LEN),
        len: layout::V4_COVER_KEY,
        entry: layout::NO_ENTRY,
        longer: 0,
    }
}

/// /20s in a /16: the cover keys one may have.
const COVERS_PER_16: u32 = 1 << (layout::V4_COVER_LEN - V4_SHORT_LEN);

/// The places in its /16 (`0..COVERS_PER_16`) of the /20s that `net`/`len`
/// (17..=23) covers or lies in: the cover keys it is in.
fn cover_places(net: u32, len: u8) -> std::ops::Range<u32> {
    let first = (net >> (32 - layout::V4_COVER_LEN)) % COVERS_PER_16;
    first..first + (1 << layout::V4_COVER_LEN.saturating_sub(u32::from(len)))
}

/// The cover keys ([`layout::V4_COVER_KEY`]) of one /16 that holds two or
/// more prefixes of /17../23, from those prefixes (net, len, entry), in
/// address order: one for each /20 that one of them covers or lies in,
/// by the /20's place in the /16 (0..16).
fn v4_cover_keys(inside: impl IntoIterator<Item = (u32, u8, u32)>) -> [Option<Slot4>; 16] {
    let mut keys = [None; COVERS_PER_16 as usize];
    // Per /20: how many prefixes of /21../23 lie in it, and the last.
    let mut longer = [(0, (0, 0, 0)); COVERS_PER_16 as usize];
    for (net, len, entry) in inside {
        let places = cover_places(net, len);
        let len = u32::from(len);
        for at in places {
            let key = keys[at as usize].get_or_insert(cover_key(net, at));
            if len > layout::V4_COVER_LEN {
                key.longer |= 1 << (V4_BUCKET_LEN - 1 - len);
                let (count, last) = &mut longer[at as usize];
                *count += 1;
                *last = (net, len, entry);
            } else {
                // In address order, a prefix comes after those over it.
                key.entry = entry;
            }
        }
    }
    for (key, (count, (net, len, entry))) in keys.iter_mut().zip(longer) {
        if let (Some(key), 1) = (key, count) {
            key.longer = layout::v4_cover_lone(net, len, entry).unwrap_or(key.longer);
        }
    }
    keys
}

/// IPv4: /16s in the short array; /17../23 as keys, marked in their /16; a
/// descriptor per /24 with an exact /24 or longer prefixes inside; /25../32
/// as keys. Every /24 a prefix touches is marked in the bitmap.
fn prepare_v4(prefixes: &[([u8; 4], u8, u32)]) -> (Vec<Slot4>, Vec<Short4>, Vec<u64>) {
    let mut short: Vec<Descriptor> = vec![Descriptor::default(); V4_SHORTS as usize];
    // Per /16: whether a prefix other than a /32 covers it or lies inside.
    let mut not_exact = vec![false; V4_SHORTS as usize];
    // Per /16: how many prefixes of /17../23 lie inside (up to 2), the last
    // of them (net, len, entry), and whether a longer prefix lies in that.
    let mut inner = vec![(0u8, (0, 0, 0), false); V4_SHORTS as usize];
    // The end of the prefixes of /17../23 so far, the furthest.
    let mut short_end = 0u64;
    // The prefixes of /17../23, in address order (their /16s' cover keys).
    let mut inner_prefixes: Vec<(u32, u8, u32)> = Vec::new();
    let bucket_mask = u32::MAX << (32 - V4_BUCKET_LEN);
    // A key per prefix and per descriptor at most, and the cover keys (a
    // few per /16 that has them): reserved whole (pages never written cost
    // nothing), the list is rarely copied to grow.
    let mut keys: Vec<Slot4> = Vec::with_capacity(2 * prefixes.len());
    let mut bits = vec![0u64; BITMAP_WORDS as usize];
    // Sorted by address, the /24 buckets of the prefixes of /24 and longer
    // come in order: one descriptor is built at a time.
    let mut current: Option<(u32, Descriptor)> = None;
    let flush = |current: &mut Option<(u32, Descriptor)>, keys: &mut Vec<Slot4>| {
        if let Some((bucket, desc)) = current.take() {
            let longer = desc.longer[0] as u32;
            let (entry, longer) = if desc.inside == 1 && desc.short_len.is_none() {
                // No /24, one longer prefix: the descriptor holds it.
                let (net, len, entry) = prefixes[desc.last as usize];
                let (net, len) = (u32::from_be_bytes(net), u32::from(len));
                (entry, longer | layout::v4_lone(net, len))
            } else {
                (desc.entry, longer)
            };
            keys.push(Slot4 {
                net: bucket << (32 - V4_BUCKET_LEN),
                len: V4_BUCKET_LEN,
                entry,
                longer,
            });
        }
    };
    for (index, &(net, len, entry)) in prefixes.iter().enumerate() {
        let (net, len) = (u32::from_be_bytes(net), u32::from(len));
        let bucket = net >> (32 - V4_BUCKET_LEN);
        let buckets = 1u32 << V4_BUCKET_LEN.saturating_sub(len);
        for b in bucket..bucket + buckets {
            set_bit(&mut bits, b);
        }
        let s = net >> (32 - V4_SHORT_LEN);
        if len < 32 {
            let span = 1 << V4_SHORT_LEN.saturating_sub(len);
            not_exact[s as usize..(s + span) as usize].fill(true);
        }
        if len <= V4_SHORT_LEN {
            for s in s..s + (1 << (V4_SHORT_LEN - len)) {
                short[s as usize].cover(len, entry);
            }
            continue;
        }
        if len < V4_BUCKET_LEN {
            short[s as usize].longer[0] |= 1 << (V4_BUCKET_LEN - 1 - len);
            let (count, one, crowded) = &mut inner[s as usize];
            *count = count.saturating_add(1);
            *one = (net, len, entry);
            *crowded = false;
            short_end = short_end.max(u64::from(net) + (1 << (32 - len)));
            inner_prefixes.push((net, len as u8, entry));
            keys.push(Slot4 {
                net,
                len,
                entry,
                longer: 0,
            });
            continue;
        }
        // Sorted by address, a prefix of /17../23 comes before those inside.
        let (count, (inner_net, inner_len, _), crowded) = &mut inner[s as usize];
        if *count > 0 && (net ^ *inner_net) >> (32 - *inner_len) == 0 {
            *crowded = true;
        }
        if current.as_ref().is_some_and(|(b, _)| *b != bucket) {
            flush(&mut current, &mut keys);
        }
        let desc = &mut current
            .get_or_insert_with(|| {
                // Sorted by address, every /17../23 that covers the bucket
                // came before: the bucket lies below the end of one.
                let mut desc = Descriptor::default();
                if u64::from(net & bucket_mask) >= short_end {
                    desc.longer[0] |= u64::from(layout::V4_NO_SHORT_COVER);
                }
                (bucket, desc)
            })
            .1;
        if len == V4_BUCKET_LEN {
            desc.cover(len, entry);
        } else {
            desc.longer[0] |= u64::from(v4_inside(net, len));
            desc.inside += 1;
            desc.last = index as u32;
            keys.push(Slot4 {
                net,
                len,
                entry,
                longer: 0,
            });
        }
    }
    flush(&mut current, &mut keys);
    for group in inner_prefixes.chunk_by(|a, b| short_of(a.0) == short_of(b.0)) {
        if group.len() >= 2 {
            keys.extend(v4_cover_keys(group.iter().copied()).into_iter().flatten());
        }
    }
    let short = short
        .iter()
        .zip(not_exact)
        .zip(inner)
        .map(|((d, not_exact), (count, (net, len, entry), crowded))| {
            if count == 1 && d.short_len.is_none() {
                Short4::with_inner(d.longer[0] as u32, net, len, entry, !crowded)
            } else if count >= 2 {
                Short4::new(d.entry, d.longer[0] as u32, false).with_covers()
            } else {
                Short4::new(d.entry, d.longer[0] as u32, !not_exact)
            }
        })
        .collect();
    (keys, short, bits)
}

/// IPv6: a descriptor per /32 bucket a prefix touches (a prefix of /32 or
/// shorter covers each of its buckets), and a key per longer prefix.
fn prepare_v6(prefixes: &[([u8; 16], u8, u32)]) -> (Vec<Slot6>, Vec<u64>) {
    let mut keys: Vec<Slot6> = Vec::with_capacity(2 * prefixes.len());
    // (bucket, descriptor) pieces, one per run of prefixes in one bucket
    // (sorted by address, a bucket's longer prefixes are one run), then
    // sorted and merged.
    let mut pieces: Vec<(u32, Descriptor)> = Vec::new();
    for (index, &(net, len, entry)) in prefixes.iter().enumerate() {
        let addr = u128::from_be_bytes(net);
        let len = u32::from(len);
        let top = (addr >> (128 - V6_BUCKET_LEN)) as u32;
        if len <= V6_BUCKET_LEN {
            for bucket in top..=top + ((1u64 << (V6_BUCKET_LEN - len)) - 1) as u32 {
                let mut desc = Descriptor::default();
                desc.cover(len, entry);
                pieces.push((bucket, desc));
            }
            continue;
        }
        if pieces.last().is_none_or(|(b, _)| *b != top) {
            pieces.push((top, Descriptor::default()));
        }
        if let Some((_, desc)) = pieces.last_mut() {
            if len > 64 {
                desc.longer[0] |= 1 << (128 - len);
            } else {
                desc.longer[1] |= 1 << (64 - len);
            }
            desc.inside += 1;
            desc.last = index as u32;
        }
        keys.push(Slot6 {
            hi: (addr >> 64) as u64,
            lo: addr as u64,
            len,
            entry,
            longer: [0; 2],
        });
    }
    pieces.sort_by_key(|(bucket, _)| *bucket);
    let mut bits = vec![0u64; BITMAP_WORDS as usize];
    let mut pieces = pieces.into_iter().peekable();
    while let Some((bucket, mut desc)) = pieces.next() {
        while let Some((_, more)) = pieces.next_if(|(b, _)| *b == bucket) {
            desc.merge(&more);
        }
        let hi = u64::from(bucket) << 32;
        set_bit(&mut bits, layout::v6_bit(hi));
        let lone = (desc.inside == 1)
            .then(|| {
                let (net, len, entry) = prefixes[desc.last as usize];
                layout::v6_lone(u128::from_be_bytes(net), u32::from(len), entry)
            })
            .flatten();
        keys.push(Slot6 {
            hi,
            lo: 0,
            len: V6_BUCKET_LEN,
            entry: desc.entry,
            longer: lone.unwrap_or(desc.longer),
        });
    }
    (keys, bits)
}

/// Builds one generation's tables for `compiled`, whole.
#[cfg(test)]
fn build(compiled: &Compiled, geometry: &Geometry) -> Result<Tables, LayoutError> {
    let keys = prepare(compiled, geometry)?;
    let v4 = place_v4(&keys, geometry)?;
    let v6 = place_v6(&keys, geometry)?;
    Ok(Tables {
        shape: layout::Shape::new(v4.seed, v6.seed, geometry.v4_buckets, geometry.v6_buckets),
        v4: (0..v4.slots.len()).map(|b| v4.bucket4(&keys, b)).collect(),
        v6: (0..v6.slots.len()).map(|b| v6.bucket6(&keys, b)).collect(),
        v4_bits: keys.v4_bits,
        v4_short: keys.v4_short,
        v6_bits: keys.v6_bits,
        entries: compiled.entries.clone(),
        keys: (keys.v4.len(), keys.v6.len()),
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::compile::Change;

    fn entry(tag: u32) -> PrefixEntry {
        let mut e = PrefixEntry::EMPTY;
        e.dst[0] = blocker_common::Candidate { slot: tag, rank: 1 };
        e
    }

    /// Entries 1..=5 (tags), after the empty one.
    fn entries() -> Vec<PrefixEntry> {
        (0..=5)
            .map(|tag| {
                if tag == 0 {
                    PrefixEntry::EMPTY
                } else {
                    entry(tag)
                }
            })
            .collect()
    }

    /// IPv4 (network, length) prefixes alone, all with entry 1.
    fn v4_only(prefixes: impl Iterator<Item = (u32, u8)>) -> Compiled {
        Compiled {
            v4: prefixes
                .map(|(net, len)| (net.to_be_bytes(), len, 1))
                .collect(),
            entries: entries(),
            ..Compiled::default()
        }
    }

    /// IPv4 (network, length, entry) prefixes alone, sorted.
    fn v4_tagged(prefixes: &[(u32, u8, u32)]) -> Compiled {
        let mut v4: Vec<_> = prefixes
            .iter()
            .map(|&(net, len, tag)| (net.to_be_bytes(), len, tag))
            .collect();
        v4.sort_by_key(|(n, l, _)| (*n, *l));
        Compiled {
            v4,
            entries: entries(),
            ..Compiled::default()
        }
    }

    /// IPv6 (network, length, entry) prefixes alone, sorted.
    fn v6_tagged(prefixes: &[(&str, u8, u32)]) -> Compiled {
        let mut v6: Vec<_> = prefixes
            .iter()
            .map(|&(net, len, tag)| (v6_octets(net), len, tag))
            .collect();
        v6.sort_by_key(|(n, l, _)| (*n, *l));
        Compiled {
            v6,
            entries: entries(),
            ..Compiled::default()
        }
    }

    fn v6_octets(text: &str) -> [u8; 16] {
        let addr: std::net::Ipv6Addr = text.parse().expect("an IPv6 address");
        addr.octets()
    }

    /// The tag (slot) of the entry `tables` find for `addr`.
    fn tag_of(tables: &Tables, addr: impl Into<IpAddr>) -> Option<u32> {
        tables.lookup(addr.into()).map(|entry| entry.dst[0].slot)
    }

    /// The entry index of the longest prefix of `table` containing `addr`,
    /// by brute force.
    fn longest<const N: usize>(
        table: &[([u8; N], u8, u32)],
        addr: u128,
        width: u32,
    ) -> Option<u32> {
        table
            .iter()
            .filter(|(net, len, _)| {
                let mut bits = 0u128;
                for b in net {
                    bits = bits << 8 | u128::from(*b);
                }
                let shift = width - u32::from(*len);
                shift >= width || (bits >> shift) == (addr >> shift)
            })
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, e)| *e)
    }

    fn v4_table() -> impl Strategy<Value = Vec<([u8; 4], u8, u32)>> {
        prop::collection::btree_map((0u32..64, 12u8..=32), 0u32..5, 0..40).prop_map(|m| {
            m.into_iter()
                .map(|((host, len), tag)| {
                    let addr = 0xc000_0200u32 ^ (host << 3) ^ (host << 14);
                    let net = addr & (u32::MAX << (32 - u32::from(len)));
                    (net.to_be_bytes(), len, tag + 1)
                })
                .collect()
        })
    }

    fn v6_table() -> impl Strategy<Value = Vec<([u8; 16], u8, u32)>> {
        prop::collection::btree_map((0u128..64, 26u8..=128), 0u32..5, 0..40).prop_map(|m| {
            m.into_iter()
                .map(|((host, len), tag)| {
                    let addr = (0x2001_0db8u128 << 96) ^ host ^ (host << 70) ^ (host << 95);
                    let net = if len == 0 {
                        0
                    } else {
                        addr & (u128::MAX << (128 - u32::from(len)))
                    };
                    (net.to_be_bytes(), len, tag + 1)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn lookup_is_longest_prefix_match(
            mut v4 in v4_table(),
            mut v6 in v6_table(),
            probes4 in prop::collection::vec(0u32..64, 32),
            probes6 in prop::collection::vec(0u128..64, 32),
        ) {
            v4.sort_by_key(|(n, l, _)| (*n, *l));
            v4.dedup_by_key(|(n, l, _)| (*n, *l));
            v6.sort_by_key(|(n, l, _)| (*n, *l));
            v6.dedup_by_key(|(n, l, _)| (*n, *l));
            let compiled = Compiled {
                v4: v4.clone(),
                v6: v6.clone(),
                entries: entries(),
                ..Compiled::default()
            };
            let entry = |index: Option<u32>| index.map(|i| *compiled.entry(i));
            let tables = build(&compiled, &Geometry::for_capacity(128)).unwrap();
            for host in probes4 {
                let addr = 0xc000_0200u32 ^ (host << 3) ^ (host << 14) ^ (host & 7);
                prop_assert_eq!(
                    tables.lookup(IpAddr::from(addr.to_be_bytes())),
                    entry(longest(&v4, u128::from(addr), 32)),
                    "IPv4 {:#x}", addr
                );
            }
            for host in probes6 {
                let addr = (0x2001_0db8u128 << 96) ^ host ^ (host << 70) ^ (host << 95) ^ (host & 3) << 40;
                prop_assert_eq!(
                    tables.lookup(IpAddr::from(addr.to_be_bytes())),
                    entry(longest(&v6, addr, 128)),
                    "IPv6 {:#x}", addr
                );
            }
        }
    }

    impl Source for Tables {
        fn v4_bits(&mut self, index: u32) -> Option<u64> {
            self.v4_bits.get(index as usize).copied()
        }
        fn v6_bits(&mut self, index: u32) -> Option<u64> {
            self.v6_bits.get(index as usize).copied()
        }
        fn v4_bucket(&mut self, index: u32) -> Option<Bucket4> {
            self.v4.get(index as usize).copied()
        }
        fn v6_bucket(&mut self, index: u32) -> Option<Bucket6> {
            self.v6.get(index as usize).copied()
        }
        fn v4_short(&mut self, index: u32) -> Option<Short4> {
            self.v4_short.get(index as usize).copied()
        }
    }

    impl Tables {
        fn apply(&mut self, patch: &Patch) {
            fn put<T: Copy>(table: &mut [T], values: &[(u32, T)]) {
                for &(i, v) in values {
                    table[i as usize] = v;
                }
            }
            put(&mut self.v4_bits, &patch.v4_bits);
            put(&mut self.v4, &patch.v4);
            put(&mut self.v6_bits, &patch.v6_bits);
            put(&mut self.v6, &patch.v6);
            put(&mut self.entries, &patch.entries);
            put(&mut self.v4_short, &patch.v4_short);
            self.keys.0 = self.keys.0.wrapping_add_signed(patch.keys.0);
            self.keys.1 = self.keys.1.wrapping_add_signed(patch.keys.1);
        }
    }

    impl Tables {
        /// Patches these tables, laid out for `from`, to `to`.
        fn patch_to(&mut self, from: &Compiled, to: &Compiled, geometry: &Geometry) {
            let change = Change {
                from: 0,
                v4: differing(&from.v4, &to.v4),
                v6: differing(&from.v6, &to.v6),
                entries: Vec::new(),
            };
            let patch = patch_in_parts(to, &change, self, geometry).unwrap();
            self.apply(&patch);
        }
    }

    /// A change of thousands of IPv4 prefixes of every length, sharing
    /// /16s and /24s, on top of thousands kept: the same tables as a layout
    /// from scratch.
    #[test]
    fn a_large_ipv4_patch_is_a_layout_from_scratch() {
        let xorshift = |mut state: u64| {
            move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            }
        };
        // /16../32 in sixteen /16s: they share /16s and /24s.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut prefix = move || {
            let r = next();
            let len = 16 + (r % 17) as u8;
            let addr = 0xc612_0000u32 ^ (r >> 8) as u32 & 0x000f_ffff;
            let net = addr & (u32::MAX << (32 - u32::from(len)));
            (net.to_be_bytes(), len, 1 + (r >> 40) as u32 % 5)
        };
        let before = tidy((0..8000).map(|_| prefix()).collect());
        let after = tidy(
            before
                .iter()
                .skip(2500)
                .copied()
                .chain((0..2500).map(|_| prefix()))
                .collect(),
        );
        let before = Compiled {
            v4: before,
            entries: entries(),
            ..Compiled::default()
        };
        let after = Compiled {
            v4: after,
            entries: entries(),
            ..Compiled::default()
        };
        let geometry = Geometry::for_capacity(1 << 15);
        let mut tables = build(&before, &geometry).unwrap();
        tables.patch_to(&before, &after, &geometry);
        let whole = build(&after, &geometry).unwrap();
        assert_eq!(tables.keys, whole.keys, "keys (IPv4, IPv6)");
        assert!(tables.v4_bits == whole.v4_bits, "IPv4 bits are exact");
        assert!(tables.v4_short == whole.v4_short, "/16s");
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let addr = 0xc612_0000u32 ^ next() as u32 & 0x000f_ffff;
            assert_eq!(
                tables.lookup(IpAddr::from(addr.to_be_bytes())),
                longest(&after.v4, u128::from(addr), 32).map(|i| *after.entry(i)),
                "IPv4 {addr:#x}"
            );
        }
    }

    /// [`patch`] of the `before` tables to `after`, each table handed to
    /// its sink checked: every table once, as the patch returned has it.
    fn patch_in_parts(
        after: &Compiled,
        change: &Change,
        before: &Tables,
        geometry: &Geometry,
    ) -> Result<Patch, Unpatchable> {
        let handed = std::sync::Mutex::new((Patch::default(), 0u8));
        let sink = |part: Part<'_>| {
            let mut handed = handed.lock().unwrap();
            let table = match part {
                Part::V4Bits(words) => {
                    handed.0.v4_bits = words.to_vec();
                    0
                }
                Part::V4(buckets) => {
                    handed.0.v4 = buckets.to_vec();
                    1
                }
                Part::V6Bits(words) => {
                    handed.0.v6_bits = words.to_vec();
                    2
                }
                Part::V6(buckets) => {
                    handed.0.v6 = buckets.to_vec();
                    3
                }
                Part::V4Short(shorts) => {
                    handed.0.v4_short = shorts.to_vec();
                    4
                }
            };
            assert_eq!(handed.1 & 1 << table, 0, "table {table} handed twice");
            handed.1 |= 1 << table;
        };
        let shape = before.shape;
        let (mut v4, mut v6) = (before.clone(), before.clone());
        let patch = patch(
            after,
            change,
            &shape,
            geometry.entries as usize,
            [&mut v4, &mut v6],
            &sink,
        )?;
        let (mut handed, tables) = handed.into_inner().unwrap();
        assert_eq!(tables, 0b11111, "every table but the entries handed over");
        handed.entries.clone_from(&patch.entries);
        handed.keys = patch.keys;
        assert_eq!(handed, patch, "the tables handed over are the patch's");
        Ok(patch)
    }

    /// The prefixes whose entry differs between `a` and `b`, or that one
    /// of them lacks.
    fn differing<const N: usize>(
        a: &[([u8; N], u8, u32)],
        b: &[([u8; N], u8, u32)],
    ) -> Vec<([u8; N], u8)> {
        let a: std::collections::BTreeMap<_, _> = a.iter().map(|&(n, l, e)| ((n, l), e)).collect();
        let b: std::collections::BTreeMap<_, _> = b.iter().map(|&(n, l, e)| ((n, l), e)).collect();
        let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).copied().collect();
        keys.into_iter().filter(|k| a.get(k) != b.get(k)).collect()
    }

    fn tidy<const N: usize>(mut table: Vec<([u8; N], u8, u32)>) -> Vec<([u8; N], u8, u32)> {
        table.sort_by_key(|(n, l, _)| (*n, *l));
        table.dedup_by_key(|(n, l, _)| (*n, *l));
        table
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn a_patch_looks_up_like_a_layout_from_scratch(
            before4 in v4_table(),
            before6 in v6_table(),
            after4 in v4_table(),
            after6 in v6_table(),
            keep in 0usize..40,
            probes4 in prop::collection::vec(0u32..64, 32),
            probes6 in prop::collection::vec(0u128..64, 32),
        ) {
            // IPv4 from /16, as the contract has it (shorter is laid out
            // from scratch).
            let contract = |t: Vec<([u8; 4], u8, u32)>| t.into_iter().filter(|p| p.1 >= 16).collect();
            let (before4, after4): (Vec<_>, Vec<_>) = (contract(before4), contract(after4));
            let (before4, before6) = (tidy(before4), tidy(before6));
            // The feed after: some of the prefixes before, some new.
            let after4 = tidy(before4.iter().take(keep).copied().chain(after4).collect());
            let after6 = tidy(before6.iter().skip(keep / 2).copied().chain(after6).collect());
            let before = Compiled { v4: before4, v6: before6, entries: entries(), ..Compiled::default() };
            let after = Compiled { v4: after4, v6: after6, entries: entries(), ..Compiled::default() };
            let geometry = Geometry::for_capacity(128);
            let mut tables = build(&before, &geometry).unwrap();
            let change = Change {
                from: 0,
                v4: differing(&before.v4, &after.v4),
                v6: differing(&before.v6, &after.v6),
                entries: Vec::new(),
            };
            let patch = patch_in_parts(&after, &change, &tables, &geometry)
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            tables.apply(&patch);
            let whole = build(&after, &geometry).unwrap();
            prop_assert_eq!(tables.keys, whole.keys, "keys (IPv4, IPv6)");
            prop_assert_eq!(&tables.v4_bits, &whole.v4_bits, "IPv4 bits are exact");
            // No prefix here is wider than /24: IPv6 bits are exact too.
            let words = |bits: &[u64]| bits.iter().copied().enumerate().filter(|w| w.1 != 0).collect::<Vec<_>>();
            prop_assert_eq!(words(&tables.v6_bits), words(&whole.v6_bits), "IPv6 bits are exact");
            prop_assert_eq!(&tables.v4_short, &whole.v4_short);
            let entry = |index: Option<u32>| index.map(|i| *after.entry(i));
            for host in probes4 {
                let addr = 0xc000_0200u32 ^ (host << 3) ^ (host << 14) ^ (host & 7);
                prop_assert_eq!(
                    tables.lookup(IpAddr::from(addr.to_be_bytes())),
                    entry(longest(&after.v4, u128::from(addr), 32)),
                    "IPv4 {:#x}", addr
                );
            }
            for host in probes6 {
                let addr = (0x2001_0db8u128 << 96) ^ host ^ (host << 70) ^ (host << 95) ^ (host & 3) << 40;
                prop_assert_eq!(
                    tables.lookup(IpAddr::from(addr.to_be_bytes())),
                    entry(longest(&after.v6, addr, 128)),
                    "IPv6 {:#x}", addr
                );
            }
        }
    }

    #[test]
    fn a_16_of_exact_addresses_alone_is_marked_and_looked_up_by_its_32s() {
        // 10.1/16: /32s alone. 10.2/16: a /32 and a /25. 10.19/16: a /32
        // under a /12 that covers 10.16/16..10.31/16.
        let mut compiled = v4_only(
            [
                (0x0a01_0005, 32),
                (0x0a01_0709, 32),
                (0x0a02_0005, 32),
                (0x0a02_0080, 25),
                (0x0a13_0005, 32),
                (0x0a10_0000, 12),
            ]
            .into_iter(),
        );
        compiled.v4.sort_by_key(|(n, l, _)| (*n, *l));
        let geometry = Geometry::for_capacity(128);
        let mut tables = build(&compiled, &geometry).unwrap();
        let marked = |t: &Tables, s: u32| t.v4_short[s as usize].only_exact();
        assert!(marked(&tables, 0x0a01));
        assert!(!marked(&tables, 0x0a02) && !marked(&tables, 0x0a13));
        let found = |t: &Tables, a: u32| t.lookup(IpAddr::from(a.to_be_bytes())).is_some();
        assert!(found(&tables, 0x0a01_0005) && found(&tables, 0x0a01_0709));
        assert!(!found(&tables, 0x0a01_0006) && !found(&tables, 0x0a01_0700));
        assert!(found(&tables, 0x0a02_0081) && !found(&tables, 0x0a02_0006));
        assert!(found(&tables, 0x0a13_0006), "under the /12");

        // A /24 patched into 10.1/16 unmarks it; taking it out marks it again.
        let mut with_24 = compiled.clone();
        with_24.v4.push((0x0a01_0000u32.to_be_bytes(), 24, 1));
        with_24.v4.sort_by_key(|(n, l, _)| (*n, *l));
        for (from, to, marked_after) in [(&compiled, &with_24, false), (&with_24, &compiled, true)]
        {
            tables.patch_to(from, to, &geometry);
            assert_eq!(marked(&tables, 0x0a01), marked_after);
            assert_eq!(found(&tables, 0x0a01_0006), !marked_after);
            assert!(found(&tables, 0x0a01_0005));
        }
    }

    #[test]
    fn an_ipv6_48_is_probed_at_once_when_it_is_the_longest_length_left() {
        // In 2001:db8::/32: a /40 over a /48, a /64 inside that and a /128
        // inside the /64; tags 5, 1, 3, 4. Past the /128 and the /64, the
        // /48 is the longest length left.
        let compiled = v6_tagged(&[
            ("2001:db8::", 40, 5),
            ("2001:db8:7::", 48, 1),
            ("2001:db8:7:100::", 64, 3),
            ("2001:db8:7:100::1", 128, 4),
        ]);
        let tables = build(&compiled, &Geometry::for_capacity(128)).unwrap();
        let tag = |text: &str| tag_of(&tables, std::net::Ipv6Addr::from(v6_octets(text)));
        assert_eq!(tag("2001:db8:7:100::1"), Some(4));
        assert_eq!(tag("2001:db8:7:100::2"), Some(3));
        assert_eq!(tag("2001:db8:7:200::2"), Some(1), "the /48, tried first");
        assert_eq!(tag("2001:db8:7::"), Some(1));
        assert_eq!(
            tag("2001:db8:8::1"),
            Some(5),
            "beside the /48, under the /40"
        );
        assert_eq!(tag("2001:db8:100::1"), None);
    }

    #[test]
    fn a_patch_clears_the_ipv6_bit_of_a_32_that_goes_unless_a_wide_prefix_is_held() {
        // 2001:db8:7::/48 goes, the last prefix in its /32. Beside
        // 2001:db9::/48 its bit is cleared; beside 3000::/23 (wider than
        // /24: 512 buckets to go through) it is left set, and costs only a
        // probe.
        let bit = layout::v6_bit(0x2001_0db8u64 << 32);
        let marked = |t: &Tables| t.v6_bits[(bit >> 6) as usize] >> (bit & 63) & 1 == 1;
        for (beside, len, cleared) in [("2001:db9::", 48, true), ("3000::", 23, false)] {
            let before = v6_tagged(&[("2001:db8:7::", 48, 1), (beside, len, 2)]);
            let after = v6_tagged(&[(beside, len, 2)]);
            let geometry = Geometry::for_capacity(128);
            let mut tables = build(&before, &geometry).unwrap();
            assert!(marked(&tables), "{beside}: the /48's bit is set");
            tables.patch_to(&before, &after, &geometry);
            assert_eq!(marked(&tables), !cleared, "beside {beside}/{len}");
            assert!(!marked(&build(&after, &geometry).unwrap()));
            let tag = |text: &str| tag_of(&tables, std::net::Ipv6Addr::from(v6_octets(text)));
            assert_eq!(tag("2001:db8:7::1"), None, "beside {beside}/{len}");
            assert_eq!(tag(beside), Some(2));
        }
    }

    #[test]
    fn an_ipv4_prefix_alone_in_a_24_without_a_24_is_held_by_the_descriptor() {
        // Under 10.1.0.0/20 (tag 2): a /32 and a /26 alone in their /24s; a
        // /24 with a /32 inside; a /29 and a /32 in one /24. 10.2/16: a /31
        // alone, nothing over it.
        let compiled = v4_tagged(&[
            (0x0a01_0000, 20, 2),
            (0x0a01_0107, 32, 1),
            (0x0a01_0240, 26, 3),
            (0x0a01_0300, 24, 4),
            (0x0a01_0309, 32, 5),
            (0x0a01_0408, 29, 5),
            (0x0a01_04c8, 32, 1),
            (0x0a02_0506, 31, 3),
        ]);
        let geometry = Geometry::for_capacity(128);
        let mut tables = build(&compiled, &geometry).unwrap();
        let descriptor = |t: &Tables, bucket: u32| {
            t.v4.iter()
                .flat_map(|b| b.slots)
                .find(|s| s.len == 24 && s.net == bucket)
                .expect("a descriptor")
        };
        let lone = |t: &Tables, bucket: u32| descriptor(t, bucket).longer & layout::V4_LONE != 0;
        let tag = |t: &Tables, addr: u32| tag_of(t, std::net::Ipv4Addr::from(addr));
        for (bucket, want) in [
            (0x0a01_0100, true),
            (0x0a01_0200, true),
            (0x0a01_0300, false),
            (0x0a01_0400, false),
            (0x0a02_0500, true),
        ] {
            assert_eq!(lone(&tables, bucket), want, "{bucket:#x}");
        }
        for (addr, want) in [
            (0x0a01_0107, Some(1)),
            (0x0a01_0106, Some(2)),
            (0x0a01_0117, Some(2)),
            (0x0a01_0240, Some(3)),
            (0x0a01_027f, Some(3)),
            (0x0a01_0280, Some(2)),
            (0x0a01_023f, Some(2)),
            (0x0a01_0309, Some(5)),
            (0x0a01_030a, Some(4)),
            (0x0a01_0409, Some(5)),
            (0x0a01_04c8, Some(1)),
            (0x0a01_04c9, Some(2)),
            (0x0a02_0506, Some(3)),
            (0x0a02_0507, Some(3)),
            (0x0a02_0505, None),
            (0x0a02_0504, None),
            (0x0a02_0508, None),
        ] {
            assert_eq!(tag(&tables, addr), want, "{addr:#x}");
        }

        // A second /32 patched into 10.1.1/24 ends the first's being
        // alone; taking it out makes it alone again.
        let mut with_32 = compiled.clone();
        with_32.v4.push((0x0a01_0109u32.to_be_bytes(), 32, 4));
        with_32.v4.sort_by_key(|(n, l, _)| (*n, *l));
        for (from, to, alone_after) in [(&compiled, &with_32, false), (&with_32, &compiled, true)] {
            tables.patch_to(from, to, &geometry);
            let whole = build(to, &geometry).unwrap();
            assert_eq!(
                descriptor(&tables, 0x0a01_0100),
                descriptor(&whole, 0x0a01_0100)
            );
            assert_eq!(lone(&tables, 0x0a01_0100), alone_after);
            assert_eq!(tag(&tables, 0x0a01_0107), Some(1));
            let want = if alone_after { 2 } else { 4 };
            assert_eq!(tag(&tables, 0x0a01_0109), Some(want));
        }
    }

    #[test]
    fn a_16_with_several_prefixes_of_17_to_23_is_looked_up_by_its_20s_cover_keys() {
        // 10.1/16: a /17 with a /19 inside, a /20, a /22 and a /23 inside
        // that, a /21 alone in its /20; tags 1..5. 10.2/16: a /20 alone.
        let compiled = v4_tagged(&[
            (0x0a01_0000, 17, 1),
            (0x0a01_4000, 19, 2),
            (0x0a01_9000, 20, 3),
            (0x0a01_c400, 22, 4),
            (0x0a01_c600, 23, 5),
            (0x0a01_a800, 21, 2),
            (0x0a02_1000, 20, 1),
        ]);
        let geometry = Geometry::for_capacity(128);
        let mut tables = build(&compiled, &geometry).unwrap();
        let covers = |t: &Tables| {
            t.v4.iter()
                .flat_map(|b| b.slots)
                .filter(|s| s.len == layout::V4_COVER_KEY)
                .count()
        };
        let tag = |t: &Tables, addr: u32| tag_of(t, std::net::Ipv4Addr::from(addr));
        assert!(tables.v4_short[0x0a01].covers());
        assert!(!tables.v4_short[0x0a02].covers(), "one prefix of /17../23");
        // Eight /20s under the /17, the /20, the one the /22 and /23 lie
        // in, and the /21's, which holds it.
        assert_eq!(covers(&tables), 11);
        let lone = tables
            .v4
            .iter()
            .flat_map(|b| b.slots)
            .find(|s| s.len == layout::V4_COVER_KEY && s.net == 0x0a01_a000)
            .expect("the /21's cover key");
        assert_ne!(lone.longer & layout::V4_COVER_LONE, 0);
        for (addr, want) in [
            (0x0a01_0001, Some(1)),
            (0x0a01_4001, Some(2)),
            (0x0a01_5fff, Some(2)),
            (0x0a01_7fff, Some(1)),
            (0x0a01_8001, None),
            (0x0a01_9001, Some(3)),
            (0x0a01_c001, None),
            (0x0a01_c401, Some(4)),
            (0x0a01_c701, Some(5)),
            (0x0a01_c801, None),
            (0x0a01_a801, Some(2)),
            (0x0a01_afff, Some(2)),
            (0x0a01_a7ff, None),
            (0x0a01_b001, None),
            (0x0a02_1001, Some(1)),
        ] {
            assert_eq!(tag(&tables, addr), want, "{addr:#x}");
        }

        // Down to one prefix of /17../23 in 10.1/16, its cover keys go;
        // back, they come again.
        let mut fewer = compiled.clone();
        fewer
            .v4
            .retain(|(n, _, _)| u32::from_be_bytes(*n) >> 16 != 0x0a01 || n[2] == 0x90);
        for (from, to, wanted) in [(&compiled, &fewer, 0), (&fewer, &compiled, 11)] {
            tables.patch_to(from, to, &geometry);
            let whole = build(to, &geometry).unwrap();
            assert_eq!(tables.keys, whole.keys);
            assert_eq!(tables.v4_short, whole.v4_short);
            assert_eq!(covers(&tables), wanted);
            assert_eq!(tag(&tables, 0x0a01_9001), Some(3));
            assert_eq!(tag(&tables, 0x0a01_c701), (wanted > 0).then_some(5));
        }
    }

    #[test]
    fn an_ipv6_prefix_alone_in_its_32_is_held_by_the_descriptor_and_patched_with_it() {
        // 2001:db8::/30 covers the buckets 2001:db8::/32..2001:dbb::/32.
        // Alone in theirs: a /128 (under the /30), a /40 (too) and a /33
        // (nothing over it); two in 2001:dba::/32.
        let compiled = v6_tagged(&[
            ("2001:db8::", 30, 2),
            ("2001:db8::5", 128, 1),
            ("2001:db9:ff00::", 40, 3),
            ("2001:dba::", 64, 4),
            ("2001:dba::8:0:0", 96, 5),
            ("3fff:0:8000::", 33, 1),
        ]);
        let geometry = Geometry::for_capacity(128);
        let mut tables = build(&compiled, &geometry).unwrap();
        let descriptor = |t: &Tables, text: &str| {
            let hi = u64::from_be_bytes(v6_octets(text)[..8].try_into().unwrap()) & !0xffff_ffff;
            t.v6.iter()
                .flat_map(|b| b.slots)
                .find(|s| s.len == 32 && s.hi == hi)
                .expect("a descriptor")
        };
        let lone =
            |t: &Tables, text: &str| layout::v6_lone_answer(&descriptor(t, text), 0, 0).is_some();
        let tag = |t: &Tables, text: &str| tag_of(t, std::net::Ipv6Addr::from(v6_octets(text)));
        for bucket in ["2001:db8::", "2001:db9::", "3fff::"] {
            assert!(lone(&tables, bucket), "{bucket}");
        }
        assert!(!lone(&tables, "2001:dba::"), "two prefixes inside");
        assert!(!lone(&tables, "2001:dbb::"), "nothing inside");
        for (addr, want) in [
            ("2001:db8::5", Some(1)),
            ("2001:db8::4", Some(2)),
            ("2001:db8:0:0:8000::5", Some(2)),
            ("2001:db9:ff12::1", Some(3)),
            ("2001:db9:fe00::", Some(2)),
            ("2001:dba::1", Some(4)),
            ("2001:dba::8:0:1", Some(5)),
            ("3fff:0:8000::1", Some(1)),
            ("3fff:0:ffff:ffff::", Some(1)),
            ("3fff:0:7fff::1", None),
            ("3fff:1:8000::", None),
        ] {
            assert_eq!(tag(&tables, addr), want, "{addr}");
        }

        // A second prefix patched into 2001:db9::/32 ends the /40's being
        // alone; taking it out makes it alone again.
        let mut with_64 = compiled.clone();
        with_64.v6.push((v6_octets("2001:db9:ff00:1::"), 64, 4));
        with_64.v6.sort_by_key(|(n, l, _)| (*n, *l));
        for (from, to, alone_after) in [(&compiled, &with_64, false), (&with_64, &compiled, true)] {
            tables.patch_to(from, to, &geometry);
            let whole = build(to, &geometry).unwrap();
            assert_eq!(
                descriptor(&tables, "2001:db9::"),
                descriptor(&whole, "2001:db9::")
            );
            assert_eq!(lone(&tables, "2001:db9::"), alone_after);
            let want = if alone_after { 3 } else { 4 };
            assert_eq!(tag(&tables, "2001:db9:ff00:1::1"), Some(want));
            assert_eq!(tag(&tables, "2001:db9:ff00:2::1"), Some(3));
        }
    }

    #[test]
    fn a_lone_prefix_of_17_to_23_is_held_by_its_16_and_patched_with_it() {
        // 10.1.2.0/23 alone in 10.1/16; 10.2.0.0/20 under a /16; two in 10.3/16.
        let mut compiled = v4_only(
            [
                (0x0a01_0200, 23),
                (0x0a02_0000, 16),
                (0x0a02_0000, 20),
                (0x0a03_0000, 18),
                (0x0a03_8000, 22),
            ]
            .into_iter(),
        );
        compiled.v4.sort_by_key(|(n, l, _)| (*n, *l));
        let geometry = Geometry::for_capacity(128);
        let mut tables = build(&compiled, &geometry).unwrap();
        let alone = |t: &Tables, addr: u32| t.v4_short[(addr >> 16) as usize].alone(addr);
        let found = |t: &Tables, a: u32| t.lookup(IpAddr::from(a.to_be_bytes()));
        assert_eq!(alone(&tables, 0x0a01_0305), Some(1));
        assert_eq!(alone(&tables, 0x0a01_0405), None, "outside the /23");
        assert_eq!(alone(&tables, 0x0a02_0005), None, "under a /16");
        assert_eq!(alone(&tables, 0x0a03_0005), None, "one of two");
        assert!(found(&tables, 0x0a01_0305).is_some() && found(&tables, 0x0a01_0405).is_none());
        assert!(found(&tables, 0x0a03_8005).is_some() && found(&tables, 0x0a03_4005).is_none());

        // A /32 patched into the /23 ends its being alone (the /32 is
        // looked up); taking it out makes it alone again.
        let mut with_32 = compiled.clone();
        with_32.v4.push((0x0a01_0307u32.to_be_bytes(), 32, 2));
        with_32.v4.sort_by_key(|(n, l, _)| (*n, *l));
        for (from, to, alone_after) in [(&compiled, &with_32, None), (&with_32, &compiled, Some(1))]
        {
            tables.patch_to(from, to, &geometry);
            assert_eq!(tables.v4_short, build(to, &geometry).unwrap().v4_short);
            assert_eq!(alone(&tables, 0x0a01_0305), alone_after);
            let exact = found(&tables, 0x0a01_0307);
            assert_eq!(exact == Some(*to.entry(2)), alone_after.is_none());
            assert_eq!(found(&tables, 0x0a01_0305), Some(*to.entry(1)));
        }
    }

    #[test]
    fn a_full_table_is_refused_by_name() {
        let compiled = v4_only((0u32..10_000).map(|i| (0x0a00_0000 + (i << 8), 24)));
        let err = build(&compiled, &Geometry::for_capacity(100)).unwrap_err();
        assert!(
            matches!(err, LayoutError::TableFull { family: "IPv4", .. }),
            "{err}"
        );
    }

    #[test]
    fn a_descriptor_per_bucket_and_a_key_per_longer_prefix() {
        let compiled = v4_only((0u32..1000).map(|i| (0x0a00_0000 + i, 32)));
        let tables = build(&compiled, &Geometry::for_capacity(1000)).unwrap();
        assert_eq!(tables.entries, compiled.entries);
        // 1000 /32s in four /24s.
        assert_eq!(tables.keys.0, 1000 + 4);
    }
}
