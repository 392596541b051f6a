//! The fast path for the plain block layout: `orders:` at the left margin,
//! then its `- ` items at one indentation, nothing after them. The header
//! is parsed as a document of its own; the orders are parsed on two threads.
//!
//! An order whose every line is a `key: value` with a plain (or simply
//! quoted) value, or an item of a list of plain address targets, is read by
//! hand ([`read_plain`]): nearly every order of a large feed, at a few
//! nanoseconds a line where serde_yaml costs about a microsecond a target.
//! Any other order is parsed by serde_yaml on its own, its block list of
//! plain targets still read apart ([`take_targets`]).
//!
//! Nothing here decides what a feed means: a line is read by hand only where
//! it can mean nothing but what it is read as, and a list only where its
//! lines can mean nothing but a list of plain strings (the order is then
//! still parsed by serde_yaml with a marker in the list's place, which must
//! come back as the order's whole `targets`, so the list was where it
//! seemed). Any other layout, or any doubt, gives `None`, and the caller
//! parses the feed as before. The tests below and the fuzz target check
//! both ways agree.

use ipnetwork::IpNetwork;
use serde::{
    Deserialize,
    de::{IntoDeserializer, value::StrDeserializer},
};

use super::{
    AVERAGE_LINE, Fast, FastOrder, Pending, RawOrder,
    again::{Base, Edit, Edits, ItemLines, OrderShape, Shape},
    header, plain_prefix, raw_order,
};

/// Stands in for a target list read by hand.
const MARK: &str = "blocker-targets-read-apart";

pub(super) fn fast_split(text: &str, base: Option<&Base<'_>>) -> Option<Fast> {
    // The `orders:` line, and what follows it.
    let (at, line) = lines_at(text, 0).find(|(_, line)| line.trim_end() == "orders:")?;
    let body = at + line.len();
    let head = text[..at].to_owned() + "orders: []\n";
    let (header, none) = header(serde_yaml::from_str(&head).ok()?)?;
    if !none.is_empty() {
        return None;
    }
    // Blank lines and comments, then the first item, which sets the items'
    // indentation.
    let (first, line) = lines_at(text, body).find(|(_, line)| !blank_or_comment(line))?;
    let dash = indent(line);
    if !line[dash..].starts_with("- ") {
        return None;
    }
    let base = base.filter(|base| base.dash() == dash);
    // Every item starts an order, which runs to the next item. Two halves,
    // cut at an item near the middle, are read side by side.
    let orders = &text[first..];
    let mut middle = orders.len() / 2;
    while !orders.is_char_boundary(middle) {
        middle += 1;
    }
    let cut = orders[middle..]
        .find(item_start(dash).as_str())
        .map_or(orders.len(), |i| middle + i + 1);
    // Each half looks for its first order in the feed in force near where
    // it lies (else by its first line, which hashes every order's).
    let near = base.map_or(0, |base| base.near(first + cut));
    let (a, b) = crate::parallel::join(
        orders.len() / AVERAGE_LINE,
        || orders_in(&orders[..cut], dash, base, 0),
        || orders_in(&orders[cut..], dash, base, near),
    );
    let ((a, edits_a), (b, edits_b)) = (a?, b?);
    // The second half numbered its orders from 0: an order with problems
    // is read again with its place in the feed, which names it.
    let half = a.len();
    let mut shape = Shape {
        len: text.len(),
        dash,
        orders: Vec::with_capacity(a.len() + b.len()),
    };
    let mut orders = Vec::with_capacity(a.len() + b.len());
    let mut taken = 0;
    for (i, read) in a.into_iter().chain(b).enumerate() {
        taken += usize::from(read.taken);
        shape.orders.push(OrderShape {
            start: read.text.as_ptr() as usize - text.as_ptr() as usize,
            len: read.text.len(),
            items: read.items,
        });
        orders.push(match read.pending {
            Pending::Checked(_, problems) if i >= half && !problems.is_empty() => {
                parse_order(i, read.text, dash)?
            }
            pending => pending,
        });
    }
    Some(Fast {
        header,
        orders,
        shape: Some(shape),
        taken,
        edits: Edits::new(edits_a, edits_b),
    })
}

/// What starts the line of an item at indentation `dash`, with the line
/// end before it.
fn item_start(dash: usize) -> String {
    format!("\n{}- ", " ".repeat(dash))
}

