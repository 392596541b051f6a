//! A feed parsed against the one before it. A regulator's new feed is
//! nearly all the last one's text again: an order whose text is the same is
//! the same order, and one whose text differs only in some lines of its
//! target list is the same order with those targets changed. So the orders
//! of the feed in force are kept with where each one's text lay ([`Shape`]),
//! and a new feed's orders are compared with them byte by byte: the same
//! text is taken as it was parsed, changed target lines alone are read and
//! checked, and anything else is read as ever.
//!
//! Nothing is taken on trust but the feed in force: its text, orders and
//! shape must belong together (the daemon keeps the text it parsed, in
//! memory, with what the parse gave). Every byte of the new feed is still
//! checked as text, its header parsed and its orders' ids checked for
//! duplicates as ever; an order spliced here is exactly the order a whole
//! parse reads (the tests and the `feed` fuzz target compare both ways), or
//! it is read whole.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use ipnetwork::IpNetwork;

use super::{Order, distinct, split::item_target};
use crate::fasthash::FastMap;

/// Where a parsed feed's orders lie in its text, for the next parse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// The feed's length in bytes.
    pub(super) len: usize,
    /// The indentation of the orders' `- `.
    pub(super) dash: usize,
    /// One per order, in the feed's order.
    pub(super) orders: Vec<OrderShape>,
}

/// One order's text in its feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OrderShape {
    pub(super) start: usize,
    pub(super) len: usize,
    /// Its target list, when every line of it is a plain item.
    pub(super) items: Option<ItemLines>,
}

/// The lines of an order's target list, offsets in the order's text: from
/// the first item's line to past the last's line end, every line in
/// between an item `- TARGET` at indentation `indent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ItemLines {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) indent: usize,
}

/// Orders looked for this far past where the last one was found, before
/// they are looked up by their first line.
const LOOK_AHEAD: usize = 16;

/// An order [`Base::reuse`] took from the feed in force.
pub(super) struct Reused {
    pub(super) order: Order,
    /// Its target list, when every line of it is a plain item.
    pub(super) items: Option<ItemLines>,
    /// How its targets changed, when they did.
    pub(super) edit: Option<Edit>,
}

/// How a parse against the feed in force made an order's targets from the
/// old order's: one run of the old list replaced by one of the new.
#[derive(Debug)]
pub(super) struct Edit {
    old: Arc<[IpNetwork]>,
    new: Arc<[IpNetwork]>,
    /// The new list is `old[..at]`, `new[at..at + put]`, `old[at + gone..]`.
    run: Run,
}

/// Where one list differs from another of which it is an edit: from `at`
/// on, `gone` of the old list's targets, `put` of the new list's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    at: usize,
    gone: usize,
    put: usize,
}

/// The orders whose targets a parse against the feed in force changed, and
/// how ([`Edits::between`]): the compiler takes the claims that went and
/// came from the runs that changed, instead of comparing two lists whole.
/// Holds both lists of each changed order; dropped once compiled.
#[derive(Debug, Default)]
pub struct Edits {
    /// By the new list's address (ours, not a feed's: hashed fast).
    by_new: FastMap<usize, Edit>,
}

impl Edits {
    /// The edits of a parse's two halves.
    pub(super) fn new(first: Vec<Edit>, second: Vec<Edit>) -> Self {
        let mut by_new =
            FastMap::with_capacity_and_hasher(first.len() + second.len(), Default::default());
        by_new.extend(
            first
                .into_iter()
                .chain(second)
                .map(|edit| (edit.new.as_ptr() as usize, edit)),
        );
        Self { by_new }
    }

