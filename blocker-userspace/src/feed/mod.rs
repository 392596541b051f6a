//! The order feed (contract §1): parse and validate bytes into a [`Feed`].
//!
//! Validation reports *every* problem, each with the order it belongs to and
//! what to fix. The contract's rung bounds are checked here (a feed that
//! breaks them is invalid); the operator's own guardrails (tighter rung
//! bounds, protected prefixes, max_prefixes) are not: see `policy`.

mod again;
mod model;
mod split;

use std::{fmt, net::IpAddr, sync::Arc};

pub use again::{Base, Edits, Shape};
use ipnetwork::IpNetwork;
pub use model::*;
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// The only format this build reads.
pub const FORMAT: &str = "blocker-feed/v1";
/// Largest feed document accepted, whatever the transport allowed.
pub const MAX_FEED_BYTES: usize = 64 * 1024 * 1024;
/// Deepest nesting a feed needs is 4 (feed → orders → order → targets).
const MAX_DEPTH: usize = 16;
const MAX_ID_LEN: usize = 64;
const MAX_REFERENCE_LEN: usize = 1024;

/// One problem found in a feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The order id, or `orders[i]` when the id itself is unusable.
    pub order: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(order) = &self.order {
            write!(f, "order {order}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem of a feed that cannot be applied; one per line in Display.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FeedError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

fn problem(order: Option<&str>, field: Option<&str>, message: impl Into<String>) -> Problem {
    Problem {
        order: order.map(str::to_owned),
        field: field.map(str::to_owned),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    format: String,
    serial: u64,
    issued_at: String,
    issuer: String,
    orders: Vec<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrder {
    id: String,
    rung: Rung,
    action: Action,
    direction: Direction,
    targets: Vec<String>,
    status: Status,
    #[serde(default)]
    effective_from: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

/// Parses and validates a feed.
pub fn parse(bytes: &[u8]) -> Result<Feed, FeedError> {
    parse_against(&Text::scan(bytes), None).map(|parsed| parsed.feed)
}

/// A feed parsed, with where its orders lie in its text when a later feed
/// can be parsed against it.
pub struct Parsed {
    pub feed: Feed,
    pub shape: Option<Shape>,
    /// Orders taken from the feed parsed against, whole or with target
    /// lines changed.
    pub taken: usize,
    /// How the parse made the targets of those it took with target lines
    /// changed, for the compiler.
    pub edits: Edits,
}

/// Parses and validates a feed as [`parse`] does, against the feed in
/// force when there is one: orders whose text is the same, or differs only
/// in target lines, are taken from it (see [`again`]). The result is the
/// same either way.
pub fn parse_against(text: &Text<'_>, base: Option<&Base<'_>>) -> Result<Parsed, FeedError> {
    let lone_cr = text.found.lone_cr;
    let text = checked_text(text)?;
    if let Some(fast) = fast_path(text, lone_cr, base) {
        let feed = finish(fast.header, fast.orders.into_iter())?;
        return Ok(Parsed {
            feed,
            shape: fast.shape,
            taken: fast.taken,
            edits: fast.edits,
        });
    }
    parse_general(text).map(|feed| Parsed {
        feed,
        shape: None,
        taken: 0,
        edits: Edits::default(),
    })
}

/// [`parse`] without its fast paths: for checks that both give the same
/// (the fuzz target runs it on every input).
#[doc(hidden)]
pub fn parse_general_only(bytes: &[u8]) -> Result<Feed, FeedError> {
    parse_general(checked_text(&Text::scan(bytes))?)
}

/// A feed's bytes scanned for what a parse checks first: whether they are
/// plain text ([`Scanned::plain`]), and UTF-8. Only bytes are looked at, none
/// is parsed: the daemon scans a feed as it downloads ([`Scanner`]), or on
/// its second core while the signature is checked on the first.
pub struct Text<'a> {
    bytes: &'a [u8],
    found: Found,
}

/// What a scan found in some bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    plain: bool,
    /// Where the first byte that is not UTF-8 is, if one is.
    not_utf8: Option<usize>,
    /// Whether a carriage return has no line feed after it.
    lone_cr: bool,
}

impl Found {
    /// Nothing scanned yet.
    const NOTHING: Self = Self {
        plain: true,
        not_utf8: None,
        lone_cr: false,
    };

    /// What the scans of some bytes and of those `at` bytes on (`later`,
    /// which start after a line end) found together.
    fn then(self, later: Self, at: usize) -> Self {
        Self {
            plain: self.plain && later.plain,
            not_utf8: self.not_utf8.or(later.not_utf8.map(|offset| at + offset)),
            lone_cr: self.lone_cr || later.lone_cr,
        }
    }
}

impl<'a> Text<'a> {
    /// Scans `bytes` in two halves side by side (cut after a line end, so
    /// that no line's indentation, and no character, is split).
    pub fn scan(bytes: &'a [u8]) -> Self {
        let middle = bytes.len() / 2;
        let cut = bytes[middle..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| middle + i + 1);
        let (first, second) = bytes.split_at(cut);
        let (first, second) = crate::parallel::join(
            bytes.len() / AVERAGE_LINE,
            || Self::scan_here(first),
            || Self::scan_here(second),
        );
        Self {
            bytes,
            found: first.found.then(second.found, cut),
        }
    }

    /// Scans `bytes` on the calling thread.
    pub fn scan_here(bytes: &'a [u8]) -> Self {
        let Scanned { plain, any_cr } = Scanned::of(bytes);
        // Plain text is ASCII.
        let not_utf8 = match plain {
            true => None,
            false => std::str::from_utf8(bytes).err().map(|e| e.valid_up_to()),
        };
        Self {
            bytes,
            found: Found {
                plain,
                not_utf8,
                // Parts end at a line end (or the feed's): a carriage
                // return at a part's end has none after it in the feed
                // either.
                lone_cr: any_cr && lone_carriage_return(bytes),
            },
        }
    }
}

/// [`Text::scan_here`] done a piece at a time as a feed's bytes arrive:
/// each piece ends at a line end, so pieces combine as the halves of
/// [`Text::scan`] do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scanner {
    /// Bytes scanned.
    done: usize,
    found: Found,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            done: 0,
            found: Found::NOTHING,
        }
    }
}

impl Scanner {
    /// Scans what `bytes`, the feed so far, hold past the last call, up to
    /// their last line end.
    pub fn advance(&mut self, bytes: &[u8]) {
        if let Some(last) = memchr::memrchr(b'\n', &bytes[self.done..]) {
            self.scan_to(bytes, self.done + last + 1);
        }
    }

    fn scan_to(&mut self, bytes: &[u8], end: usize) {
        let piece = Text::scan_here(&bytes[self.done..end]);
        self.found = self.found.then(piece.found, self.done);
        self.done = end;
    }

    /// `bytes`, the whole feed that [`Scanner::advance`] was given as it
    /// grew, as text: the rest scanned.
    pub fn finish(mut self, bytes: &[u8]) -> Text<'_> {
        self.scan_to(bytes, bytes.len());
        Text {
            bytes,
            found: self.found,
        }
    }
}

