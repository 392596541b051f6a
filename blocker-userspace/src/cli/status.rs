//! `blocker status --config FILE [--json]`: read from the pins and
//! `state_dir`, so it works whether the daemon is running or stopped.

use std::path::Path;

use serde_json::json;
use time::OffsetDateTime;

use super::{EnvError, Exit, format_time, format_unix, in_force_view, load_config, print_json};
use crate::{
    datapath::{self, Maps},
    policy::OrderState,
    state::StateDir,
};

pub(super) fn status(config_path: &Path, json: bool) -> Result<Exit, EnvError> {
    let config = load_config(config_path)?;
    let now = OffsetDateTime::now_utc();
    let attachments = datapath::attachments(&config.bpffs_dir).map_err(EnvError::new)?;
    let interfaces: Vec<_> = config
        .interfaces
        .iter()
        .map(|interface| {
            let attached = attachments.iter().find(|a| a.interface == interface.name);
            json!({
                "name": interface.name,
                "configured_mode": format!("{:?}", interface.mode).to_lowercase(),
                "attached": attached.is_some(),
                "mode": attached.map(|a| a.mode.as_str()),
            })
        })
        .collect();
    let maps = Maps::open_pinned(&config.bpffs_dir).ok();
    let prefixes = maps
        .as_ref()
        .and_then(|m| m.live_prefixes().ok())
        .map(|(v4, v6)| json!({ "ipv4": v4, "ipv6": v6 }));
    let view = in_force_view(&config, now)?;
    let sync = StateDir::existing(&config.state_dir)
        .and_then(|s| s.load_status().ok().flatten())
        .unwrap_or_default();
    let orders = view.as_ref().map(|v| {
        OrderState::ALL
            .iter()
            .map(|&s| (s.as_str().to_owned(), json!(v.evaluation.count(s))))
            .collect::<serde_json::Map<_, _>>()
    });
    let order_list: Vec<_> = view
        .as_ref()
        .map(|v| {
            v.evaluation
                .orders
                .iter()
                .map(|o| {
                    json!({
                        "id": o.id,
                        "state": o.state.as_str(),
                        "action": o.order.action.as_str(),
                        "rung": o.order.rung.as_str(),
                        "targets": o.order.targets.len(),
                        "reasons": o.reasons,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let report = json!({
        "interfaces": interfaces,
        "enforcement": format!("{:?}", config.enforcement).to_lowercase(),
        "feed": view.as_ref().map(|v| json!({
            "serial": v.feed.serial,
            "issued_at": format_time(v.feed.issued_at),
            "issuer": v.feed.issuer,
        })),
        "orders": orders,
        "order_list": order_list,
        "prefixes": prefixes,
        "pinned": maps.is_some(),
        "last_sync": sync.last_success.map(format_unix),
        "last_apply": sync.last_apply.map(format_unix),
        "last_failure": sync.last_failure,
    });
    if json {
        print_json(&report);
        return Ok(Exit::Ok);
    }
    println!("interfaces:");
    for interface in &config.interfaces {
        match attachments.iter().find(|a| a.interface == interface.name) {
            Some(a) => println!("  {:<16} attached ({})", interface.name, a.mode.as_str()),
            None => println!("  {:<16} NOT attached", interface.name),
        }
    }
    println!(
        "enforcement:  {}",
        format!("{:?}", config.enforcement).to_lowercase()
    );
    match &view {
        Some(v) => println!(
            "feed:         serial {} issued {} by {}",
            v.feed.serial,
            format_time(v.feed.issued_at),
            v.feed.issuer
        ),
        None => println!("feed:         none applied yet"),
    }
    if let Some(v) = &view {
        let counts: Vec<String> = OrderState::ALL
            .iter()
            .map(|&s| format!("{} {}", s.as_str(), v.evaluation.count(s)))
            .collect();
        println!("orders:       {}", counts.join(", "));
        for o in &v.evaluation.orders {
            let reasons = if o.reasons.is_empty() {
                String::new()
            } else {
                format!("  ({})", o.reasons.join("; "))
            };
            println!("  {:<24} {}{reasons}", o.id, o.state.as_str());
        }
    }
    match maps.as_ref().and_then(|m| m.live_prefixes().ok()) {
        Some((v4, v6)) => println!("prefixes:     ipv4 {v4}, ipv6 {v6} (loaded in the datapath)"),
        None => println!(
            "prefixes:     nothing pinned under {}",
            config.bpffs_dir.display()
        ),
    }
    println!(
        "last sync:    {}",
        sync.last_success
            .map_or_else(|| "never".to_owned(), format_unix)
    );
    if let Some(failure) = &sync.last_failure {
        println!("last failure: {failure}");
    }
    Ok(Exit::Ok)
}
