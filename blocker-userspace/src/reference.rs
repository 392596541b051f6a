//! The contract's matching and attribution rules (§1) in the plainest Rust:
//! the oracle that the compiler and the datapath are tested against, and the
//! engine of `blocker check`. Written independently of `compile`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::{
    compile::Enforcement,
    feed::{Action, Order},
};

/// Which address of the packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchedBy {
    Dst,
    Src,
}

impl MatchedBy {
    pub const fn as_str(self) -> &'static str {
        match self {
            MatchedBy::Dst => "dst",
            MatchedBy::Src => "src",
        }
    }
}

/// One way an order matches an address or packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderMatch {
    pub order: String,
    pub direction: MatchedBy,
    pub prefix: IpNetwork,
    /// The effective action (for `matches`, the order's own action).
    pub action: Action,
}

/// The order a packet is counted for, and what happens to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Winner {
    pub order: String,
    pub action: Action,
    pub direction: MatchedBy,
    pub prefix: IpNetwork,
}

/// Every (order, direction, target) under which `addr` is matched, as a
/// destination (orders with direction dst/both) or as a source (src/both).
pub fn matches(orders_in_force: &[&Order], addr: IpAddr) -> Vec<OrderMatch> {
    let mut found = Vec::new();
    for order in orders_in_force {
        for target in order.targets.iter() {
            if !target.contains(addr) {
                continue;
            }
            if order.direction.covers_dst() {
                found.push(OrderMatch {
                    order: order.id.clone(),
                    direction: MatchedBy::Dst,
                    prefix: *target,
                    action: order.action,
                });
            }
            if order.direction.covers_src() {
                found.push(OrderMatch {
                    order: order.id.clone(),
                    direction: MatchedBy::Src,
                    prefix: *target,
                    action: order.action,
                });
            }
        }
    }
    found
}

/// The contract's verdict for a packet from `src` to `dst`: `None` when no
/// order in force matches (the packet passes, uncounted).
pub fn verdict(
    orders_in_force: &[&Order],
    enforcement: Enforcement,
    src: IpAddr,
    dst: IpAddr,
) -> Option<Winner> {
    let mut candidates: Vec<OrderMatch> = matches(orders_in_force, dst)
        .into_iter()
        .filter(|m| m.direction == MatchedBy::Dst)
        .chain(
            matches(orders_in_force, src)
                .into_iter()
                .filter(|m| m.direction == MatchedBy::Src),
        )
        .map(|mut m| {
            m.action = enforcement.effective(m.action);
            m
        })
        .collect();
    // Drop beats monitor.
    let winning_action = if candidates.iter().any(|m| m.action == Action::Drop) {
        Action::Drop
    } else {
        Action::Monitor
    };
    candidates.retain(|m| m.action == winning_action);
    // Longest prefix; then destination before source; then smallest id.
    candidates.sort_by(|a, b| {
        b.prefix
            .prefix()
            .cmp(&a.prefix.prefix())
            .then(a.direction.cmp(&b.direction))
            .then(a.order.cmp(&b.order))
    });
    candidates.into_iter().next().map(|m| Winner {
        order: m.order,
        action: m.action,
        direction: m.direction,
        prefix: m.prefix,
    })
}

#[cfg(test)]
mod tests {
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_contract_rules() {
        let orders = [
            order("M32", Action::Monitor, Direction::Both, &["203.0.113.7/32"]),
            order("D24", Action::Drop, Direction::Dst, &["203.0.113.0/24"]),
            order("S32", Action::Drop, Direction::Src, &["198.51.100.7/32"]),
            order("A32", Action::Drop, Direction::Dst, &["198.51.100.7/32"]),
        ];
        let refs: Vec<&Order> = orders.iter().collect();
        let v = |s, d, e| verdict(&refs, e, ip(s), ip(d)).map(|w| (w.order, w.action, w.direction));
        // drop via a /24 beats monitor via a /32
        assert_eq!(
            v("192.0.2.1", "203.0.113.7", Enforcement::Enforce),
            Some(("D24".into(), Action::Drop, MatchedBy::Dst))
        );
        // only monitor matches as a source
        assert_eq!(
            v("203.0.113.7", "192.0.2.1", Enforcement::Enforce),
            Some(("M32".into(), Action::Monitor, MatchedBy::Src))
        );
        // equal lengths: destination before source
        assert_eq!(
            v("198.51.100.7", "198.51.100.7", Enforcement::Enforce),
            Some(("A32".into(), Action::Drop, MatchedBy::Dst))
        );
        // longer source match beats shorter destination match
        assert_eq!(
            v("198.51.100.7", "203.0.113.9", Enforcement::Enforce),
            Some(("S32".into(), Action::Drop, MatchedBy::Src))
        );
        // observe: all monitor, longest prefix wins
        assert_eq!(
            v("192.0.2.1", "203.0.113.7", Enforcement::Observe),
            Some(("M32".into(), Action::Monitor, MatchedBy::Dst))
        );
        assert_eq!(v("192.0.2.1", "192.0.2.2", Enforcement::Enforce), None);
        assert_eq!(matches(&refs, ip("203.0.113.7")).len(), 3);
    }
}
