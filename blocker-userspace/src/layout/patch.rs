//! Patches: what a small compile change does to one generation's tables,
//! value by value, worked out against the live generation (read through a
//! [`Source`]) instead of laying every table out again. The hash tables
//! keep their seeds; a key that goes is cleared from its slot, a key that
//! comes is placed by cuckoo insertion among the buckets it touches.
//!
//! Bitmap bits are set and cleared exactly. An IPv6 bit stands for every
//! /32 hashed to it: a /32 descriptor that goes clears its bit when no /32
//! the compile still holds hashes to it (one pass over its IPv6 prefixes
//! tells). Where a prefix wider than /24 would make that pass long, the
//! bit is left set: it costs a descriptor probe that finds nothing, until
//! the next layout from scratch.

use std::{
    cell::Cell,
    sync::{Mutex, PoisonError},
};

use blocker_common::{
    PrefixEntry,
    layout::{self, Bucket4, Bucket6, SLOTS, Short4, Slot4, Slot6, V4_BUCKET_LEN, V6_BUCKET_LEN},
};

use super::{MAX_KICKS, Slot, cover_key, cover_places, short_of};
use crate::{
    bits::Bits,
    compile::{Change, Compiled},
    fasthash::FastMap,
    gallop,
};

/// Reads the generation a patch starts from. `None`: a value could not
/// be read (the patch is given up).
pub trait Source {
    fn v4_bits(&mut self, index: u32) -> Option<u64>;
    fn v6_bits(&mut self, index: u32) -> Option<u64>;
    fn v4_bucket(&mut self, index: u32) -> Option<Bucket4>;
    fn v6_bucket(&mut self, index: u32) -> Option<Bucket6>;
    fn v4_short(&mut self, index: u32) -> Option<Short4>;
    /// The values at `indices` (sorted, distinct) of `table`, in order: a
    /// source may read many at once more cheaply than one by one.
    fn many(&mut self, table: Table, indices: &[u32]) -> Option<Values> {
        fn each<T>(indices: &[u32], read: impl FnMut(u32) -> Option<T>) -> Option<Vec<T>> {
            indices.iter().copied().map(read).collect()
        }
        Some(match table {
            Table::V4Bits => Values::Words(each(indices, |i| self.v4_bits(i))?),
            Table::V6Bits => Values::Words(each(indices, |i| self.v6_bits(i))?),
            Table::V4 => Values::V4(each(indices, |i| self.v4_bucket(i))?),
            Table::V6 => Values::V6(each(indices, |i| self.v6_bucket(i))?),
            Table::V4Short => Values::Shorts(each(indices, |i| self.v4_short(i))?),
        })
    }
}

/// A table [`Source::many`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    V4Bits,
    V4,
    V6Bits,
    V6,
    V4Short,
}

/// Values [`Source::many`] read.
pub enum Values {
    Words(Vec<u64>),
    V4(Vec<Bucket4>),
    V6(Vec<Bucket6>),
    Shorts(Vec<Short4>),
}

/// Sorts and dedups `indices` and reads them from `source`: (indices,
/// values), none when unreadable.
fn read_many(
    source: &mut impl Source,
    table: Table,
    mut indices: Vec<u32>,
) -> (Vec<u32>, Option<Values>) {
    indices.sort_unstable();
    indices.dedup();
    let values = source.many(table, &indices);
    (indices, values)
}

/// The hash table and bitmap of one family, as a patch reads them.
trait FamilyTables: Sized {
    const BUCKETS: Table;
    const BITS: Table;
    fn buckets(values: Values) -> Option<Vec<[Self; SLOTS]>>;
}

impl FamilyTables for Slot4 {
    const BUCKETS: Table = Table::V4;
    const BITS: Table = Table::V4Bits;
    fn buckets(values: Values) -> Option<Vec<[Self; SLOTS]>> {
        match values {
            Values::V4(buckets) => Some(buckets.into_iter().map(|b| b.slots).collect()),
            _ => None,
        }
    }
}

impl FamilyTables for Slot6 {
    const BUCKETS: Table = Table::V6;
    const BITS: Table = Table::V6Bits;
    fn buckets(values: Values) -> Option<Vec<[Self; SLOTS]>> {
        match values {
            Values::V6(buckets) => Some(buckets.into_iter().map(|b| b.slots).collect()),
            _ => None,
        }
    }
}

