//! The compiler: orders in force → lookup-table entries. Pure: no kernel,
//! no clock.
//!
//! The table holds every target prefix of every order given (in force or
//! pending). Each entry carries, per direction (dst, src), the orders whose
//! target covers the prefix (the prefix itself and its ancestors), best
//! first: drop before monitor, longer target, smaller order id. An LPM
//! lookup returns the longest table prefix containing an address, and every
//! other table prefix containing it is an ancestor, so the datapath only has
//! to take the first candidate within its time window on each side and
//! combine the two (see `blocker-ebpf`'s `decide`; [`simulate`] does the
//! same in plain Rust).

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{BuildHasher as _, BuildHasherDefault},
    net::IpAddr,
    sync::Arc,
};

use blocker_common::{CANDIDATES, Candidate, MAX_ORDERS, PrefixEntry, RANK_DROP, RANK_NO_WINDOW};
use hashbrown::{HashTable, hash_table};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    bits::Bits,
    fasthash::{FastHasher, FastMap},
    feed::{Action, Edits, Order},
    gallop,
};

/// `enforcement:` in the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Drop orders drop.
    #[default]
    Enforce,
    /// Every order acts as monitor: counted, let through.
    Observe,
}

impl Enforcement {
    /// The action an order takes under this enforcement mode.
    pub fn effective(self, action: Action) -> Action {
        match self {
            Enforcement::Enforce => action,
            Enforcement::Observe => Action::Monitor,
        }
    }
}

/// Stable order id → counter slot assignment. Shared, not copied: the
/// next compile's table is most often this one, and cloning it, comparing
/// it with its clone or telling the slots it hands out afresh costs no
/// walk over ten thousand ids then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotTable {
    slots: Arc<BTreeMap<String, u32>>,
}

impl SlotTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, id: &str) -> Option<u32> {
        self.slots.get(id).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.slots.iter().map(|(id, &slot)| (id.as_str(), slot))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The table for exactly `ids`, and each id's slot, in `ids`' order:
    /// known ids keep their slot; new ids, in id order, get the lowest slot
    /// nobody held before (so a slot just released is not handed on while
    /// the live table may still count into it), else the lowest free one.
    fn reassign(&self, ids: &[&str]) -> Result<(Self, Vec<u32>), CompileError> {
        // The same orders in the table's order (a feed sorted by id, as it
        // changes from one serial to the next): one pass of comparisons.
        if ids
            .iter()
            .copied()
            .eq(self.slots.keys().map(String::as_str))
        {
            return Ok((self.clone(), self.slots.values().copied().collect()));
        }
        // Else the ids in id order (a sorted feed's are already), matched
        // against the table's in one pass: no search for each.
        let mut by_id: Vec<usize> = (0..ids.len()).collect();
        by_id.sort_unstable_by_key(|&i| ids[i]);
        // Every kept slot is taken before any new id is given one.
        let mut known = self.slots.iter().peekable();
        let mut matched: Vec<Option<u32>> = Vec::with_capacity(ids.len());
        let mut taken = Bits::new(MAX_ORDERS as usize);
        for &i in &by_id {
            while known.next_if(|(old, _)| old.as_str() < ids[i]).is_some() {}
            let kept = known
                .peek()
                .filter(|(old, _)| *old == ids[i])
                .map(|(_, slot)| **slot);
            if let Some(slot) = kept {
                taken.insert(slot as usize);
            }
            matched.push(kept);
        }
        let mut previously = Bits::new(MAX_ORDERS as usize);
        self.slots
            .values()
            .for_each(|&slot| previously.insert(slot as usize));
        let mut fresh = (0..MAX_ORDERS).filter(|&s| !previously.contains(s as usize));
        // Slots are only taken here, never given back, so the lowest free
        // one only rises: one pass over the slots serves every new id,
        // where a search from slot 0 for each took seconds for a thousand
        // new orders in a table near full.
        let mut lowest = 0..MAX_ORDERS;
        let mut slots = vec![0; ids.len()];
        // Built a key at a time, in order, not collected from a list: a
        // list of a big feed's ids is big enough that glibc maps it, and
        // freeing it raises the size it maps from on, which left the
        // daemon's peak 3 MB higher.
        let mut table = BTreeMap::new();
        for (k, &i) in by_id.iter().enumerate() {
            // The same id again (a feed's ids are distinct): the same slot.
            let again = k > 0 && ids[by_id[k - 1]] == ids[i];
            let slot = match matched[k] {
                Some(slot) => slot,
                None if again => slots[by_id[k - 1]],
                None => {
                    let slot = fresh
                        .next()
                        .or_else(|| lowest.find(|&s| !taken.contains(s as usize)))
                        .ok_or(CompileError::TooManyOrders { max: MAX_ORDERS })?;
                    taken.insert(slot as usize);
                    slot
                }
            };
            slots[i] = slot;
            if !again {
                table.insert(ids[i].to_owned(), slot);
            }
        }
        Ok((
            Self {
                slots: Arc::new(table),
            },
            slots,
        ))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("more than {max} orders in force at once; the datapath has {max} counter slots")]
    TooManyOrders { max: u32 },
}

/// One order as compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledOrder {
    pub id: String,
    pub slot: u32,
    /// The effective action (monitor under `enforcement: observe`).
    pub action: Action,
    /// Its target prefixes.
    pub prefixes: u32,
    /// The window the datapath enforces it in (open where `None`).
    pub effective_from: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
}

/// Everything the datapath needs for one feed at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// (network address, prefix length, index into `entries`), sorted.
    pub v4: Vec<([u8; 4], u8, u32)>,
    pub v6: Vec<([u8; 16], u8, u32)>,
    /// The distinct entries (prefixes with the same candidates share
    /// one; a million prefixes of ten thousand orders need a few thousand).
    /// Index 0 is [`PrefixEntry::EMPTY`], no prefix's.
    pub entries: Vec<PrefixEntry>,
    pub slots: SlotTable,
    pub orders: Vec<CompiledOrder>,
    /// Candidates cut because more than `CANDIDATES` orders covered one
    /// prefix in one direction (the lowest-ranked are cut).
    pub overflow: usize,
}

impl Default for Compiled {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
            entries: vec![PrefixEntry::EMPTY],
            slots: SlotTable::default(),
            orders: Vec::new(),
            overflow: 0,
        }
    }
}

impl Compiled {
    /// The entry at `index` (of a prefix in `v4` or `v6`).
    pub fn entry(&self, index: u32) -> &PrefixEntry {
        &self.entries[index as usize]
    }

    /// Slots that an order id holds now and did not in `previous`: their
    /// counters must be zeroed before the apply, so a reused slot does not
    /// inherit another order's counts.
    pub fn fresh_slots(&self, previous: &SlotTable) -> Vec<u32> {
        if Arc::ptr_eq(&self.slots.slots, &previous.slots) {
            return Vec::new();
        }
        self.orders
            .iter()
            .filter(|order| previous.get(&order.id) != Some(order.slot))
            .map(|order| order.slot)
            .collect()
    }
}

/// One order's claim on a prefix, for one direction.
#[derive(Clone, Copy)]
struct Claim<'a> {
    rank: u32,
    id: &'a str,
    slot: u32,
    from: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
}

impl Claim<'_> {
    fn in_window(&self, at: OffsetDateTime) -> bool {
        self.from.is_none_or(|from| from <= at) && self.until.is_none_or(|until| at < until)
    }
}

/// Best first: higher rank (drop, then longer target), then smaller id.
fn claim_order(a: &Claim<'_>, b: &Claim<'_>) -> std::cmp::Ordering {
    b.rank.cmp(&a.rank).then_with(|| a.id.cmp(b.id))
}

/// Candidates of one direction after [`normalise`]: at most [`CANDIDATES`],
/// best first, one per order. Fixed size: resolving a prefix allocates
/// nothing.
#[derive(Clone, Copy)]
struct Top<'a> {
    len: usize,
    claims: [Claim<'a>; CANDIDATES],
}

impl<'a> Top<'a> {
    const EMPTY: Self = Self {
        len: 0,
        claims: [Claim {
            rank: 0,
            id: "",
            slot: blocker_common::NO_SLOT,
            from: None,
            until: None,
        }; CANDIDATES],
    };

    fn as_slice(&self) -> &[Claim<'a>] {
        &self.claims[..self.len]
    }
}

/// Candidates per direction: [dst, src].
type Resolved<'a> = [Top<'a>; 2];

/// Sorts, keeps each order's best claim and, when more than
/// [`CANDIDATES`] remain, only those that win at some instant: between any
/// two window boundaries the datapath picks the first claim in its window,
/// so the claims that are first somewhere are all it ever needs. Returns how
/// many claims that still leaves out (their orders lose this prefix).
fn normalise(claims: &mut Vec<Claim<'_>>) -> usize {
    if claims.len() <= 1 {
        return 0;
    }
    claims.sort_by(claim_order);
    if claims.len() <= CANDIDATES * 2 {
        // Few claims (nearly always): drop repeats of an order by scanning.
        let mut kept = 0;
        for i in 0..claims.len() {
            if !claims[..kept].iter().any(|c| c.id == claims[i].id) {
                claims.swap(kept, i);
                kept += 1;
            }
        }
        claims.truncate(kept);
    } else {
        let mut seen = BTreeSet::new();
        claims.retain(|c| seen.insert(c.id));
    }
    if claims.len() > CANDIDATES {
        let bounds: BTreeSet<OffsetDateTime> = claims
            .iter()
            .flat_map(|c| [c.from, c.until])
            .flatten()
            .collect();
        let mut instants: Vec<OffsetDateTime> = bounds.iter().copied().collect();
        if let Some(first) = bounds.first() {
            instants.push(*first - time::Duration::nanoseconds(1));
        } else {
            instants.push(OffsetDateTime::UNIX_EPOCH);
        }
        let winners: BTreeSet<&str> = instants
            .iter()
            .filter_map(|&at| claims.iter().find(|c| c.in_window(at)).map(|c| c.id))
            .collect();
        claims.retain(|c| winners.contains(c.id));
    }
    let cut = claims.len().saturating_sub(CANDIDATES);
    claims.truncate(CANDIDATES);
    cut
}

fn to_entry(resolved: &Resolved<'_>) -> PrefixEntry {
    let mut entry = PrefixEntry::EMPTY;
    for (out, top) in [&mut entry.dst, &mut entry.src].into_iter().zip(resolved) {
        for (slot, claim) in out.iter_mut().zip(top.as_slice()) {
            let windowless = claim.from.is_none() && claim.until.is_none();
            *slot = Candidate {
                slot: claim.slot,
                rank: claim.rank | if windowless { RANK_NO_WINDOW } else { 0 },
            };
        }
    }
    entry
}

/// A prefix in sortable form: address bits left-aligned in 128, high half
/// first (two u64s, not a u128: 24 bytes, not 32, and a million are sorted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    hi: u64,
    lo: u64,
    len: u8,
}

impl Key {
    fn new(bits: u128, len: u8) -> Self {
        Self {
            hi: (bits >> 64) as u64,
            lo: bits as u64,
            len,
        }
    }

    fn bits(&self) -> u128 {
        u128::from(self.hi) << 64 | u128::from(self.lo)
    }

    /// This key cut to `len` bits (no longer than it is).
    fn masked(&self, len: u8) -> Key {
        let len = len.min(self.len);
        Key::new(self.bits() & mask(len), len)
    }

    /// The last address inside this prefix.
    fn last(&self) -> u128 {
        self.bits() | !mask(self.len)
    }

    fn contains(&self, other: &Key) -> bool {
        if self.len > other.len {
            return false;
        }
        let mask = if self.len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.len))
        };
        self.bits() & mask == other.bits() & mask
    }
}

/// The top `len` bits.
fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

fn key_of(prefix: &IpNetwork) -> Key {
    match prefix {
        IpNetwork::V4(p) => Key::new(u128::from(u32::from(p.network())) << 96, p.prefix()),
        IpNetwork::V6(p) => Key::new(u128::from(p.network()), p.prefix()),
    }
}