/// The feed as text, once its size, encoding and characters are checked:
/// nearly every feed is plain text, which passes as scanned; anything else
/// is checked the long way, which names the problem.
fn checked_text<'a>(text: &Text<'a>) -> Result<&'a str, FeedError> {
    let whole = |message: String| FeedError {
        problems: vec![problem(None, None, message)],
    };
    let bytes = text.bytes;
    if bytes.len() > MAX_FEED_BYTES {
        return Err(whole(format!(
            "the feed is {} bytes, over the {MAX_FEED_BYTES}-byte limit",
            bytes.len()
        )));
    }
    if let Some(at) = text.found.not_utf8 {
        return Err(whole(format!(
            "not UTF-8 (invalid byte at offset {at}); the feed must be UTF-8 text"
        )));
    }
    // SAFETY: the scan found every byte UTF-8: plain bytes are ASCII, and
    // any other part was checked whole (parts are cut after a line feed,
    // never inside a character).
    let checked = unsafe { std::str::from_utf8_unchecked(bytes) };
    if !text.found.plain {
        check_characters(checked).map_err(whole)?;
        check_no_anchors(checked).map_err(whole)?;
    }
    Ok(checked)
}

/// Whether `bytes` hold a carriage return not followed by a line feed.
fn lone_carriage_return(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\r', bytes).any(|at| bytes.get(at + 1) != Some(&b'\n'))
}

/// Bytes in a line of a feed, about: to count a feed's work by its size.
pub(crate) const AVERAGE_LINE: usize = 24;

/// What one pass over a feed's bytes tells.
#[derive(Debug, PartialEq, Eq)]
struct Scanned {
    /// The bytes are printable ASCII, tabs and line ends, without a
    /// character YAML gives a special meaning that a feed never needs (see
    /// [`check_no_anchors`]) and without a run of blanks long enough to
    /// indent a line too deep: text both checks pass. As [`printable`],
    /// not [`special`] and not [`blank_chunk`] tell, in one pass instead of
    /// three (the pass is most of a large feed's scan).
    plain: bool,
    /// They hold a carriage return.
    any_cr: bool,
}

impl Scanned {
    fn of(bytes: &[u8]) -> Self {
        // Each test folded into a flag of its own over a chunk: the
        // compiler vectorises that loop (the tests folded into one flag,
        // it does not).
        let fold = |bytes: &[u8]| {
            let (mut other, mut special, mut cr) = (0u8, 0u8, 0u8);
            for &b in bytes {
                other |= unprintable(b);
                special |= special_byte(b);
                cr |= u8::from(b == b'\r');
            }
            (other | special, cr)
        };
        let blank = |half: &[u8]| u8::from(!nonblank(half));
        let (mut refused, mut cr) = (0u8, 0u8);
        let chunks = bytes.chunks_exact(64);
        let rest = chunks.remainder();
        for chunk in chunks {
            let (r, c) = fold(chunk);
            let (low, high) = chunk.split_at(32);
            refused |= r | blank(low) | blank(high);
            cr |= c;
        }
        let (r, c) = fold(rest);
        refused |= r | rest.get(..32).map_or(0, blank);
        cr |= c;
        Self {
            plain: refused == 0,
            any_cr: cr != 0,
        }
    }
}

// The scans below take a whole chunk at a time, folding bytes (a `bool`
// fold the compiler does not vectorise), without a branch per byte.

/// 1 when `b` is not printable ASCII, a tab or a line end, else 0.
fn unprintable(b: u8) -> u8 {
    u8::from(!((b' '..=b'~').contains(&b) | (b == b'\t') | (b == b'\n') | (b == b'\r')))
}

/// 1 when `b` is one of `& * ! [ ] { }`, else 0: the only characters that
/// can be refused by [`check_no_anchors`] or change the flow depth. (`[`
/// and `{`, `]` and `}` differ in one bit: five compares.)
fn special_byte(b: u8) -> u8 {
    u8::from(b == b'&')
        | u8::from(b == b'*')
        | u8::from(b == b'!')
        | u8::from((b | 0x20) == b'{')
        | u8::from((b | 0x20) == b'}')
}

/// Whether every byte is printable ASCII, a tab or a line end.
fn printable(bytes: &[u8]) -> bool {
    let chunks = bytes.chunks_exact(64);
    let rest = chunks.remainder();
    chunks
        .into_iter()
        .all(|chunk| chunk.iter().fold(0u8, |any, &b| any | unprintable(b)) == 0)
        && rest.iter().all(|&b| unprintable(b) == 0)
}

/// Whether any byte is one of `& * ! [ ] { }` ([`special_byte`]).
fn special(bytes: &[u8]) -> bool {
    let chunks = bytes.chunks_exact(64);
    let rest = chunks.remainder();
    chunks
        .into_iter()
        .any(|chunk| chunk.iter().fold(0u8, |any, &b| any | special_byte(b)) != 0)
        || rest.iter().any(|&b| special_byte(b) != 0)
}

/// Whether a whole 32-byte chunk is spaces and tabs. A line indented past
/// 64 columns starts with a run of more than 64, and any run of 63 or more
/// covers a whole chunk: without one, no line can be.
fn blank_chunk(bytes: &[u8]) -> bool {
    bytes.chunks_exact(32).any(|chunk| !nonblank(chunk))
}

/// Whether `chunk` holds a byte other than a space or a tab.
fn nonblank(chunk: &[u8]) -> bool {
    chunk.iter().fold(0u8, |other, &b| {
        other | u8::from((b != b' ') & (b != b'\t'))
    }) != 0
}

/// The general path: the whole document as a YAML value tree, each order
/// deserialized from it, every problem named.
fn parse_general(text: &str) -> Result<Feed, FeedError> {
    let whole = |message: String| FeedError {
        problems: vec![problem(None, None, message)],
    };
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| whole(format!("not valid YAML: {e}")))?;
    if depth(&value) > MAX_DEPTH {
        return Err(whole(format!(
            "nested deeper than {MAX_DEPTH} levels; a feed is a flat list of orders"
        )));
    }
    let raw: RawFeed = serde_yaml::from_value(value).map_err(|e| {
        whole(format!(
            "{e} (see the feed format: format, serial, issued_at, issuer, orders)"
        ))
    })?;
    let header = Header {
        format: raw.format,
        serial: raw.serial,
        issued_at: raw.issued_at,
        issuer: raw.issuer,
    };
    finish(header, raw.orders.into_iter().map(Pending::Value))
}

/// The feed's fields besides its orders.
struct Header {
    format: String,
    serial: u64,
    issued_at: String,
    issuer: String,
}

/// One order on its way through [`finish`].
enum Pending {
    /// Still a YAML value (the general path): deserialized and checked there.
    Value(serde_yaml::Value),
    /// Deserialized and checked already (the fast paths): the order, or the
    /// problems that keep it out.
    Checked(Option<Order>, Vec<Problem>),
}

impl Pending {
    /// Checks a deserialized order whose targets are `targets`.
    fn check<S: AsRef<str>>(index: usize, raw: RawOrder, targets: &[S]) -> Self {
        Self::check_parsed(index, raw, targets, None)
    }

    /// [`Self::check`] with the targets' texts parsed already, in `parsed`.
    fn check_parsed<S: AsRef<str>>(
        index: usize,
        raw: RawOrder,
        targets: &[S],
        parsed: Option<&[IpNetwork]>,
    ) -> Self {
        let mut problems = Vec::new();
        let order = check_order(index, raw, targets, parsed, &mut problems);
        Self::Checked(order, problems)
    }
}

