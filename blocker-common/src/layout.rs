//! The lookup tables and the one lookup algorithm that reads them: the XDP
//! program runs it on the maps, the controller on its own copy (to check
//! what it wrote, and in tests), so both agree by construction.
//!
//! Per family, a **bucket** is a fixed-length prefix: an IPv4 /24 or an
//! IPv6 /32. For an address:
//!
//! 1. One bit of the family's bitmap says whether its bucket holds any
//!    prefix (IPv4: the /24 indexes the bitmap; IPv6: a hash of the /32
//!    does). Clear: no prefix contains the address. Nearly every packet
//!    stops here, after one load from a 2 MiB array.
//! 2. The bucket's **descriptor** (the hash-table key of length
//!    [`V4_BUCKET_LEN`] / [`V6_BUCKET_LEN`]) holds the entry of the longest
//!    table prefix no longer than the bucket that covers it, and a mask of
//!    the longer prefix lengths present inside the bucket.
//! 3. For each of those longer lengths, longest first, the address masked
//!    to that length is looked up; the first hit is the longest match.
//!    Otherwise the descriptor's entry is. (An IPv4 descriptor also marks
//!    the /28s its longer prefixes touch: an address in another /28 skips
//!    this step.)
//!
//! An IPv4 /16 whose only prefixes are /32s (nothing shorter covers it,
//! nothing else lies inside) is marked in its [`Short4`]: an address there
//! skips step 2 and probes its own /32 alone ([`V4_ONLY_EXACT`]). A
//! descriptor whose bucket holds one longer prefix (and, for IPv4, no /24)
//! holds that prefix instead of its length ([`v4_lone`], [`v6_lone`]): an
//! address there skips step 3.
//!
//! IPv6 prefixes shorter than a bucket (/29../31) are expanded into every
//! bucket they cover. IPv4 has one more level instead, since its /16../23
//! would expand by up to 256: a direct array of /16s ([`Short4`]) holds the
//! entry of an exact /16 and a mask of the lengths /17../23 inside, which
//! are probed after the bucket's own lengths (or, when nothing covers the
//! /16 and it holds one prefix of /17../23, that prefix itself, answered
//! without a probe; when it holds two or more, a cover key per /20 they
//! touch, [`V4_COVERS`], probed once instead); an IPv4 descriptor's entry
//! is that of an exact /24 only (or its lone prefix's).
//!
//! The hash tables are two-choice, with [`SLOTS`] slots per bucket: a key
//! sits in one of the two buckets its hash names, so a lookup reads at most
//! two buckets, whatever the table's size.

/// Slots per hash bucket.
pub const SLOTS: usize = 4;
/// 64-bit words of each bitmap: one bit per bucket (2^24 bits, 2 MiB).
pub const BITMAP_WORDS: u32 = 1 << 18;
/// Prefix length of an IPv4 bucket.
pub const V4_BUCKET_LEN: u32 = 24;
/// Prefix length of an IPv6 bucket.
pub const V6_BUCKET_LEN: u32 = 32;
/// The IPv6 length probed, past the /128 and the /64, with a key of its own
/// (one mix) rather than as a probe step: a site's prefix, the third
/// common length of a target.
pub const V6_SITE_LEN: u32 = 48;
/// No entry: index 0 of the entries array is never used.
pub const NO_ENTRY: u32 = 0;

/// One IPv4 hash-table slot. `len == 0` marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot4 {
    /// The network, as a host-order integer, masked to `len`.
    pub net: u32,
    pub len: u32,
    /// Index into the entries array ([`NO_ENTRY`]: none).
    pub entry: u32,
    /// Descriptors only: bit `i` set when a prefix of length `32 - i`
    /// (25..=32) lies inside the bucket; bit `16 + k` when one of them
    /// touches the bucket's `k`th /28, and [`V4_GROUPS_MARKED`] when
    /// those bits are set ([`v4_inside`]).
    pub longer: u32,
}

impl Slot4 {
    /// `net` and `len` as one word, as [`Slot4::key`] reads them.
    #[inline(always)]
    pub const fn key_of(net: u32, len: u32) -> u64 {
        (len as u64) << 32 | net as u64
    }

    /// The slot's network and length as one word: a lookup compares one
    /// load, not two (the fields are adjacent, so the compiler reads
    /// both at once).
    #[inline(always)]
    pub const fn key(&self) -> u64 {
        Self::key_of(self.net, self.len)
    }
}

/// In an IPv4 descriptor's [`Slot4::longer`]: the /28 bits are marked. A
/// descriptor without it (tables laid out before they were) has every
/// /28 probed.
pub const V4_GROUPS_MARKED: u32 = 1 << 15;
/// Bit of the first /28 of a bucket in [`Slot4::longer`].
const V4_GROUP_SHIFT: u32 = 16;
/// In an IPv4 descriptor's [`Slot4::longer`]: no prefix of /17../23
/// covers the bucket, so its lookups probe none of those lengths (an
/// address there that matches nothing inside the bucket is answered by the
/// /16). A descriptor without it (tables laid out before it was) has its
/// /16's lengths probed.
pub const V4_NO_SHORT_COVER: u32 = 1 << 14;

