//! The fast path for the plain block layout: `orders:` at the left margin,
//! then its `- ` items at one indentation, nothing after them. The header
//! and then each order parse as documents of their own, on two threads, and
//! an order's block list of plain address targets (nearly all of a large
//! feed) is read line by line instead of by serde_yaml, which costs about a
//! microsecond per target and holds every event of a document in memory.
//!
//! Nothing here decides what a feed means: a list is read by hand only where
//! its lines can mean nothing but a list of plain strings, and the order is
//! still parsed by serde_yaml with a marker in the list's place, which must
//! come back as the order's whole `targets` (so the list was where it
//! seemed). Any other layout, or any doubt, gives `None`, and the caller
//! parses the feed as before. The tests below and the fuzz target check
//! both ways agree.

use super::{Fast, FastOrder, Pending, header, raw_order};

/// Stands in for a target list read by hand.
const MARK: &str = "blocker-targets-read-apart";

pub(super) fn fast_split(text: &str) -> Option<Fast> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = lines.iter().position(|l| l.trim_end() == "orders:")?;
    let mut items: Vec<usize> = Vec::new();
    let mut indent = None;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start_matches(' ');
        if trimmed.trim().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.starts_with('\t') {
            return None;
        }
        let n = line.len() - trimmed.len();
        let item = trimmed.starts_with("- ");
        match indent {
            None if item => {
                indent = Some(n);
                items.push(i);
            }
            Some(ind) if n == ind && item => items.push(i),
            Some(ind) if n > ind => {}
            _ => return None,
        }
    }
    if items.is_empty() {
        return None;
    }
    let head = lines[..start].concat() + "orders: []\n";
    let (header, none) = header(serde_yaml::from_str(&head).ok()?)?;
    if !none.is_empty() {
        return None;
    }
    let mut bounds = items.clone();
    bounds.push(lines.len());
    let orders: Vec<&[&str]> = bounds.windows(2).map(|w| &lines[w[0]..w[1]]).collect();
    let parse = |first: usize, orders: &[&[&str]]| -> Option<Vec<Pending>> {
        orders
            .iter()
            .enumerate()
            .map(|(i, lines)| parse_order(first + i, lines))
            .collect()
    };
    let half = orders.len() / 2;
    let (a, b) = crate::parallel::join(
        lines.len(),
        || parse(0, &orders[..half]),
        || parse(half, &orders[half..]),
    );
    let mut orders = a?;
    orders.extend(b?);
    Some(Fast { header, orders })
}

/// One order (its lines, from its `- ` on) parsed and checked.
fn parse_order(index: usize, lines: &[&str]) -> Option<Pending> {
    let (text, targets) = match take_targets(lines) {
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

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
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
    let body = line[items..].strip_prefix("- ")?.strip_suffix('\n')?;
    let target = body.trim_end_matches(' ');
    let bytes = target.as_bytes();
    let allowed = |b: &u8| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/');
    let string = bytes.iter().any(|b| matches!(b, b'/' | b':'))
        || bytes.iter().filter(|&&b| b == b'.').count() >= 2;
    (!bytes.is_empty() && bytes.iter().all(allowed) && string && bytes.last() != Some(&b':'))
        .then_some(target)
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
            fast_split(&quoted).is_none(),
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
}
