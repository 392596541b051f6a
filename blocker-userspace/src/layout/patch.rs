//! Patches: what a small compile change does to one generation's tables,
//! value by value, worked out against the live generation (read through a
//! [`Source`]) instead of laying every table out again. The hash tables
//! keep their seeds; a key that goes is cleared from its slot, a key that
//! comes is placed by cuckoo insertion among the buckets it touches.
//!
//! IPv4 bitmap bits are set and cleared exactly. An IPv6 bit stands for
//! every /32 hashed to it, so a patch only sets them: a bit left set costs a
//! descriptor probe that finds nothing, until the next layout from scratch.

use std::collections::BTreeSet;

use blocker_common::{
    PrefixEntry,
    layout::{self, Bucket4, Bucket6, SLOTS, Short4, Slot4, Slot6, V4_BUCKET_LEN, V6_BUCKET_LEN},
};

use super::{MAX_KICKS, Slot};
use crate::{
    compile::{Change, Compiled},
    fasthash::FastMap,
};

/// Reads the generation a patch starts from, a value at a time. `None`:
/// the value could not be read (the patch is given up).
pub trait Source {
    fn v4_bits(&mut self, index: u32) -> Option<u64>;
    fn v6_bits(&mut self, index: u32) -> Option<u64>;
    fn v4_bucket(&mut self, index: u32) -> Option<Bucket4>;
    fn v6_bucket(&mut self, index: u32) -> Option<Bucket6>;
}

/// New values for some indices of each table of a generation, each list
/// sorted by index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Patch {
    pub v4_bits: Vec<(u32, u64)>,
    pub v4: Vec<(u32, Bucket4)>,
    pub v6_bits: Vec<(u32, u64)>,
    pub v6: Vec<(u32, Bucket6)>,
    pub entries: Vec<(u32, PrefixEntry)>,
    pub v4_short: Vec<(u32, Short4)>,
    /// Keys the hash tables gained (or lost): (IPv4, IPv6).
    pub keys: (isize, isize),
}

/// `older` with `newer` over it, sorted by index.
fn over<T: Copy>(older: &[(u32, T)], newer: &[(u32, T)]) -> Vec<(u32, T)> {
    let mut merged = Vec::with_capacity(older.len() + newer.len());
    let mut older = older.iter().peekable();
    for &(index, value) in newer {
        while let Some(&old) = older.next_if(|(i, _)| *i < index) {
            merged.push(old);
        }
        older.next_if(|(i, _)| *i == index);
        merged.push((index, value));
    }
    merged.extend(older);
    merged
}

impl Patch {
    /// This patch followed by `newer`: every index either writes, with
    /// `newer`'s value where both do.
    pub fn then(&self, newer: &Patch) -> Patch {
        Patch {
            v4_bits: over(&self.v4_bits, &newer.v4_bits),
            v4: over(&self.v4, &newer.v4),
            v6_bits: over(&self.v6_bits, &newer.v6_bits),
            v6: over(&self.v6, &newer.v6),
            entries: over(&self.entries, &newer.entries),
            v4_short: over(&self.v4_short, &newer.v4_short),
            keys: (self.keys.0 + newer.keys.0, self.keys.1 + newer.keys.1),
        }
    }

