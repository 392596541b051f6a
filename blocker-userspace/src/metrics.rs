//! Prometheus metrics (contract §4) and the `/metrics` listener.
//!
//! The daemon sets gauges as it applies feeds; per-order counters and
//! datapath statistics live in per-CPU kernel maps and are read at scrape
//! time from a separate handle on the pinned maps, so a scrape never waits
//! for an apply.
//!
//! The per-order families (two series an order counted, one an order in
//! force: 30,000 at 10,000 orders) are written by hand after the rest,
//! which the `prometheus` crate gathers and encodes: through the crate,
//! they cost a scrape 25 ms of the daemon's CPU (a label pair allocated,
//! sorted and escaped per series), by hand about 2.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use blocker_common::OrderCounters;
use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::{
    datapath::Maps,
    feed::Action,
    policy::{Evaluation, OrderState},
};

/// One order with a counter slot, as the scrape reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CountedOrder {
    pub id: String,
    pub slot: u32,
    pub action: Action,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric: {0}")]
    Register(#[from] prometheus::Error),
    #[error("metrics listener on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    orders: IntGaugeVec,
    prefixes: IntGaugeVec,
    prefixes_capacity: IntGauge,
    feed_serial: IntGauge,
    feed_last_success: IntGauge,
    sync_failures: IntCounterVec,
    xdp_attached: IntGaugeVec,
    frames: IntCounterVec,
    interface_frames: IntCounterVec,
    interfaces: Mutex<Vec<(String, u32)>>,
    /// `blocker_order_enforced_since_timestamp_seconds`: (order, time),
    /// sorted by order.
    enforced_since: Mutex<Vec<(String, i64)>>,
    sync_duration: Histogram,
    apply_duration: Gauge,
    state_write_failures: IntCounterVec,
    repairs: IntCounterVec,
    counted: Mutex<Vec<Counted>>,
    maps: Mutex<Option<Maps>>,
}

/// A counted order and the totals its series last reported (kept should
/// a read of its counters fail).
struct Counted {
    order: CountedOrder,
    totals: OrderCounters,
}

/// A per-order family written by hand: its name and help.
type Family = (&'static str, &'static str);

/// Which of an order's totals a counter family reports.
type Total = fn(&OrderCounters) -> u64;

