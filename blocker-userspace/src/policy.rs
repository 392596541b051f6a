//! Which orders are in force at `now`, and the operator's guardrails.
//!
//! Pure: the caller passes `now`. Guardrails act per order: an order that
//! breaks one is refused (reported by id and reason, never enforced) and the
//! rest of the feed still applies. Only `max_prefixes` refuses a feed whole.

use ipnetwork::IpNetwork;
use time::OffsetDateTime;

use crate::{
    bits::Bits,
    feed::{Feed, Order, Rung, Status},
};

/// The limits an operator puts on what any feed may enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guardrails {
    /// Never blocked: an order with a target overlapping one is refused.
    pub protected: Vec<IpNetwork>,
    /// Distinct target prefixes a feed may hold.
    pub max_prefixes: u32,
    /// Minimum prefix length, `[rung as usize][0 = IPv4, 1 = IPv6]`.
    pub min_len: [[u8; 2]; 3],
}

impl Default for Guardrails {
    /// The contract's rung limits: server /29 and /64, rack /22 and /48,
    /// datacenter /16 and /29; 1,000,000 prefixes; nothing protected.
    fn default() -> Self {
        let rung = |r: Rung| [r.contract_min_len(false), r.contract_min_len(true)];
        Self {
            protected: Vec::new(),
            max_prefixes: 1_000_000,
            min_len: [rung(Rung::Server), rung(Rung::Rack), rung(Rung::Datacenter)],
        }
    }
}

impl Guardrails {
    pub fn min_prefix_len(&self, rung: Rung, ipv6: bool) -> u8 {
        self.min_len[rung as usize][usize::from(ipv6)]
    }
}

/// An order's state at `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrderState {
    InForce,
    Pending,
    Expired,
    Suspended,
    Withdrawn,
    Refused,
}

impl OrderState {
    /// Every state, in the order reports list them.
    pub const ALL: [OrderState; 6] = [
        OrderState::InForce,
        OrderState::Pending,
        OrderState::Expired,
        OrderState::Suspended,
        OrderState::Withdrawn,
        OrderState::Refused,
    ];

    /// The `state` label of `blocker_orders`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderState::InForce => "in_force",
            OrderState::Pending => "pending",
            OrderState::Expired => "expired",
            OrderState::Suspended => "suspended",
            OrderState::Withdrawn => "withdrawn",
            OrderState::Refused => "refused",
        }
    }
}

/// One order's evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderEvaluation {
    pub id: String,
    pub state: OrderState,
    /// Why it was refused (empty otherwise).
    pub reasons: Vec<String>,
    pub order: Order,
}

/// A feed evaluated at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// Every order, in feed order.
    pub orders: Vec<OrderEvaluation>,
    /// The next instant after `now` at which an order enters or leaves force.
    pub next_change: Option<OffsetDateTime>,
}

impl Evaluation {
    pub fn in_force(&self) -> impl Iterator<Item = &Order> {
        self.orders
            .iter()
            .filter(|o| o.state == OrderState::InForce)
            .map(|o| &o.order)
    }

    /// The orders the datapath holds: in force now, or pending (their
    /// window opens later; the datapath starts them on time by itself).
    pub fn enforceable(&self) -> impl Iterator<Item = &Order> {
        self.orders
            .iter()
            .filter(|o| matches!(o.state, OrderState::InForce | OrderState::Pending))
            .map(|o| &o.order)
    }

    pub fn count(&self, state: OrderState) -> usize {
        self.orders.iter().filter(|o| o.state == state).count()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "the feed holds {count} distinct prefixes, over guardrails.max_prefixes ({max}); the feed is refused whole"
    )]
    TooManyPrefixes { count: usize, max: u32 },
}