    /// The run of `old`'s targets that `new` replaced, and the run that
    /// replaced it, when this parse made `new` from `old` so: outside them
    /// the two lists are the same. `None` for any other pair of lists.
    pub fn between<'a>(
        &self,
        old: &'a Arc<[IpNetwork]>,
        new: &'a Arc<[IpNetwork]>,
    ) -> Option<(&'a [IpNetwork], &'a [IpNetwork])> {
        let edit = self.by_new.get(&(new.as_ptr() as usize))?;
        if !Arc::ptr_eq(&edit.new, new) || !Arc::ptr_eq(&edit.old, old) {
            return None;
        }
        let Run { at, gone, put } = edit.run;
        Some((old.get(at..at + gone)?, new.get(at..at + put)?))
    }

    pub fn len(&self) -> usize {
        self.by_new.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_new.is_empty()
    }
}

/// The feed in force, as a new feed is parsed against it.
pub struct Base<'a> {
    bytes: &'a [u8],
    orders: &'a [Order],
    shape: &'a Shape,
    /// Each order's index by its first line (the first with that line),
    /// made once an order is not found where expected.
    by_first_line: OnceLock<HashMap<&'a [u8], usize>>,
}

impl<'a> Base<'a> {
    /// The feed in force: its text, its orders and the shape its parse
    /// gave. `None` when the shape does not fit them.
    pub fn new(bytes: &'a [u8], orders: &'a [Order], shape: &'a Shape) -> Option<Self> {
        let fits = shape.len == bytes.len()
            && shape.orders.len() == orders.len()
            && shape.orders.iter().all(|o| {
                o.start
                    .checked_add(o.len)
                    .is_some_and(|end| end <= bytes.len())
                    && o.items.is_none_or(|i| i.start <= i.end && i.end <= o.len)
            });
        fits.then(|| Self {
            bytes,
            orders,
            shape,
            by_first_line: OnceLock::new(),
        })
    }

    pub(super) fn dash(&self) -> usize {
        self.shape.dash
    }

    /// Where to start looking for the order found at byte `at` of a new
    /// feed ([`Base::reuse`]'s `next`): a little before the order at `at`
    /// in this one, as an update changes few orders' lengths by much.
    pub(super) fn near(&self, at: usize) -> usize {
        let index = self.shape.orders.partition_point(|o| o.start < at);
        index.saturating_sub(LOOK_AHEAD / 2)
    }

    fn text(&self, index: usize) -> &'a [u8] {
        let order = &self.shape.orders[index];
        &self.bytes[order.start..order.start + order.len]
    }

    /// The order whose text is `text`, or a copy of one with some of its
    /// target lines changed (and how they changed); `None` when it must be
    /// read. `next` is where the last order was found, plus one.
    pub(super) fn reuse(&self, text: &str, next: &mut usize) -> Option<Reused> {
        let index = self.find(text.as_bytes(), *next)?;
        *next = index + 1;
        let (old, order) = (self.text(index), &self.orders[index]);
        let items = self.shape.orders[index].items;
        if old == text.as_bytes() {
            return Some(Reused {
                order: order.clone(),
                items,
                edit: None,
            });
        }
        let (targets, items, run) = splice(text, old, order, items?)?;
        let edit = Edit {
            old: Arc::clone(&order.targets),
            new: Arc::clone(&targets),
            run,
        };
        Some(Reused {
            order: Order {
                targets,
                ..order.clone()
            },
            items: Some(items),
            edit: Some(edit),
        })
    }

    /// The order of the feed in force with `text`'s first line: looked for
    /// from `next` on, else by that line.
    fn find(&self, text: &[u8], next: usize) -> Option<usize> {
        let first = first_line(text);
        let count = self.orders.len();
        let ahead =
            (next..count.min(next + LOOK_AHEAD)).find(|&i| first_line(self.text(i)) == first);
        if ahead.is_some() {
            return ahead;
        }
        self.by_first_line
            .get_or_init(|| {
                let mut map = HashMap::with_capacity(count);
                for i in 0..count {
                    map.entry(first_line(self.text(i))).or_insert(i);
                }
                map
            })
            .get(first)
            .copied()
    }
}

fn first_line(text: &[u8]) -> &[u8] {
    memchr::memchr(b'\n', text).map_or(text, |i| &text[..=i])
}