/// An order, as its claims on its targets need it.
#[derive(Clone, Copy, Default)]
struct Claimant<'a> {
    drop_bit: u32,
    id: &'a str,
    slot: u32,
    from: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
}

/// Bits of a [`Row`]'s tag: the order covers destinations, sources.
const DST: u32 = 1;
const SRC: u32 = 2;

/// One target of one order: its prefix and `slot << 2 | DST | SRC`. Sorted
/// (by prefix, then tag), a prefix's claims are adjacent and its ancestors
/// come before it. Flat, 24 bytes: a million are sorted and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    hi: u64,
    lo: u64,
    len: u8,
    tag: u32,
}

impl Row {
    fn new(key: Key, tag: u32) -> Self {
        Self {
            hi: key.hi,
            lo: key.lo,
            len: key.len,
            tag,
        }
    }

    fn key(&self) -> Key {
        Key {
            hi: self.hi,
            lo: self.lo,
            len: self.len,
        }
    }
}

/// Deduplicates entries; index 0 is [`PrefixEntry::EMPTY`]. The index
/// holds positions in the list, not entries again (4 bytes each, not 68).
/// Positions in `free` (no prefix uses their entry, and the index does not
/// hold them) are taken for new entries before the list grows.
#[derive(Default)]
struct Entries {
    list: Vec<PrefixEntry>,
    index: HashTable<u32>,
    free: Vec<u32>,
}

impl Entries {
    fn new() -> Self {
        Self {
            list: vec![PrefixEntry::EMPTY],
            ..Self::default()
        }
    }

    /// An index over `list` as it is (its first of equal entries), with
    /// room to grow by half: growing the index rehashes every entry, a
    /// cache miss each.
    fn over(mut list: Vec<PrefixEntry>) -> Self {
        let room = list.len() / 2 + 1024;
        list.reserve(room);
        let mut entries = Self {
            index: HashTable::with_capacity(list.len() + room),
            list,
            ..Self::default()
        };
        for i in 1..entries.list.len() {
            let _ = entries.position(entries.list[i], Some(i as u32));
        }
        entries
    }

    /// The position of `entry`; when absent, `new` (or a free position, or
    /// the end of the list, where it is put) is recorded as its position.
    fn position(&mut self, entry: PrefixEntry, new: Option<u32>) -> u32 {
        let hasher = BuildHasherDefault::<FastHasher>::default();
        let list = &mut self.list;
        let free = &mut self.free;
        let found = self.index.entry(
            hasher.hash_one(entry),
            |&i| list[i as usize] == entry,
            |&i| hasher.hash_one(list[i as usize]),
        );
        match found {
            hash_table::Entry::Occupied(at) => *at.get(),
            hash_table::Entry::Vacant(at) => {
                let index = new.unwrap_or_else(|| match free.pop() {
                    Some(i) => {
                        list[i as usize] = entry;
                        i
                    }
                    None => {
                        list.push(entry);
                        u32::try_from(list.len() - 1).unwrap_or(u32::MAX)
                    }
                });
                at.insert(index);
                index
            }
        }
    }
}

/// Where resolved entries get their index.
trait Intern {
    fn intern(&mut self, entry: PrefixEntry) -> u32;
}

impl Intern for Entries {
    fn intern(&mut self, entry: PrefixEntry) -> u32 {
        self.position(entry, None)
    }
}

impl Entries {
    /// The position of `entry`, if listed.
    fn find(&self, entry: &PrefixEntry) -> Option<u32> {
        let hasher = BuildHasherDefault::<FastHasher>::default();
        self.index
            .find(hasher.hash_one(entry), |&i| self.list[i as usize] == *entry)
            .copied()
    }
}

/// Marks an entry an [`Interner`] added, by its place in its own list.
const ADDED: u32 = 1 << 31;

/// Interns against entries kept from before, which it only reads (so
/// that both families can be resolved side by side): an entry not there
/// is listed here, as `ADDED | i`, until [`Interner::merge`].
struct Interner<'e> {
    kept: &'e Entries,
    added: Entries,
}

impl<'e> Interner<'e> {
    fn new(kept: &'e Entries) -> Self {
        Self {
            kept,
            added: Entries::default(),
        }
    }

    fn get(&self, index: u32) -> &PrefixEntry {
        if index & ADDED == 0 {
            &self.kept.list[index as usize]
        } else {
            &self.added.list[(index & !ADDED) as usize]
        }
    }

    /// The positions in `entries` (the kept ones, grown) of the entries
    /// added here, by their `ADDED` index.
    fn merge(added: Vec<PrefixEntry>, entries: &mut Entries) -> Vec<u32> {
        added.into_iter().map(|e| entries.intern(e)).collect()
    }
}

impl Intern for Interner<'_> {
    fn intern(&mut self, entry: PrefixEntry) -> u32 {
        if let Some(index) = self.kept.find(&entry) {
            return index;
        }
        ADDED | self.added.position(entry, None)
    }
}

/// The entry of a prefix that is one order's only claim, under no other,
/// by (tag, length).
type Lone = FastMap<(u32, u8), u32>;