/// Validates the header and every order.
fn finish(raw: Header, orders: impl Iterator<Item = Pending>) -> Result<Feed, FeedError> {
    let mut problems = Vec::new();
    if raw.format != FORMAT {
        problems.push(problem(
            None,
            Some("format"),
            format!("{:?} is not supported; expected {FORMAT}", raw.format),
        ));
    }
    let issued_at = parse_time(&raw.issued_at).unwrap_or_else(|message| {
        problems.push(problem(None, Some("issued_at"), message));
        OffsetDateTime::UNIX_EPOCH
    });
    if raw.issuer.trim().is_empty() {
        problems.push(problem(None, Some("issuer"), "must not be empty"));
    }
    let mut parsed: Vec<Order> = Vec::new();
    // Ids each greater than the one before cannot repeat: the set of ids
    // is made only once one is not (a feed sorted by id, as it comes from
    // one serial to the next, needs none).
    let mut seen: Option<std::collections::HashSet<String>> = None;
    for (index, order) in orders.enumerate() {
        let order = match order {
            Pending::Checked(order, found) => {
                problems.extend(found);
                order
            }
            Pending::Value(value) => parse_order(index, value, &mut problems),
        };
        if let Some(order) = order {
            if seen.is_none() && parsed.last().is_some_and(|last| last.id >= order.id) {
                seen = Some(parsed.iter().map(|o| o.id.clone()).collect());
            }
            if seen
                .as_mut()
                .is_some_and(|seen| !seen.insert(order.id.clone()))
            {
                problems.push(problem(
                    Some(&order.id),
                    Some("id"),
                    "duplicate order id; every order needs its own id",
                ));
            }
            parsed.push(order);
        }
    }
    if problems.is_empty() {
        Ok(Feed {
            serial: raw.serial,
            issued_at,
            issuer: raw.issuer,
            orders: parsed,
        })
    } else {
        Err(FeedError { problems })
    }
}

/// A feed deserialized straight into its types, without a YAML value tree
/// in between: the fast path for a well-formed feed. Every field that must
/// be a string is taken as a YAML value and must be one; anything else (or
/// any error at all) returns `None`, and the general path, which names each
/// problem, runs instead. So both paths accept exactly the same feeds.
struct Fast {
    header: Header,
    orders: Vec<Pending>,
    /// Where the orders lie, when each was read from its own text.
    shape: Option<Shape>,
    /// Orders taken from the feed in force.
    taken: usize,
    /// How the targets of those taken with target lines changed were made.
    edits: Edits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastFeed {
    format: serde_yaml::Value,
    serial: u64,
    issued_at: serde_yaml::Value,
    issuer: serde_yaml::Value,
    orders: Vec<FastOrder>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastOrder {
    id: serde_yaml::Value,
    rung: Rung,
    action: Action,
    direction: Direction,
    targets: Vec<serde_yaml::Value>,
    status: Status,
    #[serde(default)]
    effective_from: Option<serde_yaml::Value>,
    #[serde(default)]
    expires_at: Option<serde_yaml::Value>,
    #[serde(default)]
    reference: Option<serde_yaml::Value>,
}

fn string(value: serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s),
        _ => None,
    }
}

fn optional(value: Option<serde_yaml::Value>) -> Option<Option<String>> {
    match value {
        None | Some(serde_yaml::Value::Null) => Some(None),
        Some(value) => string(value).map(Some),
    }
}

fn raw_order(order: FastOrder) -> Option<RawOrder> {
    let targets = order
        .targets
        .into_iter()
        .map(string)
        .collect::<Option<Vec<String>>>()?;
    Some(RawOrder {
        id: string(order.id)?,
        rung: order.rung,
        action: order.action,
        direction: order.direction,
        targets,
        status: order.status,
        effective_from: optional(order.effective_from)?,
        expires_at: optional(order.expires_at)?,
        reference: optional(order.reference)?,
    })
}

fn header(feed: FastFeed) -> Option<(Header, Vec<FastOrder>)> {
    Some((
        Header {
            format: string(feed.format)?,
            serial: feed.serial,
            issued_at: string(feed.issued_at)?,
            issuer: string(feed.issuer)?,
        },
        feed.orders,
    ))
}

fn fast_path(text: &str, lone_cr: bool, base: Option<&Base<'_>>) -> Option<Fast> {
    // A carriage return with no line feed after it (the scan looked) is a
    // line break to YAML (a value spanning it is folded), which the hand
    // reader does not take as one: such a feed goes the general way.
    if lone_cr {
        return None;
    }
    if let Some(fast) = split::fast_split(text, base) {
        return Some(fast);
    }
    let (header, orders) = header(serde_yaml::from_str(text).ok()?)?;
    let orders = orders
        .into_iter()
        .enumerate()
        .map(|(index, order)| {
            let mut raw = raw_order(order)?;
            let targets = std::mem::take(&mut raw.targets);
            Some(Pending::check(index, raw, &targets))
        })
        .collect::<Option<Vec<Pending>>>()?;
    Some(Fast {
        header,
        orders,
        shape: None,
        taken: 0,
        edits: Edits::default(),
    })
}

fn parse_order(
    index: usize,
    value: serde_yaml::Value,
    problems: &mut Vec<Problem>,
) -> Option<Order> {
    // Name the order by its id when the id is usable, even if the rest fails.
    let id_hint = value
        .get("id")
        .and_then(serde_yaml::Value::as_str)
        .filter(|id| valid_id(id))
        .map_or_else(|| format!("orders[{index}]"), str::to_owned);
    match serde_yaml::from_value::<RawOrder>(value) {
        Ok(mut raw) => {
            let targets = std::mem::take(&mut raw.targets);
            check_order(index, raw, &targets, None, problems)
        }
        Err(e) => {
            problems.push(problem(Some(&id_hint), None, e.to_string()));
            None
        }
    }
}

/// Validates one deserialized order whose targets are `targets` (its own
/// `targets` field is not read), parsed already when `parsed` holds them.
fn check_order<S: AsRef<str>>(
    index: usize,
    raw: RawOrder,
    targets: &[S],
    parsed: Option<&[IpNetwork]>,
    problems: &mut Vec<Problem>,
) -> Option<Order> {
    let position = || format!("orders[{index}]");
    let id_hint = if valid_id(&raw.id) {
        raw.id.clone()
    } else {
        position()
    };
    let before = problems.len();
    if !valid_id(&raw.id) {
        problems.push(problem(
            Some(&position()),
            Some("id"),
            format!(
                "{:?} is not a valid id: use 1 to {MAX_ID_LEN} ASCII characters from A-Z a-z 0-9 . _ : -",
                raw.id
            ),
        ));
    }
    let name = id_hint.as_str();
    let texts = targets;
    if texts.is_empty() {
        problems.push(problem(
            Some(name),
            Some("targets"),
            "an order needs at least one target",
        ));
    }
    let targets: Arc<[IpNetwork]> = match parsed.filter(|parsed| sound(raw.rung, parsed)) {
        Some(parsed) => parsed.into(),
        None => sound_targets(raw.rung, texts)
            .unwrap_or_else(|| named_targets(name, raw.rung, texts, problems))
            .into(),
    };
    let mut time_field = |field: &str, text: &Option<String>| {
        text.as_deref().and_then(|t| match parse_time(t) {
            Ok(at) => Some(at),
            Err(message) => {
                problems.push(problem(Some(name), Some(field), message));
                None
            }
        })
    };
    let effective_from = time_field("effective_from", &raw.effective_from);
    let expires_at = time_field("expires_at", &raw.expires_at);
    if let (Some(from), Some(until)) = (effective_from, expires_at)
        && from >= until
    {
        problems.push(problem(
            Some(name),
            Some("expires_at"),
            "must be later than effective_from (the order would never be in force)",
        ));
    }
    if let Some(reference) = &raw.reference
        && reference.chars().count() > MAX_REFERENCE_LEN
    {
        problems.push(problem(
            Some(name),
            Some("reference"),
            format!("longer than {MAX_REFERENCE_LEN} characters"),
        ));
    }
    (problems.len() == before).then_some(Order {
        id: raw.id,
        rung: raw.rung,
        action: raw.action,
        direction: raw.direction,
        targets,
        status: raw.status,
        effective_from,
        expires_at,
        reference: raw.reference,
    })
}

