//! `blocker check --config FILE ADDRESS [--json]`: which orders in force
//! match ADDRESS, in which direction, which one wins, and what the datapath
//! holds for it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use serde_json::json;
use time::OffsetDateTime;

use super::{EnvError, Exit, format_time, in_force_view, load_config, print_json};
use crate::{datapath::Maps, reference, state::StateDir};

pub(super) fn check(config_path: &Path, address: &str, json: bool) -> Result<Exit, EnvError> {
    let addr: IpAddr = address.parse().map_err(|_| {
        EnvError::new(format!(
            "{address:?} is not an IPv4 or IPv6 address (give one address, no prefix length)"
        ))
    })?;
    let config = load_config(config_path)?;
    let now = OffsetDateTime::now_utc();
    let view = in_force_view(&config, now)?;
    let in_force: Vec<_> = view
        .as_ref()
        .map(|v| v.evaluation.in_force().collect())
        .unwrap_or_default();
    let matches = reference::matches(&in_force, addr);
    // The other end of the packet: an address no order can cover (rung
    // limits forbid /0), so each verdict shows this address's part alone.
    let elsewhere = match addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let as_destination = reference::verdict(&in_force, config.enforcement, elsewhere, addr);
    let as_source = reference::verdict(&in_force, config.enforcement, addr, elsewhere);

    let window = |id: &str| {
        let order = view.as_ref().and_then(|v| v.feed.order(id));
        (
            order.and_then(|o| o.effective_from).map(format_time),
            order.and_then(|o| o.expires_at).map(format_time),
            order.and_then(|o| o.reference.clone()),
        )
    };
    let match_list: Vec<_> = matches
        .iter()
        .map(|m| {
            let (from, until, legal) = window(&m.order);
            json!({
                "order": m.order,
                "direction": m.direction.as_str(),
                "prefix": m.prefix.to_string(),
                "action": m.action.as_str(),
                "effective_from": from,
                "expires_at": until,
                "reference": legal,
            })
        })
        .collect();
    let verdict_json = |w: &Option<reference::Winner>| {
        w.as_ref().map(|w| {
            json!({ "order": w.order, "action": w.action.as_str(), "prefix": w.prefix.to_string() })
        })
    };

    // The datapath's view, through the live table generation.
    let slots = StateDir::existing(&config.state_dir)
        .and_then(|s| s.load_slots().ok())
        .unwrap_or_default();
    let slot_name = |slot: u32| {
        slots
            .iter()
            .find(|(_, s)| *s == slot)
            .map_or_else(|| format!("slot {slot}"), |(id, _)| id.to_owned())
    };
    let kernel = Maps::open_pinned(&config.bpffs_dir)
        .ok()
        .and_then(|maps| maps.lookup(addr).ok())
        .map(|entry| {
            let entry = entry.unwrap_or(blocker_common::PrefixEntry::EMPTY);
            let names = |candidates: &[blocker_common::Candidate]| {
                candidates
                    .iter()
                    .filter(|c| c.is_some())
                    .map(|c| {
                        json!({
                            "order": slot_name(c.slot),
                            "action": if c.is_drop() { "drop" } else { "monitor" },
                            "prefix_len": c.prefix_len(),
                        })
                    })
                    .collect::<Vec<_>>()
            };
            json!({
                "as_destination": names(&entry.dst),
                "as_source": names(&entry.src),
            })
        });

    let report = json!({
        "address": addr.to_string(),
        "serial": view.as_ref().map(|v| v.feed.serial),
        "matches": match_list,
        "as_destination": verdict_json(&as_destination),
        "as_source": verdict_json(&as_source),
        "datapath": kernel,
    });
    if json {
        print_json(&report);
        return Ok(Exit::Ok);
    }
    match &view {
        Some(v) => println!("{addr} against feed serial {}:", v.feed.serial),
        None => println!("{addr}: no feed applied yet"),
    }
    if matches.is_empty() {
        println!("  no order in force matches {addr}");
    }
    for m in &matches {
        let (from, until, legal) = window(&m.order);
        println!(
            "  order {} ({}) matches as {} via {}; in force from {} until {}{}",
            m.order,
            m.action.as_str(),
            match m.direction.as_str() {
                "dst" => "destination",
                _ => "source",
            },
            m.prefix,
            from.unwrap_or_else(|| "(no start)".into()),
            until.unwrap_or_else(|| "(no end)".into()),
            legal.map(|r| format!(" [{r}]")).unwrap_or_default(),
        );
    }
    for (label, verdict) in [
        ("traffic to it", &as_destination),
        ("traffic from it", &as_source),
    ] {
        match verdict {
            Some(w) => println!(
                "  {label}: {} by order {} (via {})",
                match w.action.as_str() {
                    "drop" => "DROPPED",
                    _ => "passed, counted (monitor)",
                },
                w.order,
                w.prefix
            ),
            None => println!("  {label}: passes"),
        }
    }
    if kernel.is_none() {
        println!(
            "  (datapath not readable under {})",
            config.bpffs_dir.display()
        );
    }
    Ok(Exit::Ok)
}