/// The [`Slot4::longer`] bits a prefix `net`/`len` (25..=32) sets in its
/// bucket's descriptor: its length, the /28s it touches and
/// [`V4_GROUPS_MARKED`].
pub const fn v4_inside(net: u32, len: u32) -> u32 {
    1 << (32 - len) | v4_groups(net, len)
}

/// The [`Slot4::longer`] bits marking the /28s that prefix `net`/`len`
/// (25..=32) touches, and [`V4_GROUPS_MARKED`].
const fn v4_groups(net: u32, len: u32) -> u32 {
    let first = (net & 0xff) >> 4;
    let count = if len >= 28 { 1 } else { 1 << (28 - len) };
    ((1u32 << count) - 1) << (V4_GROUP_SHIFT + first) | V4_GROUPS_MARKED
}

/// In an IPv4 descriptor's [`Slot4::longer`]: the bucket holds no /24 and
/// one longer prefix, whose entry is the descriptor's ([`v4_lone`]).
pub const V4_LONE: u32 = 1 << 12;
/// Where a lone prefix's last four address bits sit in [`Slot4::longer`].
const V4_LONE_LOW_SHIFT: u32 = 8;

/// The [`Slot4::longer`] bits of a descriptor whose bucket holds no /24 and
/// one longer prefix, `net`/`len` (25..=32), with that prefix's entry as
/// the descriptor's: its length and /28s as [`v4_inside`] marks them,
/// [`V4_LONE`], and its last four address bits (bits 8..11, which nothing
/// else uses). An address there is answered by the descriptor, without a
/// probe: a server's address alone in its /24 is the common case. Tables
/// laid out before this was have the bit clear.
pub const fn v4_lone(net: u32, len: u32) -> u32 {
    v4_inside(net, len) | V4_LONE | (net & 0xf) << V4_LONE_LOW_SHIFT
}

/// For a descriptor marked [`V4_LONE`], whose /28 bits
/// ([`v4_group_may_hold`]) hold `addr`: whether its one prefix does. A
/// prefix of /25../28 is its /28s; a longer one must also match in the
/// last four bits it fixes (its length bit `b` is `1 << (32 - len)`, and
/// `16 - b` keeps those four bits: 0xf for a /32, 0 from /28 on).
#[inline(always)]
pub const fn v4_lone_holds(longer: u32, addr: u32) -> bool {
    let fixed = 0x10u32.wrapping_sub(longer & 0xff) & 0xf;
    (addr ^ (longer >> V4_LONE_LOW_SHIFT)) & fixed == 0
}

/// Whether a prefix longer than the bucket described by `longer` may hold
/// `addr`: nearly every address of a bucket with a few /32s inside is
/// answered here, without probing for them.
#[inline(always)]
pub const fn v4_group_may_hold(longer: u32, addr: u32) -> bool {
    longer & V4_GROUPS_MARKED == 0 || (longer >> (V4_GROUP_SHIFT + ((addr & 0xff) >> 4))) & 1 != 0
}

/// One IPv6 hash-table slot. `len == 0` marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot6 {
    /// The network's upper and lower 64 bits, host order, masked to `len`.
    pub hi: u64,
    pub lo: u64,
    pub len: u32,
    pub entry: u32,
    /// Descriptors only: bit `i` of `longer[0]` set when a prefix of length
    /// `128 - i` (65..=128) lies inside the bucket; bit `j` of `longer[1]`
    /// for length `64 - j` (33..=64). Or, when the bucket holds one such
    /// prefix, that prefix itself ([`v6_lone`]).
    pub longer: [u64; 2],
}

/// Where [`v6_lone`] puts the one prefix's entry and length in the upper
/// half of `longer[1]` (whose bits a length mask leaves clear).
const V6_LONE_ENTRY_BITS: u32 = 25;

/// The [`Slot6::longer`] of a descriptor whose bucket holds one prefix
/// longer than the bucket, `net`/`len` with `entry`: the prefix itself,
/// so that an address there is answered by the descriptor, without a probe
/// (a prefix alone in its /32 is the common case of a list of servers and
/// sites). `longer[0]` holds its lower half, `longer[1]` the lower 32 bits
/// of its upper half (the upper 32 are the bucket's) and, above them, its
/// entry and `len - 33`; the entry is never 0, so the upper half of
/// `longer[1]` is never clear, while a length mask's always is. `None`
/// when it does not fit (an entry of 2^25 or more): the mask serves.
/// Tables laid out before this was have masks only.
pub const fn v6_lone(net: u128, len: u32, entry: u32) -> Option<[u64; 2]> {
    if entry == NO_ENTRY || entry >= 1 << V6_LONE_ENTRY_BITS || len <= V6_BUCKET_LEN || len > 128 {
        return None;
    }
    let tag = ((len - V6_BUCKET_LEN - 1) << V6_LONE_ENTRY_BITS) | entry;
    Some([
        net as u64,
        (tag as u64) << 32 | ((net >> 64) as u64 & 0xffff_ffff),
    ])
}

