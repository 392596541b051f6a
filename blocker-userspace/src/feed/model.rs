//! The validated feed: plain data, produced by [`super::parse`].

use std::{fmt, sync::Arc};

use ipnetwork::IpNetwork;
use time::OffsetDateTime;

/// The escalation-ladder rung an order sits on; it bounds how broad a target
/// may be.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Rung {
    Server,
    Rack,
    Datacenter,
}

impl Rung {
    /// The broadest prefix the contract lets this rung target: server /29
    /// and /64, rack /22 and /48, datacenter /16 and /29. A feed that goes
    /// broader is invalid; an operator may only tighten these.
    pub const fn contract_min_len(self, ipv6: bool) -> u8 {
        match (self, ipv6) {
            (Rung::Server, false) => 29,
            (Rung::Server, true) => 64,
            (Rung::Rack, false) => 22,
            (Rung::Rack, true) => 48,
            (Rung::Datacenter, false) => 16,
            (Rung::Datacenter, true) => 29,
        }
    }
}

/// What a matching packet gets.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Drop,
    Monitor,
}

/// Which address of a packet an order's targets apply to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Dst,
    Src,
    Both,
}

/// The regulator's status of an order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
    Withdrawn,
}

impl Rung {
    pub const fn as_str(self) -> &'static str {
        match self {
            Rung::Server => "server",
            Rung::Rack => "rack",
            Rung::Datacenter => "datacenter",
        }
    }
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Monitor => "monitor",
        }
    }
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Dst => "dst",
            Direction::Src => "src",
            Direction::Both => "both",
        }
    }

    /// Whether the order's targets apply to a packet's destination address.
    pub const fn covers_dst(self) -> bool {
        matches!(self, Direction::Dst | Direction::Both)
    }

    /// Whether the order's targets apply to a packet's source address.
    pub const fn covers_src(self) -> bool {
        matches!(self, Direction::Src | Direction::Both)
    }
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Withdrawn => "withdrawn",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Rung, Action, Direction, Status);

/// One block order, validated: ids are well formed, targets have no host
/// bits, `effective_from < expires_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: String,
    pub rung: Rung,
    pub action: Action,
    pub direction: Direction,
    /// Normalised prefixes (a bare address is a /32 or /128), in feed order.
    /// Shared: an evaluation or a held feed copies an order without them.
    pub targets: Arc<[IpNetwork]>,
    pub status: Status,
    pub effective_from: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub reference: Option<String>,
}

/// A whole validated feed. Order ids are unique.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    pub serial: u64,
    pub issued_at: OffsetDateTime,
    pub issuer: String,
    pub orders: Vec<Order>,
}

impl Feed {
    pub fn order(&self, id: &str) -> Option<&Order> {
        self.orders.iter().find(|order| order.id == id)
    }
}