/// Resolves claims to entries; keeps its buffers (and what it learnt of
/// lone prefixes) from one call to the next within a compile.
struct Resolver<'a> {
    /// Nearly every prefix is one order's target under no other: its entry
    /// follows from the order's tag and the length alone, found without
    /// hashing a whole entry.
    lone: Lone,
    /// Keys added to `lone` since it was handed over.
    learnt: Vec<(u32, u8)>,
    /// Ancestors of the current prefix, outermost first, with their
    /// resolved candidates (own claims merged with their ancestors').
    stack: Vec<(Key, Resolved<'a>)>,
    buffers: [Vec<Claim<'a>>; 2],
}

impl<'a> Resolver<'a> {
    fn new() -> Self {
        Self::knowing(Lone::default())
    }

    /// A resolver that knows the entries of `lone` prefixes already.
    fn knowing(lone: Lone) -> Self {
        Self {
            lone,
            learnt: Vec::new(),
            stack: Vec::new(),
            buffers: [Vec::new(), Vec::new()],
        }
    }

    /// Resolves sorted `rows` (a whole family, or the claims under one
    /// prefix) to an entry per prefix, each pushed to `out` as
    /// `prefix(key, entry)`, in order; `ancestors` are the claims of each
    /// prefix that covers them, outermost first (resolved again to be
    /// inherited, not output). Returns the candidates cut.
    fn resolve_under<P>(
        &mut self,
        ancestors: &[&[Row]],
        rows: &[Row],
        claimants: &[Claimant<'a>],
        entries: &mut impl Intern,
        out: &mut Vec<P>,
        prefix: impl Fn(Key, u32) -> P,
    ) -> usize {
        let mut cut = 0;
        let Self {
            lone,
            learnt,
            stack,
            buffers,
        } = self;
        stack.clear();
        for group in ancestors {
            let key = group[0].key();
            let (resolved, _) = candidates(stack, buffers, group, key, claimants);
            stack.push((key, resolved));
        }
        let mut rest = rows;
        // A lone prefix whose entry is known needs no candidates of its
        // own (about half a KB to work out and stack), unless the prefix
        // after it lies inside it and inherits them: worked out then.
        let mut lone_known: Option<(Key, &[Row])> = None;
        while let Some(first) = rest.first() {
            let key = first.key();
            let same = rest.iter().take_while(|r| r.key() == key).count();
            let (group, tail) = rest.split_at(same);
            rest = tail;
            if let Some((outer, claims)) = lone_known.take()
                && outer.contains(&key)
            {
                // Under no other prefix, one claim: nothing is cut.
                let (resolved, _) = candidates(&[], buffers, claims, outer, claimants);
                stack.push((outer, resolved));
            }
            while stack.last().is_some_and(|(k, _)| !k.contains(&key)) {
                stack.pop();
            }
            // One order's claim under no other: its entry is the lone one.
            let lone_key = (group.len() == 1 && stack.is_empty()).then(|| (group[0].tag, key.len));
            if let Some(&entry) = lone_key.and_then(|k| lone.get(&k)) {
                out.push(prefix(key, entry));
                lone_known = Some((key, group));
                continue;
            }
            let (resolved, group_cut) = candidates(stack, buffers, group, key, claimants);
            cut += group_cut;
            let entry = entries.intern(to_entry(&resolved));
            if let Some(k) = lone_key {
                lone.insert(k, entry);
                learnt.push(k);
            }
            out.push(prefix(key, entry));
            stack.push((key, resolved));
        }
        cut
    }
}

/// The candidates of prefix `key` (whose claims are `group`) under the
/// top of `stack`, and how many were cut.
fn candidates<'a>(
    stack: &[(Key, Resolved<'a>)],
    buffers: &mut [Vec<Claim<'a>>; 2],
    group: &[Row],
    key: Key,
    claimants: &[Claimant<'a>],
) -> (Resolved<'a>, usize) {
    let mut cut = 0;
    let inherited = stack.last().map_or([Top::EMPTY; 2], |(_, r)| *r);
    let mut resolved = [Top::EMPTY; 2];
    for (direction, buffer) in buffers.iter_mut().enumerate() {
        let bit = if direction == 0 { DST } else { SRC };
        buffer.clear();
        buffer.extend(group.iter().filter(|r| r.tag & bit != 0).map(|r| {
            let c = &claimants[(r.tag >> 2) as usize];
            Claim {
                rank: c.drop_bit | u32::from(key.len),
                id: c.id,
                slot: c.slot,
                from: c.from,
                until: c.until,
            }
        }));
        buffer.extend_from_slice(inherited[direction].as_slice());
        cut += normalise(buffer);
        let top = &mut resolved[direction];
        top.len = buffer.len();
        top.claims[..buffer.len()].copy_from_slice(buffer);
    }
    (resolved, cut)
}

/// An order as compiled, as the next compile compares it.
#[derive(Clone)]
struct Input {
    slot: u32,
    /// `DST | SRC` of its direction.
    sides: u32,
    drop_bit: u32,
    from: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    targets: Arc<[IpNetwork]>,
}

impl Input {
    fn tag(&self) -> u32 {
        self.slot << 2 | self.sides
    }

    /// Everything but the targets is the same: its claims read alike.
    fn claims_alike(&self, other: &Input) -> bool {
        (self.slot, self.sides, self.drop_bit, self.from, self.until)
            == (
                other.slot,
                other.sides,
                other.drop_bit,
                other.from,
                other.until,
            )
    }

    fn claimant<'a>(&self, id: &'a str) -> Claimant<'a> {
        Claimant {
            drop_bit: self.drop_bit,
            id,
            slot: self.slot,
            from: self.from,
            until: self.until,
        }
    }
}

/// The orders to compile, each with its slot, and the claimants by slot.
struct Inputs<'o> {
    slots: SlotTable,
    inputs: Vec<(&'o str, Input)>,
    orders: Vec<CompiledOrder>,
}

impl<'o> Inputs<'o> {
    fn new(
        orders: &[&'o Order],
        enforcement: Enforcement,
        previous: &SlotTable,
    ) -> Result<Self, CompileError> {
        let ids: Vec<&str> = orders.iter().map(|o| o.id.as_str()).collect();
        let (slots, slot_of) = previous.reassign(&ids)?;
        let mut inputs = Vec::with_capacity(orders.len());
        let mut compiled_orders = Vec::with_capacity(orders.len());
        for (order, slot) in orders.iter().zip(slot_of) {
            let action = enforcement.effective(order.action);
            inputs.push((
                order.id.as_str(),
                Input {
                    slot,
                    sides: if order.direction.covers_dst() { DST } else { 0 }
                        | if order.direction.covers_src() { SRC } else { 0 },
                    drop_bit: if action == Action::Drop { RANK_DROP } else { 0 },
                    from: order.effective_from,
                    until: order.expires_at,
                    targets: order.targets.clone(),
                },
            ));
            compiled_orders.push(CompiledOrder {
                id: order.id.clone(),
                slot,
                action,
                prefixes: u32::try_from(order.targets.len()).unwrap_or(u32::MAX),
                effective_from: order.effective_from,
                expires_at: order.expires_at,
            });
        }
        Ok(Self {
            slots,
            inputs,
            orders: compiled_orders,
        })
    }

    /// Claimants indexed by slot.
    fn claimants(&self) -> Vec<Claimant<'o>> {
        let len = self
            .inputs
            .iter()
            .map(|(_, i)| i.slot + 1)
            .max()
            .unwrap_or(0);
        let mut claimants = vec![Claimant::default(); len as usize];
        for (id, input) in &self.inputs {
            claimants[input.slot as usize] = input.claimant(id);
        }
        claimants
    }
}

/// The IPv4 half of [`Compiled`]'s prefixes, as a [`Key`].
fn v4_prefix(key: Key, entry: u32) -> ([u8; 4], u8, u32) {
    (((key.bits() >> 96) as u32).to_be_bytes(), key.len, entry)
}

fn v6_prefix(key: Key, entry: u32) -> ([u8; 16], u8, u32) {
    (key.bits().to_be_bytes(), key.len, entry)
}

/// Sorts and resolves one family's claims, with entries of its own.
fn resolve_family<P>(
    mut rows: Vec<Row>,
    claimants: &[Claimant<'_>],
    prefix: impl Fn(Key, u32) -> P,
) -> (Vec<Row>, Vec<P>, Vec<PrefixEntry>, usize, Lone) {
    rows.sort_unstable();
    let mut entries = Entries::new();
    // Room for the updates after: the prefixes are rebuilt into spare
    // buffers, and this one becomes the first of them.
    let mut prefixes = Vec::with_capacity(room(rows.len()));
    let mut resolver = Resolver::new();
    let cut = resolver.resolve_under(&[], &rows, claimants, &mut entries, &mut prefixes, prefix);
    (rows, prefixes, entries.list, cut, resolver.lone)
}

/// Compiles from scratch. Returns the tables, and the sorted claims and
/// lone entries of each family (for a [`Compiler`] to keep).
fn compile_whole(inputs: Inputs<'_>) -> (Compiled, [Vec<Row>; 2], [Lone; 2]) {
    let claimants = inputs.claimants();
    let mut v4: Vec<Row> = Vec::new();
    let mut v6: Vec<Row> = Vec::new();
    for (_, input) in &inputs.inputs {
        for target in input.targets.iter() {
            let table = if target.is_ipv4() { &mut v4 } else { &mut v6 };
            table.push(Row::new(key_of(target), input.tag()));
        }
    }
    // The families side by side, each with its own entries; IPv6's follow
    // IPv4's (an entry both hold is held twice, harmlessly).
    let ((rows4, v4, entries4, cut4, lone4), (rows6, mut v6, entries6, cut6, mut lone6)) =
        crate::parallel::join(
            v4.len() + v6.len(),
            || resolve_family(v4, &claimants, v4_prefix),
            || resolve_family(v6, &claimants, v6_prefix),
        );
    let offset = u32::try_from(entries4.len() - 1).unwrap_or(u32::MAX);
    for (_, _, entry) in &mut v6 {
        *entry += offset;
    }
    for entry in lone6.values_mut() {
        *entry += offset;
    }
    let mut entries = entries4;
    entries.extend_from_slice(&entries6[1..]);
    let compiled = Compiled {
        v4,
        v6,
        entries,
        slots: inputs.slots,
        orders: inputs.orders,
        overflow: cut4 + cut6,
    };
    (compiled, [rows4, rows6], [lone4, lone6])
}

/// Compiles the orders to enforce into table entries and counter slots.
/// Orders may carry windows (`effective_from`, `expires_at`): pass the
/// orders in force *and* the pending ones, and the datapath starts and
/// stops each on time by itself.
pub fn compile(
    orders: &[&Order],
    enforcement: Enforcement,
    previous: &SlotTable,
) -> Result<Compiled, CompileError> {
    Ok(compile_whole(Inputs::new(orders, enforcement, previous)?).0)
}

/// What an incremental compile changed since the compile it started from:
/// the prefixes that appeared, went or got another entry, per family,
/// sorted; and the entries it wrote (sorted): new ones at the end of the
/// list, or in the place of entries no prefix of the compile before used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The [`Step::version`] this change is made against.
    pub from: u64,
    pub v4: Vec<([u8; 4], u8)>,
    pub v6: Vec<([u8; 16], u8)>,
    pub entries: Vec<u32>,
}

/// One compile by a [`Compiler`].
pub struct Step<'a> {
    pub compiled: &'a Compiled,
    /// Numbers this compile's tables, for a later [`Change::from`].
    pub version: u64,
    /// What changed since the previous compile; `None` when compiled from
    /// scratch.
    pub change: Option<Change>,
}

/// A [`Compiled`] IPv4 prefix.
type V4Prefix = ([u8; 4], u8, u32);
/// A [`Compiled`] IPv6 prefix.
type V6Prefix = ([u8; 16], u8, u32);

/// One family's claims as kept between compiles.
struct Claims<P> {
    /// Sorted.
    rows: Vec<Row>,
    /// Claims per prefix length (to find ancestors).
    lengths: [u32; 129],
    /// Lone entries (while the orders stay the same: an order's tag then
    /// always stands for the same claimant).
    lone: Lone,
    /// Buffers for the next merge of the rows and rebuild of the prefixes,
    /// their pages touched already (fresh ones fault in page by page). The
    /// rows are merged in place, over stale ones.
    spare_rows: Vec<Row>,
    spare_out: Vec<P>,
    /// The prefixes rebuilt by the upper [`Part`] of an update split in
    /// two, before they join the lower part's.
    spare_out_upper: Vec<P>,
}

impl<P: Prefix + Default> Claims<P> {
    /// The claims of `rows` (sorted), with spare buffers for `prefixes`
    /// prefixes, touched.
    fn new(rows: Vec<Row>, lone: Lone, prefixes: usize) -> Self {
        let mut lengths = [0u32; 129];
        for row in &rows {
            lengths[usize::from(row.len)] += 1;
        }
        let spare_rows = vec![Row::default(); room(rows.len())];
        // Written, not `vec![P::default(); n]`: a vector of zeros comes
        // from `calloc` and its pages would fault in at the first update.
        let mut spare_out = Vec::with_capacity(room(prefixes));
        spare_out.resize(room(prefixes), P::default());
        spare_out.clear();
        Self {
            rows,
            lengths,
            lone,
            spare_rows,
            spare_out,
            spare_out_upper: Vec::new(),
        }
    }

    /// Where to split an update of `[removed, added]` claims (sorted) in
    /// two [`Part`]s, so that the upper one and half the `beside` changed
    /// claims of the other family are about as many as the lower one (the
    /// lower part's thread also keeps the orders as compiled): an address
    /// that no prefix straddles, before or after the change. `None` when
    /// the family's share is not worth a split, or no such address lies
    /// among the changes.
    fn split_point(&self, [removed, added]: [&[Row]; 2], beside: usize) -> Option<u128> {
        let changes = removed.len() + added.len();
        let upper = changes.saturating_sub(beside / 2) / 2;
        if upper < SPLIT_WORTHY {
            return None;
        }
        let shortest = self
            .lengths
            .iter()
            .position(|&n| n > 0)
            .map_or(u8::MAX, |len| len as u8)
            .min(added.iter().map(|r| r.len).min().unwrap_or(u8::MAX));
        let list = if added.len() >= removed.len() {
            added
        } else {
            removed
        };
        let at = list[list.len() - list.len() * upper / changes - 1].key();
        let split = at.bits() & mask(shortest.min(at.len));
        (shortest > 0 && split > 0).then_some(split)
    }

    /// Counts `[removed, added]` claims out and in, by length.
    fn count(&mut self, [removed, added]: [&[Row]; 2]) {
        for row in removed {
            self.lengths[usize::from(row.len)] -= 1;
        }
        for row in added {
            self.lengths[usize::from(row.len)] += 1;
        }
    }

    /// The family's update (counted already) as one [`Part`], or as two
    /// split at `split` (the upper with a copy of the lone entries): the
    /// kept claims, the prefixes `out` and the claims out and in each cut
    /// there, and each part's share of the spare rows to merge them into
    /// (stale rows of an earlier merge, so that only the difference in
    /// length is written before). No part when nothing changed; `None`
    /// when more claims go than there are.
    fn parts<'r, 'a>(
        &'r mut self,
        out: &'r [P],
        [removed, added]: [&'r [Row]; 2],
        split: Option<u128>,
    ) -> Option<Halves<'r, 'a, P>> {
        if removed.is_empty() && added.is_empty() {
            return Some([None, None]);
        }
        let upper = split.map(|at| {
            (
                at,
                std::mem::take(&mut self.spare_out_upper),
                Resolver::knowing(self.lone.clone()),
            )
        });
        let rebuilt = std::mem::take(&mut self.spare_out);
        let resolver = Resolver::knowing(std::mem::take(&mut self.lone));
        let Claims {
            rows,
            lengths,
            spare_rows,
            ..
        } = self;
        let whole = Side {
            rows,
            out,
            removed,
            added,
        };
        let total = whole.merged()?;
        spare_rows.resize(total, Row::default());
        let part = |side, merged, rebuilt, resolver| Part {
            side,
            lengths,
            merged,
            rebuilt,
            resolver,
        };
        let Some((at, upper_rebuilt, upper_resolver)) = upper else {
            return Some([Some(part(whole, spare_rows, rebuilt, resolver)), None]);
        };
        let (lower, higher) = whole.cut(at);
        let (merged_lower, merged_upper) = spare_rows.split_at_mut(lower.merged()?.min(total));
        Some([
            Some(part(lower, merged_lower, rebuilt, resolver)),
            Some(part(higher, merged_upper, upper_rebuilt, upper_resolver)),
        ])
    }
}

impl<P: Prefix> Claims<P> {
    /// Takes in what the parts of an update made, lower first, each with
    /// where its interner's added entries were placed: the claims and
    /// prefixes joined, the entries renumbered, the lone entries learnt.
    /// Returns the keys whose entry changed, appeared or went (sorted).
    fn finish(&mut self, out: &mut Vec<P>, made: Vec<Placed<P>>) -> Vec<Key> {
        let mut made = made.into_iter();
        let Some((lower, at)) = made.next() else {
            return Vec::new();
        };
        let Made {
            mut rebuilt,
            updated,
            mut lone,
            ..
        } = lower;
        renumber_fresh(&mut rebuilt, &updated.fresh, &at);
        for key in &updated.learnt {
            if let Some(entry) = lone.get_mut(key) {
                renumber(entry, &at);
            }
        }
        let mut changed = updated.changed;
        for (upper, at) in made {
            let from = rebuilt.len();
            rebuilt.extend_from_slice(&upper.rebuilt);
            renumber_fresh(&mut rebuilt[from..], &upper.updated.fresh, &at);
            for key in &upper.updated.learnt {
                if let Some(mut entry) = upper.lone.get(key).copied() {
                    renumber(&mut entry, &at);
                    lone.entry(*key).or_insert(entry);
                }
            }
            changed.extend_from_slice(&upper.updated.changed);
            self.spare_out_upper = upper.rebuilt;
        }
        self.lone = lone;
        // The parts merged the claims into the spare rows.
        std::mem::swap(&mut self.rows, &mut self.spare_rows);
        self.spare_out = std::mem::replace(out, rebuilt);
        changed
    }
}

/// The orders as last compiled, by slot: a new compile finds each order's
/// old self by its slot (an id keeps its slot while it stays), with no
/// hashing of ids; the id tells a slot handed on from one order to another.
#[derive(Default)]
struct KeptInputs {
    by_slot: Vec<Option<(String, Input)>>,
    /// Orders kept (slots that are `Some`).
    len: usize,
}

impl KeptInputs {
    /// Order `id`'s input as kept, if it held `slot`.
    fn get(&self, slot: u32, id: &str) -> Option<&Input> {
        match self.by_slot.get(slot as usize) {
            Some(Some((kept, input))) if kept == id => Some(input),
            _ => None,
        }
    }

    /// The kept orders, with their slots.
    fn iter(&self) -> impl Iterator<Item = (usize, &Input)> {
        self.by_slot
            .iter()
            .enumerate()
            .filter_map(|(slot, kept)| kept.as_ref().map(|(_, input)| (slot, input)))
    }

    /// Keeps the orders `now` compiled in place of those kept.
    fn keep(&mut self, now: &[(&str, Input)]) {
        let slots = now.iter().map(|(_, input)| input.slot as usize + 1).max();
        if let Some(slots) = slots.filter(|&slots| slots > self.by_slot.len()) {
            self.by_slot.resize_with(slots, || None);
        }
        let mut present = Bits::new(self.by_slot.len());
        for (id, input) in now {
            let slot = input.slot as usize;
            match &mut self.by_slot[slot] {
                Some((kept, old)) if kept == id => *old = input.clone(),
                other => *other = Some(((*id).to_owned(), input.clone())),
            }
            present.insert(slot);
        }
        // Every slot `now` does not hold is gone.
        for (slot, kept) in self.by_slot.iter_mut().enumerate() {
            if !present.contains(slot) {
                *kept = None;
            }
        }
        self.len = present.count();
    }
}

/// What a [`Part`] made, with where the entries its interner added are.
type Placed<P> = (Made<P>, Vec<u32>);

/// What the parts of a family's update made, each with where the entries
/// its interner added are in `entries`, which takes them in. `None` when a
/// part gave up (`None` in `parts`).
fn placed<P>(
    parts: impl IntoIterator<Item = Option<Made<P>>>,
    entries: &mut Entries,
) -> Option<Vec<Placed<P>>> {
    parts
        .into_iter()
        .map(|made| {
            let mut made = made?;
            let at = Interner::merge(std::mem::take(&mut made.added), entries);
            Some((made, at))
        })
        .collect()
}

/// The prefixes a part resolved again (`fresh`, in its `rebuilt`), their
/// entries numbered by [`renumber`].
fn renumber_fresh<P: Prefix>(rebuilt: &mut [P], fresh: &[std::ops::Range<usize>], placed: &[u32]) {
    for range in fresh {
        rebuilt[range.clone()]
            .iter_mut()
            .for_each(|p| renumber(p.entry_mut(), placed));
    }
}

/// An entry an [`Interner`] added (`ADDED | i`) given its place in the
/// entries, by `placed[i]`.
fn renumber(entry: &mut u32, placed: &[u32]) {
    if *entry & ADDED != 0 {
        *entry = placed[(*entry & !ADDED) as usize];
    }
}

/// A family's update as [`Claims::parts`] gives it: the lower part (or the
/// whole) and the upper part.
type Halves<'r, 'a, P> = [Option<Part<'r, 'a, P>>; 2];

/// A family's claims and prefixes as kept, and its claims out and in, all
/// sorted: the whole of them, or those on one side of an address.
#[derive(Clone, Copy)]
struct Side<'r, P> {
    rows: &'r [Row],
    out: &'r [P],
    removed: &'r [Row],
    added: &'r [Row],
}

impl<'r, P: Prefix> Side<'r, P> {
    /// How many claims the merge makes; `None` when more go than there are.
    fn merged(&self) -> Option<usize> {
        (self.rows.len() + self.added.len()).checked_sub(self.removed.len())
    }

    /// These below `at` and these from `at` up.
    fn cut(self, at: u128) -> (Self, Self) {
        fn cut<T>(list: &[T], at: u128, key: impl Fn(&T) -> Key) -> (&[T], &[T]) {
            list.split_at(list.partition_point(|t| key(t).bits() < at))
        }
        let (rows, out) = (cut(self.rows, at, Row::key), cut(self.out, at, P::key));
        let (removed, added) = (
            cut(self.removed, at, Row::key),
            cut(self.added, at, Row::key),
        );
        (
            Side {
                rows: rows.0,
                out: out.0,
                removed: removed.0,
                added: added.0,
            },
            Side {
                rows: rows.1,
                out: out.1,
                removed: removed.1,
                added: added.1,
            },
        )
    }
}

/// An update splits a family in two [`Part`]s only when the upper one gets
/// at least this many changed claims (or its copies cost more than they
/// save). One in unit tests, so that their small updates split too.
const SPLIT_WORTHY: usize = if cfg!(test) { 1 } else { 2048 };

/// Room for `n` values and the changes of an update or more, in the
/// buffers an update writes (so that they are not grown, and copied, in
/// an update).
fn room(n: usize) -> usize {
    n + n / 16 + 1024
}

/// What the next compile starts from.
struct Kept {
    version: u64,
    enforcement: Enforcement,
    inputs: KeptInputs,
    v4: Claims<V4Prefix>,
    v6: Claims<V6Prefix>,
    /// The index of `compiled.entries`.
    index: HashTable<u32>,
    /// Positions in `compiled.entries` that no prefix uses, for new
    /// entries to take.
    free: Vec<u32>,
    /// Entries in use at the last [`Kept::sweep`] (or compile from
    /// scratch), and written since (some of which may be unused now).
    in_use: usize,
    written: usize,
    compiled: Compiled,
}

/// A compiler that remembers its last compile, so that a feed changing a
/// few targets is compiled by re-resolving only the prefixes under them.
/// The result is the same as [`compile`]'s (the entries may be numbered
/// otherwise, and hold some no prefix uses until they are swept: see
/// [`SWEEP_SLACK`]).
pub struct Compiler {
    kept: Option<Kept>,
    versions: u64,
    sweep_slack: usize,
}

impl Default for Compiler {
    fn default() -> Self {
        Self {
            kept: None,
            versions: 0,
            sweep_slack: SWEEP_SLACK,
        }
    }
}

/// Claims sharing a changed prefix's block (its bits down to the shortest
/// length present) up to this many are tested one by one for ancestors;
/// more are searched length by length.
const ANCESTOR_SCAN: usize = 64;

/// Claims changed past this share of all are compiled from scratch.
const WHOLE_BEYOND: usize = 8;

/// Entries are swept ([`Kept::sweep`]) once those written since the last
/// sweep pass a quarter of those in use then and this many: the list holds
/// at most that many no prefix uses. (The benchmark's feed of 1M prefixes
/// has about 320k entries, and an update of 1% writes about 4,500: a sweep
/// every 18 updates, of 1M prefixes.)
const SWEEP_SLACK: usize = 4096;

impl Compiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// A compiler that sweeps its entries whenever an update wrote some
    /// (not only past [`SWEEP_SLACK`]): tests use it so that small feeds
    /// take freed positions for new entries too.
    pub fn sweeping_eagerly() -> Self {
        Self {
            sweep_slack: 0,
            ..Self::default()
        }
    }

    /// The last compile's tables.
    pub fn compiled(&self) -> Option<&Compiled> {
        self.kept.as_ref().map(|k| &k.compiled)
    }

    /// Forgets the last compile: the next starts from scratch.
    pub fn forget(&mut self) {
        self.kept = None;
    }

    /// Compiles `orders` as [`compile`] does, incrementally when the last
    /// compile allows it.
    pub fn compile(
        &mut self,
        orders: &[&Order],
        enforcement: Enforcement,
        previous: &SlotTable,
    ) -> Result<Step<'_>, CompileError> {
        self.compile_edited(orders, enforcement, previous, &Edits::default())
    }

    /// [`Compiler::compile`], told by `edits` how the parse of `orders`
    /// made some orders' targets from those of the orders compiled last:
    /// their claims out and in are taken from the runs that changed.
    pub fn compile_edited(
        &mut self,
        orders: &[&Order],
        enforcement: Enforcement,
        previous: &SlotTable,
        edits: &Edits,
    ) -> Result<Step<'_>, CompileError> {
        let mut inputs = Inputs::new(orders, enforcement, previous)?;
        self.versions += 1;
        let version = self.versions;
        let change = match &mut self.kept {
            Some(kept) if kept.enforcement == enforcement => {
                kept.change(&mut inputs, version, edits, self.sweep_slack)
            }
            _ => None,
        };
        if change.is_none() {
            let mut kept_inputs = KeptInputs::default();
            kept_inputs.keep(&inputs.inputs);
            let (compiled, [rows4, rows6], [lone4, lone6]) = compile_whole(inputs);
            let v4 = Claims::new(rows4, lone4, compiled.v4.len());
            let v6 = Claims::new(rows6, lone6, compiled.v6.len());
            let Entries { list, index, .. } = Entries::over(compiled.entries);
            let compiled = Compiled {
                entries: list,
                ..compiled
            };
            self.kept = Some(Kept {
                version,
                enforcement,
                inputs: kept_inputs,
                v4,
                v6,
                index,
                free: Vec::new(),
                in_use: compiled.entries.len(),
                written: 0,
                compiled,
            });
        }
        let kept = self.kept.as_ref().expect("just compiled");
        Ok(Step {
            compiled: &kept.compiled,
            version,
            change,
        })
    }
}