/// For a descriptor of the bucket of `hi` that holds one prefix
/// ([`v6_lone`]): the answer for the address `hi:lo`, that prefix's entry
/// when it holds the address, else the descriptor's own. `None` for a
/// descriptor with a length mask.
#[inline(always)]
pub const fn v6_lone_answer(descriptor: &Slot6, hi: u64, lo: u64) -> Option<u32> {
    let [net_lo, lower] = descriptor.longer;
    let tag = (lower >> 32) as u32;
    if tag == 0 {
        return None;
    }
    let len = (tag >> V6_LONE_ENTRY_BITS) + V6_BUCKET_LEN + 1;
    // The bucket's bits are the address's own: compare the rest.
    let upper = (hi ^ lower) & 0xffff_ffff;
    let holds = if len <= 64 {
        upper >> (64 - len) == 0
    } else {
        upper == 0 && (lo ^ net_lo) >> (128 - len) == 0
    };
    Some(if holds {
        tag & ((1 << V6_LONE_ENTRY_BITS) - 1)
    } else {
        descriptor.entry
    })
}

/// One /16 of IPv4 space: the entry of the /16 prefix itself (or one
/// shorter that covers it) and, bit `23 - len`, the lengths 17..=23
/// present inside it; [`V4_ONLY_EXACT`] when the /32s are all there is.
///
/// A /16 that nothing covers and that holds exactly one prefix of /17../23
/// holds that prefix here instead: its entry as `entry`, its length in
/// bits 8..13 of `longer` and its address bits 9..16 in bits 13..20. An
/// address there is answered without probing for it (a rack's or a
/// datacenter's prefix alone in its /16 is the common case), and, when
/// nothing of /24 or longer lies inside that prefix ([`V4_INNER_ALONE`]),
/// without its bucket's descriptor either. Its key stays in the hash table
/// too. Tables laid out before this was have those bits clear, and are
/// read as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Short4 {
    pub entry: u32,
    pub longer: u32,
}

/// Where [`Short4::longer`] holds the length of the /16's one prefix of
/// /17../23 (0: none held) and that prefix's address bits 9..16.
const V4_INNER_LEN_SHIFT: u32 = 8;
const V4_INNER_BITS_SHIFT: u32 = 13;
/// In [`Short4::longer`]: no prefix of /24 or longer lies inside the /16's
/// one prefix of /17../23, so an address inside it has that as its answer.
pub const V4_INNER_ALONE: u32 = 1 << 20;
/// In [`Short4::longer`]: the /16 holds two or more prefixes of /17../23,
/// and each of its /20s that one of them covers or lies in has a **cover
/// key** in the hash table ([`V4_COVER_KEY`]). A lookup there probes its
/// /20's cover key once instead of each length the /16 lists (a
/// datacenter's /16 with racks of several lengths). Tables laid out before
/// this was have it clear, and are probed length by length.
pub const V4_COVERS: u32 = 1 << 21;
/// Prefix length of the /20 a cover key stands for.
pub const V4_COVER_LEN: u32 = 20;
/// The [`Slot4::len`] of a cover key: its /20's length with a bit no
/// prefix length has. Its `entry` is that of the longest prefix of
/// /17../20 over the /20 ([`NO_ENTRY`]: none), its `longer` has bit
/// `23 - len` for each length of /21../23 inside the /20.
pub const V4_COVER_KEY: u32 = 0x100 | V4_COVER_LEN;
/// In a cover key's `longer`: one prefix of /21../23 lies in the /20, and
/// the key holds it ([`v4_cover_lone`]).
pub const V4_COVER_LONE: u32 = 1 << 3;
const V4_COVER_LONE_BITS_SHIFT: u32 = 4;
const V4_COVER_LONE_ENTRY_SHIFT: u32 = 7;

/// A cover key's `longer` when one prefix of /21../23, `net`/`len` with
/// `entry`, lies in its /20: its length bit (`1 << (23 - len)`),
/// [`V4_COVER_LONE`], its address bits 9..11 and its entry above them, so
/// that an address there is answered by the key, without a probe. `None`
/// when the entry does not fit (2^25 or more): the length bit serves.
pub const fn v4_cover_lone(net: u32, len: u32, entry: u32) -> Option<u32> {
    if entry >= 1 << (32 - V4_COVER_LONE_ENTRY_SHIFT) || len <= V4_COVER_LEN || len >= 24 {
        return None;
    }
    Some(
        1 << (23 - len)
            | V4_COVER_LONE
            | ((net >> 9) & 0x7) << V4_COVER_LONE_BITS_SHIFT
            | entry << V4_COVER_LONE_ENTRY_SHIFT,
    )
}

