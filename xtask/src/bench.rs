//! `cargo xtask bench`: builds the release binaries and runs the benchmark
//! (`blocker-bench`, in the tests crate), which prints a table and writes
//! `target/bench/report.json` and a plot of it (`cost.svg`, made `cost.png`).

use std::path::PathBuf;

use anyhow::bail;

use crate::util::{blocker_binary, cargo, is_root, root, run};

#[derive(clap::Args)]
pub struct Options {
    /// Up to 100k prefixes, smaller pools, fewer repeats (about a minute).
    #[arg(long)]
    quick: bool,
    /// Only the control plane and the daemons (a `file://` feed, then over
    /// HTTP) at 1M prefixes, printed (no report): for work on the control
    /// plane.
    #[arg(long)]
    control: bool,
    /// Only the end-to-end runs on a veth pair, small, printed (no report):
    /// for work on the kernel's hit path.
    #[arg(long)]
    wire: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/report.json")]
    out: PathBuf,
}

pub fn bench(options: &Options) -> anyhow::Result<()> {
    crate::setup::setup()?;
    if !is_root() {
        bail!(
            "the benchmark loads XDP programs and creates network namespaces: run `cargo xtask bench` as root"
        );
    }
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "blocker-userspace",
        "--package",
        "blocker-tests",
        "--bin",
        "blocker",
        "--bin",
        "blocker-bench",
    ]))?;
    let bench = blocker_binary(true).with_file_name("blocker-bench");
    let mut cmd = std::process::Command::new(bench);
    cmd.env("BLOCKER_BIN", blocker_binary(true));
    if options.quick {
        cmd.arg("--quick");
    }
    if options.control {
        cmd.arg("--control");
    }
    if options.wire {
        cmd.arg("--wire");
    }
    let out = root().join(&options.out);
    cmd.arg("--out").arg(&out);
    run(&mut cmd)?;
    if options.control || options.wire {
        return Ok(());
    }
    // The benchmark draws its plot as SVG; the README shows it as PNG.
    let svg = out.with_file_name("cost.svg");
    let png = svg.with_extension("png");
    run(std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg))?;
    println!("plot: {}", png.display());
    Ok(())
}