/// One order as [`orders_in`] read it.
struct Read<'a> {
    pending: Pending,
    /// Its text, in the feed's.
    text: &'a str,
    /// Its target list, when every line of it is a plain item.
    items: Option<ItemLines>,
    /// Taken from the feed in force, whole or with target lines changed.
    taken: bool,
}

/// The orders of `text` (which starts with an item at indentation `dash`),
/// numbered from 0, each parsed and checked, with its text; against the
/// feed in force when there is one (see [`super::again`]), with how the
/// targets of those taken with target lines changed were made. (The edits
/// are listed apart: kept in each order's [`Read`], they made the daemon's
/// peak memory 3 MB larger, though there are none in a parse from scratch.)
/// `next`: the order of the feed in force to look for the first one from.
fn orders_in<'a>(
    text: &'a str,
    dash: usize,
    base: Option<&Base<'_>>,
    mut next: usize,
) -> Option<(Vec<Read<'a>>, Vec<Edit>)> {
    let mut orders = Vec::new();
    let mut edits = Vec::new();
    let mut targets = Targets::default();
    let next_item = memchr::memmem::Finder::new(&item_start(dash)).into_owned();
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let index = orders.len();
        if let Some(base) = base {
            // Up to the next line that is an item at `dash`, as below.
            let len = next_item
                .find(&rest.as_bytes()[1..])
                .map_or(rest.len(), |i| i + 2);
            if let Some(reused) = base.reuse(&rest[..len], &mut next) {
                orders.push(Read {
                    pending: Pending::Checked(Some(reused.order), Vec::new()),
                    text: &rest[..len],
                    items: reused.items,
                    taken: true,
                });
                edits.extend(reused.edit);
                at += len;
                continue;
            }
        }
        let read = match read_plain_into(index, rest, dash, &mut targets) {
            Some((pending, len)) => Read {
                pending,
                text: &rest[..len],
                items: targets.items(),
                taken: false,
            },
            None => {
                let len = order_len(rest, dash);
                Read {
                    pending: parse_apart(index, &rest[..len], dash)?,
                    text: &rest[..len],
                    items: None,
                    taken: false,
                }
            }
        };
        at += read.text.len();
        orders.push(read);
    }
    Some((orders, edits))
}

/// The length of the order `text` starts with: up to the next line that
/// is an item at indentation `dash`, or the end.
fn order_len(text: &str, dash: usize) -> usize {
    lines_at(text, 0)
        .skip(1)
        .find(|(_, line)| indent(line) == dash && line[dash..].starts_with("- "))
        .map_or(text.len(), |(at, _)| at)
}

/// The lines of `text` from byte `from` on, each with its own offset.
fn lines_at(text: &str, from: usize) -> impl Iterator<Item = (usize, &str)> {
    text[from..].split_inclusive('\n').scan(from, |at, line| {
        let start = *at;
        *at += line.len();
        Some((start, line))
    })
}

/// Whether `line` is blank or a comment (after its indentation).
fn blank_or_comment(line: &str) -> bool {
    let trimmed = line.trim_start_matches(' ');
    trimmed.trim().is_empty() || trimmed.starts_with('#')
}

/// One order (its text, from its `- ` at indentation `dash` on) parsed and
/// checked: by hand when it is in the plain layout.
fn parse_order(index: usize, text: &str, dash: usize) -> Option<Pending> {
    match read_plain(index, text, dash) {
        Some((plain, len)) => (len == text.len()).then_some(plain),
        None => parse_apart(index, text, dash),
    }
}

/// One order not in the plain layout: parsed by serde_yaml, its block list
/// of plain targets read apart when it has one.
fn parse_apart(index: usize, text: &str, dash: usize) -> Option<Pending> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // Past its first line, an order's lines are deeper than its `- `, blank
    // or comments.
    for line in &lines[1..] {
        if blank_or_comment(line) {
            continue;
        }
        if line.trim_start_matches(' ').starts_with('\t') || indent(line) <= dash {
            return None;
        }
    }
    let (text, targets) = match take_targets(&lines) {
        Some((text, targets)) => (text, Some(targets)),
        None => (lines.concat(), None),
    };
    let mut one: Vec<FastOrder> = serde_yaml::from_str(&text).ok()?;
    if one.len() != 1 {
        return None;
    }
    let mut raw = raw_order(one.pop()?)?;
    let parsed = std::mem::take(&mut raw.targets);
    Some(match targets {
        Some(targets) => {
            if parsed != [MARK] {
                return None;
            }
            Pending::check(index, raw, &targets)
        }
        None => Pending::check(index, raw, &parsed),
    })
}

