//! `blocker plan --config FILE FEED [--json]`: what applying FEED would
//! change against what is in force, without applying it.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fs,
    path::Path,
};

use ipnetwork::IpNetwork;
use serde_json::json;
use time::OffsetDateTime;

use super::{EnvError, Exit, in_force_view, load_config, print_json};
use crate::{
    feed::{self, Order},
    policy::{self, OrderState},
    signature::{self, PublicKey},
};

/// Orders a line of the text report names before it counts the rest: a
/// feed's change can add or remove thousands (`--json` lists every one).
const LISTED: usize = 20;

/// How many addresses a prefix covers.
fn addresses(prefix: &IpNetwork) -> u128 {
    let host_bits = match prefix {
        IpNetwork::V4(p) => 32 - u32::from(p.prefix()),
        IpNetwork::V6(p) => 128 - u32::from(p.prefix()),
    };
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

fn targets<'a>(orders: impl Iterator<Item = &'a Order>) -> BTreeSet<IpNetwork> {
    orders.flat_map(|o| o.targets.iter().copied()).collect()
}

pub(super) fn plan(config_path: &Path, feed_path: &Path, json: bool) -> Result<Exit, EnvError> {
    let config = load_config(config_path)?;
    let bytes = fs::read(feed_path)
        .map_err(|e| EnvError::new(format!("reading {}: {e}", feed_path.display())))?;
    let now = OffsetDateTime::now_utc();
    let mut refusals = Vec::new();

    let mut signature_path = OsString::from(feed_path.as_os_str());
    signature_path.push(".minisig");
    let signature_note = match fs::read(&signature_path) {
        Ok(sig) => {
            let key = PublicKey::from_file(&config.feed.public_key).map_err(EnvError::new)?;
            match signature::verify(&key, &bytes, &sig) {
                Ok(_) => "verified".to_owned(),
                Err(err) => {
                    refusals.push(format!("signature: {err}"));
                    "INVALID".to_owned()
                }
            }
        }
        Err(_) => "not checked (no FEED.minisig next to the feed)".to_owned(),
    };
    let candidate = match feed::parse(&bytes) {
        Ok(feed) => feed,
        Err(err) => {
            println!("{}: would be refused:", feed_path.display());
            for line in err.to_string().lines() {
                println!("  {line}");
            }
            return Ok(Exit::Invalid);
        }
    };
    let current = in_force_view(&config, now)?;
    if let Some(current) = &current
        && candidate.serial <= current.feed.serial
    {
        refusals.push(format!(
            "serial {} is not larger than serial {} in force",
            candidate.serial, current.feed.serial
        ));
    }
    let evaluation = match policy::evaluate(&candidate, &config.guardrails.to_policy(), now) {
        Ok(evaluation) => evaluation,
        Err(err) => {
            println!("{}: would be refused whole: {err}", feed_path.display());
            return Ok(Exit::Invalid);
        }
    };

    // By id: a feed holds thousands of orders.
    let before: BTreeMap<&str, &Order> = current
        .as_ref()
        .map(|c| c.feed.orders.iter().map(|o| (o.id.as_str(), o)).collect())
        .unwrap_or_default();
    let after: BTreeMap<&str, &Order> = candidate
        .orders
        .iter()
        .map(|o| (o.id.as_str(), o))
        .collect();
    let before_ids: BTreeSet<&str> = before.keys().copied().collect();
    let after_ids: BTreeSet<&str> = after.keys().copied().collect();
    let changed: Vec<&str> = after
        .iter()
        .filter(|&(id, order)| before.get(id).is_some_and(|was| was != order))
        .map(|(&id, _)| id)
        .collect();
    let before_force: BTreeSet<&str> = current
        .as_ref()
        .map(|c| c.evaluation.in_force().map(|o| o.id.as_str()).collect())
        .unwrap_or_default();
    let after_force: BTreeSet<&str> = evaluation.in_force().map(|o| o.id.as_str()).collect();
    let before_prefixes = current
        .as_ref()
        .map(|c| targets(c.evaluation.in_force()))
        .unwrap_or_default();
    let after_prefixes = targets(evaluation.in_force());

    let newly_enforced: Vec<_> = after_force
        .difference(&before_force)
        .filter_map(|id| after.get(id).copied())
        .map(|o| {
            let count: u128 = o
                .targets
                .iter()
                .map(addresses)
                .fold(0, u128::saturating_add);
            (o.id.as_str(), o.action.as_str(), count)
        })
        .collect();
    let refused: Vec<_> = evaluation
        .orders
        .iter()
        .filter(|o| o.state == OrderState::Refused)
        .map(|o| (o.id.as_str(), o.reasons.join("; ")))
        .collect();
    let strings = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
    let added_prefixes = strings(
        after_prefixes
            .difference(&before_prefixes)
            .map(|p| p.to_string())
            .collect(),
    );
    let removed_prefixes = strings(
        before_prefixes
            .difference(&after_prefixes)
            .map(|p| p.to_string())
            .collect(),
    );
    let unchanged_prefixes = after_prefixes.intersection(&before_prefixes).count();

    let report = json!({
        "feed": feed_path.display().to_string(),
        "serial": { "in_force": current.as_ref().map(|c| c.feed.serial), "candidate": candidate.serial },
        "signature": signature_note,
        "would_apply": refusals.is_empty(),
        "refusals": refusals,
        "orders": {
            "added": after_ids.difference(&before_ids).collect::<Vec<_>>(),
            "removed": before_ids.difference(&after_ids).collect::<Vec<_>>(),
            "changed": changed,
            "unchanged": after_ids.intersection(&before_ids).count() - changed.len(),
            "entering_force": after_force.difference(&before_force).collect::<Vec<_>>(),
            "leaving_force": before_force.difference(&after_force).collect::<Vec<_>>(),
            "refused": refused.iter().map(|(id, why)| json!({"order": id, "reason": why})).collect::<Vec<_>>(),
        },
        "prefixes": {
            "added": added_prefixes,
            "removed": removed_prefixes,
            "unchanged": unchanged_prefixes,
        },
        "newly_enforced": newly_enforced.iter().map(|(id, action, count)| json!({
            "order": id, "action": action, "addresses": count.to_string(),
        })).collect::<Vec<_>>(),
    });
    let exit = if refusals.is_empty() {
        Exit::Ok
    } else {
        Exit::Invalid
    };
    if json {
        print_json(&report);
        return Ok(exit);
    }
    println!(
        "plan: serial {} -> {} (signature {signature_note})",
        current
            .as_ref()
            .map_or_else(|| "none".to_owned(), |c| c.feed.serial.to_string()),
        candidate.serial
    );
    for refusal in &refusals {
        println!("  WOULD BE REFUSED: {refusal}");
    }
    let list = |label: &str, items: Vec<&&str>| {
        let shown = items.iter().take(LISTED).map(|s| **s).collect::<Vec<_>>();
        match items.len() {
            0 => {}
            n if n <= LISTED => println!("  {label:<16} {}", shown.join(", ")),
            n => println!(
                "  {label:<16} {n}: {}, and {} more (--json lists them all)",
                shown.join(", "),
                n - LISTED
            ),
        }
    };
    list("orders added", after_ids.difference(&before_ids).collect());
    list(
        "orders removed",
        before_ids.difference(&after_ids).collect(),
    );
    list("orders changed", changed.iter().collect());
    list(
        "enter force",
        after_force.difference(&before_force).collect(),
    );
    list(
        "leave force",
        before_force.difference(&after_force).collect(),
    );
    for (id, why) in &refused {
        println!("  refused          {id}: {why}");
    }
    println!(
        "  prefixes         +{} -{} ={}",
        report["prefixes"]["added"].as_array().map_or(0, Vec::len),
        report["prefixes"]["removed"].as_array().map_or(0, Vec::len),
        unchanged_prefixes
    );
    for (id, action, count) in newly_enforced.iter().take(LISTED) {
        println!(
            "  newly enforced   {id} ({action}): {}",
            super::counted(*count, "address", "addresses")
        );
    }
    if newly_enforced.len() > LISTED {
        let rest = &newly_enforced[LISTED..];
        let addresses = rest
            .iter()
            .map(|(_, _, count)| *count)
            .fold(0, u128::saturating_add);
        println!(
            "  newly enforced   {}: {} (--json lists them all)",
            super::counted(rest.len(), "more order", "more orders"),
            super::counted(addresses, "address", "addresses")
        );
    }
    Ok(exit)
}
