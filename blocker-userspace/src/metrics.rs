//! Prometheus metrics (contract §4) and the `/metrics` listener.
//!
//! The daemon sets gauges as it applies feeds; per-order counters and
//! datapath statistics live in per-CPU kernel maps and are read at scrape
//! time from a separate handle on the pinned maps, so a scrape never waits
//! for an apply.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    order_packets: IntCounterVec,
    order_bytes: IntCounterVec,
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
    order_enforced_since: IntGaugeVec,
    sync_duration: Histogram,
    apply_duration: Gauge,
    state_write_failures: IntCounterVec,
    repairs: IntCounterVec,
    counted: Mutex<Vec<Counted>>,
    maps: Mutex<Option<Maps>>,
}

/// A counted order with its two series, held so that a scrape does not
/// look each up by its labels.
struct Counted {
    order: CountedOrder,
    packets: IntCounter,
    bytes: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let order_packets = IntCounterVec::new(
            Opts::new(
                "blocker_order_matched_packets_total",
                "Packets that matched an order in force, counted once for the winning order.",
            ),
            &["order", "action"],
        )?;
        let order_bytes = IntCounterVec::new(
            Opts::new(
                "blocker_order_matched_bytes_total",
                "Bytes (frame length as XDP sees it) of packets that matched an order in force.",
            ),
            &["order", "action"],
        )?;
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
        let order_enforced_since = IntGaugeVec::new(
            Opts::new(
                "blocker_order_enforced_since_timestamp_seconds",
                "Unix time since which the order has been in force without interruption.",
            ),
            &["order"],
        )?;
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
        for collector in [&order_packets, &order_bytes, &sync_failures, &frames] {
            registry.register(Box::new(collector.clone()))?;
        }
        for collector in [&orders, &prefixes, &xdp_attached, &order_enforced_since] {
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
            order_packets,
            order_bytes,
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
            order_enforced_since,
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
    /// longer listed are removed.
    pub fn set_counted_orders(&self, orders: Vec<CountedOrder>) {
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        let listed: HashSet<&CountedOrder> = orders.iter().collect();
        for old in counted.iter().map(|c| &c.order) {
            if !listed.contains(old) {
                let labels = [old.id.as_str(), old.action.as_str()];
                // Absent series are fine: nothing was scraped for them yet.
                let _ = self.order_packets.remove_label_values(&labels);
                let _ = self.order_bytes.remove_label_values(&labels);
            }
        }
        *counted = orders
            .into_iter()
            .map(|order| {
                let labels = [order.id.as_str(), order.action.as_str()];
                Counted {
                    packets: self.order_packets.with_label_values(&labels),
                    bytes: self.order_bytes.with_label_values(&labels),
                    order,
                }
            })
            .collect();
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
        self.order_enforced_since.reset();
        for (order, timestamp) in since {
            self.order_enforced_since
                .with_label_values(&[order.as_str()])
                .set(*timestamp);
        }
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
        String::from_utf8(out).unwrap_or_default()
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
        for Counted {
            order,
            packets,
            bytes,
        } in counted.iter_mut()
        {
            let totals = match all.get(order.slot as usize) {
                Some(&totals) => totals,
                None => match maps.order_counters(order.slot) {
                    Ok(totals) => totals,
                    Err(err) => {
                        tracing::warn!(order = %order.id, error = %err, "reading order counters");
                        continue;
                    }
                },
            };
            let labels = [order.id.as_str(), order.action.as_str()];
            advance_held(&self.order_packets, &labels, packets, totals.packets);
            advance_held(&self.order_bytes, &labels, bytes, totals.bytes);
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
/// the counter means the kernel slot was reset (the order id is new): start
/// the series again.
fn advance(vec: &IntCounterVec, labels: &[&str], total: u64) {
    let mut counter = vec.with_label_values(labels);
    advance_held(vec, labels, &mut counter, total);
}

/// [`advance`] for the series `counter` of `vec` at `labels`, held already
/// (and held anew when the series starts again).
fn advance_held(vec: &IntCounterVec, labels: &[&str], counter: &mut IntCounter, total: u64) {
    let current = counter.get();
    if total >= current {
        counter.inc_by(total - current);
    } else {
        let _ = vec.remove_label_values(labels);
        *counter = vec.with_label_values(labels);
        counter.inc_by(total);
    }
}
