//! `blocker-bench [--quick] [--control] [--wire] [--out FILE]`: runs the
//! benchmark (see `blocker_tests::bench`), prints the table and writes the
//! JSON report. `--control`: only the control plane and the daemons (a
//! `file://` feed, then over HTTP) at 1M prefixes, printed, no report.
//! `--wire`: only the end-to-end runs, small, printed. Needs root; `cargo
//! xtask bench` builds and runs it.

use std::path::PathBuf;

use blocker_tests::bench::{self, Options};

fn main() {
    let mut options = Options {
        quick: false,
        out: blocker_tests::workspace_root().join("target/bench/report.json"),
    };
    let mut control_only = false;
    let mut wire_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--control" => control_only = true,
            "--wire" => wire_only = true,
            "--out" => options.out = PathBuf::from(args.next().expect("--out needs a path")),
            other => {
                eprintln!(
                    "blocker-bench: unknown argument {other:?}; usage: blocker-bench [--quick] [--control] [--wire] [--out FILE]"
                );
                std::process::exit(2);
            }
        }
    }
    blocker_tests::require_root();
    if control_only {
        bench::control_only();
        return;
    }
    if wire_only {
        bench::wire_only();
        return;
    }
    let report = bench::run(&options);
    println!("{}", report.table());
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir).expect("creating the report directory");
    }
    let value = report.to_json();
    let json = serde_json::to_string_pretty(&value).expect("encoding the report");
    std::fs::write(&options.out, json + "\n").expect("writing the report");
    println!("report: {}", options.out.display());
    let picture = options.out.with_file_name("cost.svg");
    std::fs::write(&picture, bench::plot::svg(&value)).expect("writing the plot");
    println!("plot: {}", picture.display());
}
