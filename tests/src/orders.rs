//! Orders as Rust values (for the compiler and the datapath) and feeds as the
//! contract's YAML (for the daemon and the CLI), written here by hand so the
//! tests do not depend on blocker's own serializer.

use std::fmt::Write as _;

use blocker::feed::{Action, Direction, Order, Rung, Status};
use ipnetwork::IpNetwork;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// An active order without a window. `targets` are addresses or prefixes.
pub fn order(id: &str, action: Action, direction: Direction, targets: &[&str]) -> Order {
    Order {
        id: id.to_owned(),
        rung: Rung::Datacenter,
        action,
        direction,
        targets: targets.iter().map(|t| prefix(t)).collect(),
        status: Status::Active,
        effective_from: None,
        expires_at: None,
        reference: None,
    }
}

pub fn drop_order(id: &str, direction: Direction, targets: &[&str]) -> Order {
    order(id, Action::Drop, direction, targets)
}

pub fn monitor_order(id: &str, direction: Direction, targets: &[&str]) -> Order {
    order(id, Action::Monitor, direction, targets)
}

/// `203.0.113.7` (a /32) or `203.0.113.0/24`.
pub fn prefix(text: &str) -> IpNetwork {
    text.parse()
        .unwrap_or_else(|err| panic!("bad prefix {text:?} in a test: {err}"))
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).expect("formatting a timestamp")
}

/// A feed in the contract's YAML (§1).
pub fn feed_yaml(serial: u64, issued_at: OffsetDateTime, orders: &[Order]) -> String {
    let mut yaml = format!(
        "format: blocker-feed/v1\nserial: {serial}\nissued_at: {}\nissuer: BLKT-TEST\norders:\n",
        rfc3339(issued_at)
    );
    if orders.is_empty() {
        yaml = yaml.replace("orders:\n", "orders: []\n");
    }
    for order in orders {
        let _ = writeln!(yaml, "  - id: {}", order.id);
        let _ = writeln!(yaml, "    rung: {}", order.rung.as_str());
        let _ = writeln!(yaml, "    action: {}", order.action.as_str());
        let _ = writeln!(yaml, "    direction: {}", order.direction.as_str());
        let _ = writeln!(yaml, "    targets:");
        for target in order.targets.iter() {
            let _ = writeln!(yaml, "      - {target}");
        }
        let _ = writeln!(yaml, "    status: {}", order.status.as_str());
        if let Some(at) = order.effective_from {
            let _ = writeln!(yaml, "    effective_from: {}", rfc3339(at));
        }
        if let Some(at) = order.expires_at {
            let _ = writeln!(yaml, "    expires_at: {}", rfc3339(at));
        }
        if let Some(reference) = &order.reference {
            let _ = writeln!(yaml, "    reference: {reference:?}");
        }
    }
    yaml
}