/// The targets of `order` (whose text was `old`, its list at `items`) with
/// the lines `new` has in place of some of its item lines read, where the
/// list lies in `new`, and the run of targets replaced; `None` unless
/// everything else is the same, the lines are plain items, and the targets
/// are sound.
fn splice(
    new: &str,
    old: &[u8],
    order: &Order,
    items: ItemLines,
) -> Option<(Arc<[IpNetwork]>, ItemLines, Run)> {
    let bytes = new.as_bytes();
    let head = common_prefix(bytes, old);
    // Whole lines: from the start of the line the first difference is in,
    // to the start of the first line wholly in the common end (which may
    // run back to that start: a line put in or taken out just before a
    // line like the one after it).
    let from = memchr::memrchr(b'\n', &bytes[..head]).map_or(0, |i| i + 1);
    let room = bytes.len().min(old.len()) - from;
    let tail = common_suffix(&bytes[bytes.len() - room..], &old[old.len() - room..]);
    let (end_new, end_old) = (bytes.len() - tail, old.len() - tail);
    let line_start = |text: &[u8], at: usize| at == 0 || text[at - 1] == b'\n';
    let (to_new, to_old) = if line_start(bytes, end_new) && line_start(old, end_old) {
        (end_new, end_old)
    } else {
        match memchr::memchr(b'\n', &bytes[end_new..]) {
            Some(i) => (end_new + i + 1, end_old + i + 1),
            None => (bytes.len(), old.len()),
        }
    };
    if from < items.start || to_old > items.end {
        return None;
    }
    let kept = &order.targets;
    let lines = |range: std::ops::Range<usize>| memchr::memchr_iter(b'\n', &old[range]).count();
    let gone = lines(from..to_old);
    // The items before the change, counted on the shorter side of it.
    let before = if from - items.start <= items.end - to_old {
        lines(items.start..from)
    } else {
        kept.len().checked_sub(gone + lines(to_old..items.end))?
    };
    let mut fresh = Vec::new();
    for line in new[from..to_new].split_inclusive('\n') {
        let line = line.strip_suffix('\n')?;
        let body = line.get(items.indent..)?;
        if !line.as_bytes()[..items.indent].iter().all(|&b| b == b' ') {
            return None;
        }
        // As the hand reader takes an item, or not here at all.
        let (_, prefix) = item_target(body.strip_prefix("- ")?);
        let prefix = prefix?;
        if prefix.prefix() < order.rung.contract_min_len(prefix.is_ipv6()) {
            return None;
        }
        fresh.push(prefix);
    }
    let kept = [kept.get(..before)?, kept.get(before + gone..)?];
    let targets: Arc<[IpNetwork]> = kept[0]
        .iter()
        .chain(&fresh)
        .chain(kept[1])
        .copied()
        .collect();
    if targets.is_empty() || !distinct_with(&fresh, kept, &targets) {
        return None;
    }
    let items = ItemLines {
        end: items.end - to_old + to_new,
        ..items
    };
    let run = Run {
        at: before,
        gone,
        put: fresh.len(),
    };
    Some((targets, items, run))
}

/// Whether no prefix is listed twice in `all`, the two `kept` runs (which
/// are distinct) with `fresh` between them: each of a few fresh ones
/// looked for, else all checked afresh.
fn distinct_with(fresh: &[IpNetwork], kept: [&[IpNetwork]; 2], all: &[IpNetwork]) -> bool {
    const FEW: usize = 4;
    if fresh.len() > FEW {
        return distinct(all);
    }
    fresh
        .iter()
        .enumerate()
        .all(|(i, f)| !fresh[..i].contains(f) && !kept[0].contains(f) && !kept[1].contains(f))
}

/// Bytes compared at a time.
const CHUNK: usize = 16;