/// Why `order` breaks a guardrail, if it does (`ranges`: the guardrails'
/// protected prefixes, as [`Ranges`]).
fn guardrail_reasons(order: &Order, guardrails: &Guardrails, ranges: &Ranges) -> Vec<String> {
    let mut reasons = Vec::new();
    for target in order.targets.iter() {
        let ipv6 = target.is_ipv6();
        let min = guardrails.min_prefix_len(order.rung, ipv6);
        if target.prefix() < min {
            let (family, max) = if ipv6 { ("IPv6", 128) } else { ("IPv4", 32) };
            reasons.push(format!(
                "target {target} is broader than rung {} allows ({family} /{min}..{max})",
                order.rung
            ));
        }
        // Nearly every target meets none: one search (none at all when
        // nothing is protected). One that meets some names each it
        // overlaps, in the config's order.
        if ranges.is_empty() || !ranges.meets(target) {
            continue;
        }
        for protected in &guardrails.protected {
            if overlaps(target, protected) {
                reasons.push(format!(
                    "target {target} overlaps protected prefix {protected}"
                ));
            }
        }
    }
    reasons
}

/// The protected prefixes as address ranges (first and last address), a
/// list per family, sorted and merged where they meet or touch. Two
/// prefixes overlap exactly when their ranges meet (one holds the other),
/// so a target overlaps some protected prefix exactly when its range meets
/// one of its family's. Testing each target against every protected
/// prefix took a million targets about half a second for each 100
/// protected prefixes; a bit read per target (see [`Family`]) and a
/// search for the few it lets through take them about 15 ms here however
/// many.
struct Ranges {
    v4: Family,
    v6: Family,
}

impl Ranges {
    fn new(protected: &[IpNetwork]) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for prefix in protected {
            match prefix {
                IpNetwork::V4(p) => v4.push(span4(p)),
                IpNetwork::V6(p) => v6.push(span6(p)),
            }
        }
        Self {
            v4: Family::new(v4, 32, 16),
            v6: Family::new(v6, 128, 48),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.ranges.is_empty() && self.v6.ranges.is_empty()
    }

    /// Whether `target`'s range meets a protected one.
    fn meets(&self, target: &IpNetwork) -> bool {
        match target {
            IpNetwork::V4(p) => self
                .v4
                .meets(u32::from(p.ip()).into(), p.prefix(), || span4(p)),
            IpNetwork::V6(p) => self.v6.meets(p.ip().into(), p.prefix(), || span6(p)),
        }
    }
}

/// A prefix's first and last address.
fn span4(p: &ipnetwork::Ipv4Network) -> (u128, u128) {
    (
        u32::from(p.network()).into(),
        u32::from(p.broadcast()).into(),
    )
}

fn span6(p: &ipnetwork::Ipv6Network) -> (u128, u128) {
    (p.network().into(), p.broadcast().into())
}

/// One family's protected ranges, and a filter of the buckets (IPv4 /16s,
/// IPv6 /48s) they touch: a target inside a bucket that none touches
/// meets only a range too wide to mark its buckets (usually none), which
/// saves nearly every target its search with one bit read.
struct Family {
    /// Sorted, apart.
    ranges: Vec<(u128, u128)>,
    /// Those of `ranges` that span more than [`WIDE`] buckets.
    wide: Vec<(u128, u128)>,
    /// A bit for each bucket's hash, set for the buckets the other ranges
    /// touch.
    touched: Bits,
    /// A bucket's prefix length, and the address bits below it.
    bucket: u8,
    shift: u32,
}

/// How many buckets a range may span and still be kept by its buckets
/// (an IPv4 /10, an IPv6 /42); a wider one is kept as wide.
const WIDE: u128 = 64;

/// Bits of a bucket's hash: the filter's 65,536 bits take 8 KiB.
const FILTER_BITS: u32 = 16;

impl Family {
    fn new(ranges: Vec<(u128, u128)>, width: u8, bucket: u8) -> Self {
        let ranges = merged(ranges);
        let shift = u32::from(width - bucket);
        let (mut wide, mut touched) = (Vec::new(), Bits::new(1 << FILTER_BITS));
        for &(first, last) in &ranges {
            let (from, to) = (first >> shift, last >> shift);
            if to - from >= WIDE {
                wide.push((first, last));
            } else {
                (from..=to).for_each(|bucket| touched.insert(filter_bit(bucket)));
            }
        }
        Self {
            ranges,
            wide,
            touched,
            bucket,
            shift,
        }
    }

