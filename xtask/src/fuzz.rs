//! `cargo xtask fuzz`: the cargo-fuzz targets under `fuzz/`, each for a
//! bounded time, starting from the committed seeds (`fuzz/seeds/<target>`,
//! plus the hostile feed corpus for the parser). New inputs go to
//! `target/fuzz-corpus/<target>`, never into the repository; a crash stops
//! the run and leaves its input in `fuzz/artifacts/<target>/` (turn it into
//! a regression seed and a test).

use std::{fs, process::Command};

use anyhow::Context as _;

use crate::util::{root, run};

/// The targets, and the extra seed directories each starts from.
const TARGETS: &[(&str, &[&str])] = &[("feed", &["tests/hostile"]), ("compile", &[])];

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
    /// Only this target (feed or compile).
    pub target: Option<String>,
}

pub fn fuzz(options: &Options) -> anyhow::Result<()> {
    let root = root();
    for (target, extra_seeds) in TARGETS {
        if options.target.as_deref().is_some_and(|t| t != *target) {
            continue;
        }
        let corpus = root.join("target/fuzz-corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let mut command = Command::new("cargo");
        command
            .current_dir(root.join("fuzz"))
            .args(["+nightly", "fuzz", "run", "--release", target])
            .arg(&corpus)
            .arg(root.join("fuzz/seeds").join(target));
        for seeds in *extra_seeds {
            let dir = root.join(seeds);
            if dir.is_dir() {
                command.arg(dir);
            }
        }
        command.args([
            "--",
            &format!("-max_total_time={}", options.seconds),
            "-rss_limit_mb=2048",
            "-max_len=65536",
            "-timeout=10",
            "-print_final_stats=1",
        ]);
        eprintln!("fuzz: {target} for {} s", options.seconds);
        run(&mut command).with_context(|| {
            format!(
                "fuzz target {target} failed: its input is in fuzz/artifacts/{target}/ (reproduce: cd fuzz && cargo +nightly fuzz run {target} <file>)"
            )
        })?;
    }
    Ok(())
}