/// Reads ahead the buckets at `buckets` of one family: the buckets read
/// (sorted indices, and their buckets; what could not be read is read one
/// by one later).
fn read_buckets<S: FamilyTables>(
    source: &mut impl Source,
    buckets: Vec<u32>,
) -> (Vec<u32>, Vec<[S; SLOTS]>) {
    let (indices, values) = read_many(source, S::BUCKETS, buckets);
    match values.and_then(S::buckets) {
        Some(buckets) => (indices, buckets),
        None => Default::default(),
    }
}

/// Reads ahead the words at `words` of the bitmap `table` (what could not
/// be read is read one by one later).
fn read_words(source: &mut impl Source, table: Table, words: Vec<u32>) -> Words {
    match read_many(source, table, words) {
        (indices, Some(Values::Words(values))) => Words::preloaded(&indices, &values),
        _ => Words::default(),
    }
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

impl Patch {
    /// Its tables but the entries, as [`patch`] hands them to its sink.
    pub fn parts(&self) -> [Part<'_>; 5] {
        [
            Part::V4Bits(&self.v4_bits),
            Part::V4(&self.v4),
            Part::V6Bits(&self.v6_bits),
            Part::V6(&self.v6),
            Part::V4Short(&self.v4_short),
        ]
    }
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
    /// Buckets read (those read ahead first, by index), and whether each
    /// was changed.
    indices: Vec<u32>,
    buckets: Vec<[S; SLOTS]>,
    changed: Vec<bool>,
    /// How many were read ahead.
    ahead: usize,
    /// Where each bucket read is in `buckets` (a compact index: the
    /// buckets themselves are not moved about).
    at: FastMap<u32, u32>,
    read: R,
    seed: u32,
    count: u32,
    rng: u64,
    keys: isize,
}

impl<S: Keyed + PartialEq, R: FnMut(u32) -> Option<[S; SLOTS]>> Overlay<S, R> {
    /// An overlay over the buckets `read` reads, those at `indices`
    /// (sorted, distinct) read ahead as `buckets`.
    fn new(
        read: R,
        seed: u32,
        count: u32,
        (indices, buckets): (Vec<u32>, Vec<[S; SLOTS]>),
    ) -> Self {
        let mut at = FastMap::default();
        at.reserve(indices.len() + indices.len() / 8);
        at.extend(
            indices
                .iter()
                .enumerate()
                .map(|(i, &index)| (index, i as u32)),
        );
        Self {
            ahead: indices.len(),
            indices,
            changed: vec![false; buckets.len()],
            buckets,
            at,
            read,
            seed,
            count,
            rng: u64::from(seed) | 1,
            keys: 0,
        }
    }

    fn bucket(&mut self, index: u32) -> Option<&[S; SLOTS]> {
        let i = self.entry(index)?;
        Some(&self.buckets[i])
    }

    /// The bucket at `index`, to change.
    fn bucket_mut(&mut self, index: u32) -> Option<&mut [S; SLOTS]> {
        let i = self.entry(index)?;
        self.changed[i] = true;
        Some(&mut self.buckets[i])
    }

    /// Where the bucket at `index` is kept, read first if need be.
    fn entry(&mut self, index: u32) -> Option<usize> {
        use std::collections::hash_map::Entry;
        Some(match self.at.entry(index) {
            Entry::Occupied(at) => *at.get() as usize,
            Entry::Vacant(at) => {
                self.buckets.push((self.read)(index)?);
                self.changed.push(false);
                self.indices.push(index);
                at.insert(self.indices.len() as u32 - 1);
                self.indices.len() - 1
            }
        })
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
        self.bucket_mut(b)?[s] = S::default();
        self.keys -= 1;
        Some(())
    }

    /// Writes `slot` over its key's, or places it; `None` when it does not
    /// fit.
    fn upsert(&mut self, slot: S) -> Option<()> {
        if let Some((b, s)) = self.find(&slot)? {
            let i = self.entry(b)?;
            if self.buckets[i][s] != slot {
                self.buckets[i][s] = slot;
                self.changed[i] = true;
            }
            return Some(());
        }
        let mut key = slot;
        for _ in 0..MAX_KICKS {
            let choices = layout::choices(key.hash(self.seed), self.count);
            for b in choices {
                let i = self.entry(b)?;
                if let Some(free) = self.buckets[i].iter().position(|s| s.is_free()) {
                    self.buckets[i][free] = key;
                    self.changed[i] = true;
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
            std::mem::swap(&mut self.bucket_mut(b)?[s], &mut key);
        }
        None
    }

    /// The buckets changed (the rest were only read).
    fn changed(self) -> (Vec<(u32, [S; SLOTS])>, isize) {
        let changed = |from: usize, to: usize| -> Vec<(u32, [S; SLOTS])> {
            (from..to)
                .filter(|&i| self.changed[i])
                .map(|i| (self.indices[i], self.buckets[i]))
                .collect()
        };
        let ahead = changed(0, self.ahead);
        let mut more = changed(self.ahead, self.indices.len());
        more.sort_unstable_by_key(|(index, _)| *index);
        (over(&ahead, &more), self.keys)
    }
}

/// Bitmap words as patched: (as read, as now) by word index.
#[derive(Default)]
struct Words(FastMap<u32, (u64, u64)>);

impl Words {
    /// Words already read.
    fn preloaded(indices: &[u32], values: &[u64]) -> Self {
        Self(
            indices
                .iter()
                .zip(values)
                .map(|(&i, &w)| (i, (w, w)))
                .collect(),
        )
    }

    /// Sets or clears `bit`, reading its word with `read` the first time.
    fn set(
        &mut self,
        bit: u32,
        set: bool,
        read: impl FnOnce(u32) -> Option<u64>,
    ) -> Result<(), Unpatchable> {
        let word = match self.0.get_mut(&(bit >> 6)) {
            Some((_, now)) => now,
            None => {
                let was = read(bit >> 6).ok_or(Unpatchable::Mismatch)?;
                &mut self.0.entry(bit >> 6).or_insert((was, was)).1
            }
        };
        if set {
            *word |= 1 << (bit & 63);
        } else {
            *word &= !(1 << (bit & 63));
        }
        Ok(())
    }

    /// The words that changed, by index.
    fn changed(self) -> Vec<(u32, u64)> {
        let mut words: Vec<(u32, u64)> = self
            .0
            .into_iter()
            .filter(|(_, (was, now))| was != now)
            .map(|(index, (_, now))| (index, now))
            .collect();
        words.sort_unstable_by_key(|(index, _)| *index);
        words
    }
}

/// The bits of `gone` (of /32 descriptors that went) that no /32 bucket
/// of `prefixes` (a compile's IPv6 prefixes) hashes to; none at all when a
/// prefix wider than /24 would take too long to go through, bucket by
/// bucket (its bits stay set).
fn v6_bits_free(prefixes: &[([u8; 16], u8, u32)], mut gone: Vec<u32>) -> Vec<u32> {
    if gone.is_empty() {
        return gone;
    }
    gone.sort_unstable();
    gone.dedup();
    // A bit each for the low 16 bits of those gone: most buckets' bits miss
    // it, and are not searched for.
    let low = |bit: u32| bit as usize & 0xffff;
    let mut filter = Bits::new(1 << 16);
    gone.iter().for_each(|&bit| filter.insert(low(bit)));
    let mut held = Bits::new(gone.len());
    let mut last = None;
    for &(net, len, _) in prefixes {
        let top = (u128::from_be_bytes(net) >> (128 - V6_BUCKET_LEN)) as u32;
        let span = match u32::from(len) {
            len if len >= V6_BUCKET_LEN => 1,
            len if len >= u32::from(V6_WIDEST) => 1u32 << (V6_BUCKET_LEN - len),
            _ => return Vec::new(),
        };
        if span == 1 && last == Some(top) {
            continue;
        }
        last = Some(top);
        for top in top..=top.saturating_add(span - 1) {
            let bit = layout::v6_bit(u64::from(top) << 32);
            if filter.contains(low(bit))
                && let Ok(i) = gone.binary_search(&bit)
            {
                held.insert(i);
            }
        }
    }
    gone.into_iter()
        .enumerate()
        .filter(|&(i, _)| !held.contains(i))
        .map(|(_, bit)| bit)
        .collect()
}

/// Prefixes of one family in a [`Compiled`], as (address bits
/// left-aligned in 128, length, entry).
trait Family {
    fn at(&self, i: usize) -> (u128, u8, u32);
    fn len(&self) -> usize;
    /// The shortest prefix length in the table.
    fn shortest(&self) -> u8;
    /// Where the last search landed.
    fn hint(&self) -> &Cell<usize>;

    /// Index of the first prefix not before (bits, len). Searches gallop
    /// from where the last one landed: a patch looks prefixes up in
    /// address order, mostly.
    fn lower_bound(&self, bits: u128, len: u8) -> usize {
        let before = |i: usize| {
            let (b, l, _) = self.at(i);
            (b, l) < (bits, len)
        };
        let hint = self.hint().get().min(self.len());
        let found = if hint < self.len() && before(hint) {
            hint + 1 + gallop::forward(self.len() - hint - 1, |i| before(hint + 1 + i))
        } else {
            gallop::backward(hint, before)
        };
        self.hint().set(found);
        found
    }

    /// The entry of prefix (bits, len), if the table holds it.
    fn entry(&self, bits: u128, len: u8) -> Option<u32> {
        let i = self.lower_bound(bits, len);
        (i < self.len() && self.at(i).0 == bits && self.at(i).1 == len).then(|| self.at(i).2)
    }

    /// The entry of the longest prefix no longer than `max` (< 128)
    /// containing `bits`.
    fn cover(&self, bits: u128, max: u8) -> Option<u32> {
        self.longest_cover(bits, max).map(|(_, entry)| entry)
    }

    /// The length and entry of the longest prefix no longer than `max`
    /// (< 128) containing `bits`.
    fn longest_cover(&self, bits: u128, max: u8) -> Option<(u8, u32)> {
        // Containing prefixes sort before (bits, max + 1), the longest
        // last, and none before the shortest length's: scan back a little,
        // else search each length.
        let floor = bits & mask(self.shortest());
        let end = self.lower_bound(bits, max + 1);
        let start = self.lower_bound(floor, 0);
        for i in (start.max(end.saturating_sub(COVER_SCAN))..end).rev() {
            let (b, l, e) = self.at(i);
            if l <= max && (b ^ bits) & mask(l) == 0 {
                return Some((l, e));
            }
        }
        if end - start <= COVER_SCAN {
            return None;
        }
        (self.shortest()..=max)
            .rev()
            .find_map(|len| self.entry(bits & mask(len), len).map(|e| (len, e)))
    }

    /// Lengths of the prefixes at least `min` long inside the
    /// `width`-bit prefix at `bits`.
    fn inside(&self, bits: u128, width: u8, min: u8) -> impl Iterator<Item = u8> {
        self.prefixes_inside(bits, width, min).map(|(_, l)| l)
    }

    /// The prefixes (bits, length) at least `min` long inside the
    /// `width`-bit prefix at `bits`.
    fn prefixes_inside(&self, bits: u128, width: u8, min: u8) -> impl Iterator<Item = (u128, u8)> {
        self.entries_inside(bits, width, min)
            .map(|(b, l, _)| (b, l))
    }

    /// As [`Family::prefixes_inside`], with each prefix's entry.
    fn entries_inside(
        &self,
        bits: u128,
        width: u8,
        min: u8,
    ) -> impl Iterator<Item = (u128, u8, u32)> {
        let last = bits | !mask(width);
        (self.lower_bound(bits, min)..self.len())
            .map(|i| self.at(i))
            .take_while(move |(b, _, _)| *b <= last)
            .filter(move |(_, l, _)| *l >= min)
    }
}

/// Prefixes [`Family::cover`] scans back before searching length by length.
const COVER_SCAN: usize = 64;

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// A family's prefixes (network bytes, length, entry), with their
/// shortest length and a search hint.
#[derive(Clone)]
struct Prefixes<'a, const N: usize>(&'a [([u8; N], u8, u32)], u8, Cell<usize>);

impl<'a, const N: usize> Prefixes<'a, N> {
    fn new(prefixes: &'a [([u8; N], u8, u32)]) -> Self {
        let shortest = prefixes.iter().map(|p| p.1).min().unwrap_or(0);
        Self(prefixes, shortest, Cell::new(0))
    }
}

impl<const N: usize> Family for Prefixes<'_, N> {
    fn at(&self, i: usize) -> (u128, u8, u32) {
        let (net, len, entry) = self.0[i];
        // Left-aligned: the bytes first in a zeroed 16 (one load, one swap).
        let mut bytes = [0u8; 16];
        bytes[..N].copy_from_slice(&net);
        (u128::from_be_bytes(bytes), len, entry)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn shortest(&self) -> u8 {
        self.1
    }
    fn hint(&self) -> &Cell<usize> {
        &self.2
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

/// One table's values in a [`Patch`], handed to [`patch`]'s sink as soon
/// as that table is worked out.
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    V4Bits(&'a [(u32, u64)]),
    V4(&'a [(u32, Bucket4)]),
    V6Bits(&'a [(u32, u64)]),
    V6(&'a [(u32, Bucket6)]),
    V4Short(&'a [(u32, Short4)]),
}

/// The patch taking the tables of `source` (laid out for the compile that
/// `change` starts from, hashed as `shape`) to those of `compiled`.
/// Each family is patched from its own source, side by side when the
/// change is large. Each table but the entries is handed to `sink` once,
/// as soon as it is worked out, on the thread that worked it out, so that
/// it can be written while the other thread works on. A table found
/// unpatchable is not handed over (and the patch is refused).
pub fn patch<S: Source + Send>(
    compiled: &Compiled,
    change: &Change,
    shape: &layout::Shape,
    entries_capacity: usize,
    [v4_source, v6_source]: [&mut S; 2],
    sink: &(impl Fn(Part<'_>) + Sync),
) -> Result<Patch, Unpatchable> {
    if compiled.entries.len() > entries_capacity {
        return Err(Unpatchable::Entries);
    }
    if change
        .v4
        .iter()
        .any(|&(_, len)| u32::from(len) < layout::V4_SHORT_LEN)
    {
        return Err(Unpatchable::Wide);
    }
    // Each changed prefix costs microseconds of lookups: a few thousand
    // are worth a second thread. IPv4 holds most of them: its hash table
    // is patched on one thread and IPv6's tables on the other; then IPv4's
    // bitmap words and its /16s are each taken by whichever thread is free
    // first, the words (the longer) first, each with search hints of its
    // own into the IPv4 prefixes.
    let v4_table = Prefixes::new(&compiled.v4);
    let words_task = Mutex::new(Some(v4_table.clone()));
    let shorts_task = Mutex::new(Some(v4_table.clone()));
    let rest = |source: &mut S| {
        let words = take(&words_task).map(|table| {
            let words = bits_v4(&table, change, source);
            if let Ok(words) = &words {
                sink(Part::V4Bits(words));
            }
            words
        });
        let shorts = take(&shorts_task).map(|table| {
            let shorts = shorts_v4(&table, change);
            sink(Part::V4Short(&shorts));
            shorts
        });
        (words, shorts)
    };
    let ((v4, rest_one), (v6, rest_other)) = crate::parallel::join(
        (change.v4.len() + change.v6.len()) * 10,
        || {
            let v4 = patch_v4(&v4_table, change, shape, &mut *v4_source);
            if let Ok(v4) = &v4 {
                sink(Part::V4(&v4.v4));
            }
            (v4, rest(v4_source))
        },
        || {
            let v6 = patch_v6(compiled, change, shape, &mut *v6_source);
            if let Ok(v6) = &v6 {
                sink(Part::V6(&v6.v6));
                sink(Part::V6Bits(&v6.v6_bits));
            }
            (v6, rest(v6_source))
        },
    );
    // Each task was taken by one thread or the other.
    let v4_bits = rest_one.0.or(rest_other.0);
    let v4_short = rest_one.1.or(rest_other.1);
    let (mut patch, v6) = (v4?, v6?);
    patch.v4_bits = v4_bits.unwrap_or(Err(Unpatchable::Mismatch))?;
    patch.v4_short = v4_short.unwrap_or_default();
    patch.v6_bits = v6.v6_bits;
    patch.v6 = v6.v6;
    patch.keys.1 = v6.keys.1;
    patch.entries = change
        .entries
        .iter()
        .filter_map(|&i| compiled.entries.get(i as usize).map(|entry| (i, *entry)))
        .collect();
    Ok(patch)
}

/// The task in `task`, unless another thread took it.
fn take<T>(task: &Mutex<Option<T>>) -> Option<T> {
    task.lock().unwrap_or_else(PoisonError::into_inner).take()
}

fn patch_v4<S: Source>(
    table: &Prefixes<'_, 4>,
    change: &Change,
    shape: &layout::Shape,
    source: &mut S,
) -> Result<Patch, Unpatchable> {
    let mut keys: Vec<(u32, u8)> = Vec::new();
    let mut descriptors: Vec<u32> = Vec::new();
    for &(net, len) in &change.v4 {
        let net = u32::from_be_bytes(net);
        let bucket = net >> (32 - V4_BUCKET_LEN);
        if u32::from(len) >= V4_BUCKET_LEN {
            descriptors.push(bucket);
        } else if u32::from(len) > layout::V4_SHORT_LEN {
            // Its buckets' descriptors say whether a /17../23 covers them.
            descriptors.extend(
                table
                    .prefixes_inside(u128::from(net) << 96, len, 24)
                    .map(|(bits, _)| (bits >> 96) as u32 >> (32 - V4_BUCKET_LEN)),
            );
        }
        if u32::from(len) != layout::V4_SHORT_LEN && u32::from(len) != V4_BUCKET_LEN {
            keys.push((net, len));
        }
    }
    descriptors.sort_unstable();
    descriptors.dedup();
    let choices = |net: u32, len: u32| {
        layout::choices(layout::hash4(net, len, shape.v4_seed), shape.v4_buckets)
    };
    let covers = cover_keys_v4(table, change, source)?;
    let ahead = keys
        .iter()
        .map(|&(net, len)| (net, u32::from(len)))
        .chain(
            descriptors
                .iter()
                .map(|b| (b << (32 - V4_BUCKET_LEN), V4_BUCKET_LEN)),
        )
        .chain(covers.iter().map(|(key, _)| (key.net, key.len)))
        .flat_map(|(net, len)| choices(net, len))
        .collect();
    let buckets = read_buckets::<Slot4>(source, ahead);
    let mut hash = Overlay::new(
        |b| source.v4_bucket(b).map(|b| b.slots),
        shape.v4_seed,
        shape.v4_buckets,
        buckets,
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
        let mut entry = table.entry(bits_of(net), 24).unwrap_or(0);
        let (longer, inside, last) = table.entries_inside(bits_of(net), 24, 25).fold(
            (0u32, 0, (0, 0, 0)),
            |(m, n, _), (bits, l, e)| {
                let one = ((bits >> 96) as u32, u32::from(l), e);
                (m | layout::v4_inside(one.0, one.1), n + 1, one)
            },
        );
        // No /24, one longer prefix: the descriptor holds it.
        let longer = if entry == 0 && inside == 1 {
            entry = last.2;
            longer | layout::v4_lone(last.0, last.1)
        } else {
            longer
        };
        // A descriptor says when no prefix of /17../23 covers its bucket.
        let longer = if (entry != 0 || longer != 0)
            && table
                .longest_cover(bits_of(net), 23)
                .is_none_or(|(len, _)| u32::from(len) <= layout::V4_SHORT_LEN)
        {
            longer | layout::V4_NO_SHORT_COVER
        } else {
            longer
        };
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
    for (key, wanted) in covers {
        match wanted {
            Some(key) => upserts.push(key),
            None => {
                if hash.find(&key).ok_or(Unpatchable::Mismatch)?.is_some() {
                    hash.remove(&key).ok_or(Unpatchable::Mismatch)?;
                }
            }
        }
    }
    for slot in upserts {
        hash.upsert(slot).ok_or(Unpatchable::Full)?;
    }
    let (v4, keys_gained) = hash.changed();
    Ok(Patch {
        v4: v4
            .into_iter()
            .map(|(i, slots)| (i, Bucket4 { slots }))
            .collect(),
        keys: (keys_gained, 0),
        ..Patch::default()
    })
}

/// The IPv4 bitmap words a change sets or clears (of /16 or longer: see
/// [`patch`]), worked out against `source`'s.
fn bits_v4<S: Source>(
    table: &Prefixes<'_, 4>,
    change: &Change,
    source: &mut S,
) -> Result<Vec<(u32, u64)>, Unpatchable> {
    // Each changed prefix's words, once (a /16's 256 bits lie in 4).
    let ahead = change
        .v4
        .iter()
        .flat_map(|&(net, len)| {
            let bucket = u32::from_be_bytes(net) >> (32 - V4_BUCKET_LEN);
            let last = bucket + (1 << V4_BUCKET_LEN.saturating_sub(u32::from(len))) - 1;
            (bucket >> 6)..=(last >> 6)
        })
        .collect();
    let mut words = read_words(source, Slot4::BITS, ahead);
    let bits_of = |net: u32| u128::from(net) << 96;
    // A /24's bit: some prefix covers it or lies inside it. A changed
    // prefix of /24 or shorter decides all its /24s at once: set when
    // something covers it, else as the prefixes inside it touch them.
    for &(net, len) in &change.v4 {
        let (net, len) = (u32::from_be_bytes(net), u32::from(len));
        let bucket = net >> (32 - V4_BUCKET_LEN);
        if len > V4_BUCKET_LEN {
            let at = bucket << (32 - V4_BUCKET_LEN);
            let set = table.cover(bits_of(at), 24).is_some()
                || table.inside(bits_of(at), 24, 25).next().is_some();
            words.set(bucket, set, |w| source.v4_bits(w))?;
            continue;
        }
        let span = 1u32 << (V4_BUCKET_LEN - len);
        let covered = table.cover(bits_of(net), len as u8).is_some();
        let mut touched = vec![covered; span as usize];
        if !covered {
            for (bits, inner) in table.prefixes_inside(bits_of(net), len as u8, len as u8 + 1) {
                let first = ((bits >> 96) as u32 >> (32 - V4_BUCKET_LEN)) - bucket;
                let count = 1u32 << V4_BUCKET_LEN.saturating_sub(u32::from(inner));
                for b in first..first + count {
                    touched[b as usize] = true;
                }
            }
        }
        for (b, set) in (bucket..).zip(touched) {
            words.set(b, set, |w| source.v4_bits(w))?;
        }
    }
    Ok(words.changed())
}

/// `touched` with the bits of the /20s of its /16 that `net`/`len`
/// (17..=23) touches set.
fn touch_covers(touched: u32, (net, len): (u32, u8)) -> u32 {
    cover_places(net, len).fold(touched, |t, at| t | 1 << at)
}

/// The cover keys ([`layout::V4_COVER_KEY`]) to work out in the /16 of
/// every changed prefix of /17../23: each key (its /20) and what it is to
/// hold, `None` when it is to go. A /16 has them while it holds two or more
/// such prefixes. The keys to work out are those of the /20s a changed
/// prefix touches, and, when the /16 gains or loses its keys (`source`
/// holds its /16 before the change), of every /20 its prefixes touch.
fn cover_keys_v4(
    table: &Prefixes<'_, 4>,
    change: &Change,
    source: &mut impl Source,
) -> Result<Vec<(Slot4, Option<Slot4>)>, Unpatchable> {
    let changed: Vec<(u32, u8)> = change
        .v4
        .iter()
        .map(|&(net, len)| (u32::from_be_bytes(net), len))
        .filter(|&(_, len)| (17..V4_BUCKET_LEN as u8).contains(&len))
        .collect();
    let groups: Vec<&[(u32, u8)]> = changed
        .chunk_by(|a, b| short_of(a.0) == short_of(b.0))
        .collect();
    // Each group's /16 as the live tables hold it, all read at once: a
    // mapped table, where one by one is a syscall a /16 (over a thousand
    // in a 1% update).
    let (read, shorts) = read_many(
        source,
        Table::V4Short,
        groups.iter().map(|group| short_of(group[0].0)).collect(),
    );
    let shorts = match shorts {
        Some(Values::Shorts(shorts)) if shorts.len() == read.len() => shorts,
        _ => return Err(Unpatchable::Mismatch),
    };
    let mut keys = Vec::new();
    for group in groups {
        let net = group[0].0 & (u32::MAX << (32 - layout::V4_SHORT_LEN));
        let at = read
            .binary_search(&short_of(net))
            .map_err(|_| Unpatchable::Mismatch)?;
        let before = shorts[at].covers();
        let inside: Vec<(u32, u8, u32)> = table
            .entries_inside(u128::from(net) << 96, 16, 17)
            .filter(|&(_, len, _)| u32::from(len) < V4_BUCKET_LEN)
            .map(|(bits, len, entry)| ((bits >> 96) as u32, len, entry))
            .collect();
        let now = inside.len() >= 2;
        if !now && !before {
            continue;
        }
        let mut touched = group.iter().copied().fold(0, touch_covers);
        if now != before {
            touched = inside
                .iter()
                .map(|&(at, len, _)| (at, len))
                .fold(touched, touch_covers);
        }
        let wanted = if now {
            super::v4_cover_keys(inside.iter().copied())
        } else {
            [None; 16]
        };
        for at in (0..16u32).filter(|at| touched & (1 << at) != 0) {
            keys.push((cover_key(net, at), wanted[at as usize]));
        }
    }
    Ok(keys)
}

/// The [`Short4`] of the /16 of every changed IPv4 prefix: any change may
/// change its /16 (make it exact-only or end that, change its one prefix
/// of /17../23, or put something inside that or take it out).
fn shorts_v4(table: &Prefixes<'_, 4>, change: &Change) -> Vec<(u32, Short4)> {
    let mut shorts: Vec<u32> = change
        .v4
        .iter()
        .map(|(net, _)| short_of(u32::from_be_bytes(*net)))
        .collect();
    shorts.sort_unstable();
    shorts.dedup();
    shorts
        .into_iter()
        .map(|s| {
            let net = s << (32 - layout::V4_SHORT_LEN);
            (
                s,
                short4(table, net, table.cover(u128::from(net) << 96, 16)),
            )
        })
        .collect()
}

/// The [`Short4`] of the /16 at `net` in `table`, given the entry of its
/// cover (`table.cover` of the /16).
fn short4(table: &Prefixes<'_, 4>, net: u32, cover: Option<u32>) -> Short4 {
    // The lengths 17..=23 inside, whether all inside are /32s, the
    // prefixes of /17../23 (how many, the last) and whether a longer one
    // lies in that. Sorted by address, it comes before those inside it.
    // The one's entry is taken as the scan passes it, not looked up after:
    // a search for a prefix the /16 may not hold would gallop back to the
    // table's start, and the next /16's forward again.
    let mut lengths = 0u32;
    let mut only_exact = cover.is_none();
    let (mut count, mut one, mut crowded) = (0, (0u32, 0u8, 0u32), false);
    for (bits, len, entry) in table.entries_inside(u128::from(net) << 96, 16, 17) {
        let at = (bits >> 96) as u32;
        only_exact &= len == 32;
        if len < 24 {
            lengths |= 1 << (23 - len);
            count += 1;
            (one, crowded) = ((at, len, entry), false);
        } else if count > 0 && (at ^ one.0) >> (32 - u32::from(one.1)) == 0 {
            crowded = true;
        }
    }
    match (cover, count) {
        (None, 1) => Short4::with_inner(lengths, one.0, u32::from(one.1), one.2, !crowded),
        (_, 2..) => Short4::new(cover.unwrap_or(0), lengths, false).with_covers(),
        _ => Short4::new(cover.unwrap_or(0), lengths, only_exact),
    }
}

fn patch_v6(
    compiled: &Compiled,
    change: &Change,
    shape: &layout::Shape,
    source: &mut impl Source,
) -> Result<Patch, Unpatchable> {
    let table = Prefixes::new(&compiled.v6);
    let mut keys: Vec<(u128, u8)> = Vec::new();
    let mut descriptors: Vec<u32> = Vec::new();
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
            descriptors.push(top);
            keys.push((bits, len));
        }
    }
    descriptors.sort_unstable();
    descriptors.dedup();
    let choices = |bits: u128, len: u32| {
        let hash = layout::hash6((bits >> 64) as u64, bits as u64, len, shape.v6_seed);
        layout::choices(hash, shape.v6_buckets)
    };
    let ahead = keys
        .iter()
        .map(|&(bits, len)| (bits, u32::from(len)))
        .chain(
            descriptors
                .iter()
                .map(|&top| (u128::from(top) << (128 - V6_BUCKET_LEN), V6_BUCKET_LEN)),
        )
        .flat_map(|(bits, len)| choices(bits, len))
        .collect();
    let words = descriptors
        .iter()
        .map(|&top| layout::v6_bit(u64::from(top) << 32) >> 6)
        .collect();
    let buckets = read_buckets::<Slot6>(source, ahead);
    let mut words = read_words(source, Slot6::BITS, words);
    let mut hash = Overlay::new(
        |b| source.v6_bucket(b).map(|b| b.slots),
        shape.v6_seed,
        shape.v6_buckets,
        buckets,
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
    let mut gone: Vec<u32> = Vec::new();
    for &top in &descriptors {
        let bits = u128::from(top) << (128 - V6_BUCKET_LEN);
        let entry = table.cover(bits, 32).unwrap_or(0);
        let mut longer = [0u64; 2];
        let mut inside = 0;
        let mut last = (0, 0, 0);
        for (net, len, entry) in table.entries_inside(bits, 32, 33) {
            if len > 64 {
                longer[0] |= 1 << (128 - u32::from(len));
            } else {
                longer[1] |= 1 << (64 - u32::from(len));
            }
            inside += 1;
            last = (net, len, entry);
        }
        if inside == 1 {
            let (net, len, entry) = last;
            longer = layout::v6_lone(net, u32::from(len), entry).unwrap_or(longer);
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
                gone.push(layout::v6_bit(slot.hi));
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
    for bit in v6_bits_free(&compiled.v6, gone) {
        words.set(bit, false, |w| source.v6_bits(w))?;
    }
    for bit in present {
        words.set(bit, true, |w| source.v6_bits(w))?;
    }
    let v6_bits = words.changed();
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