/// An order's targets when every one parses, none is broader than `rung`
/// allows and none is listed twice (nearly always: checked in bulk); `None`
/// if any is not, for [`named_targets`] to name each problem.
fn sound_targets<S: AsRef<str>>(rung: Rung, texts: &[S]) -> Option<Vec<IpNetwork>> {
    let targets = texts
        .iter()
        .map(|text| parse_target(text.as_ref()).ok())
        .collect::<Option<Vec<IpNetwork>>>()?;
    sound(rung, &targets).then_some(targets)
}

/// Whether none of `targets` is broader than `rung` allows and none is
/// listed twice.
fn sound(rung: Rung, targets: &[IpNetwork]) -> bool {
    targets
        .iter()
        .all(|prefix| prefix.prefix() >= rung.contract_min_len(prefix.is_ipv6()))
        && distinct(targets)
}

/// Whether no prefix is listed twice in `targets`. Each goes into a small
/// open-addressing table by its [`distinct_key`]: exact for IPv4, a hash
/// for IPv6, so that only two IPv6 keys alike (or a long probe) need the
/// exact check, by sorting.
fn distinct(targets: &[IpNetwork]) -> bool {
    /// Slots tried for a key before the exact check takes over.
    const PROBES: usize = 16;
    let size = (targets.len() * 2).next_power_of_two().max(16);
    let shift = 64 - size.trailing_zeros();
    let mut table = vec![0u64; size];
    for prefix in targets {
        let key = distinct_key(prefix);
        let start = (key.wrapping_mul(GOLDEN) >> shift) as usize;
        let slot = (0..PROBES)
            .map(|i| (start + i) & (size - 1))
            .find(|&slot| table[slot] == 0 || table[slot] == key);
        match slot {
            Some(slot) if table[slot] == 0 => table[slot] = key,
            _ => return distinct_exactly(targets),
        }
    }
    true
}

/// Fibonacci hashing's multiplier.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// `prefix`'s key in [`distinct`]'s table, never 0 (an empty slot): an
/// IPv4 prefix's bits and length under the top bit, exactly; the
/// [`FastHasher`](crate::fasthash::FastHasher) hash of an IPv6 prefix's
/// bits and length with the top bit clear.
fn distinct_key(prefix: &IpNetwork) -> u64 {
    use std::hash::Hasher as _;
    match prefix {
        IpNetwork::V4(p) => {
            1 << 63 | u64::from(u32::from(p.network())) << 8 | u64::from(p.prefix())
        }
        IpNetwork::V6(p) => {
            let bits = u128::from(p.network());
            let mut hasher = crate::fasthash::FastHasher::default();
            hasher.write_u64((bits >> 64) as u64);
            hasher.write_u64(bits as u64 ^ u64::from(p.prefix()));
            hasher.finish() >> 1 | 1
        }
    }
}

/// [`distinct`] by sorting: each prefix as one sortable key, its bits and
/// its length (IPv6 lengths past IPv4's).
fn distinct_exactly(targets: &[IpNetwork]) -> bool {
    let mut keys: Vec<(u128, u8)> = targets
        .iter()
        .map(|prefix| match prefix {
            IpNetwork::V4(p) => (u128::from(u32::from(p.network())), p.prefix()),
            IpNetwork::V6(p) => (u128::from(p.network()), 33 + p.prefix()),
        })
        .collect();
    keys.sort_unstable();
    keys.windows(2).all(|w| w[0] != w[1])
}