/// The order's text with its target list replaced by the marker, and the
/// targets; `None` unless the list is in the plain layout:
///
/// ```yaml
///   - id: X            # the order's keys at its `- ` plus two
///     targets:         # once, alone on its line
///       - 192.0.2.0/24 # items at one indentation, each a plain address
///     status: active   # then a key at most as deep as `targets`, or the end
/// ```
fn take_targets<'a>(lines: &[&'a str]) -> Option<(String, Vec<&'a str>)> {
    let first = lines.first()?;
    let dash = indent(first);
    let rest = first[dash..].strip_prefix("- ")?;
    if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let keys = dash + 2;
    let mut at = lines.iter().enumerate().filter(|(_, line)| {
        indent(line) == keys && line[keys..].trim_end_matches([' ', '\n']) == "targets:"
    });
    let (key, _) = at.next()?;
    if at.next().is_some() {
        return None;
    }
    let items = indent(lines.get(key + 1)?);
    if items < keys {
        return None;
    }
    let mut targets = Vec::new();
    let mut end = key + 1;
    while let Some(line) = lines.get(end) {
        let Some(target) = plain_item(line, items) else {
            break;
        };
        targets.push(target);
        end += 1;
    }
    if targets.is_empty() {
        return None;
    }
    // What follows must end the list: blank lines and comments, then a key
    // no deeper than `targets` (not another item) or the end of the order.
    let next = lines[end..].iter().find(|line| {
        !matches!(
            line.trim_start_matches(' ').as_bytes().first(),
            None | Some(b'\n' | b'#')
        )
    });
    if let Some(next) = next {
        let depth = indent(next);
        if depth > keys || (depth == keys && next[depth..].starts_with('-')) {
            return None;
        }
    }
    let mut text = lines[..key].concat();
    text.push_str(&" ".repeat(keys));
    text.push_str("targets: [");
    text.push_str(MARK);
    text.push_str("]\n");
    text.extend(lines[end..].iter().copied());
    Some((text, targets))
}

/// The spaces `line` starts with (counted byte by byte: faster on short
/// lines than `trim_start_matches`, which reads characters).
fn indent(line: &str) -> usize {
    line.bytes().take_while(|&b| b == b' ').count()
}

/// The target of a line `- TARGET` at indentation `items`, where TARGET is
/// a plain scalar YAML can only read as that string: hex digits, `.`, `:`
/// and `/`, with a `/`, a `:` or two dots (never a number), not ending in
/// `:` (that would make a mapping). Trailing spaces are allowed; nothing
/// else is.
fn plain_item(line: &str, items: usize) -> Option<&str> {
    if indent(line) != items {
        return None;
    }
    plain_target(line[items..].strip_prefix("- ")?.strip_suffix('\n')?)
}

/// An item's text after its `- `, when it is a plain target (see
/// [`plain_item`]), without its trailing spaces.
fn plain_target(body: &str) -> Option<&str> {
    let target = body.trim_end_matches(' ');
    // One pass: every byte allowed, a `/` or a `:` seen, the dots counted.
    let (mut allowed, mut marked, mut dots) = (true, false, 0u32);
    for &b in target.as_bytes() {
        let class = TARGET_BYTES[usize::from(b)];
        allowed &= class != 0;
        marked |= class == SLASH_OR_COLON;
        dots += u32::from(class == DOT);
    }
    let string = marked || dots >= 2;
    (!target.is_empty() && allowed && string && !target.ends_with(':')).then_some(target)
}

/// [`plain_target`]'s bytes: 0 for one never in a plain target.
const TARGET_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'/' | b':' => SLASH_OR_COLON,
            b'.' => DOT,
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => 1,
            _ => 0,
        };
        b += 1;
    }
    table
};
const SLASH_OR_COLON: u8 = 2;
const DOT: u8 = 3;

/// The fields of an order in the plain layout, by [`KEYS`] position.
const KEYS: [&str; 9] = [
    "id",
    "rung",
    "action",
    "direction",
    "targets",
    "status",
    "effective_from",
    "expires_at",
    "reference",
];
const TARGETS: usize = 4;