impl Kept {
    /// Compiles `inputs` against what is kept, in place; `None` when they
    /// are better (or must be) compiled from scratch. Whatever it leaves
    /// kept then is replaced.
    fn change(
        &mut self,
        inputs: &mut Inputs<'_>,
        version: u64,
        edits: &Edits,
        sweep_slack: usize,
    ) -> Option<Change> {
        if self.compiled.overflow > 0 {
            return None;
        }
        let ([removed, added], same_orders) = self.diff(inputs, edits)?;
        if !same_orders {
            self.v4.lone = Lone::default();
            self.v6.lone = Lone::default();
        }
        if self.written * 4 > self.in_use + sweep_slack {
            self.sweep();
        }
        let claimants = inputs.claimants();
        let mut entries = Entries {
            list: std::mem::take(&mut self.compiled.entries),
            index: std::mem::take(&mut self.index),
            free: std::mem::take(&mut self.free),
        };
        let (claims4, claims6) = (&mut self.v4, &mut self.v6);
        let (out4, out6) = (&mut self.compiled.v4, &mut self.compiled.v6);
        let diff4 = [&removed[0][..], &added[0][..]];
        let diff6 = [&removed[1][..], &added[1][..]];
        // IPv4's update, the larger (two thirds of the benchmark's feed),
        // is split by address when that evens out the two threads' work:
        // its upper part is resolved after IPv6's, on the second thread.
        let split = claims4.split_point(diff4, diff6[0].len() + diff6[1].len());
        claims4.count(diff4);
        claims6.count(diff6);
        let [lower4, upper4] = claims4.parts(out4, diff4, split)?;
        let [whole6, _] = claims6.parts(out6, diff6, None)?;
        // Each part adds entries of its own.
        let kept = &entries;
        let claimants = &claimants;
        let kept_inputs = &mut self.inputs;
        // Read, not taken: should a part fail, the compile from scratch
        // that follows needs them.
        let now = &inputs.inputs;
        let (lower4, (whole6, upper4)) = crate::parallel::join(
            (removed[0].len() + added[0].len() + removed[1].len() + added[1].len()) * 10,
            || {
                let lower4 = lower4.map(|p| p.update(claimants, kept, v4_prefix));
                // The orders as compiled now, for the next compile, while
                // the second thread finishes (should this compile fail,
                // everything kept is replaced anyway).
                kept_inputs.keep(now);
                lower4
            },
            || {
                (
                    whole6.map(|p| p.update(claimants, kept, v6_prefix)),
                    upper4.map(|p| p.update(claimants, kept, v4_prefix)),
                )
            },
        );
        // Their added entries listed, and numbered so.
        let made4 = placed([lower4, upper4].into_iter().flatten(), &mut entries)?;
        let made6 = placed(whole6, &mut entries)?;
        // Each entry a part added is at a position written now: two parts
        // adding the same entry share one.
        let mut written: Vec<u32> = made4
            .iter()
            .map(|(_, at)| at)
            .chain(made6.iter().map(|(_, at)| at))
            .flatten()
            .copied()
            .collect();
        written.sort_unstable();
        written.dedup();
        self.written += written.len();
        let v4 = self.v4.finish(&mut self.compiled.v4, made4);
        let v6 = self.v6.finish(&mut self.compiled.v6, made6);
        self.compiled.entries = entries.list;
        self.index = entries.index;
        self.free = entries.free;
        self.compiled.slots = std::mem::take(&mut inputs.slots);
        self.compiled.orders = std::mem::take(&mut inputs.orders);
        let from = std::mem::replace(&mut self.version, version);
        Some(Change {
            from,
            v4: v4
                .iter()
                .map(|k| (((k.bits() >> 96) as u32).to_be_bytes(), k.len))
                .collect(),
            v6: v6.iter().map(|k| (k.bits().to_be_bytes(), k.len)).collect(),
            entries: written,
        })
    }