/// An order's targets that parse, each problem named with its field.
fn named_targets<S: AsRef<str>>(
    name: &str,
    rung: Rung,
    texts: &[S],
    problems: &mut Vec<Problem>,
) -> Vec<IpNetwork> {
    let mut targets = Vec::with_capacity(texts.len());
    let mut seen = std::collections::HashSet::with_capacity(texts.len());
    for (i, target) in texts.iter().enumerate() {
        let field = || format!("targets[{i}]");
        match parse_target(target.as_ref()) {
            Ok(prefix) => {
                let ipv6 = prefix.is_ipv6();
                let min = rung.contract_min_len(ipv6);
                if prefix.prefix() < min {
                    let (family, max) = if ipv6 { ("IPv6", 128) } else { ("IPv4", 32) };
                    problems.push(problem(
                        Some(name),
                        Some(&field()),
                        format!(
                            "{prefix} is broader than rung {} allows ({family} /{min}..{max}); use a longer prefix or a deeper rung",
                            rung
                        ),
                    ));
                }
                if !seen.insert(prefix) {
                    problems.push(problem(
                        Some(name),
                        Some(&field()),
                        format!("{prefix} is listed twice"),
                    ));
                }
                targets.push(prefix);
            }
            Err(message) => problems.push(problem(Some(name), Some(&field()), message)),
        }
    }
    targets
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// An address (a /32 or /128) or a prefix without host bits.
fn parse_target(text: &str) -> Result<IpNetwork, String> {
    if let Some(prefix) = plain_prefix(text) {
        return Ok(prefix);
    }
    let trimmed = text.trim();
    // An address never holds a `/`: split first, parse each part once.
    let Some((addr, len)) = trimmed.split_once('/') else {
        let addr = trimmed
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an IP address or prefix"))?;
        let len = if addr.is_ipv4() { 32 } else { 128 };
        return IpNetwork::new(addr, len).map_err(|e| e.to_string());
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|&l| l <= max)
        .ok_or_else(|| format!("{text:?}: prefix length must be 0..={max}"))?;
    let prefix = IpNetwork::new(addr, len).map_err(|e| format!("{text:?}: {e}"))?;
    if prefix.network() != addr {
        return Err(format!(
            "{text} has host bits set; did you mean {}/{len}?",
            prefix.network()
        ));
    }
    Ok(prefix)
}

/// A plain IPv4 or IPv6 address or prefix, read by hand ([`plain_v4`],
/// [`plain_v6`]).
fn plain_prefix(text: &str) -> Option<IpNetwork> {
    plain_v4(text).or_else(|| plain_v6(text))
}

/// A canonical IPv4 address or prefix (`a.b.c.d` or `a.b.c.d/len`, no
/// leading zeros, no host bits), read by hand: most of a large feed's
/// targets. Anything else is left to the standard parser, which names the
/// problem.
fn plain_v4(text: &str) -> Option<IpNetwork> {
    let bytes = text.as_bytes();
    let (mut bits, mut at) = (0u32, 0);
    for number in 0..4 {
        let (n, used) = canonical_number(&bytes[at..])?;
        if n > 255 {
            return None;
        }
        bits = bits << 8 | n;
        at += used;
        if number < 3 {
            if bytes.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
    }
    let len = match bytes.get(at) {
        None => 32,
        Some(b'/') => prefix_len(&bytes[at + 1..], 32)?,
        Some(_) => return None,
    };
    if bits & u32::MAX.checked_shr(len).unwrap_or(0) != 0 {
        return None;
    }
    let prefix = ipnetwork::Ipv4Network::new(bits.into(), u8::try_from(len).ok()?).ok()?;
    Some(IpNetwork::V4(prefix))
}

/// The decimal number `bytes` start with, and how many bytes it takes: one
/// to three digits, without a leading zero (`0` alone is one), and not
/// followed by a fourth digit.
fn canonical_number(bytes: &[u8]) -> Option<(u32, usize)> {
    let digit = |at: usize| {
        bytes
            .get(at)
            .map(|b| u32::from(b.wrapping_sub(b'0')))
            .filter(|&d| d < 10)
    };
    let first = digit(0)?;
    let Some(second) = digit(1) else {
        return Some((first, 1));
    };
    if first == 0 {
        return None;
    }
    let Some(third) = digit(2) else {
        return Some((first * 10 + second, 2));
    };
    if digit(3).is_some() {
        return None;
    }
    Some((first * 100 + second * 10 + third, 3))
}

/// A plain IPv6 address or prefix (hex groups of one to four digits, at
/// most one `::`, no IPv4 tail; a length without a leading zero; no host
/// bits), read by hand as [`plain_v4`] reads IPv4.
fn plain_v6(text: &str) -> Option<IpNetwork> {
    let bytes = text.as_bytes();
    // The groups before a `::` and after it, up to the end or a `/`.
    let mut groups = [[0u16; 8]; 2];
    let mut counts = [0usize; 2];
    let mut side = 0;
    let mut at = 0;
    if bytes.starts_with(b"::") {
        side = 1;
        at = 2;
    }
    while at < bytes.len() && bytes[at] != b'/' {
        let start = at;
        let mut group = 0u16;
        while let Some(&digit) = bytes.get(at).map(|&b| &HEX[usize::from(b)]) {
            if digit > 15 {
                break;
            }
            if at - start == 4 {
                return None;
            }
            group = group << 4 | u16::from(digit);
            at += 1;
        }
        if at == start || counts[side] == 8 {
            return None;
        }
        groups[side][counts[side]] = group;
        counts[side] += 1;
        match (bytes.get(at), bytes.get(at + 1)) {
            (None | Some(b'/'), _) => {}
            (Some(b':'), Some(b':')) if side == 0 => {
                side = 1;
                at += 2;
            }
            (Some(b':'), Some(next)) if !matches!(next, b':' | b'/') => at += 1,
            _ => return None,
        }
    }
    let len = if at == bytes.len() {
        128
    } else {
        prefix_len(&bytes[at + 1..], 128)?
    };
    let total = counts[0] + counts[1];
    if (side == 0 && total != 8) || (side == 1 && total > 7) {
        return None;
    }
    let mut words = [0u16; 8];
    words[..counts[0]].copy_from_slice(&groups[0][..counts[0]]);
    words[8 - counts[1]..].copy_from_slice(&groups[1][..counts[1]]);
    let bits = words
        .iter()
        .fold(0u128, |bits, &w| bits << 16 | u128::from(w));
    if bits & u128::MAX.checked_shr(len).unwrap_or(0) != 0 {
        return None;
    }
    let prefix = ipnetwork::Ipv6Network::new(bits.into(), u8::try_from(len).ok()?).ok()?;
    Some(IpNetwork::V6(prefix))
}

/// Each byte's value as a hex digit, or 16 and over for one that is not.
const HEX: [u8; 256] = {
    let mut table = [16u8; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            digit @ b'0'..=b'9' => digit - b'0',
            letter @ b'a'..=b'f' => letter - b'a' + 10,
            letter @ b'A'..=b'F' => letter - b'A' + 10,
            _ => 16,
        };
        b += 1;
    }
    table
};

/// `bytes` as a prefix length of at most `max`: a [`canonical_number`]
/// and nothing after it.
fn prefix_len(bytes: &[u8], max: u32) -> Option<u32> {
    canonical_number(bytes)
        .filter(|&(len, used)| used == bytes.len() && len <= max)
        .map(|(len, _)| len)
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|e| {
        format!("{text:?} is not an RFC 3339 time ({e}); write e.g. 2026-11-24T12:00:00Z")
    })
}

/// Control characters other than tab, newline and carriage return are never
/// part of a feed; a zero-width character is refused too (it hides in ids).
fn check_characters(text: &str) -> Result<(), String> {
    // Printable ASCII, tabs and line ends (nearly every feed): nothing to
    // look for character by character.
    if printable(text.as_bytes()) {
        return Ok(());
    }
    for (line, content) in text.lines().enumerate() {
        if let Some(c) = content.chars().find(|&c| {
            (c.is_control() && c != '\t' && c != '\r')
                || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
        }) {
            return Err(format!(
                "line {}: character U+{:04X} is not allowed in a feed",
                line + 1,
                u32::from(c)
            ));
        }
    }
    Ok(())
}

/// Refuses, before any YAML parsing, what a feed never needs and a hostile
/// document uses: anchors and aliases (`&a`, `*a`; alias expansion is the
/// classic YAML bomb) and tags (`!!binary`, `!custom`) where a node starts,
/// flow nesting (`[[[[`) deeper than [`MAX_DEPTH`], and indentation deeper
/// than a feed needs.
fn check_no_anchors(text: &str) -> Result<(), String> {
    const MAX_INDENT: usize = 64;
    // Without a special character, only the indentation needs checking,
    // and without a blank chunk no line can be too deep.
    let any_special = special(text.as_bytes());
    if !any_special && !blank_chunk(text.as_bytes()) {
        return Ok(());
    }
    let mut flow_depth = 0usize;
    for (line_no, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        if indent > MAX_INDENT && !line.trim().is_empty() {
            return Err(format!(
                "line {}: indented {indent} columns; a feed never nests that deep",
                line_no + 1
            ));
        }
        if !(any_special && special(line.as_bytes())) {
            continue;
        }
        let mut quote: Option<char> = None;
        let mut node_start = true;
        let mut prev = ' ';
        for c in line.chars() {
            match quote {
                Some(q) => {
                    if c == q {
                        quote = None;
                    }
                }
                None => {
                    if c == '#' && (prev == ' ' || prev == '\t' || node_start) {
                        break;
                    }
                    if node_start && (c == '&' || c == '*') {
                        return Err(format!(
                            "line {}: YAML anchors and aliases ({c}...) are not allowed in a feed",
                            line_no + 1
                        ));
                    }
                    if node_start && c == '!' {
                        return Err(format!(
                            "line {}: YAML tags (!...) are not allowed in a feed; write plain values",
                            line_no + 1
                        ));
                    }
                    match c {
                        '[' | '{' => {
                            flow_depth += 1;
                            if flow_depth > MAX_DEPTH {
                                return Err(format!(
                                    "line {}: nested deeper than {MAX_DEPTH} levels; a feed is a flat list of orders",
                                    line_no + 1
                                ));
                            }
                        }
                        ']' | '}' => flow_depth = flow_depth.saturating_sub(1),
                        _ => {}
                    }
                    if (c == '"' || c == '\'') && node_start {
                        quote = Some(c);
                        node_start = false;
                    } else if c == ':'
                        || (matches!(c, '[' | '{' | ',' | '-' | '?') && (node_start || prev == ' '))
                    {
                        node_start = true;
                    } else if c == ' ' || c == '\t' {
                        // whitespace keeps the current state
                    } else {
                        node_start = false;
                    }
                }
            }
            prev = c;
        }
    }
    Ok(())
}