/// Where [`read_plain`] is in an order's target list.
#[derive(Clone, Copy)]
enum List {
    /// Not in it: before `targets:`, or after its items.
    Out,
    /// Just after `targets:`: an item must follow.
    Open,
    /// Items at this indentation.
    Items(usize),
}

/// An order in the plain layout read without serde_yaml, or `None`:
///
/// ```yaml
///   - id: X             # each key once, at the `- ` plus two, in any order
///     rung: datacenter  # a value: see `scalar`
///     targets:          # alone on its line, then items at one indentation
///       - 192.0.2.0/24  # each a plain target (`plain_target`)
/// ```
///
/// with blank lines and whole-line comments anywhere. Nothing in this
/// layout can be a multi-line scalar, an anchor or a flow collection, so
/// its lines are what they look like, and serde_yaml would read the same
/// order: every required key present, no key twice or unknown, and each
/// value the string it is read as.
fn read_plain(index: usize, text: &str, dash: usize) -> Option<(Pending, usize)> {
    read_plain_into(index, text, dash, &mut Targets::default())
}

/// [`read_plain`] with the targets read into `targets` (cleared first): one
/// list kept for a whole run of orders, so that it grows only once.
fn read_plain_into<'a>(
    index: usize,
    text: &'a str,
    dash: usize,
    targets: &mut Targets<'a>,
) -> Option<(Pending, usize)> {
    let keys = dash + 2;
    let mut values: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
    targets.clear();
    let mut list = List::Out;
    // The first line's key sits after the `- `, at the keys' column.
    let mut at = dash + 2;
    if text.get(dash..at) != Some("- ") || text[at..].starts_with(' ') {
        return None;
    }
    let mut first = true;
    while at < text.len() {
        let start = at;
        let end = start + memchr::memchr(b'\n', &text.as_bytes()[start..])?;
        at = end + 1;
        let line = &text[start..end];
        let spaces = indent(line);
        let body = &line[spaces..];
        let depth = if first { keys } else { spaces };
        if depth == dash && body.starts_with("- ") && !first {
            // The next order.
            at = start;
            break;
        }
        first = false;
        if body.is_empty() || body.starts_with('#') {
            targets.gap |= matches!(list, List::Items(_));
            continue;
        }
        let item = body.strip_prefix("- ");
        match (list, item) {
            (List::Open, Some(item)) if depth >= keys => {
                list = List::Items(depth);
                targets.push(item, start..at, depth)?;
                continue;
            }
            (List::Items(items), Some(item)) if depth == items => {
                targets.push(item, start..at, depth)?;
                continue;
            }
            // An empty list (a null), or a value over more than one line.
            (List::Open, _) => return None,
            _ if depth != keys => return None,
            // A key ends the list.
            (List::Items(_), _) => list = List::Out,
            _ => {}
        }
        let (key, value) = body.split_once(':')?;
        let slot = KEYS.iter().position(|&k| k == key)?;
        if values[slot].is_some() {
            return None;
        }
        if slot == TARGETS {
            if !value.trim_end_matches(' ').is_empty() {
                return None;
            }
            values[slot] = Some("");
            list = List::Open;
            continue;
        }
        values[slot] = Some(scalar(value.strip_prefix(' ')?.trim_matches(' '))?);
    }
    if targets.texts.is_empty() {
        return None;
    }
    let raw = RawOrder {
        id: values[0]?.to_owned(),
        rung: variant(values[1])?,
        action: variant(values[2])?,
        direction: variant(values[3])?,
        targets: Vec::new(),
        status: variant(values[5])?,
        effective_from: values[6].map(str::to_owned),
        expires_at: values[7].map(str::to_owned),
        reference: values[8].map(str::to_owned),
    };
    let parsed = (targets.parsed.len() == targets.texts.len()).then_some(&targets.parsed[..]);
    Some((
        Pending::check_parsed(index, raw, &targets.texts, parsed),
        at,
    ))
}

/// The targets [`read_plain`] has read.
#[derive(Default)]
struct Targets<'a> {
    texts: Vec<&'a str>,
    /// Those that are plain addresses or prefixes, parsed (all of them when
    /// there are as many as `texts`).
    parsed: Vec<IpNetwork>,
    /// The lines of the items so far.
    span: Option<ItemLines>,
    /// A blank or comment line came after an item.
    gap: bool,
    /// An item came after such a line.
    gapped: bool,
}