/// The per-order counter families, as the crate orders families (by
/// name), each with the total it reports.
const ORDER_COUNTERS: [(Family, Total); 2] = [
    (
        (
            "blocker_order_matched_bytes_total",
            "Bytes (frame length as XDP sees it) of packets that matched an order in force.",
        ),
        |totals| totals.bytes,
    ),
    (
        (
            "blocker_order_matched_packets_total",
            "Packets that matched an order in force, counted once for the winning order.",
        ),
        |totals| totals.packets,
    ),
];
const ENFORCED_SINCE: Family = (
    "blocker_order_enforced_since_timestamp_seconds",
    "Unix time since which the order has been in force without interruption.",
);

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let orders = IntGaugeVec::new(
            Opts::new("blocker_orders", "Orders of the feed in force, by state."),
            &["state"],
        )?;
        let prefixes = IntGaugeVec::new(
            Opts::new(
                "blocker_prefixes",
                "Prefixes loaded into the datapath, by address family.",
            ),
            &["family"],
        )?;
        let prefixes_capacity = IntGauge::new(
            "blocker_prefixes_capacity",
            "Prefixes each address family's lookup table can hold (guardrails.max_prefixes).",
        )?;
        let feed_serial = IntGauge::new("blocker_feed_serial", "Serial of the feed in force.")?;
        let feed_last_success = IntGauge::new(
            "blocker_feed_last_success_timestamp_seconds",
            "Unix time of the last successful feed sync.",
        )?;
        let sync_failures = IntCounterVec::new(
            Opts::new(
                "blocker_feed_sync_failures_total",
                "Feed syncs that failed or were refused, by reason.",
            ),
            &["reason"],
        )?;
        let xdp_attached = IntGaugeVec::new(
            Opts::new(
                "blocker_xdp_attached",
                "1 when the XDP program is attached to the interface.",
            ),
            &["interface", "mode"],
        )?;
        let frames = IntCounterVec::new(
            Opts::new(
                "blocker_datapath_frames_total",
                "Frames the XDP program saw, by outcome (seen, passed, dropped, monitored, non_ip, truncated, malformed, too_many_vlans, error, ip).",
            ),
            &["kind"],
        )?;
        let interface_frames = IntCounterVec::new(
            Opts::new(
                "blocker_interface_frames_total",
                "Frames the XDP program saw on each attached interface, by outcome (as blocker_datapath_frames_total).",
            ),
            &["interface", "kind"],
        )?;
        registry.register(Box::new(interface_frames.clone()))?;
        let sync_duration = Histogram::with_opts(
            HistogramOpts::new(
                "blocker_feed_sync_duration_seconds",
                "Time one feed sync took: fetch, verify, parse, validate, compile, load.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let apply_duration = Gauge::new(
            "blocker_feed_last_apply_duration_seconds",
            "Time the last apply to the datapath took (compile and map updates).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "blocker_build_info",
                "Always 1; the labels say which build of blocker runs.",
            ),
            &["version", "program_bytes"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &crate::datapath::PROGRAM.len().to_string(),
            ])
            .set(1);
        let state_write_failures = IntCounterVec::new(
            Opts::new(
                "blocker_state_write_failures_total",
                "Writes to state_dir that failed (disk full, read-only, ...), by file; enforcement goes on.",
            ),
            &["file"],
        )?;
        for file in ["audit", "feed", "slots", "status"] {
            state_write_failures.with_label_values(&[file]);
        }
        let repairs = IntCounterVec::new(
            Opts::new(
                "blocker_datapath_repairs_total",
                "Times the daemon restored enforcement plumbing someone removed: pin (a map or program pin), link (an interface's link pin), attach (re-attached to a recreated interface).",
            ),
            &["what"],
        )?;
        for what in ["pin", "link", "attach"] {
            repairs.with_label_values(&[what]);
        }
        registry.register(Box::new(state_write_failures.clone()))?;
        registry.register(Box::new(repairs.clone()))?;
        registry.register(Box::new(sync_duration.clone()))?;
        registry.register(Box::new(apply_duration.clone()))?;
        registry.register(Box::new(build_info))?;
        for collector in [&sync_failures, &frames] {
            registry.register(Box::new(collector.clone()))?;
        }
        for collector in [&orders, &prefixes, &xdp_attached] {
            registry.register(Box::new(collector.clone()))?;
        }
        registry.register(Box::new(feed_serial.clone()))?;
        registry.register(Box::new(prefixes_capacity.clone()))?;
        registry.register(Box::new(feed_last_success.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for state in OrderState::ALL {
            orders.with_label_values(&[state.as_str()]).set(0);
        }
        for family in ["ipv4", "ipv6"] {
            prefixes.with_label_values(&[family]).set(0);
        }
        Ok(Self {
            registry,
            orders,
            prefixes,
            prefixes_capacity,
            feed_serial,
            feed_last_success,
            sync_failures,
            xdp_attached,
            frames,
            interface_frames,
            interfaces: Mutex::new(Vec::new()),
            enforced_since: Mutex::new(Vec::new()),
            sync_duration,
            apply_duration,
            state_write_failures,
            repairs,
            counted: Mutex::new(Vec::new()),
            maps: Mutex::new(None),
        })
    }

    /// Gives the scrape its own handle on the pinned maps.
    pub fn set_maps(&self, maps: Maps) {
        *self.maps.lock().unwrap_or_else(PoisonError::into_inner) = Some(maps);
    }

    /// The orders whose counters the scrape reports; series of orders no
    /// longer listed are gone from the next scrape. An order listed before
    /// on the same slot keeps the totals last reported.
    pub fn set_counted_orders(&self, orders: Vec<CountedOrder>) {
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        let last: std::collections::HashMap<&CountedOrder, OrderCounters> =
            counted.iter().map(|c| (&c.order, c.totals)).collect();
        let mut next: Vec<Counted> = orders
            .into_iter()
            .map(|order| Counted {
                totals: last.get(&order).copied().unwrap_or_default(),
                order,
            })
            .collect();
        // As the crate ordered them: by label value, action first.
        next.sort_by(|a, b| {
            (a.order.action.as_str(), &a.order.id).cmp(&(b.order.action.as_str(), &b.order.id))
        });
        *counted = next;
    }

    pub fn set_evaluation(&self, evaluation: &Evaluation) {
        for state in OrderState::ALL {
            self.orders
                .with_label_values(&[state.as_str()])
                .set(evaluation.count(state) as i64);
        }
    }

    /// Sets `blocker_order_enforced_since_timestamp_seconds` to exactly the
    /// given orders.
    pub fn set_enforced_since(&self, since: &[(String, i64)]) {
        let mut sorted = since.to_vec();
        sorted.sort();
        sorted.dedup_by(|a, b| a.0 == b.0);
        *self
            .enforced_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = sorted;
    }

    pub fn set_prefixes(&self, ipv4: usize, ipv6: usize) {
        self.prefixes.with_label_values(&["ipv4"]).set(ipv4 as i64);
        self.prefixes.with_label_values(&["ipv6"]).set(ipv6 as i64);
    }

    pub fn set_capacity(&self, capacity: u32) {
        self.prefixes_capacity.set(i64::from(capacity));
    }

    pub fn set_feed(&self, serial: u64, synced_at_unix: i64) {
        self.feed_serial
            .set(i64::try_from(serial).unwrap_or(i64::MAX));
        self.feed_last_success.set(synced_at_unix);
    }

    pub fn observe_sync(&self, seconds: f64) {
        self.sync_duration.observe(seconds);
    }

    pub fn set_apply_duration(&self, seconds: f64) {
        self.apply_duration.set(seconds);
    }

    pub fn sync_succeeded(&self, at_unix: i64) {
        self.feed_last_success.set(at_unix);
    }

    pub fn sync_failed(&self, reason: &str) {
        self.sync_failures.with_label_values(&[reason]).inc();
    }

    /// Makes a failure reason visible at 0 before it first happens.
    pub fn declare_failure_reason(&self, reason: &str) {
        self.sync_failures.with_label_values(&[reason]);
    }

    /// The attached interfaces and their ifindex, for per-interface frames.
    pub fn set_interfaces(&self, interfaces: Vec<(String, u32)>) {
        *self
            .interfaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = interfaces;
    }

    /// A write to `state_dir` failed; `file` is audit, feed, slots or status.
    pub fn state_write_failed(&self, file: &str) {
        self.state_write_failures.with_label_values(&[file]).inc();
    }

    /// The daemon put back what someone removed (`what`: pin, link, attach).
    pub fn repaired(&self, what: &str) {
        self.repairs.with_label_values(&[what]).inc();
    }

    pub fn set_attached(&self, interface: &str, mode: &str, attached: bool) {
        self.xdp_attached
            .with_label_values(&[interface, mode])
            .set(i64::from(attached));
    }

    /// Reads the kernel counters into the metrics, then renders the text
    /// exposition format.
    pub fn render(&self) -> String {
        self.refresh_from_maps();
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %err, "encoding metrics");
        }
        let mut text = String::from_utf8(out).unwrap_or_default();
        self.render_orders(&mut text);
        text
    }

    /// Appends the per-order families to `out`, in the text exposition
    /// format (a family without series is left out, as the crate does).
    fn render_orders(&self, out: &mut String) {
        let since = self
            .enforced_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !since.is_empty() {
            family_header(out, ENFORCED_SINCE, "gauge");
            for (order, timestamp) in since.iter() {
                let _ = writeln!(
                    out,
                    "{}{{order=\"{}\"}} {timestamp}",
                    ENFORCED_SINCE.0,
                    Label(order)
                );
            }
        }
        drop(since);
        let counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        if counted.is_empty() {
            return;
        }
        for (family, total) in ORDER_COUNTERS {
            family_header(out, family, "counter");
            for Counted { order, totals } in counted.iter() {
                let value = total(totals);
                let _ = writeln!(
                    out,
                    "{}{{action=\"{}\",order=\"{}\"}} {value}",
                    family.0,
                    order.action.as_str(),
                    Label(&order.id)
                );
            }
        }
    }

    fn refresh_from_maps(&self) {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(maps) = maps.as_ref() else { return };
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        // Every counted slot in one read; slot by slot should that fail.
        let slots = counted.iter().map(|c| c.order.slot + 1).max().unwrap_or(0);
        let all = maps.order_totals(slots).unwrap_or_else(|err| {
            tracing::debug!(error = %err, "reading order counters at once");
            Vec::new()
        });
        for Counted { order, totals } in counted.iter_mut() {
            // A total below the last one means the kernel slot was reset
            // (the order id is new on it): the series starts again, which
            // Prometheus reads as a counter reset.
            match all.get(order.slot as usize) {
                Some(&read) => *totals = read,
                None => match maps.order_counters(order.slot) {
                    Ok(read) => *totals = read,
                    Err(err) => {
                        tracing::warn!(order = %order.id, error = %err, "reading order counters");
                    }
                },
            }
        }
        match maps.stats() {
            Ok(stats) => {
                for (stat, label) in blocker_common::Stat::ALL {
                    advance(&self.frames, &[label], stats[stat as usize]);
                }
            }
            Err(err) => tracing::warn!(error = %err, "reading datapath statistics"),
        }
        let interfaces = self
            .interfaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, ifindex) in interfaces.iter() {
            match maps.interface_stats(*ifindex) {
                Ok(stats) => {
                    for (stat, label) in blocker_common::Stat::ALL {
                        advance(&self.interface_frames, &[name, label], stats[stat as usize]);
                    }
                }
                Err(err) => {
                    tracing::warn!(interface = %name, error = %err, "reading interface statistics")
                }
            }
        }
    }

    /// Serves `GET /metrics` on `addr` until the future is dropped.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> Result<(), MetricsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Listen { addr, source })?;
        self.serve_on(listener).await
    }

    /// Serves `GET /metrics` on an already bound listener.
    pub async fn serve_on(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> Result<(), MetricsError> {
        let addr = listener
            .local_addr()
            .map_err(|source| MetricsError::Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = Arc::clone(&self);
                async move {
                    let body = tokio::task::spawn_blocking(move || metrics.render())
                        .await
                        .unwrap_or_default();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        );
        axum::serve(listener, app)
            .await
            .map_err(|source| MetricsError::Listen { addr, source })
    }
}

/// Moves a Prometheus counter up to the kernel's running total. A total below
/// the counter means the kernel's counters were made anew (the maps were
/// recreated): start the series again.
fn advance(vec: &IntCounterVec, labels: &[&str], total: u64) {
    let counter = vec.with_label_values(labels);
    let current = counter.get();
    if total >= current {
        counter.inc_by(total - current);
    } else {
        let _ = vec.remove_label_values(labels);
        vec.with_label_values(labels).inc_by(total);
    }
}

/// The `# HELP` and `# TYPE` lines of a family written by hand.
fn family_header(out: &mut String, (name, help): Family, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value, escaped as the text exposition format asks (order ids
/// never need it: the contract allows `[A-Za-z0-9._:-]`).
struct Label<'a>(&'a str);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The orders of the tests: ids that sort differently by action, and
    /// two that only a hostile feed could carry (the contract forbids
    /// quotes and backslashes), to check the escaping.
    fn orders() -> Vec<CountedOrder> {
        ["B-2", "A-1", "C-3", "Q\"x", "S\\y"]
            .iter()
            .enumerate()
            .map(|(slot, id)| CountedOrder {
                id: (*id).to_owned(),
                slot: slot as u32,
                action: if slot % 2 == 0 {
                    Action::Drop
                } else {
                    Action::Monitor
                },
            })
            .collect()
    }

    /// The per-order families written by hand read exactly as the
    /// `prometheus` crate wrote them when they were its vectors: the same
    /// lines in the same order, escaping included. (Totals of 2^53 and
    /// more differ: the crate wrote them as floats, rounded.)
    #[test]
    fn per_order_families_read_as_the_crate_wrote_them() {
        let metrics = Metrics::new().expect("metrics");
        let orders = orders();
        metrics.set_counted_orders(orders.clone());
        {
            let mut counted = metrics.counted.lock().expect("lock");
            for c in counted.iter_mut() {
                c.totals = OrderCounters {
                    packets: u64::from(c.order.slot) * 3 + 1,
                    bytes: u64::from(c.order.slot) * 1500 + (1 << 40),
                };
            }
        }
        let since: Vec<(String, i64)> = orders
            .iter()
            .map(|o| (o.id.clone(), 1_700_000_000 + i64::from(o.slot)))
            .collect();
        metrics.set_enforced_since(&since);

        let registry = Registry::new();
        let labels = &["order", "action"];
        let [bytes, packets] = ORDER_COUNTERS.map(|((name, help), _)| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("vector")
        });
        let enforced = IntGaugeVec::new(Opts::new(ENFORCED_SINCE.0, ENFORCED_SINCE.1), &["order"])
            .expect("vector");
        for order in &orders {
            let labels = [order.id.as_str(), order.action.as_str()];
            packets
                .with_label_values(&labels)
                .inc_by(u64::from(order.slot) * 3 + 1);
            bytes
                .with_label_values(&labels)
                .inc_by(u64::from(order.slot) * 1500 + (1 << 40));
            enforced
                .with_label_values(&[order.id.as_str()])
                .set(1_700_000_000 + i64::from(order.slot));
        }
        registry.register(Box::new(packets)).expect("register");
        registry.register(Box::new(bytes)).expect("register");
        registry.register(Box::new(enforced)).expect("register");
        let mut crate_text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut crate_text)
            .expect("encoding");

        let mut ours = String::new();
        metrics.render_orders(&mut ours);
        assert_eq!(ours, String::from_utf8(crate_text).expect("UTF-8"));
        assert!(ours.contains("order=\"Q\\\"x\""), "{ours}");
    }

    #[test]
    fn no_orders_no_per_order_families() {
        let metrics = Metrics::new().expect("metrics");
        metrics.set_counted_orders(orders());
        metrics.set_enforced_since(&[("A-1".to_owned(), 5)]);
        metrics.set_counted_orders(Vec::new());
        metrics.set_enforced_since(&[]);
        let text = metrics.render();
        assert!(!text.contains("blocker_order_"), "{text}");
        assert!(
            text.contains("blocker_orders{state=\"in_force\"} 0"),
            "{text}"
        );
    }

    /// An order listed again keeps the totals last read until the next
    /// scrape reads them; one that is gone leaves its series.
    #[test]
    fn relisting_keeps_totals_and_unlisting_drops_series() {
        let metrics = Metrics::new().expect("metrics");
        let orders = orders();
        metrics.set_counted_orders(orders.clone());
        metrics.counted.lock().expect("lock")[0].totals.packets = 41;
        let first = metrics.counted.lock().expect("lock")[0].order.clone();
        metrics.set_counted_orders(orders[..2].to_vec());
        let mut text = String::new();
        metrics.render_orders(&mut text);
        assert!(
            text.contains(&format!(
                "blocker_order_matched_packets_total{{action=\"{}\",order=\"{}\"}} 41",
                first.action.as_str(),
                first.id
            )),
            "{text}"
        );
        assert!(!text.contains("C-3"), "{text}");
    }
}