    /// Whether the prefix of `address` `length` bits long, whose first and
    /// last address `span` gives, meets one of the ranges.
    fn meets(&self, address: u128, length: u8, span: impl FnOnce() -> (u128, u128)) -> bool {
        if self.ranges.is_empty() {
            return false;
        }
        if length >= self.bucket && !self.touched.contains(filter_bit(address >> self.shift)) {
            return !self.wide.is_empty() && meets(&self.wide, span());
        }
        meets(&self.ranges, span())
    }
}

/// A bucket's bit in the filter.
fn filter_bit(bucket: u128) -> usize {
    // Buckets hold at most 48 bits: a multiply spreads them, the top bits
    // are the hash.
    let hash = (bucket as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FILTER_BITS);
    hash as usize
}

/// `ranges` sorted, those that meet or touch merged.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(previous) if first <= previous.1.saturating_add(1) => {
                previous.1 = previous.1.max(last)
            }
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// Up to how many ranges [`meets`] tests each rather than searching them.
const FEW_RANGES: usize = 4;

/// Whether the range `(first, last)` meets one of `ranges` (sorted, apart).
fn meets(ranges: &[(u128, u128)], (first, last): (u128, u128)) -> bool {
    if ranges.is_empty() {
        return false;
    }
    // A few: each tested in turn, cheaper than a search.
    if ranges.len() <= FEW_RANGES {
        return ranges.iter().fold(false, |meets, &(start, end)| {
            meets | (start <= last && first <= end)
        });
    }
    // The first range that ends at or after the prefix's first address
    // (the ranges are apart, so their ends are sorted too).
    let at = ranges.partition_point(|&(_, end)| end < first);
    ranges.get(at).is_some_and(|&(start, _)| start <= last)
}

/// Whether one prefix contains the other.
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(x), IpNetwork::V4(y)) => x.contains(y.network()) || y.contains(x.network()),
        (IpNetwork::V6(x), IpNetwork::V6(y)) => x.contains(y.network()) || y.contains(x.network()),
        _ => false,
    }
}

/// Evaluates every order of `feed` at `now`.
pub fn evaluate(
    feed: &Feed,
    guardrails: &Guardrails,
    now: OffsetDateTime,
) -> Result<Evaluation, PolicyError> {
    let protected = Ranges::new(&guardrails.protected);
    // Two halves side by side: each order's targets are read for the
    // guardrails, a million of them in a big feed.
    let (a, b) = crate::parallel::halves(
        feed.orders.iter().map(|o| o.targets.len()).sum(),
        &feed.orders,
        |some| evaluate_some(some, guardrails, &protected, now),
    );
    let mut orders = a.orders;
    orders.extend(b.orders);
    let mut counted = a.counted;
    counted.extend(b.counted);
    let next_change = a.next_change.into_iter().chain(b.next_change).min();
    // Targets within the limit are distinct prefixes within it; past it,
    // the distinct ones are counted.
    let targets: usize = counted.iter().map(|t| t.len()).sum();
    if targets > guardrails.max_prefixes as usize
        && let count = distinct_prefixes(&counted)
        && count > guardrails.max_prefixes as usize
    {
        return Err(PolicyError::TooManyPrefixes {
            count,
            max: guardrails.max_prefixes,
        });
    }
    Ok(Evaluation {
        orders,
        next_change,
    })
}

/// Some of a feed's orders evaluated: in the feed's order.
struct Evaluated<'f> {
    orders: Vec<OrderEvaluation>,
    /// The targets of the orders that count against `max_prefixes`.
    counted: Vec<&'f [IpNetwork]>,
    /// The first window bound after `now` among them.
    next_change: Option<OffsetDateTime>,
}