impl<'a> Targets<'a> {
    fn clear(&mut self) {
        self.texts.clear();
        self.parsed.clear();
        self.span = None;
        self.gap = false;
        self.gapped = false;
    }

    /// The lines of the list, when they are all items, each parsed by
    /// hand.
    fn items(&self) -> Option<ItemLines> {
        self.span
            .filter(|_| !self.gapped && self.parsed.len() == self.texts.len())
    }

    /// Reads an item's text after its `- `, on `line` of the order's text
    /// at `indent`; `None` unless it is a plain target. One that parses by
    /// hand as an address or prefix is one ([`item_target`]), so it is not
    /// checked byte by byte as well.
    fn push(&mut self, item: &'a str, line: std::ops::Range<usize>, indent: usize) -> Option<()> {
        let (target, prefix) = item_target(item);
        match prefix {
            Some(prefix) => self.parsed.push(prefix),
            None => {
                plain_target(target)?;
            }
        }
        self.texts.push(target);
        self.gapped |= self.gap;
        let span = self.span.get_or_insert(ItemLines {
            start: line.start,
            end: line.end,
            indent,
        });
        span.end = line.end;
        Some(())
    }
}

/// An item's target (its text after `- `, trailing spaces dropped), and
/// the address or prefix it is when it reads by hand as one (digits and
/// dots, three of them; or hex digits and colons, not ending in one).
pub(super) fn item_target(item: &str) -> (&str, Option<IpNetwork>) {
    let target = item.trim_end_matches(' ');
    let prefix = plain_prefix(target).filter(|_| !target.ends_with(':'));
    (target, prefix)
}

/// The enum variant serde names `value`.
fn variant<'a, T: Deserialize<'a>>(value: Option<&'a str>) -> Option<T> {
    let value: StrDeserializer<'a, serde::de::value::Error> = value?.into_deserializer();
    T::deserialize(value).ok()
}

