//! Which orders are in force at `now`, and the operator's guardrails.
//!
//! Pure: the caller passes `now`. Guardrails act per order: an order that
//! breaks one is refused (reported by id and reason, never enforced) and the
//! rest of the feed still applies. Only `max_prefixes` refuses a feed whole.

use ipnetwork::IpNetwork;
use time::OffsetDateTime;

use crate::feed::{Feed, Order, Rung, Status};

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

/// Why `order` breaks a guardrail, if it does.
fn guardrail_reasons(order: &Order, guardrails: &Guardrails) -> Vec<String> {
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
    let mut orders = Vec::with_capacity(feed.orders.len());
    let mut next_change: Option<OffsetDateTime> = None;
    // Pending and suspended orders count: they may enter force without a
    // new feed, and the tables must hold them then.
    let mut counted: Vec<&[IpNetwork]> = Vec::with_capacity(feed.orders.len());
    for order in &feed.orders {
        let reasons = guardrail_reasons(order, guardrails);
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
