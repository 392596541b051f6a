//! The report as a picture: per-packet cost of a miss (hot and varied), the
//! maps' kernel memory and the drop rates on the wire against the number of
//! prefixes, as SVG (text, no dependencies; `cargo xtask bench` turns it
//! into a PNG when it can).

use std::fmt::Write as _;

use serde_json::Value;

/// The table sizes the benchmark runs, in plot order.
const SIZES: [(u64, &str); 4] = [
    (0, "0"),
    (1_000, "1k"),
    (100_000, "100k"),
    (1_000_000, "1M"),
];
const PROGRAMS: [(&str, &str, &str); 3] = [
    ("empty", "empty program", "#888888"),
    ("lpm_reference", "LPM-trie reference", "#d95f02"),
    ("blocker", "blocker", "#1b5fa8"),
];
/// The wire's other device under test, as `PROGRAMS` names its programs.
const NFTABLES: (&str, &str, &str) = ("nftables", "nftables interval set", "#1b9e77");
const PANEL_W: f64 = 280.0;
const PANEL_H: f64 = 240.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 40.0;
const GAP: f64 = 90.0;

/// One line of a panel: its points (size index, value), colour, dashed.
struct Series {
    points: Vec<(usize, f64)>,
    colour: &'static str,
    dashed: bool,
}

/// The SVG for `report` (as `report.json` holds it).
pub fn svg(report: &Value) -> String {
    let mut panels = Vec::new();
    for (mode, title) in [
        ("hot", "Miss, one packet repeated (ns)"),
        ("varied", "Miss, addresses varied (ns)"),
    ] {
        let mut series = Vec::new();
        for family in ["ipv4", "ipv6"] {
            for (program, _, colour) in PROGRAMS {
                series.push(Series {
                    points: per_packet(report, family, mode, program),
                    colour,
                    dashed: family == "ipv6",
                });
            }
        }
        panels.push((title, series));
    }
    let memory = |key: &str| -> Vec<(usize, f64)> {
        rows(report, "kernel_memory", |_| true)
            .filter_map(|row| Some((size_index(row, "prefixes")?, row[key].as_f64()? / 1e6)))
            .collect()
    };
    panels.push((
        "Kernel memory of the maps (MB)",
        vec![
            Series {
                points: memory("lpm_reference_map_bytes"),
                colour: PROGRAMS[1].2,
                dashed: false,
            },
            Series {
                points: memory("blocker_map_bytes"),
                colour: PROGRAMS[2].2,
                dashed: false,
            },
        ],
    ));
    let wire = |dut: &str| -> Vec<(usize, f64)> {
        rows(report, "wire", |row| row["dut"] == dut)
            .filter_map(|row| {
                let size = size_index(row, "workload_prefixes")?;
                Some((size, row["mpps_dropped"].as_f64()?))
            })
            .collect()
    };
    panels.push((
        "Drop rate on the wire (Mpps)",
        vec![
            Series {
                points: wire(NFTABLES.0),
                colour: NFTABLES.2,
                dashed: false,
            },
            Series {
                points: wire("blocker"),
                colour: PROGRAMS[2].2,
                dashed: false,
            },
        ],
    ));
    let across = panels.len() as f64;
    let width = LEFT + across * PANEL_W + (across - 1.0) * GAP + 30.0;
    let height = TOP + PANEL_H + 90.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"DejaVu Sans, sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, (title, series)) in panels.iter().enumerate() {
        let x0 = LEFT + i as f64 * (PANEL_W + GAP);
        panel(&mut out, x0, title, series);
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\">blocker's: made up front for max_prefixes</text>",
        LEFT + 2.0 * (PANEL_W + GAP) + 8.0,
        TOP + 26.0
    );
    legend(&mut out, TOP + PANEL_H + 50.0);
    out.push_str("</svg>\n");
    out
}

fn per_packet(report: &Value, family: &str, mode: &str, program: &str) -> Vec<(usize, f64)> {
    rows(report, "per_packet", |row| {
        row["family"] == family
            && row["mode"] == mode
            && row["match"] == "miss"
            && row["program"] == program
    })
    .filter_map(|row| Some((size_index(row, "prefixes")?, row["ns_per_packet"].as_f64()?)))
    .collect()
}

/// The rows of the report's list `list` that `keep`.
fn rows<'a>(
    report: &'a Value,
    list: &str,
    keep: impl Fn(&Value) -> bool + 'a,
) -> impl Iterator<Item = &'a Value> {
    report[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |row| keep(row))
}

/// Where the size a row names in `key` goes along x (none: not a size the
/// plot draws).
fn size_index(row: &Value, key: &str) -> Option<usize> {
    SIZES
        .iter()
        .position(|(n, _)| row[key].as_u64() == Some(*n))
}