/// The length of the longest common start of `a` and `b`.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + CHUNK <= n && a[i..i + CHUNK] == b[i..i + CHUNK] {
        i += CHUNK;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// The length of the longest common end of `a` and `b` (of one length).
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len();
    let mut i = 0;
    while i + CHUNK <= n && a[n - i - CHUNK..n - i] == b[n - i - CHUNK..n - i] {
        i += CHUNK;
    }
    i + a[..n - i]
        .iter()
        .rev()
        .zip(b[..n - i].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::feed::{Parsed, Text, parse_against, tests::assert_paths_agree};

    const HEAD: &str = "format: blocker-feed/v1\nserial: 7\nissued_at: 2026-11-24T10:00:00Z\nissuer: ATKM\norders:\n";

    /// Targets the orders draw from (few, so that edits list some twice).
    const TARGETS: [&str; 8] = [
        "192.0.2.1",
        "192.0.2.2/32",
        "198.51.100.0/24",
        "203.0.113.64/26",
        "2001:db8::1",
        "2001:db8:1::/48",
        "2001:db8:2::/64",
        "203.0.113.7",
    ];

    /// Lines an edit puts in: items good and bad, other indentations,
    /// comments, blank lines, keys, another order's start.
    const LINES: [&str; 16] = [
        "      - 192.0.2.9\n",
        "      - 2001:db8::9\n",
        "      - 192.0.2.1\n",
        "      - 192.0.2.9  \n",
        "      - 10.0.0.0/8\n",
        "      - 192.0.2.1/24\n",
        "      - 2001:db8::\n",
        "      - \"192.0.2.10\"\n",
        "        - 192.0.2.11\n",
        "    - 192.0.2.12\n",
        "      # a comment\n",
        "\n",
        "    reference: x\n",
        "    status: withdrawn\n",
        "  - id: T-99\n    rung: rack\n    action: monitor\n    direction: dst\n    targets:\n      - 198.51.100.77\n    status: active\n",
        "      - 192.0.2.13\r\n",
    ];

    fn order(id: usize, targets: &[usize]) -> String {
        let mut text = format!(
            "  - id: T-{id}\n    rung: datacenter\n    action: drop\n    direction: both\n    targets:\n"
        );
        for &t in targets {
            text.push_str(&format!("      - {}\n", TARGETS[t]));
        }
        text.push_str("    status: active\n");
        text
    }

    /// Parses `new` against `base` (which must parse) and whole: both give
    /// the same feed or the same problems, and the same shape.
    fn agree(base: &str, new: &str) -> Option<Parsed> {
        let first = parse_against(&Text::scan(base.as_bytes()), None).expect("the base parses");
        let shape = first.shape.expect("the base is read order by order");
        let against = Base::new(base.as_bytes(), &first.feed.orders, &shape).expect("it fits");
        let again = parse_against(&Text::scan(new.as_bytes()), Some(&against));
        let whole = parse_against(&Text::scan(new.as_bytes()), None);
        assert_eq!(
            again.as_ref().map(|p| &p.feed).map_err(ToString::to_string),
            whole.as_ref().map(|p| &p.feed).map_err(ToString::to_string),
            "{new}"
        );
        assert_eq!(
            again.as_ref().ok().map(|p| &p.shape),
            whole.as_ref().ok().map(|p| &p.shape),
            "{new}"
        );
        if let Ok(again) = &again {
            edits_tell_the_truth(&first.feed.orders, again);
        }
        assert_paths_agree(new);
        again.ok()
    }

    /// Each of `again`'s edits names an order of `before` and the order of
    /// `again` made from it, and says truly how: the two lists are the same
    /// outside its runs.
    fn edits_tell_the_truth(before: &[Order], again: &Parsed) {
        for edit in again.edits.by_new.values() {
            let old = before
                .iter()
                .find(|o| Arc::ptr_eq(&o.targets, &edit.old))
                .expect("an edit's old list is an order's of the feed before");
            let new = again
                .feed
                .orders
                .iter()
                .find(|o| Arc::ptr_eq(&o.targets, &edit.new))
                .expect("an edit's new list is an order's of the new feed");
            assert_eq!(old.id, new.id);
            let Run { at, gone, put } = edit.run;
            let rebuilt: Vec<IpNetwork> = old.targets[..at]
                .iter()
                .chain(&new.targets[at..at + put])
                .chain(&old.targets[at + gone..])
                .copied()
                .collect();
            assert_eq!(rebuilt[..], new.targets[..], "{edit:?}");
            let (gone_run, put_run) = again
                .edits
                .between(&old.targets, &new.targets)
                .expect("found by its lists");
            assert_eq!(gone_run, &old.targets[at..at + gone]);
            assert_eq!(put_run, &new.targets[at..at + put]);
            assert!(again.edits.between(&new.targets, &old.targets).is_none());
        }
    }

    #[test]
    fn unchanged_orders_are_taken_and_changed_targets_read() {
        let orders = [order(1, &[0, 2, 4]), order(2, &[1, 3]), order(3, &[5, 6])];
        let base = format!("{HEAD}{}", orders.concat());
        let first = parse_against(&Text::scan(base.as_bytes()), None).expect("parses");
        let shape = first.shape.clone().expect("a shape");
        let against = Base::new(base.as_bytes(), &first.feed.orders, &shape).expect("fits");
        // The second order's first target replaced, one added to the third.
        let new = base
            .replacen("      - 192.0.2.2/32\n", "      - 192.0.2.9\n", 1)
            .replacen(
                "      - 2001:db8:2::/64\n",
                "      - 2001:db8:2::/64\n      - 2001:db8:3::/64\n",
                1,
            );
        let again = parse_against(&Text::scan(new.as_bytes()), Some(&against)).expect("parses");
        // All three taken: the third with its new last line read.
        assert_eq!(again.taken, 3);
        let orders = &again.feed.orders;
        assert!(Arc::ptr_eq(
            &orders[0].targets,
            &first.feed.orders[0].targets
        ));
        let text = |o: &Order| {
            o.targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(text(&orders[1]), ["192.0.2.9/32", "203.0.113.64/26"]);
        assert_eq!(
            text(&orders[2]),
            ["2001:db8:1::/48", "2001:db8:2::/64", "2001:db8:3::/64"]
        );
        // Both changes told to the compiler: a target out and one in, and
        // one in after the first two.
        let edited = |i: usize| {
            again
                .edits
                .between(&first.feed.orders[i].targets, &orders[i].targets)
        };
        assert_eq!(again.edits.len(), 2);
        assert!(edited(0).is_none());
        assert_eq!(
            edited(1),
            Some((&first.feed.orders[1].targets[..1], &orders[1].targets[..1]))
        );
        assert_eq!(edited(2), Some((&[][..], &orders[2].targets[2..])));
        agree(&base, &new);
        // The splice itself: the changed line read, the rest kept.
        let (old, new) = (order(2, &[1, 3]), order(2, &[7, 3]));
        let items = ItemLines {
            start: old.find("      - ").expect("an item"),
            end: old.find("    status").expect("status"),
            indent: 6,
        };
        let (targets, spliced, run) =
            splice(&new, old.as_bytes(), &first.feed.orders[1], items).expect("spliced");
        assert_eq!(
            run,
            Run {
                at: 0,
                gone: 1,
                put: 1
            }
        );
        let want: [IpNetwork; 2] = [
            TARGETS[7].parse().expect("ip"),
            TARGETS[3].parse().expect("net"),
        ];
        assert_eq!(targets[..], want);
        assert_eq!(spliced.end, new.find("    status").expect("status"));
    }

    #[test]
    fn anything_but_plain_target_lines_is_read_whole() {
        let base = format!("{HEAD}{}{}", order(1, &[0, 2]), order(2, &[1, 3]));
        let first = parse_against(&Text::scan(base.as_bytes()), None).expect("parses");
        for (from, to) in [
            // A key's value, a target listed twice, too broad, host bits,
            // a quoted item, a comment in the list, the order's id.
            ("    status: active\n", "    status: suspended\n"),
            ("      - 198.51.100.0/24\n", "      - 192.0.2.1\n"),
            ("      - 198.51.100.0/24\n", "      - 10.0.0.0/8\n"),
            ("      - 198.51.100.0/24\n", "      - 198.51.100.1/24\n"),
            ("      - 198.51.100.0/24\n", "      - \"198.51.100.0/24\"\n"),
            ("      - 198.51.100.0/24\n", "      # gone\n"),
            ("  - id: T-1\n", "  - id: T-2\n"),
        ] {
            let new = base.replacen(from, to, 1);
            let old = order(1, &[0, 2]);
            let changed = &new[HEAD.len()..HEAD.len() + new.len() - base.len() + old.len()];
            let items = first.shape.as_ref().expect("shape").orders[0]
                .items
                .expect("plain");
            assert_eq!(
                splice(changed, old.as_bytes(), &first.feed.orders[0], items),
                None,
                "{to}"
            );
            agree(&base, &new);
        }
    }

    /// Each half of a new feed, read side by side, starts looking for its
    /// orders near where its first lies in the feed in force: orders that
    /// moved far (many gone or put in before them, halves swapped) are
    /// still found, by their first line, and taken.
    #[test]
    fn orders_that_moved_far_are_still_taken() {
        let orders: Vec<String> = (0..64)
            .map(|id| order(id, &[id % TARGETS.len(), (id + 3) % TARGETS.len()]))
            .collect();
        let base = format!("{HEAD}{}", orders.concat());
        let edited = order(50, &[50 % TARGETS.len()]);
        let fresh: Vec<String> = (100..120).map(|id| order(id, &[id % 4])).collect();
        let variants = [
            // The first 20 gone, one order of the second half edited.
            (
                [
                    &orders[20..50],
                    std::slice::from_ref(&edited),
                    &orders[51..],
                ]
                .concat(),
                44,
            ),
            // 20 new orders first.
            ([&fresh[..], &orders[..]].concat(), 64),
            // The halves swapped.
            ([&orders[32..], &orders[..32]].concat(), 64),
        ];
        for (new, taken) in variants {
            let new = format!("{HEAD}{}", new.concat());
            let parsed = agree(&base, &new).expect("the new feed parses");
            assert_eq!(parsed.taken, taken, "{new}");
        }
    }

    fn feed_text(orders: &[Vec<usize>]) -> String {
        let mut text = HEAD.to_owned();
        for (id, targets) in orders.iter().enumerate() {
            text.push_str(&order(id, targets));
        }
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Any edit of lines (in, out or in place, plain targets or not)
        /// parses against the feed before it as it parses whole, and a
        /// chain of them too, each against the last.
        #[test]
        fn edited_feeds_parse_against_the_last_as_they_parse_whole(
            orders in prop::collection::vec(prop::sample::subsequence((0..TARGETS.len()).collect::<Vec<_>>(), 1..5), 1..5),
            chain in prop::collection::vec(
                prop::collection::vec((0u8..6, any::<prop::sample::Index>(), 0..LINES.len()), 1..4),
                1..4,
            ),
        ) {
            let mut base = feed_text(&orders);
            for edits in chain {
                let head = HEAD.len();
                let mut lines: Vec<String> =
                    base[head..].split_inclusive('\n').map(str::to_owned).collect();
                for (kind, at, line) in edits {
                    let i = at.index(lines.len() + 1);
                    // Half the edits put in a target no order has yet.
                    let line = match kind {
                        3 | 4 => format!("      - 192.0.2.{}\n", 100 + line),
                        _ => LINES[line].to_owned(),
                    };
                    match kind {
                        0 | 3 => lines.insert(i, line),
                        1 if i < lines.len() && lines.len() > 1 => {
                            lines.remove(i);
                        }
                        _ if i < lines.len() => lines[i] = line,
                        _ => lines.push(line),
                    }
                }
                let new = format!("{HEAD}{}", lines.concat());
                if agree(&base, &new).is_some_and(|p| p.shape.is_some()) {
                    base = new;
                }
            }
        }
    }
}