    /// Values written in all.
    pub fn len(&self) -> usize {
        self.v4_bits.len()
            + self.v4.len()
            + self.v6_bits.len()
            + self.v6.len()
            + self.entries.len()
            + self.v4_short.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

trait Keyed: Slot {
    fn same_key(&self, other: &Self) -> bool;
    fn is_free(&self) -> bool;
}

impl Keyed for Slot4 {
    fn same_key(&self, other: &Self) -> bool {
        (self.net, self.len) == (other.net, other.len)
    }
    fn is_free(&self) -> bool {
        self.len == 0
    }
}

impl Keyed for Slot6 {
    fn same_key(&self, other: &Self) -> bool {
        (self.hi, self.lo, self.len) == (other.hi, other.lo, other.len)
    }
    fn is_free(&self) -> bool {
        self.len == 0
    }
}

/// One family's hash table as patched so far: the buckets changed, over
/// the source's.
struct Overlay<S, R> {
    buckets: FastMap<u32, [S; SLOTS]>,
    read: R,
    seed: u32,
    count: u32,
    rng: u64,
    keys: isize,
}

impl<S: Keyed, R: FnMut(u32) -> Option<[S; SLOTS]>> Overlay<S, R> {
    fn new(read: R, seed: u32, count: u32) -> Self {
        Self {
            buckets: FastMap::default(),
            read,
            seed,
            count,
            rng: u64::from(seed) | 1,
            keys: 0,
        }
    }

    fn bucket(&mut self, index: u32) -> Option<&mut [S; SLOTS]> {
        if !self.buckets.contains_key(&index) {
            let bucket = (self.read)(index)?;
            self.buckets.insert(index, bucket);
        }
        self.buckets.get_mut(&index)
    }

    /// The slot holding `key`'s key: (bucket, slot).
    fn find(&mut self, key: &S) -> Option<Option<(u32, usize)>> {
        for b in layout::choices(key.hash(self.seed), self.count) {
            let bucket = self.bucket(b)?;
            if let Some(s) = bucket.iter().position(|s| !s.is_free() && s.same_key(key)) {
                return Some(Some((b, s)));
            }
        }
        Some(None)
    }

    /// Clears `key`'s key; `None` when it is not there (the source is not
    /// what the change was made against).
    fn remove(&mut self, key: &S) -> Option<()> {
        let (b, s) = self.find(key)??;
        self.bucket(b)?[s] = S::default();
        self.keys -= 1;
        Some(())
    }

    /// Writes `slot` over its key's, or places it; `None` when it does not
    /// fit.
    fn upsert(&mut self, slot: S) -> Option<()> {
        if let Some((b, s)) = self.find(&slot)? {
            self.bucket(b)?[s] = slot;
            return Some(());
        }
        let mut key = slot;
        for _ in 0..MAX_KICKS {
            let choices = layout::choices(key.hash(self.seed), self.count);
            for b in choices {
                if let Some(free) = self.bucket(b)?.iter_mut().find(|s| s.is_free()) {
                    *free = key;
                    self.keys += 1;
                    return Some(());
                }
            }
            // xorshift: pick a bucket and a slot to evict.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let b = choices[(self.rng & 1) as usize];
            let s = ((self.rng >> 1) % SLOTS as u64) as usize;
            std::mem::swap(&mut self.bucket(b)?[s], &mut key);
        }
        None
    }

    fn changed(self) -> (Vec<(u32, [S; SLOTS])>, isize) {
        let mut buckets: Vec<_> = self.buckets.into_iter().collect();
        buckets.sort_unstable_by_key(|(index, _)| *index);
        (buckets, self.keys)
    }
}

/// Prefixes of one family in a [`Compiled`], as (address bits
/// left-aligned in 128, length, entry).
trait Family {
    fn at(&self, i: usize) -> (u128, u8, u32);
    fn len(&self) -> usize;

    /// Index of the first prefix not before (bits, len).
    fn lower_bound(&self, bits: u128, len: u8) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (b, l, _) = self.at(mid);
            if (b, l) < (bits, len) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The entry of prefix (bits, len), if the table holds it.
    fn entry(&self, bits: u128, len: u8) -> Option<u32> {
        let i = self.lower_bound(bits, len);
        (i < self.len() && self.at(i).0 == bits && self.at(i).1 == len).then(|| self.at(i).2)
    }

    /// The entry of the longest prefix no longer than `max` containing
    /// `bits`.
    fn cover(&self, bits: u128, max: u8) -> Option<u32> {
        (0..=max)
            .rev()
            .find_map(|len| self.entry(bits & mask(len), len))
    }

    /// Lengths of the prefixes at least `min` long inside the
    /// `width`-bit prefix at `bits`.
    fn inside(&self, bits: u128, width: u8, min: u8) -> impl Iterator<Item = u8> {
        let last = bits | !mask(width);
        (self.lower_bound(bits, min)..self.len())
            .map(|i| self.at(i))
            .take_while(move |(b, _, _)| *b <= last)
            .filter(move |(_, l, _)| *l >= min)
            .map(|(_, l, _)| l)
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

struct V4<'a>(&'a [([u8; 4], u8, u32)]);
struct V6<'a>(&'a [([u8; 16], u8, u32)]);

impl Family for V4<'_> {
    fn at(&self, i: usize) -> (u128, u8, u32) {
        let (net, len, entry) = self.0[i];
        (u128::from(u32::from_be_bytes(net)) << 96, len, entry)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Family for V6<'_> {
    fn at(&self, i: usize) -> (u128, u8, u32) {
        let (net, len, entry) = self.0[i];
        (u128::from_be_bytes(net), len, entry)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Why a change is laid out from scratch instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unpatchable {
    #[error("a changed prefix is shorter than a patch spans")]
    Wide,
    #[error("the tables read are not those the change was made against")]
    Mismatch,
    #[error("a key does not fit its buckets")]
    Full,
    #[error("the entries array is full")]
    Entries,
}

/// How far a patch reaches for a prefix shorter than a bucket: IPv4 down
/// to the /16 level, IPv6 down to /24 (256 buckets).
const V6_WIDEST: u8 = 24;

/// The patch taking the tables of `source` (laid out for the compile that
/// `change` starts from, hashed as `shape`) to those of `compiled`.
pub fn patch(
    compiled: &Compiled,
    change: &Change,
    shape: &layout::Shape,
    entries_capacity: usize,
    source: &mut impl Source,
) -> Result<Patch, Unpatchable> {
    if compiled.entries.len() > entries_capacity {
        return Err(Unpatchable::Entries);
    }
    let mut patch = patch_v4(compiled, change, shape, source)?;
    let v6 = patch_v6(compiled, change, shape, source)?;
    patch.v6_bits = v6.v6_bits;
    patch.v6 = v6.v6;
    patch.keys.1 = v6.keys.1;
    patch.entries = (change.entries_from..compiled.entries.len())
        .map(|i| (i as u32, compiled.entries[i]))
        .collect();
    Ok(patch)
}

fn patch_v4(
    compiled: &Compiled,
    change: &Change,
    shape: &layout::Shape,
    source: &mut impl Source,
) -> Result<Patch, Unpatchable> {
    let table = V4(&compiled.v4);
    let mut keys: Vec<(u32, u8)> = Vec::new();
    let mut descriptors: BTreeSet<u32> = BTreeSet::new();
    let mut shorts: BTreeSet<u32> = BTreeSet::new();
    let mut bits: BTreeSet<u32> = BTreeSet::new();
    for &(net, len) in &change.v4 {
        let net = u32::from_be_bytes(net);
        let bucket = net >> (32 - V4_BUCKET_LEN);
        if u32::from(len) < layout::V4_SHORT_LEN {
            return Err(Unpatchable::Wide);
        }
        bits.extend(bucket..bucket + (1 << V4_BUCKET_LEN.saturating_sub(u32::from(len))));
        if u32::from(len) < V4_BUCKET_LEN {
            shorts.insert(net >> (32 - layout::V4_SHORT_LEN));
        } else {
            descriptors.insert(bucket);
        }
        if u32::from(len) != layout::V4_SHORT_LEN && u32::from(len) != V4_BUCKET_LEN {
            keys.push((net, len));
        }
    }
    let mut hash = Overlay::new(
        |b| source.v4_bucket(b).map(|b| b.slots),
        shape.v4_seed,
        shape.v4_buckets,
    );
    // Keys that go first, then those that come or change.
    let mut upserts: Vec<Slot4> = Vec::new();
    let bits_of = |net: u32| u128::from(net) << 96;
    for &(net, len) in &keys {
        let slot = Slot4 {
            net,
            len: u32::from(len),
            entry: 0,
            longer: 0,
        };
        match table.entry(bits_of(net), len) {
            Some(entry) => upserts.push(Slot4 { entry, ..slot }),
            None => hash.remove(&slot).ok_or(Unpatchable::Mismatch)?,
        }
    }
    for &bucket in &descriptors {
        let net = bucket << (32 - V4_BUCKET_LEN);
        let entry = table.entry(bits_of(net), 24).unwrap_or(0);
        let longer = table
            .inside(bits_of(net), 24, 25)
            .fold(0u32, |m, l| m | 1 << (32 - l));
        let slot = Slot4 {
            net,
            len: V4_BUCKET_LEN,
            entry,
            longer,
        };
        if entry == 0 && longer == 0 {
            // Gone, or never there (a changed prefix of a /24 with no
            // descriptor before or after).
            if hash.find(&slot).ok_or(Unpatchable::Mismatch)?.is_some() {
                hash.remove(&slot).ok_or(Unpatchable::Mismatch)?;
            }
        } else {
            upserts.push(slot);
        }
    }
    for slot in upserts {
        hash.upsert(slot).ok_or(Unpatchable::Full)?;
    }
    let (v4, keys_gained) = hash.changed();
    let v4_short = shorts
        .iter()
        .map(|&s| {
            let net = s << (32 - layout::V4_SHORT_LEN);
            (
                s,
                Short4 {
                    entry: table.cover(bits_of(net), 16).unwrap_or(0),
                    longer: table
                        .inside(bits_of(net), 16, 17)
                        .filter(|&l| l < 24)
                        .fold(0u32, |m, l| m | 1 << (23 - l)),
                },
            )
        })
        .collect();
    // A /24's bit: some prefix covers it or lies inside it.
    let mut words: FastMap<u32, u64> = FastMap::default();
    for &bucket in &bits {
        let net = bucket << (32 - V4_BUCKET_LEN);
        let set = table.cover(bits_of(net), 24).is_some()
            || table.inside(bits_of(net), 24, 25).next().is_some();
        let word = match words.get(&(bucket >> 6)) {
            Some(&w) => w,
            None => source.v4_bits(bucket >> 6).ok_or(Unpatchable::Mismatch)?,
        };
        let word = if set {
            word | 1 << (bucket & 63)
        } else {
            word & !(1 << (bucket & 63))
        };
        words.insert(bucket >> 6, word);
    }
    let mut v4_bits: Vec<(u32, u64)> = words.into_iter().collect();
    v4_bits.sort_unstable_by_key(|(i, _)| *i);
    Ok(Patch {
        v4_bits,
        v4: v4
            .into_iter()
            .map(|(i, slots)| (i, Bucket4 { slots }))
            .collect(),
        v4_short,
        keys: (keys_gained, 0),
        ..Patch::default()
    })
}

fn patch_v6(
    compiled: &Compiled,
    change: &Change,
    shape: &layout::Shape,
    source: &mut impl Source,
) -> Result<Patch, Unpatchable> {
    let table = V6(&compiled.v6);
    let mut keys: Vec<(u128, u8)> = Vec::new();
    let mut descriptors: BTreeSet<u32> = BTreeSet::new();
    for &(net, len) in &change.v6 {
        let bits = u128::from_be_bytes(net);
        let top = (bits >> (128 - V6_BUCKET_LEN)) as u32;
        if len < V6_WIDEST {
            return Err(Unpatchable::Wide);
        }
        if u32::from(len) <= V6_BUCKET_LEN {
            let span = 1u32 << (V6_BUCKET_LEN - u32::from(len));
            descriptors.extend((0..span).map(|i| top + i));
        } else {
            descriptors.insert(top);
            keys.push((bits, len));
        }
    }
    let mut hash = Overlay::new(
        |b| source.v6_bucket(b).map(|b| b.slots),
        shape.v6_seed,
        shape.v6_buckets,
    );
    let mut upserts: Vec<Slot6> = Vec::new();
    for &(bits, len) in &keys {
        let slot = Slot6 {
            hi: (bits >> 64) as u64,
            lo: bits as u64,
            len: u32::from(len),
            entry: 0,
            longer: [0; 2],
        };
        match table.entry(bits, len) {
            Some(entry) => upserts.push(Slot6 { entry, ..slot }),
            None => hash.remove(&slot).ok_or(Unpatchable::Mismatch)?,
        }
    }
    let mut present: Vec<u32> = Vec::new();
    for &top in &descriptors {
        let bits = u128::from(top) << (128 - V6_BUCKET_LEN);
        let entry = table.cover(bits, 32).unwrap_or(0);
        let mut longer = [0u64; 2];
        for len in table.inside(bits, 32, 33) {
            if len > 64 {
                longer[0] |= 1 << (128 - u32::from(len));
            } else {
                longer[1] |= 1 << (64 - u32::from(len));
            }
        }
        let slot = Slot6 {
            hi: (bits >> 64) as u64,
            lo: 0,
            len: V6_BUCKET_LEN,
            entry,
            longer,
        };
        if entry == 0 && longer == [0, 0] {
            if hash.find(&slot).ok_or(Unpatchable::Mismatch)?.is_some() {
                hash.remove(&slot).ok_or(Unpatchable::Mismatch)?;
            }
        } else {
            present.push(layout::v6_bit(slot.hi));
            upserts.push(slot);
        }
    }
    for slot in upserts {
        hash.upsert(slot).ok_or(Unpatchable::Full)?;
    }
    let (v6, keys_gained) = hash.changed();
    let mut words: FastMap<u32, u64> = FastMap::default();
    for bit in present {
        let word = match words.get(&(bit >> 6)) {
            Some(&w) => w,
            None => source.v6_bits(bit >> 6).ok_or(Unpatchable::Mismatch)?,
        };
        words.insert(bit >> 6, word | 1 << (bit & 63));
    }
    let mut v6_bits: Vec<(u32, u64)> = words.into_iter().collect();
    v6_bits.sort_unstable_by_key(|(i, _)| *i);
    Ok(Patch {
        v6_bits,
        v6: v6
            .into_iter()
            .map(|(i, slots)| (i, Bucket6 { slots }))
            .collect(),
        keys: (0, keys_gained),
        ..Patch::default()
    })
}
