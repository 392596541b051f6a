//! `cargo xtask test`: everything, in the order that fails fastest.

use std::process::Command;

use anyhow::bail;

use crate::util::{cargo, is_root, root, run};

#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    skip_lint: bool,
    /// Unit tests only (no root needed).
    #[arg(long)]
    only_unit: bool,
    /// Skip the fuzz targets.
    #[arg(long)]
    skip_fuzz: bool,
    /// Seconds each fuzz target runs.
    #[arg(long, default_value_t = 60)]
    fuzz_seconds: u32,
    /// Filter passed to the integration test run.
    #[arg(last = true)]
    filter: Vec<String>,
}

pub fn test(options: &Options) -> anyhow::Result<()> {
    crate::setup::setup()?;
    if !options.skip_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "blocker-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        promtool()?;
    }
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "blocker-ebpf",
        "--exclude",
        "blocker-tests",
    ]))?;
    if !options.skip_fuzz {
        crate::fuzz::fuzz(&crate::fuzz::Options {
            seconds: options.fuzz_seconds,
            target: None,
        })?;
    }
    if options.only_unit {
        eprintln!("xtask test: unit tests only (--only-unit): privileged tests NOT run");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the integration tests load XDP programs and create network namespaces: run `cargo xtask test` as root"
        );
    }
    crate::util::build(false)?;
    run(cargo()
        .args([
            "test",
            "--package",
            "blocker-tests",
            "--",
            "--test-threads=1",
        ])
        .args(&options.filter))?;
    eprintln!("xtask test: all passed");
    Ok(())
}

/// The alert rules and a real metrics page pass promtool's checks.
fn promtool() -> anyhow::Result<()> {
    let rules = root().join("config/prometheus/alerts.yml");
    run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(rules))
}