fn evaluate_some<'f>(
    some: &'f [Order],
    guardrails: &Guardrails,
    protected: &Ranges,
    now: OffsetDateTime,
) -> Evaluated<'f> {
    let mut orders = Vec::with_capacity(some.len());
    let mut next_change: Option<OffsetDateTime> = None;
    // Pending and suspended orders count: they may enter force without a
    // new feed, and the tables must hold them then.
    let mut counted: Vec<&[IpNetwork]> = Vec::with_capacity(some.len());
    for order in some {
        let reasons = guardrail_reasons(order, guardrails, protected);
        let state = if !reasons.is_empty() {
            OrderState::Refused
        } else {
            counted.push(&order.targets);
            match order.status {
                Status::Suspended => OrderState::Suspended,
                Status::Withdrawn => OrderState::Withdrawn,
                Status::Active => {
                    for at in [order.effective_from, order.expires_at]
                        .into_iter()
                        .flatten()
                    {
                        if at > now && next_change.is_none_or(|n| at < n) {
                            next_change = Some(at);
                        }
                    }
                    if order.effective_from.is_some_and(|from| now < from) {
                        OrderState::Pending
                    } else if order.expires_at.is_some_and(|until| now >= until) {
                        OrderState::Expired
                    } else {
                        OrderState::InForce
                    }
                }
            }
        };
        orders.push(OrderEvaluation {
            id: order.id.clone(),
            state,
            reasons,
            order: order.clone(),
        });
    }
    Evaluated {
        orders,
        counted,
        next_change,
    }
}