/// What a cover key says of `addr` (in its /20): the entry of the longest
/// prefix of /17../23 over it that the key knows ([`NO_ENTRY`]: none),
/// and the lengths of /21../23 still to probe (bit `23 - len`).
#[inline(always)]
pub const fn v4_cover_key_read(key: &Slot4, addr: u32) -> (u32, u32) {
    let longer = key.longer;
    if longer & V4_COVER_LONE == 0 {
        return (key.entry, longer & 0x7);
    }
    // The bits of 9..11 the one prefix fixes: its length bit `b` is 1
    // (/23), 2 or 4 (/21), and `8 - b` keeps 3, 2 or 1 of them.
    let fixed = 8u32.wrapping_sub(longer & 0x7) & 0x7;
    if ((addr >> 9) ^ (longer >> V4_COVER_LONE_BITS_SHIFT)) & fixed == 0 {
        (longer >> V4_COVER_LONE_ENTRY_SHIFT, 0)
    } else {
        (key.entry, 0)
    }
}

impl Short4 {
    /// The /16 with `entry`, the lengths 17..=23 inside it (bit `23 - len`)
    /// and, when `only_exact`, [`V4_ONLY_EXACT`].
    pub const fn new(entry: u32, lengths: u32, only_exact: bool) -> Self {
        Self {
            entry,
            longer: lengths | if only_exact { V4_ONLY_EXACT } else { 0 },
        }
    }

    /// The /16 with the lengths 17..=23 inside it (bit `23 - len`), nothing
    /// over it, and `net`/`len` (17..=23), with `entry`, the one prefix of
    /// those lengths inside; `alone` when nothing of /24 or longer lies
    /// inside that.
    pub const fn with_inner(lengths: u32, net: u32, len: u32, entry: u32, alone: bool) -> Self {
        Self {
            entry,
            longer: lengths
                | len << V4_INNER_LEN_SHIFT
                | ((net >> 9) & 0x7f) << V4_INNER_BITS_SHIFT
                | if alone { V4_INNER_ALONE } else { 0 },
        }
    }

    /// This /16, marked [`V4_COVERS`].
    pub const fn with_covers(self) -> Self {
        Self {
            entry: self.entry,
            longer: self.longer | V4_COVERS,
        }
    }

    /// Whether the /16's /20s have cover keys ([`V4_COVERS`]).
    #[inline(always)]
    pub const fn covers(&self) -> bool {
        self.longer & V4_COVERS != 0
    }

    /// Bit `23 - len` for each length 17..=23 inside the /16.
    #[inline(always)]
    pub const fn lengths(&self) -> u32 {
        self.longer & 0x7f
    }

    /// Whether /32s are all the table holds over or inside the /16.
    #[inline(always)]
    pub const fn only_exact(&self) -> bool {
        self.longer & V4_ONLY_EXACT != 0
    }

    /// For `addr` in this /16: the entry of the longest prefix of /23 or
    /// shorter that holds it, as far as the /16 knows, and the lengths
    /// 17..=23 still to probe (none when it holds its one prefix of
    /// those: the answer is that prefix's entry or none).
    #[inline(always)]
    pub const fn cover(&self, addr: u32) -> (u32, u32) {
        let len = self.inner_len();
        if len == 0 {
            return (self.entry, self.lengths());
        }
        (
            if self.inner_holds(addr, len) {
                self.entry
            } else {
                NO_ENTRY
            },
            0,
        )
    }

    /// For `addr` in this /16: the entry of its one prefix of /17../23 when
    /// that holds `addr` and nothing longer lies inside it (the answer,
    /// without the bucket's descriptor).
    #[inline(always)]
    pub const fn alone(&self, addr: u32) -> Option<u32> {
        let len = self.inner_len();
        if self.longer & V4_INNER_ALONE != 0 && self.inner_holds(addr, len) {
            Some(self.entry)
        } else {
            None
        }
    }

    /// The length of the /16's one prefix of /17../23 held here, or 0.
    #[inline(always)]
    const fn inner_len(&self) -> u32 {
        (self.longer >> V4_INNER_LEN_SHIFT) & 0x1f
    }

    /// Whether the /16's one prefix of /17../23, of length `len`, holds
    /// `addr` (an address in the /16).
    #[inline(always)]
    const fn inner_holds(&self, addr: u32, len: u32) -> bool {
        let inner = ((self.longer >> V4_INNER_BITS_SHIFT) & 0x7f) << 9;
        // 17..=23: the shift is in range.
        ((addr & 0xffff) ^ inner) >> ((32 - len) & 31) == 0
    }
}

