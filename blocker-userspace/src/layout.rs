//! Lays compiled prefixes out in the datapath's lookup tables
//! (`blocker_common::layout`): bitmaps, descriptors, two-choice hash
//! buckets and a deduplicated entries array. Pure: the datapath copies the
//! result into the idle generation's maps.

use std::collections::HashMap;

use blocker_common::{
    PrefixEntry,
    layout::{
        self, BITMAP_WORDS, Bucket4, Bucket6, SLOTS, Short4, Slot4, Slot6, V4_BUCKET_LEN,
        V4_SHORT_LEN, V4_SHORTS, V6_BUCKET_LEN,
    },
};

use crate::compile::Compiled;

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
impl layout::Tables for Tables {
    fn v4_bits(&self, index: u32) -> u64 {
        self.v4_bits.get(index as usize).copied().unwrap_or(0)
    }
    fn v6_bits(&self, index: u32) -> u64 {
        self.v6_bits.get(index as usize).copied().unwrap_or(0)
    }
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

/// Deduplicates entries; index 0 stays [`NO_ENTRY`].
struct Entries {
    list: Vec<PrefixEntry>,
    index: FastMap<PrefixEntry, u32>,
}

impl Entries {
    fn intern(&mut self, entry: &PrefixEntry) -> u32 {
        if let Some(&index) = self.index.get(entry) {
            return index;
        }
        let index = self.list.len() as u32;
        self.list.push(*entry);
        self.index.insert(*entry, index);
        index
    }
}

/// A descriptor being built: the longest covering prefix no longer than the
/// bucket (its length and entry) and the longer lengths inside.
#[derive(Clone, Copy, Default)]
struct Descriptor {
    short_len: Option<u32>,
    entry: u32,
    longer: [u64; 2],
}

impl Descriptor {
    fn cover(&mut self, len: u32, entry: u32) {
        if self.short_len.is_none_or(|l| l < len) {
            self.short_len = Some(len);
            self.entry = entry;
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

/// Everything of a generation but the hash buckets: the keys to place (in
/// a deterministic order), the bitmaps and the entries.
pub struct Keys {
    pub v4: Vec<Slot4>,
    pub v4_short: Vec<Short4>,
    pub v6: Vec<Slot6>,
    pub v4_bits: Vec<u64>,
    pub v6_bits: Vec<u64>,
    pub entries: Vec<PrefixEntry>,
}

/// Descriptors, keys, bitmaps and deduplicated entries for `compiled`.
pub fn prepare(compiled: &Compiled, geometry: &Geometry) -> Result<Keys, LayoutError> {
    let mut entries = Entries {
        list: vec![PrefixEntry::EMPTY],
        index: FastMap::default(),
    };

    // IPv4: /16s in the short array; /17../23 as keys, marked in their
    // /16; a descriptor per /24 with an exact /24 or longer prefixes inside;
    // /25../32 as keys. Every /24 a prefix touches is marked in the bitmap.
    let mut v4_short: Vec<Descriptor> = vec![Descriptor::default(); V4_SHORTS as usize];
    let mut v4_desc: FastMap<u32, Descriptor> = FastMap::default();
    let mut v4: Vec<Slot4> = Vec::new();
    let mut v4_bits = vec![0u64; BITMAP_WORDS as usize];
    for (net, len, entry) in &compiled.v4 {
        let (net, len) = (u32::from_be_bytes(*net), u32::from(*len));
        let entry = entries.intern(entry);
        let bucket = net >> (32 - V4_BUCKET_LEN);
        let buckets = 1u32 << V4_BUCKET_LEN.saturating_sub(len);
        for b in bucket..bucket + buckets {
            set_bit(&mut v4_bits, b);
        }
        let short = net >> (32 - V4_SHORT_LEN);
        if len <= V4_SHORT_LEN {
            for s in short..short + (1 << (V4_SHORT_LEN - len)) {
                v4_short[s as usize].cover(len, entry);
            }
        } else if len < V4_BUCKET_LEN {
            v4_short[short as usize].longer[0] |= 1 << (V4_BUCKET_LEN - 1 - len);
            v4.push(Slot4 {
                net,
                len,
                entry,
                longer: 0,
            });
        } else if len == V4_BUCKET_LEN {
            v4_desc.entry(bucket).or_default().cover(len, entry);
        } else {
            v4_desc.entry(bucket).or_default().longer[0] |= 1 << (32 - len);
            v4.push(Slot4 {
                net,
                len,
                entry,
                longer: 0,
            });
        }
    }
    let mut descriptors: Vec<(u32, Descriptor)> = v4_desc.into_iter().collect();
    descriptors.sort_unstable_by_key(|(bucket, _)| *bucket);
    for (bucket, desc) in descriptors {
        v4.push(Slot4 {
            net: bucket << (32 - V4_BUCKET_LEN),
            len: V4_BUCKET_LEN,
            entry: desc.entry,
            longer: desc.longer[0] as u32,
        });
    }
    let v4_short: Vec<Short4> = v4_short
        .iter()
        .map(|d| Short4 {
            entry: d.entry,
            longer: d.longer[0] as u32,
        })
        .collect();

    // IPv6: descriptors per /32.
    let mut v6_desc: FastMap<u32, Descriptor> = FastMap::default();
    let mut v6: Vec<Slot6> = Vec::new();
    for (net, len, entry) in &compiled.v6 {
        let bits = u128::from_be_bytes(*net);
        let len = u32::from(*len);
        let entry = entries.intern(entry);
        let top = (bits >> (128 - V6_BUCKET_LEN)) as u32;
        if len <= V6_BUCKET_LEN {
            for bucket in top..=top + ((1u64 << (V6_BUCKET_LEN - len)) - 1) as u32 {
                v6_desc.entry(bucket).or_default().cover(len, entry);
            }
        } else {
            let desc = v6_desc.entry(top).or_default();
            if len > 64 {
                desc.longer[0] |= 1 << (128 - len);
            } else {
                desc.longer[1] |= 1 << (64 - len);
            }
            v6.push(Slot6 {
                hi: (bits >> 64) as u64,
                lo: bits as u64,
                len,
                entry,
                longer: [0; 2],
            });
        }
    }
    let mut v6_bits = vec![0u64; BITMAP_WORDS as usize];
    let mut descriptors: Vec<(u32, Descriptor)> = v6_desc.into_iter().collect();
    descriptors.sort_unstable_by_key(|(bucket, _)| *bucket);
    for (bucket, desc) in descriptors {
        let hi = u64::from(bucket) << 32;
        set_bit(&mut v6_bits, layout::v6_bit(hi));
        v6.push(Slot6 {
            hi,
            lo: 0,
            len: V6_BUCKET_LEN,
            entry: desc.entry,
            longer: desc.longer,
        });
    }

    if entries.list.len() > geometry.entries as usize {
        return Err(LayoutError::EntriesFull {
            needed: entries.list.len() - 1,
            capacity: geometry.entries as usize - 1,
        });
    }
    Ok(Keys {
        v4,
        v4_short,
        v6,
        v4_bits,
        v6_bits,
        entries: entries.list,
    })
}

/// Builds one generation's tables for `compiled`, whole.
#[cfg(test)]
fn build(compiled: &Compiled, geometry: &Geometry) -> Result<Tables, LayoutError> {
    let keys = prepare(compiled, geometry)?;
    let v4 = place_v4(&keys, geometry)?;
    let v6 = place_v6(&keys, geometry)?;
    Ok(Tables {
        shape: layout::Shape {
            v4_seed: v4.seed,
            v6_seed: v6.seed,
            v4_buckets: geometry.v4_buckets,
            v6_buckets: geometry.v6_buckets,
        },
        v4: (0..v4.slots.len()).map(|b| v4.bucket4(&keys, b)).collect(),
        v6: (0..v6.slots.len()).map(|b| v6.bucket6(&keys, b)).collect(),
        v4_bits: keys.v4_bits,
        v4_short: keys.v4_short,
        v6_bits: keys.v6_bits,
        entries: keys.entries,
        keys: (keys.v4.len(), keys.v6.len()),
    })
}

/// A fast, deterministic hasher for the build's own maps (keys are ours,
/// not an attacker's choice of collisions that matter: a slow build at
/// worst).
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;

    fn entry(tag: u32) -> PrefixEntry {
        let mut e = PrefixEntry::EMPTY;
        e.dst[0] = blocker_common::Candidate { slot: tag, rank: 1 };
        e
    }

    /// The longest prefix of `table` containing `addr`, by brute force.
    fn longest<const N: usize>(
        table: &[([u8; N], u8, PrefixEntry)],
        addr: u128,
        width: u32,
    ) -> Option<PrefixEntry> {
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

    fn v4_table() -> impl Strategy<Value = Vec<([u8; 4], u8, PrefixEntry)>> {
        prop::collection::btree_map((0u32..64, 12u8..=32), 0u32..5, 0..40).prop_map(|m| {
            m.into_iter()
                .map(|((host, len), tag)| {
                    let addr = 0xc000_0200u32 ^ (host << 3) ^ (host << 14);
                    let net = addr & (u32::MAX << (32 - u32::from(len)));
                    (net.to_be_bytes(), len, entry(tag + 1))
                })
                .collect()
        })
    }

    fn v6_table() -> impl Strategy<Value = Vec<([u8; 16], u8, PrefixEntry)>> {
        prop::collection::btree_map((0u128..64, 26u8..=128), 0u32..5, 0..40).prop_map(|m| {
            m.into_iter()
                .map(|((host, len), tag)| {
                    let addr = (0x2001_0db8u128 << 96) ^ host ^ (host << 70) ^ (host << 95);
                    let net = if len == 0 {
                        0
                    } else {
                        addr & (u128::MAX << (128 - u32::from(len)))
                    };
                    (net.to_be_bytes(), len, entry(tag + 1))
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
            let compiled = Compiled { v4: v4.clone(), v6: v6.clone(), ..Compiled::default() };
            let tables = build(&compiled, &Geometry::for_capacity(128)).unwrap();
            for host in probes4 {
                let addr = 0xc000_0200u32 ^ (host << 3) ^ (host << 14) ^ (host & 7);
                prop_assert_eq!(
                    tables.lookup(IpAddr::from(addr.to_be_bytes())),
                    longest(&v4, u128::from(addr), 32),
                    "IPv4 {:#x}", addr
                );
            }
            for host in probes6 {
                let addr = (0x2001_0db8u128 << 96) ^ host ^ (host << 70) ^ (host << 95) ^ (host & 3) << 40;
                prop_assert_eq!(
                    tables.lookup(IpAddr::from(addr.to_be_bytes())),
                    longest(&v6, addr, 128),
                    "IPv6 {:#x}", addr
                );
            }
        }
    }

    #[test]
    fn a_full_table_is_refused_by_name() {
        let v4 = (0u32..10_000)
            .map(|i| ((0x0a00_0000u32 + (i << 8)).to_be_bytes(), 24u8, entry(1)))
            .collect();
        let compiled = Compiled {
            v4,
            ..Compiled::default()
        };
        let err = build(&compiled, &Geometry::for_capacity(100)).unwrap_err();
        assert!(
            matches!(err, LayoutError::TableFull { family: "IPv4", .. }),
            "{err}"
        );
    }

    #[test]
    fn entries_are_shared() {
        let v4 = (0u32..1000)
            .map(|i| ((0x0a00_0000u32 + i).to_be_bytes(), 32u8, entry(7)))
            .collect();
        let compiled = Compiled {
            v4,
            ..Compiled::default()
        };
        let tables = build(&compiled, &Geometry::for_capacity(1000)).unwrap();
        assert_eq!(tables.entries.len(), 2);
        assert_eq!(tables.keys.0, 1000 + 4);
    }
}