    /// Frees the entries no prefix uses any more: their positions go to
    /// `free` (and out of the index, and out of what the claims learnt of
    /// lone prefixes), for new entries to take. The datapath's tables use
    /// no more than the compile kept, so a position taken anew is written
    /// where no prefix reads it.
    fn sweep(&mut self) {
        let list = &self.compiled.entries;
        let mut used = Bits::new(list.len());
        used.insert(0);
        let (v4, v6) = (&self.compiled.v4, &self.compiled.v6);
        v4.iter()
            .map(|p| p.2)
            .chain(v6.iter().map(|p| p.2))
            .for_each(|entry| used.insert(entry as usize));
        self.free = (1..list.len())
            .rev()
            .filter(|&i| !used.contains(i))
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        self.index.retain(|i| used.contains(*i as usize));
        for claims in [&mut self.v4.lone, &mut self.v6.lone] {
            claims.retain(|_, entry| used.contains(*entry as usize));
        }
        self.in_use = list.len() - self.free.len();
        self.written = 0;
    }

    /// The claims to remove and to add ([removed, added], each [IPv4,
    /// IPv6], sorted) to go from the kept orders to `inputs`, and whether
    /// the orders are the same ones with the same claims (only targets
    /// changed); `None` when so many change that a compile from scratch is
    /// cheaper.
    fn diff(&self, inputs: &Inputs<'_>, edits: &Edits) -> Option<([[Vec<Row>; 2]; 2], bool)> {
        // Two halves of the orders side by side.
        let (a, b) = crate::parallel::halves(
            self.v4.rows.len() + self.v6.rows.len(),
            &inputs.inputs,
            |some| self.diff_some(some, edits),
        );
        let [mut removed, mut added] = a.rows;
        // [removed, added] x [IPv4, IPv6], the second half's after the first's.
        for (into, from) in removed
            .iter_mut()
            .chain(added.iter_mut())
            .zip(b.rows.iter().flatten())
        {
            into.extend_from_slice(from);
        }
        let mut same_orders = a.same_orders && b.same_orders;
        // Each kept order found is one slot (the same id twice finds the
        // same): fewer than kept, and the rest are gone.
        let mut matched = Bits::new(self.inputs.by_slot.len());
        a.matched
            .iter()
            .chain(&b.matched)
            .for_each(|&slot| matched.insert(slot as usize));
        if matched.count() < self.inputs.len {
            same_orders = false;
            for (slot, old) in self.inputs.iter() {
                if !matched.contains(slot) {
                    old.targets
                        .iter()
                        .for_each(|t| push_claim(&mut removed, t, old.tag()));
                }
            }
        }
        let changed: usize = removed.iter().chain(&added).map(Vec::len).sum();
        let kept = self.v4.rows.len() + self.v6.rows.len();
        if changed * WHOLE_BEYOND > kept.max(1024) {
            return None;
        }
        for rows in removed.iter_mut().chain(added.iter_mut()) {
            rows.sort_unstable();
        }
        Some(([removed, added], same_orders))
    }

    /// [`Kept::diff`] of some of the orders (those gone aside).
    fn diff_some(&self, inputs: &[(&str, Input)], edits: &Edits) -> Diffed {
        let mut diffed = Diffed {
            rows: Default::default(),
            matched: Vec::with_capacity(inputs.len()),
            same_orders: true,
        };
        let [removed, added] = &mut diffed.rows;
        for (id, new) in inputs {
            // An order keeps its slot while it stays: by the slot its id
            // holds now, else it is new (and whatever the slot held, gone).
            let Some(old) = self.inputs.get(new.slot, id) else {
                new.targets
                    .iter()
                    .for_each(|t| push_claim(added, t, new.tag()));
                diffed.same_orders = false;
                continue;
            };
            diffed.matched.push(new.slot);
            if !old.claims_alike(new) {
                diffed.same_orders = false;
                old.targets
                    .iter()
                    .for_each(|t| push_claim(removed, t, old.tag()));
                new.targets
                    .iter()
                    .for_each(|t| push_claim(added, t, new.tag()));
            } else if !Arc::ptr_eq(&old.targets, &new.targets) {
                // Position by position: a target replaced in place (the
                // usual edit) is one claim out and one in. Anything else
                // (a reordered list) still gives a right, larger diff.
                // Where the parse made the new list from the old by
                // replacing a run of it, the rest is the same: the two
                // runs alone are compared.
                let (o, n) = edits
                    .between(&old.targets, &new.targets)
                    .unwrap_or((&old.targets[..], &new.targets[..]));
                for i in 0..o.len().max(n.len()) {
                    if o.get(i) != n.get(i) {
                        o.get(i).inspect(|t| push_claim(removed, t, old.tag()));
                        n.get(i).inspect(|t| push_claim(added, t, new.tag()));
                    }
                }
            }
        }
        diffed
    }
}

/// Adds `target`'s claim, tagged `tag`, to `rows` ([IPv4, IPv6]).
fn push_claim(rows: &mut [Vec<Row>; 2], target: &IpNetwork, tag: u32) {
    rows[usize::from(target.is_ipv6())].push(Row::new(key_of(target), tag));
}

/// Claims out and in ([removed, added], each [IPv4, IPv6]) of some orders,
/// the slots of those that were kept, and whether those are alike.
struct Diffed {
    rows: [[Vec<Row>; 2]; 2],
    matched: Vec<u32>,
    same_orders: bool,
}

/// What a [`Part`] did: the keys whose entry changed, appeared or went
/// (sorted), the lone prefixes it learnt the entries of, and where the
/// prefixes it resolved again now are in its `rebuilt` (only they can hold
/// entries its [`Interner`] added).
#[derive(Default)]
struct Updated {
    changed: Vec<Key>,
    learnt: Vec<(u32, u8)>,
    fresh: Vec<std::ops::Range<usize>>,
}

/// A [`Compiled`] prefix of one family.
trait Prefix: Copy {
    fn key(&self) -> Key;
    fn entry(&self) -> u32;
    fn entry_mut(&mut self) -> &mut u32;
}

impl Prefix for ([u8; 4], u8, u32) {
    fn key(&self) -> Key {
        Key::new(u128::from(u32::from_be_bytes(self.0)) << 96, self.1)
    }
    fn entry(&self) -> u32 {
        self.2
    }
    fn entry_mut(&mut self) -> &mut u32 {
        &mut self.2
    }
}

impl Prefix for ([u8; 16], u8, u32) {
    fn key(&self) -> Key {
        Key::new(u128::from_be_bytes(self.0), self.1)
    }
    fn entry(&self) -> u32 {
        self.2
    }
    fn entry_mut(&mut self) -> &mut u32 {
        &mut self.2
    }
}

/// The keys from `start` to the last whose address is at most `end`: a
/// prefix and everything inside it; and the claims of the prefixes that
/// cover it (`ancestors` indexes a list of row ranges, outermost first).
#[derive(Clone)]
struct Span {
    start: Key,
    end: u128,
    ancestors: std::ops::Range<usize>,
}

impl Span {
    fn holds(&self, key: &Key) -> bool {
        *key >= self.start && key.bits() <= self.end
    }
}

/// Rows written in order into a slice that holds exactly as many.
struct Fill<'s> {
    rows: &'s mut [Row],
    at: usize,
}

impl<'s> Fill<'s> {
    /// `None` when they do not fit.
    fn extend(&mut self, rows: &[Row]) -> Option<()> {
        let end = self.at + rows.len();
        self.rows.get_mut(self.at..end)?.copy_from_slice(rows);
        self.at = end;
        Some(())
    }

    /// The rows, when every one was written.
    fn full(self) -> Option<&'s [Row]> {
        (self.at == self.rows.len()).then_some(self.rows)
    }
}

/// One family's update, or the part of it on one side of an address that
/// no prefix of the family (before or after) straddles: its sorted claims
/// and prefixes as kept, its claims out and in (sorted), and buffers for
/// its merged claims and rebuilt prefixes. Two parts are independent: each
/// resolves with a resolver and an interner of its own.
struct Part<'r, 'a, P> {
    side: Side<'r, P>,
    /// Claims per prefix length of the whole family, after the change.
    lengths: &'r [u32; 129],
    /// Exactly as many rows as the merge makes.
    merged: &'r mut [Row],
    rebuilt: Vec<P>,
    resolver: Resolver<'a>,
}

/// What [`Part::update`] made (besides its claims, merged in place): its
/// prefixes rebuilt, what changed, and what its resolver and interner
/// learnt.
struct Made<P> {
    rebuilt: Vec<P>,
    updated: Updated,
    lone: Lone,
    added: Vec<PrefixEntry>,
}