/// One panel at `x0`: a log-scale y axis over its series' values, the
/// sizes along x.
fn panel(out: &mut String, x0: f64, title: &str, series: &[Series]) {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return;
    }
    // Whole 1-2-5 steps around the data.
    let ticks: Vec<f64> = (-3..10)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .collect();
    let bottom = ticks.iter().copied().rfind(|t| *t <= lo).unwrap_or(lo);
    let top = ticks.iter().copied().find(|t| *t >= hi).unwrap_or(hi);
    let y = |v: f64| TOP + PANEL_H * (1.0 - (v.ln() - bottom.ln()) / (top.ln() - bottom.ln()));
    let x = |i: usize| x0 + PANEL_W * (i as f64 + 0.5) / SIZES.len() as f64;
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{title}</text>",
        x0 + PANEL_W / 2.0,
        TOP - 14.0
    );
    let _ = writeln!(
        out,
        "<rect x=\"{x0}\" y=\"{TOP}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#444\"/>"
    );
    for t in ticks.iter().filter(|t| **t >= bottom && **t <= top) {
        let ty = y(*t);
        let _ = writeln!(
            out,
            "<line x1=\"{x0}\" y1=\"{ty:.1}\" x2=\"{}\" y2=\"{ty:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 + PANEL_W,
            x0 - 6.0,
            ty + 4.0,
            label(*t)
        );
    }
    for (i, (_, name)) in SIZES.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
            x(i),
            TOP + PANEL_H + 18.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">prefixes</text>",
        x0 + PANEL_W / 2.0,
        TOP + PANEL_H + 34.0
    );
    for s in series {
        let at: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.1 > 0.0)
            .map(|&(i, v)| (x(i), y(v)))
            .collect();
        if at.is_empty() {
            continue;
        }
        let points: Vec<String> = at
            .iter()
            .map(|(px, py)| format!("{px:.1},{py:.1}"))
            .collect();
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash}/>",
            points.join(" "),
            s.colour
        );
        for (px, py) in at {
            let _ = writeln!(
                out,
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3\" fill=\"{}\"/>",
                s.colour
            );
        }
    }
}

fn label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn legend(out: &mut String, y: f64) {
    let mut x = LEFT;
    for (_, name, colour) in PROGRAMS.into_iter().chain([NFTABLES]) {
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{colour}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{}\">{name}</text>",
            x + 24.0,
            x + 30.0,
            y + 4.0
        );
        x += 190.0;
    }
    let _ = writeln!(
        out,
        "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#444\" stroke-width=\"2\"/>\
         <text x=\"{}\" y=\"{}\">IPv4</text>\
         <line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#444\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\
         <text x=\"{}\" y=\"{}\">IPv6</text>",
        x + 24.0,
        x + 30.0,
        y + 4.0,
        x + 80.0,
        x + 104.0,
        x + 110.0,
        y + 4.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_of_a_report_is_drawn_where_its_values_lie() {
        let rows: Vec<Value> = ["empty", "lpm_reference", "blocker"]
            .iter()
            .enumerate()
            .flat_map(|(k, program)| {
                SIZES.iter().map(move |(n, _)| {
                    serde_json::json!({"family": "ipv4", "mode": "hot", "match": "miss",
                        "program": program, "prefixes": n, "ns_per_packet": 10.0 * (k + 1) as f64})
                })
            })
            .collect();
        let report = serde_json::json!({"per_packet": rows, "kernel_memory": []});
        let svg = svg(&report);
        // Three programs of one panel: a line each, four points each.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<circle").count(), 12);
        // 10, 20 and 30 ns lie on the axis from 10 to 50.
        for label in [">10<", ">20<", ">50<"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains(">5<") && !svg.contains(">100<"));
    }

    #[test]
    fn the_wire_is_drawn_by_workload_for_blocker_and_nftables_alone() {
        let rows: Vec<Value> = [("blocker", 10.0), ("nftables", 2.0), ("xdp-filter", 7.0)]
            .iter()
            .flat_map(|&(dut, mpps)| {
                [1_000u64, 100_000, 1_000_000].map(|n| {
                    serde_json::json!({"dut": dut, "workload_prefixes": n,
                        "mpps_dropped": mpps * 1e6 / n as f64 * 1e-3})
                })
            })
            .collect();
        let report = serde_json::json!({"per_packet": [], "kernel_memory": [], "wire": rows});
        let svg = svg(&report);
        // blocker and nftables, three workloads each; xdp-filter is not drawn.
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.contains("Drop rate on the wire"));
        // From 0.002 (nftables at 1M) to 10 (blocker at 1k).
        for label in [">0.002<", ">10<"] {
            assert!(svg.contains(label), "{label} missing");
        }
    }
}