fn depth(value: &serde_yaml::Value) -> usize {
    match value {
        serde_yaml::Value::Sequence(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_yaml::Value::Mapping(map) => {
            1 + map
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        serde_yaml::Value::Tagged(tagged) => 1 + depth(&tagged.value),
        _ => 0,
    }
}

/// Writes a feed in the contract's format (for tests, demos and tools).
pub fn to_yaml(feed: &Feed) -> String {
    let time = |at: OffsetDateTime| at.format(&Rfc3339).unwrap_or_default();
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = format!(
        "format: {FORMAT}\nserial: {}\nissued_at: {}\nissuer: {}\norders:",
        feed.serial,
        time(feed.issued_at),
        quote(&feed.issuer)
    );
    if feed.orders.is_empty() {
        out.push_str(" []\n");
        return out;
    }
    out.push('\n');
    for order in &feed.orders {
        out.push_str(&format!(
            "  - id: {}\n    rung: {}\n    action: {}\n    direction: {}\n    status: {}\n    targets:\n",
            order.id, order.rung, order.action, order.direction, order.status
        ));
        for target in order.targets.iter() {
            out.push_str(&format!("      - {target}\n"));
        }
        if let Some(at) = order.effective_from {
            out.push_str(&format!("    effective_from: {}\n", time(at)));
        }
        if let Some(at) = order.expires_at {
            out.push_str(&format!("    expires_at: {}\n", time(at)));
        }
        if let Some(reference) = &order.reference {
            out.push_str(&format!("    reference: {}\n", quote(reference)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse` (with its fast paths) gives exactly what the general path
    /// gives for `text`: the same feed, or the same problems.
    pub(super) fn assert_paths_agree(text: &str) {
        let general = parse_general(text);
        let fast = parse(text.as_bytes());
        assert_eq!(
            fast.as_ref().map_err(ToString::to_string),
            general.as_ref().map_err(ToString::to_string),
            "{text}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// The one-pass scan tells what the three checks and the search for
        /// a carriage return tell, whatever the bytes, chunk boundaries and
        /// length (runs of blanks, each special byte, controls, CRs, bytes
        /// past ASCII).
        #[test]
        fn one_pass_tells_what_the_checks_tell(
            runs in proptest::collection::vec(
                (proptest::sample::select(b" \t\r\n-a:&*![]{}\x7f\x00\x80\xff~".to_vec()), 1usize..70),
                0..24,
            ),
        ) {
            let bytes: Vec<u8> = runs.iter().flat_map(|&(b, n)| std::iter::repeat_n(b, n)).collect();
            for end in [bytes.len(), bytes.len().saturating_sub(1), bytes.len() / 2] {
                let bytes = &bytes[..end];
                let cr = memchr::memchr(b'\r', bytes).is_some();
                proptest::prop_assert_eq!(
                    Scanned::of(bytes),
                    Scanned {
                        plain: printable(bytes) && !special(bytes) && !blank_chunk(bytes),
                        any_cr: cr,
                    }
                );
            }
        }
    }

    /// A byte that is not UTF-8 is named by its offset, whichever half of
    /// the feed (checked side by side) holds it; one in a comment too.
    #[test]
    fn a_feed_that_is_not_utf8_is_refused_at_the_offset() {
        let text: String = (0..40).map(|i| format!("# line {i} é\n")).collect();
        let hash_at = |from: usize| {
            from + text.as_bytes()[from..]
                .iter()
                .position(|&b| b == b'#')
                .expect("a line after")
        };
        for at in [
            3,
            hash_at(text.len() / 2 - 20),
            hash_at(text.len() / 2),
            text.len() - 1,
        ] {
            let mut bytes = text.clone().into_bytes();
            bytes[at] = 0xff;
            let err = parse(&bytes).expect_err("not UTF-8").to_string();
            assert!(
                err.contains(&format!("invalid byte at offset {at})")),
                "{at}: {err}"
            );
        }
    }

    /// A feed scanned a piece at a time as it grows reads as scanned
    /// whole: plain or not, and its first byte that is not UTF-8.
    #[test]
    fn a_feed_scanned_as_it_arrives_reads_as_scanned_whole() {
        let lines: String = (0..300)
            .map(|i| format!("      - 198.51.100.{}/32 # order {i}\n", i % 256))
            .collect();
        let mut texts: Vec<Vec<u8>> = vec![lines.clone().into_bytes()];
        for (at, byte) in [(5, b'&'), (4000, 0xc3), (7000, 0xff), (9100, b'{')] {
            let mut bytes = lines.clone().into_bytes();
            bytes[at] = byte;
            texts.push(bytes);
        }
        let mut no_line_end = lines.clone().into_bytes();
        no_line_end.extend_from_slice(b"      - 192.0.2.1/32");
        texts.push(no_line_end);
        // Carriage returns: before every line feed, alone inside a line,
        // and alone at the very end.
        texts.push(lines.replace('\n', "\r\n").into_bytes());
        texts.push(lines.replace("order 150", "order\r150").into_bytes());
        let mut last = lines.clone().into_bytes();
        last.extend_from_slice(b"      - 192.0.2.1/32\r");
        texts.push(last);
        let lone: Vec<bool> = texts
            .iter()
            .map(|t| Text::scan_here(t).found.lone_cr)
            .collect();
        assert_eq!(lone[lone.len() - 3..], [false, true, true]);
        assert!(!lone[..lone.len() - 3].contains(&true));
        for bytes in &texts {
            let whole = Text::scan_here(bytes);
            for piece in [1, 7, 100, 4096, bytes.len()] {
                let mut scanner = Scanner::default();
                let mut so_far = 0;
                while so_far < bytes.len() {
                    so_far = (so_far + piece).min(bytes.len());
                    scanner.advance(&bytes[..so_far]);
                }
                let text = scanner.finish(bytes);
                assert_eq!(
                    (text.found.plain, text.found.not_utf8, text.found.lone_cr),
                    (whole.found.plain, whole.found.not_utf8, whole.found.lone_cr),
                    "in pieces of {piece}"
                );
            }
        }
    }

    /// The fast paths (split or whole) give exactly what the general path
    /// gives, for layouts that take each path.
    #[test]
    fn fast_paths_agree_with_the_general_path() {
        let head =
            "format: blocker-feed/v1\nserial: 7\nissued_at: 2026-11-24T10:00:00Z\nissuer: ATKM\n";
        let order = |id: &str, indent: &str| {
            format!(
                "{indent}- id: {id}\n{indent}  rung: rack\n{indent}  action: drop\n{indent}  direction: dst\n{indent}  status: active\n{indent}  targets:\n{indent}    - 203.0.113.0/24\n{indent}    - \"2001:db8::/48\"\n"
            )
        };
        let cases = [
            // The usual layout, with comments and blank lines between items.
            format!(
                "{head}orders:\n{}\n# next\n{}",
                order("A-1", "  "),
                order("A-2", "  ")
            ),
            // Items at the left margin.
            format!("{head}orders:\n{}{}", order("B-1", ""), order("B-2", "")),
            // Flow lists and quoted strings.
            format!(
                "{head}orders:\n  - {{id: 'C-1', rung: server, action: monitor, direction: src, status: active, targets: [192.0.2.7, \"2001:db8::7\"], reference: \"x - y\"}}\n"
            ),
            // A key after the orders: not the split layout.
            format!("orders:\n{}{head}", order("D-1", "  ")),
            // A quoted scalar running over a line that looks like an item.
            format!(
                "{head}orders:\n{}    reference: \"a\n  - b\"\n",
                order("E-1", "  ")
            ),
            // Empty orders, and no orders at all.
            format!("{head}orders: []\n"),
            format!("{head}orders:\n"),
        ];
        for text in &cases {
            assert_paths_agree(text);
        }
        // The fuzz target's find: a quoted value across carriage returns
        // with no line feed after them.
        assert_paths_agree(include_str!("lone_cr.yaml"));
        assert!(
            split::fast_split(&cases[0], None).is_some(),
            "the usual layout splits"
        );
        assert!(
            split::fast_split(&cases[1], None).is_some(),
            "left-margin items split"
        );
        assert!(
            split::fast_split(&cases[3], None).is_none(),
            "a key after the orders does not"
        );
        assert!(parse(cases[0].as_bytes()).is_ok());
    }

    const EXAMPLE: &str = r#"format: blocker-feed/v1
serial: 42                         # u64; every new feed has a larger serial
issued_at: 2026-11-24T10:00:00Z    # RFC 3339
issuer: ATKM
orders:
  - id: ATKM-2026-0001
    rung: server
    action: drop
    direction: both
    targets:
      - 203.0.113.7/32
      - 2001:db8:7::/64
    status: active
    effective_from: 2026-11-24T12:00:00Z
    expires_at: 2027-01-05T12:00:00Z
    reference: "Aanwijzing 2026/0001 & co"
"#;

    fn errors(text: &str) -> String {
        parse(text.as_bytes()).expect_err(text).to_string()
    }

    #[test]
    fn the_contract_example_parses_and_round_trips() {
        let feed = parse(EXAMPLE.as_bytes()).expect("example");
        assert_eq!(feed.serial, 42);
        let order = &feed.orders[0];
        assert_eq!(order.targets.len(), 2);
        assert_eq!(order.direction, Direction::Both);
        assert_eq!(
            order.reference.as_deref(),
            Some("Aanwijzing 2026/0001 & co")
        );
        let again = parse(to_yaml(&feed).as_bytes()).expect("round trip");
        assert_eq!(again, feed);
    }

    #[test]
    fn a_bare_address_is_a_host_prefix() {
        let text = EXAMPLE.replace("203.0.113.7/32", "203.0.113.7");
        let feed = parse(text.as_bytes()).expect("bare");
        assert_eq!(feed.orders[0].targets[0].to_string(), "203.0.113.7/32");
    }

    #[test]
    fn every_problem_is_named_with_its_order() {
        let text = EXAMPLE
            .replace("203.0.113.7/32", "203.0.113.7/24")
            .replace("2027-01-05", "2026-01-05");
        let err = errors(&text);
        assert!(err.contains("order ATKM-2026-0001: targets[0]: 203.0.113.7/24 has host bits set; did you mean 203.0.113.0/24?"), "{err}");
        assert!(err.contains("expires_at"), "{err}");
        assert_eq!(err.lines().count(), 2, "{err}");
    }

    #[test]
    fn repeated_ids_are_named_in_their_place_among_the_problems() {
        let at = EXAMPLE.find("  - id").expect("order");
        let (head, order) = EXAMPLE.split_at(at);
        let with = |id: &str, target: &str| {
            order
                .replace("ATKM-2026-0001", id)
                .replace("203.0.113.7/32", target)
        };
        let lines =
            |text: String| -> Vec<String> { errors(&text).lines().map(str::to_owned).collect() };
        // Ids out of order: B, C (a bad target), B again, A, A again.
        let unsorted = lines(format!(
            "{head}{}{}{}{}{}",
            with("B", "203.0.113.1/32"),
            with("C", "203.0.113.2/24"),
            with("B", "203.0.113.3/32"),
            with("A", "203.0.113.4/32"),
            with("A", "203.0.113.5/32"),
        ));
        assert_eq!(unsorted.len(), 3, "{unsorted:?}");
        assert!(unsorted[0].contains("order C: targets[0]"), "{unsorted:?}");
        for (line, id) in unsorted[1..].iter().zip(["B", "A"]) {
            assert!(
                line.contains(&format!("order {id}: id: duplicate")),
                "{line}"
            );
        }
        // Ids in order, one repeated.
        let sorted = lines(format!(
            "{head}{}{}{}",
            with("A", "203.0.113.1/32"),
            with("B", "203.0.113.2/32"),
            with("B", "203.0.113.3/32"),
        ));
        assert_eq!(sorted.len(), 1, "{sorted:?}");
        assert!(sorted[0].contains("order B: id: duplicate"), "{sorted:?}");
    }

    #[test]
    fn targets_broader_than_the_contract_allows_for_their_rung_are_errors() {
        for (rung, target, allowed) in [
            ("server", "203.0.113.0/28", "IPv4 /29..32"),
            ("server", "0.0.0.0/0", "IPv4 /29..32"),
            ("rack", "2001:db8::/47", "IPv6 /48..128"),
            ("datacenter", "198.18.0.0/15", "IPv4 /16..32"),
            ("datacenter", "::/0", "IPv6 /29..128"),
        ] {
            let text = EXAMPLE
                .replace("rung: server", &format!("rung: {rung}"))
                .replace("203.0.113.7/32", target);
            let err = errors(&text);
            assert!(
                err.contains(&format!(
                    "order ATKM-2026-0001: targets[0]: {target} is broader than rung {rung} allows ({allowed})"
                )),
                "{err}"
            );
        }
        let widest = EXAMPLE
            .replace("rung: server", "rung: datacenter")
            .replace("203.0.113.7/32", "198.18.0.0/16")
            .replace("2001:db8:7::/64", "2001:db8::/29");
        parse(widest.as_bytes()).expect("a datacenter may take a /16 and a /29");
    }

    #[test]
    fn refusals() {
        for (text, needle) in [
            (
                EXAMPLE.replace("rung: server", "rung: server\n    colour: red"),
                "colour",
            ),
            (
                EXAMPLE.replace("issuer: ATKM", "issuer: ATKM\nextra: 1"),
                "extra",
            ),
            (EXAMPLE.replace("action: drop", "action: block"), "block"),
            (
                EXAMPLE.replace("issuer: ATKM", "issuer: !!binary QVRLTQ=="),
                "YAML tags",
            ),
            (
                EXAMPLE.replace("blocker-feed/v1", "blocker-feed/v2"),
                "format",
            ),
            (EXAMPLE.replace("serial: 42", "serial: -1"), "serial"),
            (
                EXAMPLE.replace("ATKM-2026-0001", "ATKM 2026"),
                "not a valid id",
            ),
            (
                EXAMPLE.replace("ATKM-2026-0001", "ATKM\u{200B}2026"),
                "U+200B",
            ),
            (
                EXAMPLE.replace("ATKM-2026-0001", "АТКМ-1"),
                "not a valid id",
            ),
            (
                EXAMPLE.replace("2001:db8:7::/64", "2001:db8:7::/129"),
                "prefix length",
            ),
            (
                EXAMPLE.replace("2001:db8:7::/64", "203.0.113.7/32"),
                "listed twice",
            ),
            (
                EXAMPLE.replace("2026-11-24T12:00:00Z", "tomorrow"),
                "RFC 3339",
            ),
            (
                format!(
                    "{EXAMPLE}{}",
                    &EXAMPLE[EXAMPLE.find("  - id").expect("order")..]
                ),
                "duplicate",
            ),
            ("a: &x [1]\nb: *x\n".to_owned(), "anchors"),
            (
                "format: [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]\n".to_owned(),
                "nested",
            ),
            ("{ unclosed".to_owned(), "YAML"),
            (
                format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
                "nested",
            ),
            (
                (1..100).fold("a:\n".to_owned(), |t, i| {
                    format!("{t}{}b:\n", " ".repeat(i))
                }),
                "indented",
            ),
            ("- a list\n".to_owned(), "invalid type"),
            (
                EXAMPLE.replace(
                    "targets:\n      - 203.0.113.7/32\n      - 2001:db8:7::/64",
                    "targets: []",
                ),
                "at least one target",
            ),
        ] {
            let err = errors(&text);
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let err = parse(b"\xff\xfe").expect_err("binary").to_string();
        assert!(err.contains("UTF-8"), "{err}");
        let err = parse(b"a: \x07").expect_err("bell").to_string();
        assert!(err.contains("U+0007"), "{err}");
    }

    #[test]
    fn ampersands_in_text_are_not_anchors() {
        let text = EXAMPLE.replace("\"Aanwijzing 2026/0001 & co\"", "Aanwijzing & co *urgent*");
        let feed = parse(text.as_bytes()).expect("plain text with & and *");
        assert_eq!(
            feed.orders[0].reference.as_deref(),
            Some("Aanwijzing & co *urgent*")
        );
    }

    #[test]
    fn plain_targets_read_as_the_standard_parser_reads_them() {
        let standard = |text: &str| {
            let (addr, len) = text.split_once('/').unwrap_or((text, ""));
            let addr: IpAddr = addr.parse().ok()?;
            let len = match len {
                "" if addr.is_ipv4() => 32,
                "" => 128,
                len => len.parse().ok()?,
            };
            let prefix = IpNetwork::new(addr, len).ok()?;
            (prefix.network() == prefix.ip()).then_some(prefix)
        };
        let mut texts: Vec<String> = [
            "192.0.2.1",
            "0.0.0.0/0",
            "255.255.255.255",
            "192.0.2.0/24",
            "192.0.2.1/24",
            "01.2.3.4",
            "1.2.3.4/032",
            "1.2.3.4/",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.4/33",
            " 1.2.3.4",
            "1..2.3",
            "1.2.3.4/+8",
            "1.2.3.4/08",
            "1000.1.1.1",
            "1.2.3.4x",
        ]
        .map(str::to_owned)
        .into();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng >> 40) % 34;
            let addr = std::net::Ipv4Addr::from((rng >> 8) as u32);
            texts.push(if len == 33 {
                addr.to_string()
            } else {
                format!("{addr}/{len}")
            });
        }
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Addresses with runs of zero groups, so that `::` shows.
            let groups: [u16; 8] = std::array::from_fn(|i| {
                let g = (rng >> (i * 8)) as u16;
                if (rng >> (40 + i)) & 1 == 0 { 0 } else { g }
            });
            let len = (rng >> 48) % 130;
            let addr = std::net::Ipv6Addr::from(groups);
            let addr = IpNetwork::new(addr.into(), len.min(128) as u8)
                .map_or(IpAddr::V6(addr), |p| p.network());
            texts.push(match len {
                129 => addr.to_string(),
                _ if len.is_multiple_of(3) => format!("{addr}/{len}").to_uppercase(),
                _ => format!("{addr}/{len}"),
            });
        }
        texts.extend(
            [
                "::",
                "::/0",
                "::1",
                "1::",
                "2001:db8::/32",
                "2001:0db8:0000::/48",
                "1:2:3:4:5:6:7:8",
                "1:2:3:4:5:6:7::",
                "1:2:3:4:5:6:7:8:9",
                "1::2::3",
                ":1::",
                "1:::2",
                "12345::",
                "::ffff:192.0.2.1",
                "2001:db8::/129",
                "2001:db8::/064",
                "2001:db8::1/64",
                "1:2:3:4:5:6:7::8",
                "g::",
                "1:",
                ":",
                "2001:db8::/",
                "::1 ",
            ]
            .map(str::to_owned),
        );
        for text in &texts {
            if let Some(prefix) = plain_prefix(text) {
                assert_eq!(Some(prefix), standard(text), "{text}");
                assert_eq!(parse_target(text), Ok(prefix), "{text}");
            } else {
                // Only what does not print as it reads (or has an IPv4
                // tail) is left to the standard parser.
                let printed =
                    |p: IpNetwork| [format!("{}/{}", p.ip(), p.prefix()), p.ip().to_string()];
                assert!(
                    standard(text).is_none_or(|p| !printed(p).contains(text))
                        || (text.contains(':') && text.contains('.')),
                    "{text} is canonical but not read by hand"
                );
            }
        }
    }

    #[test]
    fn targets_listed_twice_are_found_as_sorting_finds_them() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut outcomes = [0; 2];
        for round in 0..400 {
            // Lists of 1 to 3,000 prefixes of both families, drawn from a
            // pool three times as big (nearly always a prefix twice) or
            // from a vast one (nearly never).
            let len = 1 + (next() % if round % 4 == 0 { 3000 } else { 120 }) as usize;
            let values = if round % 2 == 0 {
                len as u64 * 3
            } else {
                1 << 40
            };
            let targets: Vec<IpNetwork> = (0..len)
                .map(|_| {
                    let v = next() % values;
                    if v.is_multiple_of(3) {
                        let bits = u128::from(v) << 80;
                        IpNetwork::new(IpAddr::V6(bits.into()), 48).expect("a /48")
                    } else {
                        let len = [24, 32][(v % 2) as usize];
                        let bits = (v as u32) << (32 - len);
                        IpNetwork::new(IpAddr::V4(bits.into()), len as u8).expect("a v4 prefix")
                    }
                })
                .collect();
            let found = distinct(&targets);
            assert_eq!(found, distinct_exactly(&targets), "{targets:?}");
            outcomes[usize::from(found)] += 1;
        }
        assert!(outcomes[0] > 50 && outcomes[1] > 50, "{outcomes:?}");
        // A /0 and the same bits at two lengths are distinct; one IPv4 and
        // one IPv6 prefix of the same bits too.
        let prefixes = ["0.0.0.0/0", "192.0.2.0/24", "192.0.2.0/25", "::/0", "::/96"];
        let targets: Vec<IpNetwork> = prefixes
            .iter()
            .map(|p| p.parse().expect("prefix"))
            .collect();
        assert!(distinct(&targets));
        let twice: Vec<IpNetwork> = targets.iter().chain(&targets[3..4]).copied().collect();
        assert!(!distinct(&twice));
    }
}