impl<'a, P: Prefix> Part<'_, 'a, P> {
    /// Takes the claims out and in out of and into the rows, re-resolves
    /// every prefix under a changed claim (from its outermost ancestor
    /// down), and lists the keys whose entry changed, appeared or went.
    /// `None` when the rows do not hold a removed claim or candidates
    /// would be cut (both: compile from scratch).
    fn update(
        self,
        claimants: &[Claimant<'a>],
        kept: &Entries,
        prefix: impl Fn(Key, u32) -> P,
    ) -> Option<Made<P>> {
        let Part {
            side:
                Side {
                    rows,
                    out,
                    removed,
                    added,
                },
            lengths,
            merged,
            mut rebuilt,
            mut resolver,
        } = self;
        let entries = &mut Interner::new(kept);
        // The claims, merged.
        let mut fill = Fill {
            rows: merged,
            at: 0,
        };
        // Run by run: the kept rows up to the next claim out or in copied
        // whole (a claim out before one in at the same row).
        let (mut gone, mut new) = (removed.iter().peekable(), added.iter().peekable());
        let mut rest: &[Row] = rows;
        loop {
            let (next, out) = match (gone.peek(), new.peek()) {
                (None, None) => break,
                (Some(&g), Some(&a)) if g <= a => (g, true),
                (Some(&g), None) => (g, true),
                (_, Some(&a)) => (a, false),
            };
            let run = gallop::forward(rest.len(), |i| rest[i] < *next);
            fill.extend(&rest[..run])?;
            rest = &rest[run..];
            if out {
                if rest.first() != Some(next) {
                    return None;
                }
                rest = &rest[1..];
                gone.next();
            } else {
                fill.extend(std::slice::from_ref(next))?;
                new.next();
            }
        }
        fill.extend(rest)?;
        let merged = fill.full()?;
        // Each changed prefix's span: from its outermost ancestor (or itself)
        // over everything inside; overlapping spans joined.
        let mut touched: Vec<Key> = removed.iter().chain(added).map(Row::key).collect();
        touched.sort_unstable();
        touched.dedup();
        let shortest = lengths.iter().position(|&n| n > 0).unwrap_or(0) as u8;
        // Touched keys in order: each search gallops on from the last. A
        // touched prefix's entry, and those of the prefixes inside it, change;
        // its ancestors' do not, but it inherits their candidates.
        let mut spans: Vec<Span> = Vec::with_capacity(touched.len());
        let mut ancestry: Vec<std::ops::Range<usize>> = Vec::new();
        let mut cursor = 0;
        for t in &touched {
            cursor += gallop::forward(merged.len() - cursor, |i| merged[cursor + i].key() < *t);
            let before = cursor;
            let floor = t.masked(shortest);
            let from = gallop::backward(before, |i| merged[i].key() < floor);
            let first = ancestry.len();
            let block = &merged[from..before];
            if block.len() <= ANCESTOR_SCAN {
                // Few claims share the block: test each (ancestors come in
                // order, outermost first).
                let mut i = 0;
                while i < block.len() {
                    let k = block[i].key();
                    let claims = block[i..].iter().take_while(|r| r.key() == k).count();
                    if k.len < t.len && k.contains(t) {
                        ancestry.push(from + i..from + i + claims);
                    }
                    i += claims;
                }
            } else {
                for len in (shortest..t.len).filter(|&len| lengths[usize::from(len)] > 0) {
                    let a = t.masked(len);
                    let at = block.partition_point(|r| r.key() < a);
                    let claims = block[at..].iter().take_while(|r| r.key() == a).count();
                    if claims > 0 {
                        ancestry.push(from + at..from + at + claims);
                    }
                }
            }
            spans.push(Span {
                start: *t,
                end: t.last(),
                ancestors: first..ancestry.len(),
            });
        }
        // Spans nest or are apart: the outer of two nested holds the inner.
        spans.sort_unstable_by_key(|s| s.start);
        let mut joined: Vec<Span> = Vec::with_capacity(spans.len());
        for span in spans {
            match joined.last_mut() {
                Some(last) if span.start.bits() <= last.end => last.end = last.end.max(span.end),
                _ => joined.push(span),
            }
        }
        let mut groups: Vec<&[Row]> = Vec::new();
        // The prefixes rebuilt: outside the spans as they were, inside them
        // resolved again.
        let mut resolved: Vec<(Key, u32)> = Vec::new();
        rebuilt.clear();
        rebuilt.reserve(out.len() + added.len());
        let mut changed = Vec::new();
        let mut fresh = Vec::with_capacity(joined.len());
        let mut rest: &[P] = out;
        let mut claims: &[Row] = merged;
        for span in &joined {
            let start = gallop::forward(rest.len(), |i| rest[i].key() < span.start);
            rebuilt.extend_from_slice(&rest[..start]);
            let end =
                start + gallop::forward(rest.len() - start, |i| span.holds(&rest[start + i].key()));
            let old = &rest[start..end];
            rest = &rest[end..];
            let first = gallop::forward(claims.len(), |i| claims[i].key() < span.start);
            let last = first
                + gallop::forward(claims.len() - first, |i| {
                    span.holds(&claims[first + i].key())
                });
            resolved.clear();
            groups.clear();
            groups.extend(
                ancestry[span.ancestors.clone()]
                    .iter()
                    .map(|r| &merged[r.clone()]),
            );
            let cut = resolver.resolve_under(
                &groups,
                &claims[first..last],
                claimants,
                entries,
                &mut resolved,
                |k, e| (k, e),
            );
            claims = &claims[last..];
            if cut > 0 {
                return None;
            }
            // Old and new side by side, both sorted.
            let mut old = old.iter().peekable();
            fresh.push(rebuilt.len()..rebuilt.len() + resolved.len());
            for &(key, entry) in &resolved {
                while let Some(gone) = old.next_if(|p| p.key() < key) {
                    changed.push(gone.key());
                }
                match old.next_if(|p| p.key() == key) {
                    Some(was) if entries.get(was.entry()) == entries.get(entry) => {}
                    _ => changed.push(key),
                }
                rebuilt.push(prefix(key, entry));
            }
            changed.extend(old.map(Prefix::key));
        }
        rebuilt.extend_from_slice(rest);
        changed.sort_unstable();
        Some(Made {
            rebuilt,
            updated: Updated {
                changed,
                learnt: resolver.learnt,
                fresh,
            },
            lone: resolver.lone,
            added: std::mem::take(&mut entries.added.list),
        })
    }
}

/// What the XDP program does with a compiled table, in plain Rust: the
/// longest-prefix entry for the destination and for the source; in each, the
/// first candidate whose order is within its window at `now`; the higher
/// rank wins, a tie goes to the destination. Returns the counted slot and
/// the action.
pub fn simulate(
    compiled: &Compiled,
    src: IpAddr,
    dst: IpAddr,
    now: OffsetDateTime,
) -> Option<(u32, Action)> {
    if src.is_ipv4() != dst.is_ipv4() {
        return None;
    }
    let lookup = |addr: IpAddr| -> Option<PrefixEntry> {
        let key = match addr {
            IpAddr::V4(a) => Key::new(u128::from(u32::from(a)) << 96, 32),
            IpAddr::V6(a) => Key::new(u128::from(a), 128),
        };
        let table: Vec<(Key, PrefixEntry)> = if addr.is_ipv4() {
            compiled
                .v4
                .iter()
                .map(|(n, l, e)| {
                    let bits = u128::from(u32::from_be_bytes(*n)) << 96;
                    (Key::new(bits, *l), *compiled.entry(*e))
                })
                .collect()
        } else {
            compiled
                .v6
                .iter()
                .map(|(n, l, e)| {
                    let bits = u128::from_be_bytes(*n);
                    (Key::new(bits, *l), *compiled.entry(*e))
                })
                .collect()
        };
        table
            .into_iter()
            .filter(|(k, _)| k.contains(&key))
            .max_by_key(|(k, _)| k.len)
            .map(|(_, e)| e)
    };
    let in_window = |slot: u32| {
        compiled.orders.iter().any(|o| {
            o.slot == slot
                && o.effective_from.is_none_or(|from| from <= now)
                && o.expires_at.is_none_or(|until| now < until)
        })
    };
    let first = |candidates: &[Candidate; CANDIDATES]| {
        candidates
            .iter()
            .take_while(|c| c.is_some())
            .find(|c| in_window(c.slot))
            .copied()
            .unwrap_or(Candidate::NONE)
    };
    let d = lookup(dst).map_or(Candidate::NONE, |e| first(&e.dst));
    let s = lookup(src).map_or(Candidate::NONE, |e| first(&e.src));
    let winner = if d.is_some() && (!s.is_some() || d.strength() >= s.strength()) {
        d
    } else {
        s
    };
    winner.is_some().then(|| {
        let action = if winner.is_drop() {
            Action::Drop
        } else {
            Action::Monitor
        };
        (winner.slot, action)
    })
}