/// Distinct prefixes among `targets`, each family in plain integers
/// (sorted a family per thread when large).
fn distinct_prefixes(targets: &[&[IpNetwork]]) -> usize {
    let (mut v4, mut v6): (Vec<u64>, Vec<(u128, u8)>) = (Vec::new(), Vec::new());
    for target in targets.iter().flat_map(|t| t.iter()) {
        match target {
            IpNetwork::V4(p) => {
                v4.push(u64::from(u32::from(p.network())) << 8 | u64::from(p.prefix()))
            }
            IpNetwork::V6(p) => v6.push((u128::from(p.network()), p.prefix())),
        }
    }
    fn distinct<T: Ord>(mut keys: Vec<T>) -> usize {
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }
    let (v4, v6) = crate::parallel::join(v4.len() + v6.len(), || distinct(v4), || distinct(v6));
    v4 + v6
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;
    use crate::feed::{Action, Direction};

    fn order(id: &str, rung: Rung, targets: &[&str]) -> Order {
        Order {
            id: id.into(),
            rung,
            action: Action::Drop,
            direction: Direction::Both,
            targets: targets.iter().map(|t| t.parse().expect("prefix")).collect(),
            status: Status::Active,
            effective_from: None,
            expires_at: None,
            reference: None,
        }
    }

    fn feed(orders: Vec<Order>) -> Feed {
        Feed {
            serial: 1,
            issued_at: datetime!(2026-11-24 10:00 UTC),
            issuer: "ATKM".into(),
            orders,
        }
    }

    #[test]
    fn windows_are_half_open() {
        let from = datetime!(2026-11-24 12:00 UTC);
        let until = datetime!(2026-11-24 13:00 UTC);
        let mut o = order("A", Rung::Server, &["203.0.113.7/32"]);
        o.effective_from = Some(from);
        o.expires_at = Some(until);
        let f = feed(vec![o]);
        let g = Guardrails::default();
        let state = |at| evaluate(&f, &g, at).expect("eval").orders[0].state;
        assert_eq!(
            state(from - time::Duration::seconds(1)),
            OrderState::Pending
        );
        assert_eq!(state(from), OrderState::InForce);
        assert_eq!(
            state(until - time::Duration::nanoseconds(1)),
            OrderState::InForce
        );
        assert_eq!(state(until), OrderState::Expired);
        let ev = evaluate(&f, &g, from - time::Duration::seconds(5)).expect("eval");
        assert_eq!(ev.next_change, Some(from));
        let ev = evaluate(&f, &g, from).expect("eval");
        assert_eq!(ev.next_change, Some(until));
        assert_eq!(evaluate(&f, &g, until).expect("eval").next_change, None);
    }

    #[test]
    fn a_big_feed_evaluates_as_its_orders_one_by_one() {
        // Enough targets that the two halves run side by side; states,
        // windows and refusals in both, the nearest window bound in the
        // second half.
        let now = datetime!(2026-11-24 10:00 UTC);
        let g = Guardrails {
            protected: vec!["192.0.2.53/32".parse().expect("p")],
            ..Guardrails::default()
        };
        let targets: Vec<String> = (0..64).map(|j| format!("198.51.100.{j}/32")).collect();
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        let orders: Vec<Order> = (0..400)
            .map(|i| {
                let mut o = order(&format!("O{i:03}"), Rung::Server, &targets);
                let minutes = |m: i64| Some(now + time::Duration::minutes(m));
                if i % 5 == 0 {
                    o.effective_from = minutes(if i == 395 { 1 } else { 30 + i % 40 - 20 });
                }
                if i % 7 == 0 {
                    o.expires_at = minutes(60 - i % 90);
                }
                if i % 11 == 0 {
                    o.status = Status::Suspended;
                }
                // Refused: a protected address, a prefix broader than the
                // server rung allows.
                for (every, extra) in [(13, "192.0.2.53/32"), (17, "203.0.113.0/24")] {
                    if i % every == 0 {
                        let extra: IpNetwork = extra.parse().expect("prefix");
                        o.targets = o.targets.iter().copied().chain([extra]).collect();
                    }
                }
                o
            })
            .collect();
        assert!(
            orders.iter().map(|o| o.targets.len()).sum::<usize>() >= crate::parallel::THREAD_WORTHY
        );
        let whole = evaluate(&feed(orders.clone()), &g, now).expect("eval");
        assert_eq!(whole.orders.len(), orders.len());
        let mut next_change = None;
        for (evaluated, order) in whole.orders.iter().zip(&orders) {
            let alone = evaluate(&feed(vec![order.clone()]), &g, now).expect("eval");
            assert_eq!(evaluated.id, order.id);
            assert_eq!(evaluated.state, alone.orders[0].state, "{}", order.id);
            assert_eq!(evaluated.reasons, alone.orders[0].reasons, "{}", order.id);
            next_change = next_change.into_iter().chain(alone.next_change).min();
        }
        assert_eq!(whole.next_change, next_change);
        assert_eq!(whole.next_change, Some(now + time::Duration::minutes(1)));
        for state in [
            OrderState::InForce,
            OrderState::Pending,
            OrderState::Expired,
            OrderState::Suspended,
            OrderState::Refused,
        ] {
            assert!(whole.count(state) > 0, "{state:?}");
        }
    }

    #[test]
    fn statuses() {
        let mut s = order("S", Rung::Server, &["203.0.113.7/32"]);
        s.status = Status::Suspended;
        let mut w = order("W", Rung::Server, &["203.0.113.8/32"]);
        w.status = Status::Withdrawn;
        let ev = evaluate(
            &feed(vec![s, w]),
            &Guardrails::default(),
            datetime!(2026-11-24 10:00 UTC),
        )
        .expect("eval");
        assert_eq!(ev.count(OrderState::Suspended), 1);
        assert_eq!(ev.count(OrderState::Withdrawn), 1);
        assert_eq!(ev.in_force().count(), 0);
    }

    #[test]
    fn rung_breadth_and_protected_prefixes_refuse_the_order_only() {
        let g = Guardrails {
            protected: vec!["198.51.100.53/32".parse().expect("p")],
            ..Guardrails::default()
        };
        let f = feed(vec![
            order("BROAD", Rung::Server, &["203.0.113.0/28"]),
            order("OK29", Rung::Server, &["203.0.113.0/29", "2001:db8::/64"]),
            order("BROAD6", Rung::Rack, &["2001:db8::/47"]),
            order("DC", Rung::Datacenter, &["198.18.0.0/16", "2001:db8::/29"]),
            order("PROT", Rung::Rack, &["198.51.100.0/24"]),
            order("INSIDE", Rung::Server, &["198.51.100.53/32"]),
        ]);
        let ev = evaluate(&f, &g, datetime!(2026-11-24 10:00 UTC)).expect("eval");
        let state = |id: &str| ev.orders.iter().find(|o| o.id == id).expect("order").state;
        assert_eq!(state("BROAD"), OrderState::Refused);
        assert_eq!(state("OK29"), OrderState::InForce);
        assert_eq!(state("BROAD6"), OrderState::Refused);
        assert_eq!(state("DC"), OrderState::InForce);
        assert_eq!(state("PROT"), OrderState::Refused);
        assert_eq!(state("INSIDE"), OrderState::Refused);
        let reasons = &ev
            .orders
            .iter()
            .find(|o| o.id == "PROT")
            .expect("p")
            .reasons;
        assert!(
            reasons[0].contains("protected prefix 198.51.100.53/32"),
            "{reasons:?}"
        );
    }

    /// Checks each `(target, meets)` against `protected` as given (few
    /// ranges: each tested) and with far-off prefixes of both families
    /// added (many: searched).
    fn check_meets(protected: &[&str], cases: &[(&str, bool)]) {
        // Apart, so that they stay eight ranges each.
        let far: Vec<String> = (0..8)
            .flat_map(|i| {
                [
                    format!("10.{}.0.0/16", 2 * i),
                    format!("2001:db8:f{i}0::/48"),
                ]
            })
            .collect();
        let given: Vec<IpNetwork> = protected
            .iter()
            .map(|p| p.parse().expect("prefix"))
            .collect();
        let padded: Vec<IpNetwork> = protected
            .iter()
            .copied()
            .chain(far.iter().map(String::as_str))
            .map(|p| p.parse().expect("prefix"))
            .collect();
        for list in [given, padded] {
            let ranges = Ranges::new(&list);
            for &(target, meets) in cases {
                let prefix: IpNetwork = target.parse().expect("prefix");
                assert_eq!(ranges.meets(&prefix), meets, "{target} against {list:?}");
            }
        }
    }

    #[test]
    fn a_target_overlaps_a_protected_prefix_when_either_holds_the_other() {
        check_meets(
            &[
                "198.51.100.128/25",
                "198.51.100.200/32",
                "203.0.113.0/24",
                "2001:db8:1::/48",
            ],
            &[
                // Inside one, holding one, holding several.
                ("198.51.100.200/32", true),
                ("198.51.100.130/31", true),
                ("198.51.100.0/24", true),
                ("198.51.0.0/16", true),
                ("198.50.0.0/15", true),
                ("203.0.113.77/32", true),
                ("2001:db8:1:2::/64", true),
                ("2001:db8::/32", true),
                // Beside one, not meeting it; another family's same bits.
                ("198.51.100.0/25", false),
                ("198.51.100.127/32", false),
                ("203.0.112.0/24", false),
                ("203.0.114.0/23", false),
                ("2001:db8:2::/48", false),
                ("2001:db8:0:ffff::/64", false),
                ("c633:6480::/25", false),
            ],
        );
        // Where a range starts and ends.
        check_meets(
            &["192.0.2.8/29", "2001:db8::8/125"],
            &[
                ("192.0.2.8/32", true),
                ("192.0.2.15/32", true),
                ("192.0.2.0/28", true),
                ("192.0.2.7/32", false),
                ("192.0.2.16/32", false),
                ("192.0.2.0/29", false),
                ("2001:db8::8/128", true),
                ("2001:db8::f/128", true),
                ("2001:db8::7/128", false),
                ("2001:db8::10/128", false),
            ],
        );
        // Everything, or nothing.
        check_meets(
            &["0.0.0.0/0"],
            &[("192.0.2.1/32", true), ("2001:db8:1::/48", false)],
        );
        check_meets(&[], &[("192.0.2.0/24", false), ("2001:db8:1::/48", false)]);
        // Ranges too wide to mark their buckets, and narrow ones that
        // touch the same buckets as a wide one's neighbours.
        check_meets(
            &[
                "172.0.0.0/8",
                "173.0.0.0/24",
                "2001:db8:8000::/33",
                "2001:db8:7fff:1::/64",
            ],
            &[
                ("172.20.1.0/24", true),
                ("172.255.255.255/32", true),
                ("172.0.0.0/6", true),
                ("173.0.0.9/32", true),
                ("173.0.1.0/24", false),
                ("171.255.255.255/32", false),
                ("2001:db8:9abc:1::/64", true),
                ("2001:db8:ffff:ffff::/64", true),
                ("2001:db8:7fff:1::1/128", true),
                ("2001:db8:7fff:2::/64", false),
                ("2001:db8:7ffe::/48", false),
                ("2001:db9::/48", false),
            ],
        );
    }

    /// Prefixes of either family, mostly in a few /16s (and IPv6 /32s) so
    /// that they overlap often.
    fn prefix() -> impl Strategy<Value = IpNetwork> {
        // An address and a length, its host bits cleared.
        let network = |addr: std::net::IpAddr, len: u8| {
            let with_host = IpNetwork::new(addr, len).expect("prefix length");
            IpNetwork::new(with_host.network(), len).expect("prefix")
        };
        prop_oneof![
            (0u32..4, any::<u16>(), 8u8..=32).prop_map(move |(net, low, len)| {
                let addr = 0xc633_0000u32 | net << 16 | u32::from(low);
                network(std::net::Ipv4Addr::from(addr).into(), len)
            }),
            (0u32..2, any::<u64>(), 16u8..=128).prop_map(move |(net, low, len)| {
                let addr = 0x2001_0db8u128 << 96 | u128::from(net) << 80 | u128::from(low) << 16;
                network(std::net::Ipv6Addr::from(addr).into(), len)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The search names exactly the protected prefixes that testing
        /// each against every one names, in the same order.
        #[test]
        fn reasons_are_those_of_testing_every_protected_prefix(
            protected in proptest::collection::vec(prefix(), 0..12),
            targets in proptest::collection::vec(prefix(), 1..24),
        ) {
            let g = Guardrails { protected, ..Guardrails::default() };
            let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            let o = order("P", Rung::Datacenter, &targets);
            let mut every = Vec::new();
            for target in o.targets.iter() {
                let min = g.min_prefix_len(o.rung, target.is_ipv6());
                if target.prefix() < min {
                    let (family, max) = if target.is_ipv6() { ("IPv6", 128) } else { ("IPv4", 32) };
                    every.push(format!(
                        "target {target} is broader than rung {} allows ({family} /{min}..{max})",
                        o.rung
                    ));
                }
                for p in &g.protected {
                    if overlaps(target, p) {
                        every.push(format!("target {target} overlaps protected prefix {p}"));
                    }
                }
            }
            prop_assert_eq!(guardrail_reasons(&o, &g, &Ranges::new(&g.protected)), every);
        }
    }

    #[test]
    fn too_many_prefixes_refuses_the_feed() {
        let g = Guardrails {
            max_prefixes: 2,
            ..Guardrails::default()
        };
        let f = feed(vec![order(
            "A",
            Rung::Server,
            &["203.0.113.1/32", "203.0.113.2/32", "203.0.113.3/32"],
        )]);
        assert_eq!(
            evaluate(&f, &g, datetime!(2026-11-24 10:00 UTC)),
            Err(PolicyError::TooManyPrefixes { count: 3, max: 2 })
        );
    }
}