/// A value that YAML can only read as the string returned: a quoted one
/// without escapes or its own quote inside, or a plain one of letters,
/// digits and `. _ : / + -` that starts with a letter or digit, does not end
/// in `:`, and is not a null, a boolean or a number.
fn scalar(value: &str) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote) {
            let inner = inner.strip_suffix(quote)?;
            return (!inner.contains([quote, '\\'])).then_some(inner);
        }
    }
    let bytes = value.as_bytes();
    let plain =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'+' | b'-');
    let first = *bytes.first()?;
    if !first.is_ascii_alphanumeric() || !bytes.iter().all(plain) || bytes.last() == Some(&b':') {
        return None;
    }
    if first.is_ascii_alphabetic() {
        // Nothing that starts with a letter is a number YAML reads.
        let special = [
            "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE",
        ];
        return (!special.contains(&value)).then_some(value);
    }
    // Starting with a digit: a string only with a character no number has.
    let numeric =
        |b: &u8| b.is_ascii_hexdigit() || matches!(b, b'x' | b'o' | b'.' | b'_' | b'+' | b'-');
    (!bytes.iter().all(numeric)).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{parse, tests::assert_paths_agree as agree};

    const HEAD: &str =
        "format: blocker-feed/v1\nserial: 7\nissued_at: 2026-11-24T10:00:00Z\nissuer: ATKM\n";

    fn order(id: &str, targets: &str, after: &str) -> String {
        format!(
            "  - id: {id}\n    rung: datacenter\n    action: drop\n    direction: both\n    targets:\n{targets}{after}"
        )
    }

    #[test]
    fn plain_lists_are_read_apart_and_agree() {
        let plain = "      - 203.0.113.0/24\n      - 2001:db8::/48\n      - 198.51.100.7\n";
        let text = format!(
            "{HEAD}orders:\n{}{}",
            order("A-1", plain, "    status: active\n"),
            order("A-2", "    - 192.0.2.1\n", "\n# end\n    status: active\n"),
        );
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let first = lines.iter().position(|l| l.contains("A-1")).expect("A-1");
        let (cut, targets) = take_targets(&lines[first..first + 10]).expect("a plain list");
        assert_eq!(targets, ["203.0.113.0/24", "2001:db8::/48", "198.51.100.7"]);
        assert!(cut.contains(MARK) && !cut.contains("203.0.113.0"), "{cut}");
        agree(&text);
        assert_eq!(
            parse(text.as_bytes()).expect("valid").orders[1]
                .targets
                .len(),
            1
        );
    }

    #[test]
    fn anything_else_is_left_to_serde_yaml_and_agrees() {
        let status = "    status: active\n";
        let cases = [
            // Numbers, mappings, quoted or commented items.
            order("B-1", "      - 10\n", status),
            order("B-2", "      - 2001:db8::\n", status),
            order("B-3", "      - \"192.0.2.1\"\n", status),
            order("B-4", "      - 192.0.2.1 # x\n", status),
            // A continuation line, and an item after a blank line.
            order("B-5", "      - 192.0.2.1\n        /32\n", status),
            order("B-6", "      - 192.0.2.1\n\n      - 192.0.2.2\n", status),
            // Items at two indentations; an item at the key's own depth.
            order("B-7", "      - 192.0.2.1\n        - 192.0.2.2\n", status),
            order(
                "B-8",
                "      - 192.0.2.1\n",
                "    - 192.0.2.2\n    status: active\n",
            ),
            // Errors found after the list is read apart.
            order(
                "B-9",
                "      - 192.0.2.1/24\n      - 192.0.2.1/24\n",
                status,
            ),
            order(
                "B-10",
                "      - 192.0.2.1\n",
                "    targets: []\n    status: active\n",
            ),
            // A list inside a quoted scalar, with an empty real list.
            format!(
                "  - id: B-11\n    rung: rack\n    action: drop\n    direction: dst\n    reference: \"x\n    targets:\n      - 192.0.2.9\n    y\"\n    targets: []\n{status}"
            ),
            // A list inside a block scalar.
            format!(
                "  - id: B-12\n    rung: rack\n    action: drop\n    direction: dst\n    reference: |\n      targets:\n        - 192.0.2.9\n    targets: []\n{status}"
            ),
        ];
        for (i, case) in cases.iter().enumerate() {
            agree(&format!("{HEAD}orders:\n{case}"));
            let lines: Vec<&str> = case.split_inclusive('\n').collect();
            // B-9 and B-10 (and B-11, caught by the marker) are read apart.
            assert_eq!(
                take_targets(&lines).is_some(),
                (8..=10).contains(&i),
                "{case}"
            );
        }
        let quoted = format!("{HEAD}orders:\n{}", cases[10]);
        assert!(
            fast_split(&quoted, None).is_none(),
            "the marker did not come back"
        );
        assert!(
            parse(quoted.as_bytes()).is_err(),
            "a list inside a quoted scalar is no target"
        );
    }

    #[test]
    fn plain_items_are_only_strings_yaml_reads_as_themselves() {
        for (line, want) in [
            ("  - 192.0.2.1\n", Some("192.0.2.1")),
            ("  - ::1/128  \n", Some("::1/128")),
            ("  - 1.2.\n", Some("1.2.")),
            ("  - 1.2\n", None),
            ("  - 12\n", None),
            ("  - 1e5\n", None),
            ("  - 2001:db8::\n", None),
            ("  - 192.0.2.1\r\n", None),
            ("  -  192.0.2.1\n", None),
            ("  - 192.0.2.1", None),
        ] {
            assert_eq!(plain_item(line, 2), want, "{line:?}");
            if let Some(want) = want {
                let value: Vec<serde_yaml::Value> = serde_yaml::from_str(line).expect("yaml");
                assert_eq!(value, [serde_yaml::Value::String(want.to_owned())]);
            }
        }
    }

    #[test]
    fn plain_orders_are_read_by_hand_and_agree() {
        let keys = "    rung: datacenter\n    action: drop\n    direction: both\n";
        let list = "    targets:\n      - 203.0.113.0/24\n      - 2001:db8::/48\n";
        let status = "    status: active\n";
        let by_hand = [
            // Every field, timestamps and a quoted reference.
            format!(
                "  - id: H-1\n{keys}{list}{status}    effective_from: 2026-11-24T12:00:00Z\n    expires_at: 2027-01-05T12:00:00Z\n    reference: \"Aanwijzing 2026/0001 & co\"\n"
            ),
            // Comments and blank lines anywhere, trailing spaces, the list
            // first and at the keys' own indentation, a single-quoted id.
            format!(
                "  - targets:\n    - 192.0.2.1  \n\n    # a comment\n    - 192.0.2.2\n# another\n    id: 'H-2'   \n  \n{keys}{status}"
            ),
            // Problems found once read: host bits, an id with a `/`, a
            // target listed twice, too broad for the rung, in the past.
            format!(
                "  - id: H/3\n{keys}    targets:\n      - 192.0.2.1/24\n      - 10.0.0.0/8\n      - 192.0.2.9\n      - 192.0.2.9\n{status}    expires_at: 2020-01-01T00:00:00Z\n    effective_from: 2021-01-01T00:00:00Z\n"
            ),
            // Not a time, not a number either.
            format!("  - id: H-4\n{keys}{list}{status}    expires_at: 2027-13-99T99:99:99\n"),
        ];
        let by_serde = [
            // A value over two lines, and an item after the list ended.
            format!("  - id: S-1\n{keys}{list}{status}    reference: a\n      b\n"),
            format!("  - id: S-2\n{keys}{list}{status}      - 192.0.2.3\n"),
            // Nulls, numbers, booleans, a wrongly cased rung.
            format!("  - id: S-3\n{keys}{list}{status}    expires_at:\n"),
            format!("  - id: S-4\n{keys}{list}{status}    expires_at: ~\n"),
            format!("  - id: 12345\n{keys}{list}{status}"),
            format!("  - id: 1e5\n{keys}{list}{status}"),
            format!("  - id: 0x1F\n{keys}{list}{status}"),
            format!("  - id: true\n{keys}{list}{status}"),
            format!(
                "  - id: S-5\n    rung: Rack\n    action: drop\n    direction: both\n{list}{status}"
            ),
            // A key twice, an unknown key, a key missing.
            format!("  - id: S-6\n{keys}{list}{status}{status}"),
            format!("  - id: S-7\n{keys}{list}{status}    note: x\n"),
            format!("  - id: S-8\n{keys}{list}"),
            // The first key one column off; a list inline or empty.
            format!("  -  id: S-9\n{keys}{list}{status}"),
            format!("  - id: S-10\n{keys}    targets: [192.0.2.1]\n{status}"),
            format!("  - id: S-11\n{keys}    targets:\n{status}"),
            // A comment after a value, a tab, an escape, no final newline.
            format!("  - id: S-12\n{keys}{list}    status: active # c\n"),
            format!("  - id: S-13\n{keys}{list}    status:\tactive\n"),
            format!("  - id: \"S\\x41\"\n{keys}{list}{status}"),
            format!("  - id: S-15\n{keys}{list}    status: active"),
        ];
        for (case, hand) in by_hand
            .iter()
            .map(|c| (c, true))
            .chain(by_serde.iter().map(|c| (c, false)))
        {
            agree(&format!("{HEAD}orders:\n{case}"));
            let read = read_plain(0, case, 2);
            assert_eq!(read.is_some(), hand, "{case}");
            if let Some((_, len)) = read {
                assert_eq!(len, case.len(), "{case}");
            }
        }
        // Orders side by side: each read up to the next.
        let two = format!("{}{}", by_hand[0], by_hand[1]);
        let (_, len) = read_plain(0, &two, 2).expect("read by hand");
        assert_eq!(len, by_hand[0].len());
        agree(&format!("{HEAD}orders:\n{two}{}{two}", by_serde[0]));
    }

    #[test]
    fn plain_scalars_are_strings_yaml_reads_as_themselves() {
        for value in [
            "ATKM-2026-0001",
            "2026-11-24T12:00:00Z",
            "a:b",
            "x/y+z",
            "inf",
            "nan",
            "yes",
            "'q t'",
            "\"a & b\"",
            "\"\"",
            "null",
            "NULL",
            "~",
            "True",
            "false",
            "12",
            "-1",
            "+1",
            "0x1f",
            "0o17",
            "1e5",
            "1_000",
            ".5",
            "1.",
            "1.5e-3",
            "a:",
            "a b",
            "a #b",
            "-a",
            ".inf",
            "\"a\\n\"",
            "'it''s'",
            "12:30",
            "0b101",
            "1e",
            "e1",
            "Inf",
            "+.inf",
            "-.inf",
            ".NaN",
            "0x",
            "x1",
        ] {
            let Ok(yaml) = serde_yaml::from_str::<serde_yaml::Value>(&format!("k: {value}\n"))
            else {
                assert_eq!(scalar(value), None, "{value}");
                continue;
            };
            let read = yaml.get("k").and_then(serde_yaml::Value::as_str);
            if let Some(string) = scalar(value) {
                assert_eq!(read, Some(string), "{value}");
            }
        }
    }
}