/// Checks one packet at `now` against the contract: what [`simulate`] finds
/// in `compiled` (made from `orders`) must be what
/// [`reference::verdict`](crate::reference::verdict) says of the orders in
/// force then: the same order, the same action. Used by the property tests
/// and the fuzzers.
pub fn check_packet(
    compiled: &Compiled,
    orders: &[&Order],
    enforcement: Enforcement,
    src: IpAddr,
    dst: IpAddr,
    now: OffsetDateTime,
) -> Result<(), String> {
    let in_force: Vec<&Order> = orders
        .iter()
        .copied()
        .filter(|o| {
            o.status == crate::feed::Status::Active
                && o.effective_from.is_none_or(|from| from <= now)
                && o.expires_at.is_none_or(|until| now < until)
        })
        .collect();
    let expected =
        crate::reference::verdict(&in_force, enforcement, src, dst).map(|w| (w.order, w.action));
    let got = simulate(compiled, src, dst, now).map(|(slot, action)| {
        let id = compiled.slots.iter().find(|(_, s)| *s == slot).map_or_else(
            || format!("<slot {slot} without an id>"),
            |(id, _)| id.to_owned(),
        );
        (id, action)
    });
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "src {src} dst {dst} at {now}: tables say {got:?}, the contract says {expected:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::feed::{Direction, Rung, Status};

    fn order(id: &str, action: Action, direction: Direction, targets: &[&str]) -> Order {
        Order {
            id: id.into(),
            rung: Rung::Datacenter,
            action,
            direction,
            targets: targets.iter().map(|t| t.parse().expect("prefix")).collect(),
            status: Status::Active,
            effective_from: None,
            expires_at: None,
            reference: None,
        }
    }

    fn verdict(c: &Compiled, src: &str, dst: &str) -> Option<(String, Action)> {
        verdict_at(c, src, dst, OffsetDateTime::now_utc())
    }

    fn verdict_at(
        c: &Compiled,
        src: &str,
        dst: &str,
        now: OffsetDateTime,
    ) -> Option<(String, Action)> {
        simulate(c, src.parse().expect("src"), dst.parse().expect("dst"), now).map(
            |(slot, action)| {
                let id = c
                    .slots
                    .iter()
                    .find(|(_, s)| *s == slot)
                    .map(|(id, _)| id.to_owned())
                    .expect("slot has an id");
                (id, action)
            },
        )
    }

    #[test]
    fn prefixes_with_the_same_candidates_share_an_entry() {
        let targets: Vec<String> = (0..1000)
            .map(|i| format!("10.0.{}.{}", i / 200, i % 200))
            .collect();
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        let orders = [
            order("ONE", Action::Drop, Direction::Dst, &targets),
            order(
                "TWO",
                Action::Monitor,
                Direction::Both,
                &["10.0.0.0/22", "10.0.9.9"],
            ),
        ];
        let refs: Vec<&Order> = orders.iter().collect();
        let c = compile(&refs, Enforcement::Enforce, &SlotTable::new()).expect("compile");
        assert_eq!(c.v4.len(), 1002);
        // The empty entry; ONE; TWO's /22; ONE under TWO's /22; TWO's /32.
        assert_eq!(c.entries.len(), 5, "{:?}", c.entries);
        assert_eq!(c.entries[0], PrefixEntry::EMPTY);
        assert!(c.v4.iter().all(|&(_, _, e)| e != 0));
    }

    #[test]
    fn drop_through_a_broader_prefix_beats_a_narrower_monitor() {
        let orders = [
            order("RACK", Action::Drop, Direction::Dst, &["203.0.113.0/24"]),
            order("MON", Action::Monitor, Direction::Dst, &["203.0.113.7/32"]),
        ];
        let refs: Vec<&Order> = orders.iter().collect();
        let c = compile(&refs, Enforcement::Enforce, &SlotTable::new()).expect("compile");
        assert_eq!(c.v4.len(), 2);
        assert_eq!(
            verdict(&c, "198.51.100.1", "203.0.113.7"),
            Some(("RACK".into(), Action::Drop))
        );
        let c = compile(&refs, Enforcement::Observe, &SlotTable::new()).expect("compile");
        assert_eq!(
            verdict(&c, "198.51.100.1", "203.0.113.7"),
            Some(("MON".into(), Action::Monitor)),
            "observe: both monitor, the longer prefix wins"
        );
    }

    #[test]
    fn same_prefix_smallest_id_and_destination_before_source() {
        let orders = [
            order("B", Action::Drop, Direction::Both, &["203.0.113.7/32"]),
            order("A", Action::Drop, Direction::Dst, &["203.0.113.7/32"]),
            order("S", Action::Drop, Direction::Src, &["198.51.100.9/32"]),
        ];
        let refs: Vec<&Order> = orders.iter().collect();
        let c = compile(&refs, Enforcement::Enforce, &SlotTable::new()).expect("compile");
        assert_eq!(
            verdict(&c, "198.51.100.1", "203.0.113.7"),
            Some(("A".into(), Action::Drop))
        );
        assert_eq!(
            verdict(&c, "203.0.113.7", "198.51.100.1"),
            Some(("B".into(), Action::Drop))
        );
        assert_eq!(
            verdict(&c, "198.51.100.9", "203.0.113.7"),
            Some(("A".into(), Action::Drop))
        );
        assert_eq!(
            verdict(&c, "198.51.100.9", "192.0.2.1"),
            Some(("S".into(), Action::Drop))
        );
        assert_eq!(verdict(&c, "192.0.2.1", "198.51.100.9"), None);
    }

    #[test]
    fn a_pending_order_is_compiled_and_enforced_only_in_its_window() {
        let from = OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("t");
        let mut pending = order("LATER", Action::Drop, Direction::Dst, &["203.0.113.7/32"]);
        pending.effective_from = Some(from);
        pending.expires_at = Some(from + time::Duration::seconds(60));
        let monitor = order("NOW", Action::Monitor, Direction::Dst, &["203.0.113.0/24"]);
        let c = compile(
            &[&pending, &monitor],
            Enforcement::Enforce,
            &SlotTable::new(),
        )
        .expect("compile");
        let at = |secs| from + time::Duration::seconds(secs);
        assert_eq!(
            verdict_at(&c, "192.0.2.1", "203.0.113.7", at(-1)),
            Some(("NOW".into(), Action::Monitor))
        );
        assert_eq!(
            verdict_at(&c, "192.0.2.1", "203.0.113.7", at(0)),
            Some(("LATER".into(), Action::Drop))
        );
        assert_eq!(
            verdict_at(&c, "192.0.2.1", "203.0.113.7", at(60)),
            Some(("NOW".into(), Action::Monitor))
        );
    }

    #[test]
    fn only_orders_without_a_window_are_marked_and_the_mark_never_ranks() {
        let mut timed = order("TIMED", Action::Drop, Direction::Dst, &["203.0.113.7/32"]);
        timed.expires_at = Some(OffsetDateTime::now_utc() + time::Duration::hours(1));
        let plain = order("PLAIN", Action::Drop, Direction::Src, &["198.51.100.9/32"]);
        let c =
            compile(&[&timed, &plain], Enforcement::Enforce, &SlotTable::new()).expect("compile");
        let entry_of = |net: [u8; 4]| {
            let (_, _, index) =
                c.v4.iter()
                    .find(|(n, _, _)| *n == net)
                    .expect("a compiled prefix");
            c.entries[*index as usize]
        };
        let timed = entry_of([203, 0, 113, 7]).dst[0];
        let plain = entry_of([198, 51, 100, 9]).src[0];
        assert!(timed.is_some() && !timed.windowless());
        assert!(plain.is_some() && plain.windowless());
        assert_eq!(timed.strength(), plain.strength());
        // Equal strength: the destination wins, marked or not.
        assert_eq!(
            verdict(&c, "198.51.100.9", "203.0.113.7"),
            Some(("TIMED".into(), Action::Drop))
        );
    }

    #[test]
    fn slots_are_stable_and_not_handed_on_at_once() {
        let a = order("A", Action::Drop, Direction::Dst, &["203.0.113.1/32"]);
        let b = order("B", Action::Drop, Direction::Dst, &["203.0.113.2/32"]);
        let c1 = compile(&[&a, &b], Enforcement::Enforce, &SlotTable::new()).expect("c1");
        assert_eq!((c1.slots.get("A"), c1.slots.get("B")), (Some(0), Some(1)));
        let n = order("N", Action::Drop, Direction::Dst, &["203.0.113.3/32"]);
        let c2 = compile(&[&b, &n], Enforcement::Enforce, &c1.slots).expect("c2");
        assert_eq!(c2.slots.get("B"), Some(1));
        assert_eq!(c2.slots.get("N"), Some(2), "A's slot 0 rests one apply");
        assert_eq!(c2.slots.get("A"), None);
        // The same orders keep their slots, listed in the table's order
        // (taken in turn) or in any other (looked up).
        for listed in [[&b, &n], [&n, &b]] {
            let c3 = compile(&listed, Enforcement::Enforce, &c2.slots).expect("c3");
            assert_eq!(c3.slots, c2.slots);
            let slot_of = |id: &str| c3.orders.iter().find(|o| o.id == id).map(|o| o.slot);
            assert_eq!((slot_of("B"), slot_of("N")), (Some(1), Some(2)));
        }
    }

    #[test]
    fn slots_come_back_in_the_order_the_ids_were_given() {
        let table = SlotTable {
            slots: Arc::new(
                [("A", 0), ("B", 1), ("C", 2)]
                    .into_iter()
                    .map(|(id, s)| (id.to_owned(), s))
                    .collect(),
            ),
        };
        // B leaves; M and Z are new, and take the slots nobody held (3 on)
        // in id order, whatever their order in the feed.
        let (after, slots) = table.reassign(&["Z", "C", "M", "A"]).expect("slots");
        assert_eq!(slots, [4, 2, 3, 0]);
        let listed: Vec<(&str, u32)> = after.iter().collect();
        assert_eq!(listed, [("A", 0), ("C", 2), ("M", 3), ("Z", 4)]);
        // The table's own ids in its order: the same table.
        let (same, slots) = after.reassign(&["A", "C", "M", "Z"]).expect("slots");
        assert_eq!((same, slots), (after.clone(), vec![0, 2, 3, 4]));
    }

    #[test]
    fn a_full_table_hands_on_released_slots_lowest_first() {
        // Every slot held, then every 64th released while as many new
        // orders come: no slot is fresh, so each new one takes the lowest
        // free.
        let held = SlotTable {
            slots: Arc::new((0..MAX_ORDERS).map(|s| (format!("H{s:05}"), s)).collect()),
        };
        let released: Vec<u32> = (0..MAX_ORDERS).step_by(64).collect();
        let kept = held.slots.iter().filter(|(_, s)| *s % 64 != 0);
        let new_ids: Vec<String> = (0..released.len()).map(|i| format!("N{i:04}")).collect();
        let ids: Vec<&str> = kept
            .clone()
            .map(|(id, _)| id.as_str())
            .chain(new_ids.iter().map(String::as_str))
            .collect();
        let (table, slot_of) = held.reassign(&ids).expect("slots enough");
        assert_eq!(table.len(), MAX_ORDERS as usize);
        let listed: Vec<Option<u32>> = ids.iter().map(|id| table.get(id)).collect();
        assert_eq!(listed, slot_of.into_iter().map(Some).collect::<Vec<_>>());
        for (id, slot) in kept {
            assert_eq!(table.get(id), Some(*slot), "{id} keeps its slot");
        }
        let given: Vec<u32> = new_ids.iter().filter_map(|id| table.get(id)).collect();
        assert_eq!(
            given, released,
            "new orders in id order take the freed slots upward"
        );
        // One order more than there are slots is refused whole.
        let over: Vec<&str> = ids.iter().copied().chain(["N9999"]).collect();
        assert_eq!(
            held.reassign(&over).map(|_| ()),
            Err(CompileError::TooManyOrders { max: MAX_ORDERS })
        );
    }

    fn universe_v4() -> impl Strategy<Value = String> {
        (0u8..16, 28u8..=32).prop_map(|(host, len)| {
            let net = ipnetwork::Ipv4Network::new([203, 0, 113, host].into(), len).expect("net");
            format!("{}/{len}", net.network())
        })
    }

    fn universe_v6() -> impl Strategy<Value = String> {
        (0u16..16, 124u8..=128).prop_map(|(host, len)| {
            let addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host);
            let net = ipnetwork::Ipv6Network::new(addr, len).expect("net");
            format!("{}/{len}", net.network())
        })
    }

    fn base() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("base time")
    }

    fn arb_order() -> impl Strategy<Value = Order> {
        (
            0u8..6,
            prop_oneof![Just(Action::Drop), Just(Action::Monitor)],
            prop_oneof![
                Just(Direction::Dst),
                Just(Direction::Src),
                Just(Direction::Both)
            ],
            prop::collection::vec(prop_oneof![universe_v4(), universe_v6()], 1..4),
            0u8..4,
        )
            .prop_map(|(id, action, direction, targets, window)| {
                let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
                let mut o = order(&format!("O{id}"), action, direction, &targets);
                let mut unique = o.targets.to_vec();
                unique.sort();
                unique.dedup();
                o.targets = unique.into();
                let at = |secs: i64| Some(base() + time::Duration::seconds(secs));
                (o.effective_from, o.expires_at) = match window {
                    0 => (None, None),
                    1 => (at(10), None),
                    2 => (None, at(10)),
                    _ => (at(-10), at(10)),
                };
                o
            })
    }

    /// Each family's prefixes with their entries' content.
    type View = (
        Vec<([u8; 4], u8, PrefixEntry)>,
        Vec<([u8; 16], u8, PrefixEntry)>,
    );

    fn view(c: &Compiled) -> View {
        (
            c.v4.iter().map(|&(n, l, e)| (n, l, *c.entry(e))).collect(),
            c.v6.iter().map(|&(n, l, e)| (n, l, *c.entry(e))).collect(),
        )
    }

    /// The prefixes whose entry differs between `a` and `b` (or that only
    /// one holds).
    fn differing(a: &View, b: &View) -> Change {
        fn family<const N: usize>(
            a: &[([u8; N], u8, PrefixEntry)],
            b: &[([u8; N], u8, PrefixEntry)],
        ) -> Vec<([u8; N], u8)> {
            let a: BTreeMap<_, _> = a.iter().map(|&(n, l, e)| ((n, l), e)).collect();
            let b: BTreeMap<_, _> = b.iter().map(|&(n, l, e)| ((n, l), e)).collect();
            let keys: BTreeSet<_> = a.keys().chain(b.keys()).copied().collect();
            keys.into_iter().filter(|k| a.get(k) != b.get(k)).collect()
        }
        Change {
            v4: family(&a.0, &b.0),
            v6: family(&a.1, &b.1),
            ..Change::default()
        }
    }

    /// Prefixes the feeds of `a_compile_told_the_edits_equals_one_from_scratch`
    /// list: nested, so that a change re-resolves its neighbours.
    const NESTED: [&str; 12] = [
        "203.0.113.0/24",
        "203.0.113.0/25",
        "203.0.113.0/26",
        "203.0.113.64/26",
        "203.0.113.7/32",
        "203.0.113.70/32",
        "198.51.100.0/24",
        "198.51.100.9/32",
        "2001:db8::/48",
        "2001:db8::/64",
        "2001:db8::7/128",
        "2001:db8:1::/64",
    ];

    /// A feed's text, its orders' target lists given as indices into
    /// [`NESTED`], each order's action alternating.
    fn feed_text(lists: &[Vec<usize>]) -> String {
        let mut text = String::from(
            "format: blocker-feed/v1\nserial: 1\nissued_at: 2026-11-24T10:00:00Z\nissuer: ATKM\norders:\n",
        );
        for (i, list) in lists.iter().enumerate() {
            let action = if i % 2 == 0 { "drop" } else { "monitor" };
            text.push_str(&format!(
                "  - id: E-{i}\n    rung: datacenter\n    action: {action}\n    direction: both\n    targets:\n"
            ));
            for &t in list {
                text.push_str(&format!("      - {}\n", NESTED[t]));
            }
            text.push_str("    status: active\n");
        }
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Feeds whose target lists change a line or a few at a time, each
        /// parsed against the one before: the compile told the parse's
        /// edits equals one from scratch, and the edits name the lists the
        /// compiler kept.
        #[test]
        fn a_compile_told_the_edits_equals_one_from_scratch(
            first in prop::collection::vec(prop::collection::btree_set(0usize..NESTED.len(), 1..6), 1..5),
            steps in prop::collection::vec(
                prop::collection::vec((0usize..5, 0usize..8, 0usize..NESTED.len(), 0u8..3), 1..4),
                1..6,
            ),
        ) {
            let mut lists: Vec<Vec<usize>> = first.into_iter().map(|l| l.into_iter().collect()).collect();
            let mut text = feed_text(&lists);
            let mut parsed = crate::feed::parse_against(&crate::feed::Text::scan(text.as_bytes()), None)
                .expect("the first feed parses");
            let mut compiler = Compiler::sweeping_eagerly();
            let mut slots = SlotTable::new();
            {
                let refs: Vec<&Order> = parsed.feed.orders.iter().collect();
                slots = compiler.compile(&refs, Enforcement::Enforce, &slots).expect("compile").compiled.slots.clone();
            }
            for round in steps {
                // A target replaced, put in or taken out, in place.
                let before = lists.clone();
                for (which, at, target, kind) in round {
                    let o = which % lists.len();
                    let list = &mut lists[o];
                    let at = at % (list.len() + 1);
                    let fresh = !list.contains(&target);
                    match kind {
                        0 if fresh && at < list.len() => list[at] = target,
                        1 if fresh => list.insert(at, target),
                        2 if list.len() > 1 && at < list.len() => {
                            list.remove(at);
                        }
                        _ => {}
                    }
                }
                let edited: Vec<usize> = (0..lists.len()).filter(|&o| lists[o] != before[o]).collect();
                let next = feed_text(&lists);
                let shape = parsed.shape.as_ref().expect("read order by order");
                let base = crate::feed::Base::new(text.as_bytes(), &parsed.feed.orders, shape).expect("fits");
                let mut again = crate::feed::parse_against(&crate::feed::Text::scan(next.as_bytes()), Some(&base))
                    .expect("the edited feed parses");
                drop(base);
                let edits = std::mem::take(&mut again.edits);
                for &o in &edited {
                    let (old, new) = (&parsed.feed.orders[o].targets, &again.feed.orders[o].targets);
                    prop_assert!(edits.between(old, new).is_some(), "order {} was spliced", o);
                }
                prop_assert_eq!(edits.len(), edited.len());
                let refs: Vec<&Order> = again.feed.orders.iter().collect();
                let whole = compile(&refs, Enforcement::Enforce, &slots).expect("compile");
                let step = compiler
                    .compile_edited(&refs, Enforcement::Enforce, &slots, &edits)
                    .expect("compile");
                prop_assert!(step.change.is_some() || edited.is_empty(), "compiled as a change");
                prop_assert_eq!(view(step.compiled), view(&whole));
                prop_assert_eq!(&step.compiled.slots, &whole.slots);
                prop_assert_eq!(&step.compiled.orders, &whole.orders);
                slots = whole.slots.clone();
                (text, parsed) = (next, again);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn an_incremental_compile_equals_one_from_scratch(
            first in prop::collection::vec(arb_order(), 0..7),
            more in prop::collection::vec(arb_order(), 4),
            edits in prop::collection::vec(
                prop::collection::vec((0u8..6, 0usize..8, prop_oneof![universe_v4(), universe_v6()]), 1..4),
                1..5,
            ),
            observe in any::<bool>(),
            swaps in prop::collection::vec((any::<bool>(), 0usize..8, 0usize..8), 5),
        ) {
            // A feed, then feeds made from it by small edits: a target
            // replaced, added or dropped, an order's action flipped, an order
            // withdrawn or issued. Some compiles are given a slot table in
            // which two orders swapped slots (as a table from elsewhere
            // may): each then holds a slot the other held in the compile
            // kept.
            let mut sets = vec![first.clone()];
            let mut set = first;
            let mut more = more.into_iter();
            for step in edits {
                for (kind, which, target) in step {
                    let at = which % set.len().max(1);
                    let target: IpNetwork = target.parse().expect("prefix");
                    match (kind, set.get_mut(at)) {
                        (0, Some(o)) => {
                            let mut t = o.targets.to_vec();
                            let i = which % t.len();
                            t[i] = target;
                            o.targets = t.into();
                        }
                        (1, Some(o)) => o.targets = o.targets.iter().copied().chain([target]).collect(),
                        (2, Some(o)) if o.targets.len() > 1 => {
                            o.targets = o.targets.iter().copied().skip(1).collect();
                        }
                        (3, Some(o)) => {
                            o.action = if o.action == Action::Drop { Action::Monitor } else { Action::Drop };
                        }
                        (4, Some(_)) => {
                            set.remove(at);
                        }
                        _ => set.extend(more.next()),
                    }
                }
                sets.push(set.clone());
            }
            let enforcement = if observe { Enforcement::Observe } else { Enforcement::Enforce };
            let mut compiler = Compiler::sweeping_eagerly();
            let mut slots = SlotTable::new();
            let mut before: Option<(View, usize, Compiled)> = None;
            for (set, (swap, a, b)) in sets.into_iter().zip(swaps.into_iter().cycle()) {
                let mut unique: BTreeMap<String, Order> = BTreeMap::new();
                for o in set { unique.entry(o.id.clone()).or_insert(o); }
                let refs: Vec<&Order> = unique.values().collect();
                let mut held: Vec<(String, u32)> = slots.iter().map(|(id, s)| (id.to_owned(), s)).collect();
                let (a, b) = (a % held.len().max(1), b % held.len().max(1));
                if swap && a != b {
                    let slot = held[a].1;
                    held[a].1 = held[b].1;
                    held[b].1 = slot;
                    slots = SlotTable { slots: Arc::new(held.into_iter().collect()) };
                }
                let whole = compile(&refs, enforcement, &slots).expect("compile");
                let step = compiler.compile(&refs, enforcement, &slots).expect("compile");
                let now = view(step.compiled);
                prop_assert_eq!(&now, &view(&whole));
                prop_assert_eq!(&step.compiled.slots, &whole.slots);
                prop_assert_eq!(&step.compiled.orders, &whole.orders);
                prop_assert_eq!(step.compiled.overflow, whole.overflow);
                if let Some((then, overflow, entries)) = &before
                    && *overflow == 0
                    && whole.overflow == 0
                {
                    let change = step.change.as_ref().expect("small changes are incremental");
                    let differ = differing(then, &now);
                    for key in &differ.v4 {
                        prop_assert!(change.v4.binary_search(key).is_ok(), "IPv4 {:?} changed unnamed", key);
                    }
                    for key in &differ.v6 {
                        prop_assert!(change.v6.binary_search(key).is_ok(), "IPv6 {:?} changed unnamed", key);
                    }
                    // An entry is written only where none was, or where no
                    // prefix of the compile before used it.
                    for (i, entry) in entries.entries.iter().enumerate() {
                        if change.entries.binary_search(&(i as u32)).is_err() {
                            prop_assert_eq!(&step.compiled.entries[i], entry, "entry {} changed unnamed", i);
                        }
                    }
                    for &i in &change.entries {
                        let used = entries.v4.iter().any(|p| p.2 == i) || entries.v6.iter().any(|p| p.2 == i);
                        prop_assert!(!used, "entry {} written while in use", i);
                    }
                }
                slots = whole.slots.clone();
                before = Some((now, whole.overflow, step.compiled.clone()));
            }
        }
    }

    /// IPv4 prefixes of many lengths in the three documentation /24s and
    /// around them: updates there split where no prefix straddles.
    fn wide_v4() -> impl Strategy<Value = IpNetwork> {
        (
            prop::sample::select(vec![[192, 0, 2], [198, 51, 100], [203, 0, 113]]),
            any::<u8>(),
            prop::sample::select(vec![16u8, 20, 23, 24, 24, 26, 28, 31, 32, 32, 32]),
        )
            .prop_map(|([a, b, c], d, len)| {
                let net = ipnetwork::Ipv4Network::new([a, b, c, d].into(), len).expect("net");
                IpNetwork::V4(ipnetwork::Ipv4Network::new(net.network(), len).expect("net"))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn an_update_split_by_address_equals_one_from_scratch(
            targets in prop::collection::vec(prop::collection::vec(wide_v4(), 1..12), 1..8),
            actions in prop::collection::vec(any::<bool>(), 8),
            edits in prop::collection::vec((0usize..8, 0usize..12, wide_v4()), 1..24),
            v6 in prop::collection::vec(universe_v6(), 0..6),
        ) {
            // Orders on prefixes of many lengths, then many of their
            // targets replaced at once: the IPv4 update splits in two
            // parts (unit tests split from one changed claim up) wherever
            // its changes allow.
            let make = |targets: &[Vec<IpNetwork>]| -> Vec<Order> {
                targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let action = if actions[i] { Action::Drop } else { Action::Monitor };
                        let mut o = order(&format!("O{i}"), action, Direction::Both, &[]);
                        let mut unique = t.clone();
                        if i == 0 {
                            unique.extend(v6.iter().map(|p| p.parse::<IpNetwork>().expect("prefix")));
                        }
                        unique.sort();
                        unique.dedup();
                        o.targets = unique.into();
                        o
                    })
                    .collect()
            };
            let before = make(&targets);
            let mut edited = targets.clone();
            for (which, at, target) in edits {
                let list = &mut edited[which % targets.len()];
                let at = at % list.len();
                list[at] = target;
            }
            let after = make(&edited);
            let mut compiler = Compiler::sweeping_eagerly();
            let mut slots = SlotTable::new();
            for set in [&before, &after] {
                let refs: Vec<&Order> = set.iter().collect();
                let whole = compile(&refs, Enforcement::Enforce, &slots).expect("compile");
                let step = compiler.compile(&refs, Enforcement::Enforce, &slots).expect("compile");
                prop_assert_eq!(view(step.compiled), view(&whole));
                slots = whole.slots.clone();
            }
        }
    }

    #[test]
    fn an_update_that_would_cut_candidates_is_compiled_from_scratch_whole() {
        // Four orders on one prefix, each in force for an hour of its own,
        // fill its candidates (each is first at some instant); a fifth
        // makes the incremental compile give up, and the compile from
        // scratch must still see every order.
        let on = |i: i64| {
            let mut o = order(
                &format!("O{i}"),
                Action::Drop,
                Direction::Dst,
                &["203.0.113.0/24", "198.51.100.7/32"],
            );
            o.effective_from = Some(base() + time::Duration::hours(i));
            o.expires_at = Some(base() + time::Duration::hours(i + 1));
            o
        };
        let four: Vec<Order> = (1..=4).map(on).collect();
        let mut five = four.clone();
        five.push(on(5));
        let mut compiler = Compiler::new();
        let mut slots = SlotTable::new();
        for set in [&four, &five] {
            let refs: Vec<&Order> = set.iter().collect();
            let whole = compile(&refs, Enforcement::Enforce, &slots).expect("compile");
            let step = compiler
                .compile(&refs, Enforcement::Enforce, &slots)
                .expect("compile");
            assert_eq!(view(step.compiled), view(&whole));
            assert_eq!(step.compiled.overflow, whole.overflow);
            assert_eq!(step.compiled.orders, whole.orders);
            slots = whole.slots.clone();
        }
        assert!(
            compiler.compiled().expect("compiled").overflow > 0,
            "the fifth is cut"
        );
    }

    #[test]
    fn an_update_splits_where_no_prefix_straddles() {
        let row = |net: [u8; 4], len: u8| {
            Row::new(
                key_of(&IpNetwork::V4(
                    ipnetwork::Ipv4Network::new(net.into(), len).expect("net"),
                )),
                4,
            )
        };
        let mut rows: Vec<Row> = (0u8..=255)
            .flat_map(|i| [row([192, 0, 2, i], 32), row([203, 0, 113, i], 32)])
            .collect();
        rows.push(row([198, 51, 100, 0], 24));
        rows.sort_unstable();
        let claims: Claims<V4Prefix> = Claims::new(rows, Lone::default(), 0);
        let out: Vec<Row> = (0u8..200).map(|i| row([192, 0, 2, i], 32)).collect();
        let mut added: Vec<Row> = (0u8..200).map(|i| row([203, 0, 113, i], 31)).collect();
        added.sort_unstable();
        // Four hundred changes, none beside: the upper part gets half of
        // them, cut at a /24 (the shortest length there is), which no
        // claim straddles.
        let at = claims.split_point([&out, &added], 0).expect("split");
        assert_eq!(at, u128::from(u32::from_be_bytes([203, 0, 113, 0])) << 96);
        // Twice as many changes beside as in the family: not worth a split.
        assert_eq!(claims.split_point([&out, &added], 800), None);
        // A /0 added straddles every address.
        let mut with_all = added.clone();
        with_all.insert(0, row([0, 0, 0, 0], 0));
        assert_eq!(claims.split_point([&out, &with_all], 0), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn compiled_tables_decide_like_the_reference(
            orders in prop::collection::vec(arb_order(), 0..7),
            observe in any::<bool>(),
            packets in prop::collection::vec((any::<bool>(), 0u16..20, 0u16..20, 0i64..3), 1..20),
        ) {
            let mut unique: BTreeMap<String, Order> = BTreeMap::new();
            for o in orders { unique.entry(o.id.clone()).or_insert(o); }
            let refs: Vec<&Order> = unique.values().collect();
            let enforcement = if observe { Enforcement::Observe } else { Enforcement::Enforce };
            let c = compile(&refs, enforcement, &SlotTable::new()).expect("compile");
            prop_assume!(c.overflow == 0);
            for (v6, s, d, when) in packets {
                let now = base() + time::Duration::seconds(when * 10 - 5);
                let (src, dst): (IpAddr, IpAddr) = if v6 {
                    (std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, s).into(),
                     std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d).into())
                } else {
                    (std::net::Ipv4Addr::new(203, 0, 113, s as u8).into(),
                     std::net::Ipv4Addr::new(203, 0, 113, d as u8).into())
                };
                if let Err(disagreement) = check_packet(&c, &refs, enforcement, src, dst, now) {
                    return Err(TestCaseError::fail(disagreement));
                }
            }
        }
    }
}