/// In [`Short4::longer`]: the only prefixes of the table that cover the
/// /16 or lie inside it are /32s. An address there is its own /32 or nothing, so it
/// is looked up with one probe, without its bucket's descriptor (a list of
/// exact addresses, as a server-rung order names them, is all this way).
/// Tables laid out before this bit was have it clear: a /16 without it is
/// looked up the long way, which is right for every /16.
pub const V4_ONLY_EXACT: u32 = 1 << 31;

/// Prefix length of the IPv4 [`Short4`] level.
pub const V4_SHORT_LEN: u32 = 16;
/// Entries of the [`Short4`] array.
pub const V4_SHORTS: u32 = 1 << V4_SHORT_LEN;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket4 {
    pub slots: [Slot4; SLOTS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket6 {
    pub slots: [Slot6; SLOTS],
}

/// Read access to step 1's bitmaps.
pub trait Bitmaps {
    /// Word `index` of the IPv4 bitmap (0 when out of range).
    fn v4_bits(&self, index: u32) -> u64;
    fn v6_bits(&self, index: u32) -> u64;
}

/// Read access to one generation's hash tables and /16s (its bitmaps are
/// [`Bitmaps`]: the program reads another, the union of both generations').
pub trait Tables {
    fn v4_bucket(&self, index: u32) -> Option<&Bucket4>;
    fn v6_bucket(&self, index: u32) -> Option<&Bucket6>;
    /// The /16 `index` (a default one when out of range).
    fn v4_short(&self, index: u32) -> Short4;
}

/// How a generation's hash tables are addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub v4_seed: u32,
    pub v6_seed: u32,
    pub v4_buckets: u32,
    pub v6_buckets: u32,
    /// [`hash6_len`] of the IPv6 bucket length, of /64 and of /48 with
    /// `v6_seed`: the IPv6 keys a lookup past step 1 hashes outside its
    /// probe steps have a zero lower half, so each is hashed with one mix,
    /// not two.
    pub v6_len_keys: [u64; 3],
}

impl Shape {
    /// The shape of tables with these seeds and sizes.
    pub const fn new(v4_seed: u32, v6_seed: u32, v4_buckets: u32, v6_buckets: u32) -> Self {
        Self {
            v4_seed,
            v6_seed,
            v4_buckets,
            v6_buckets,
            v6_len_keys: v6_len_keys(v6_seed),
        }
    }
}

/// [`Shape::v6_len_keys`] for `seed`.
pub const fn v6_len_keys(seed: u32) -> [u64; 3] {
    [
        hash6_len(V6_BUCKET_LEN, seed),
        hash6_len(64, seed),
        hash6_len(V6_SITE_LEN, seed),
    ]
}

/// The bitmap bit of an IPv4 address's bucket.
#[inline(always)]
pub const fn v4_bit(addr: u32) -> u32 {
    addr >> (32 - V4_BUCKET_LEN)
}

/// The bitmap bit of an IPv6 address's bucket (a hash of its /32).
#[inline(always)]
pub const fn v6_bit(hi: u64) -> u32 {
    ((hi >> 32).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as u32
}

#[inline(always)]
const fn bit_set(word: u64, bit: u32) -> bool {
    (word >> (bit & 63)) & 1 != 0
}

/// murmur3's 64-bit finaliser.
#[inline(always)]
const fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline(always)]
pub const fn hash4(net: u32, len: u32, seed: u32) -> u64 {
    mix(((len as u64) << 32 | net as u64) ^ (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[inline(always)]
pub const fn hash6(hi: u64, lo: u64, len: u32, seed: u32) -> u64 {
    mix(hi ^ mix(lo ^ ((seed as u64) << 32 | len as u64)))
}

/// What [`hash6`] mixes a key's lower half into, for a lower half of zero.
pub const fn hash6_len(len: u32, seed: u32) -> u64 {
    mix((seed as u64) << 32 | len as u64)
}

/// [`hash6`] of `hi` with a zero lower half, given the [`hash6_len`] of
/// its length and seed.
#[inline(always)]
pub const fn hash6_upper(hi: u64, len_key: u64) -> u64 {
    mix(hi ^ len_key)
}

/// The two buckets a hash names, out of `buckets`.
#[inline(always)]
pub const fn choices(hash: u64, buckets: u32) -> [u32; 2] {
    let n = buckets as u64;
    [
        (((hash >> 32) * n) >> 32) as u32,
        (((hash & 0xffff_ffff) * n) >> 32) as u32,
    ]
}

/// Number of set bits (branch-free: the verifier sees one path).
#[inline(always)]
const fn popcount(mut x: u64) -> u32 {
    x -= (x >> 1) & 0x5555_5555_5555_5555;
    x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

/// Index of the lowest set bit of a non-zero `x`.
#[inline(always)]
const fn lowest(x: u64) -> u32 {
    popcount((x & x.wrapping_neg()).wrapping_sub(1))
}

#[inline(always)]
fn find4<T: Tables>(tables: &T, shape: &Shape, net: u32, len: u32) -> Option<Slot4> {
    let hash = hash4(net, len, shape.v4_seed);
    let key = Slot4::key_of(net, len);
    for index in choices(hash, shape.v4_buckets) {
        if let Some(bucket) = tables.v4_bucket(index) {
            for slot in &bucket.slots {
                if slot.key() == key {
                    return Some(*slot);
                }
            }
        }
    }
    None
}

#[inline(always)]
fn find6<T: Tables>(tables: &T, shape: &Shape, hi: u64, lo: u64, len: u32) -> Option<Slot6> {
    find6_hashed(
        tables,
        shape,
        hash6(hi, lo, len, shape.v6_seed),
        hi,
        lo,
        len,
    )
}

/// [`find6`] with the key's hash already computed.
#[inline(always)]
fn find6_hashed<T: Tables>(
    tables: &T,
    shape: &Shape,
    hash: u64,
    hi: u64,
    lo: u64,
    len: u32,
) -> Option<Slot6> {
    for index in choices(hash, shape.v6_buckets) {
        if let Some(bucket) = tables.v6_bucket(index) {
            for slot in &bucket.slots {
                if slot.len == len && slot.hi == hi && slot.lo == lo {
                    return Some(*slot);
                }
            }
        }
    }
    None
}

/// Longer prefix lengths left to try for an IPv4 address, and the answer
/// so far (the descriptor's entry, until a longer prefix matches).
#[derive(Clone, Copy, Debug)]
pub struct Probe4 {
    pub addr: u32,
    /// Bit `32 - len` for each length still to try (17..=32); the /24 is
    /// the descriptor's own entry, not a probe.
    pub longer: u64,
    pub exact24: u32,
    pub entry: u32,
}

/// As [`Probe4`], for an IPv6 address.
#[derive(Clone, Copy, Debug)]
pub struct Probe6 {
    pub hi: u64,
    pub lo: u64,
    pub longer: [u64; 2],
    pub entry: u32,
}

/// Lengths an IPv4 lookup may try (17..=32).
pub const V4_STEPS: u32 = 32 - V4_SHORT_LEN;
/// Longer lengths an IPv6 lookup may try (33..=128).
pub const V6_STEPS: u32 = 128 - V6_BUCKET_LEN;

/// Step 1 for an IPv4 address (host order): whether its bucket's bit is
/// set. Clear: no prefix contains the address.
#[inline(always)]
pub fn v4_marked<B: Bitmaps>(bits: &B, addr: u32) -> bool {
    let bit = v4_bit(addr);
    bit_set(bits.v4_bits(bit >> 6), bit)
}

/// Step 1 for an IPv6 address with upper half `hi`.
#[inline(always)]
pub fn v6_marked<B: Bitmaps>(bits: &B, hi: u64) -> bool {
    let bit = v6_bit(hi);
    bit_set(bits.v6_bits(bit >> 6), bit)
}

/// Steps 1 and 2 for an IPv4 address (host order): `Err(entry)` when the
/// answer is known, else the lengths to try ([`Probe`]).
#[inline(always)]
pub fn start_v4<T: Tables + Bitmaps>(tables: &T, shape: &Shape, addr: u32) -> Result<Probe4, u32> {
    if !v4_marked(tables, addr) {
        return Err(NO_ENTRY);
    }
    start_v4_marked(tables, shape, addr)
}

/// Step 2 for an IPv4 address whose bucket's bit is set.
#[inline(always)]
pub fn start_v4_marked<T: Tables>(tables: &T, shape: &Shape, addr: u32) -> Result<Probe4, u32> {
    // The /16 is read before the descriptor, whose probe it does not
    // depend on: in a big table both are cache misses, and this way they
    // overlap (IPv4 varied misses at 1M: 45 to 42 ns).
    let short = tables.v4_short(addr >> (32 - V4_SHORT_LEN));
    if short.only_exact() {
        return Err(find4(tables, shape, addr, 32).map_or(NO_ENTRY, |s| s.entry));
    }
    if let Some(entry) = short.alone(addr) {
        // Its /16's one prefix of /17../23, with nothing inside.
        return Err(entry);
    }
    let bucket_mask = u32::MAX << (32 - V4_BUCKET_LEN);
    let (exact24, in_bucket, short_cover) =
        match find4(tables, shape, addr & bucket_mask, V4_BUCKET_LEN) {
            Some(descriptor) if descriptor.longer & V4_LONE != 0 => {
                if v4_group_may_hold(descriptor.longer, addr)
                    && v4_lone_holds(descriptor.longer, addr)
                {
                    return Err(descriptor.entry);
                }
                // Its entry is the lone prefix's: the bucket has no /24.
                (NO_ENTRY, 0, descriptor.longer & V4_NO_SHORT_COVER == 0)
            }
            Some(descriptor) if v4_group_may_hold(descriptor.longer, addr) => {
                if descriptor.longer & 1 != 0 {
                    // A /32 is the longest match there is.
                    if let Some(slot) = find4(tables, shape, addr, 32) {
                        return Err(slot.entry);
                    }
                }
                (
                    descriptor.entry,
                    u64::from(descriptor.longer & 0xfe),
                    descriptor.longer & V4_NO_SHORT_COVER == 0,
                )
            }
            Some(descriptor) => (
                descriptor.entry,
                0,
                descriptor.longer & V4_NO_SHORT_COVER == 0,
            ),
            None => (NO_ENTRY, 0, true),
        };
    if exact24 != NO_ENTRY && in_bucket == 0 {
        // Nothing longer matches inside the bucket, and every length the
        // /16 lists is shorter: the /24 itself is the answer (a rack's
        // /24, the common case, without a probe step).
        return Err(exact24);
    }
    let at24 = if exact24 == NO_ENTRY {
        0
    } else {
        1 << (32 - V4_BUCKET_LEN)
    };
    let (mut cover, lengths) = short.cover(addr);
    // Lengths of /17../23 only where one may cover the bucket.
    let mut lengths = if short_cover { lengths } else { 0 };
    if lengths != 0 && short.covers() {
        // The /20's cover key: the /17../20 over it, the /21../23 inside.
        let at = addr & (u32::MAX << (32 - V4_COVER_LEN));
        lengths = match find4(tables, shape, at, V4_COVER_KEY) {
            Some(key) => {
                let (entry, lengths) = v4_cover_key_read(&key, addr);
                if entry != NO_ENTRY {
                    cover = entry;
                }
                lengths
            }
            None => 0,
        };
    }
    let longer = in_bucket | at24 | (u64::from(lengths) << (32 - V4_BUCKET_LEN + 1));
    if longer == 0 {
        return Err(cover);
    }
    Ok(Probe4 {
        addr,
        longer,
        exact24,
        entry: cover,
    })
}

/// Steps 1 and 2 for the IPv6 address `hi:lo` (host order).
#[inline(always)]
pub fn start_v6<T: Tables + Bitmaps>(
    tables: &T,
    shape: &Shape,
    hi: u64,
    lo: u64,
) -> Result<Probe6, u32> {
    if !v6_marked(tables, hi) {
        return Err(NO_ENTRY);
    }
    start_v6_marked(tables, shape, hi, lo)
}

/// Step 2 for the IPv6 address `hi:lo` whose bucket's bit is set.
#[inline(always)]
pub fn start_v6_marked<T: Tables>(
    tables: &T,
    shape: &Shape,
    hi: u64,
    lo: u64,
) -> Result<Probe6, u32> {
    // The /128 is hashed from the address alone while the descriptor is
    // fetched (IPv6's two-mix hash is worth starting early), and so is the
    // /64, the other common length of a target.
    let exact = hash6(hi, lo, 128, shape.v6_seed);
    let [bucket_key, subnet_key, site_key] = shape.v6_len_keys;
    let subnet = hash6_upper(hi, subnet_key);
    let bucket = hi & (u64::MAX << (64 - V6_BUCKET_LEN));
    let Some(descriptor) = find6_hashed(
        tables,
        shape,
        hash6_upper(bucket, bucket_key),
        bucket,
        0,
        V6_BUCKET_LEN,
    ) else {
        return Err(NO_ENTRY);
    };
    if let Some(entry) = v6_lone_answer(&descriptor, hi, lo) {
        return Err(entry);
    }
    let [mut low_half, mut high_half] = descriptor.longer;
    if low_half & 1 != 0 {
        if let Some(slot) = find6_hashed(tables, shape, exact, hi, lo, 128) {
            return Err(slot.entry);
        }
        low_half &= !1;
    }
    // The /64, when it is the longest length left.
    if low_half == 0 && high_half & 1 != 0 {
        if let Some(slot) = find6_hashed(tables, shape, subnet, hi, 0, 64) {
            return Err(slot.entry);
        }
        high_half &= !1;
    }
    // The /48, when it is the longest length left (bit `64 - len`): hashed
    // with its key, one mix, not as a probe step (two, and the step's
    // bookkeeping).
    const SITE: u64 = 1 << (64 - V6_SITE_LEN);
    if low_half == 0 && high_half & (SITE | (SITE - 1)) == SITE {
        let site_hi = hi & (u64::MAX << (64 - V6_SITE_LEN));
        let site = hash6_upper(site_hi, site_key);
        if let Some(slot) = find6_hashed(tables, shape, site, site_hi, 0, V6_SITE_LEN) {
            return Err(slot.entry);
        }
        high_half &= !SITE;
    }
    if low_half == 0 && high_half == 0 {
        return Err(descriptor.entry);
    }
    Ok(Probe6 {
        hi,
        lo,
        longer: [low_half, high_half],
        entry: descriptor.entry,
    })
}

/// A lookup past its descriptor: the longer lengths left to try, longest
/// first, and the answer so far.
pub trait Probe: Copy {
    /// The most lengths a lookup may try.
    const STEPS: u32;
    /// Tries the longest length left; true when [`Probe::entry`] is the
    /// answer.
    fn step<T: Tables>(&mut self, tables: &T, shape: &Shape) -> bool;
    fn entry(&self) -> u32;
}

impl Probe for Probe4 {
    const STEPS: u32 = V4_STEPS;

    #[inline(always)]
    fn step<T: Tables>(&mut self, tables: &T, shape: &Shape) -> bool {
        if self.longer == 0 {
            return true;
        }
        let i = lowest(self.longer) & 31;
        self.longer &= self.longer - 1;
        if i == 32 - V4_BUCKET_LEN {
            self.entry = self.exact24;
            return true;
        }
        if let Some(slot) = find4(tables, shape, self.addr & (u32::MAX << i), 32 - i) {
            self.entry = slot.entry;
            return true;
        }
        self.longer == 0
    }

    #[inline(always)]
    fn entry(&self) -> u32 {
        self.entry
    }
}

impl Probe for Probe6 {
    const STEPS: u32 = V6_STEPS;

    #[inline(always)]
    fn step<T: Tables>(&mut self, tables: &T, shape: &Shape) -> bool {
        let [low_half, high_half] = self.longer;
        let (net_hi, net_lo, len) = if low_half != 0 {
            let i = lowest(low_half) & 63;
            self.longer[0] = low_half & (low_half - 1);
            (self.hi, self.lo & (u64::MAX << i), 128 - i)
        } else if high_half != 0 {
            let j = lowest(high_half) & 63;
            self.longer[1] = high_half & (high_half - 1);
            (self.hi & (u64::MAX << j), 0, 64 - j)
        } else {
            return true;
        };
        if let Some(slot) = find6(tables, shape, net_hi, net_lo, len) {
            self.entry = slot.entry;
            return true;
        }
        self.longer == [0, 0]
    }

    #[inline(always)]
    fn entry(&self) -> u32 {
        self.entry
    }
}

/// Step 3 to the end: every length left until one matches.
#[inline(always)]
pub fn finish<T: Tables, P: Probe>(tables: &T, shape: &Shape, start: Result<P, u32>) -> u32 {
    match start {
        Err(entry) => entry,
        Ok(mut probe) => {
            for _ in 0..P::STEPS {
                if probe.step(tables, shape) {
                    break;
                }
            }
            probe.entry()
        }
    }
}

/// The entry index of the longest table prefix containing `addr`, or
/// [`NO_ENTRY`].
pub fn lookup<T: Tables + Bitmaps>(tables: &T, shape: &Shape, addr: core::net::IpAddr) -> u32 {
    match addr {
        core::net::IpAddr::V4(a) => finish(tables, shape, start_v4(tables, shape, u32::from(a))),
        core::net::IpAddr::V6(a) => {
            let bits = u128::from(a);
            finish(
                tables,
                shape,
                start_v6(tables, shape, (bits >> 64) as u64, bits as u64),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_marks_the_28s_its_longer_prefixes_touch() {
        let bucket = 0xc000_0200;
        // A /32 at .77 (the fifth /28), a /25 over the upper half.
        let longer = v4_groups(bucket | 77, 32) | v4_groups(bucket | 128, 25);
        for host in 0..=255u32 {
            let marked = (64..80).contains(&host) || host >= 128;
            assert_eq!(
                v4_group_may_hold(longer, bucket | host),
                marked,
                "host .{host}"
            );
        }
        // Tables laid out before the /28s were marked: every host probed.
        assert!((0..=255).all(|host| v4_group_may_hold(1, bucket | host)));
    }

    #[test]
    fn an_upper_half_hashes_as_a_whole_key_with_a_zero_lower_half() {
        for (hi, seed) in [(0, 0), (0x2001_0db8_0000_0000, 7), (u64::MAX, u32::MAX)] {
            let keys = v6_len_keys(seed);
            assert_eq!(hash6_upper(hi, keys[0]), hash6(hi, 0, V6_BUCKET_LEN, seed));
            assert_eq!(hash6_upper(hi, keys[1]), hash6(hi, 0, 64, seed));
            assert_eq!(hash6_upper(hi, keys[2]), hash6(hi, 0, V6_SITE_LEN, seed));
        }
    }

    #[test]
    fn lowest_bit_index() {
        for i in 0..64 {
            assert_eq!(lowest(1 << i), i);
            assert_eq!(lowest((1 << i) | (1 << 63)), i);
        }
    }
}
