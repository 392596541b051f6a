//! `cargo xtask`: the workbench. Set-up, build, test and demo live here, in
//! Rust, so a fresh machine needs nothing but `cargo xtask <command>`.
mod bench;
mod demo;
mod fuzz;
mod package;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "blocker's workbench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): apt packages,
    /// rust-src for nightly, bpf-linker, a mounted bpffs.
    Setup,
    /// Set up, then build the controller (which builds and embeds the XDP program).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// The whole test suite: fmt, clippy, unit tests, privileged integration tests.
    Test(test::Options),
    /// The built-in demo: namespaces, a signed feed, blocker enforcing it, traffic, counters.
    Demo(demo::Options),
    /// Build the Debian package (target/deb/); --check installs and tries it.
    Deb(package::Options),
    /// Run the cargo-fuzz targets (feed parser, compiler) for a while each.
    Fuzz(fuzz::Options),
    /// The benchmark: per-packet cost against an empty program and an
    /// LPM-trie reference at 0..1M prefixes, the control plane, memory.
    Bench(bench::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build { release } => {
            setup::setup()?;
            util::build(release)
        }
        Command::Test(options) => test::test(&options),
        Command::Demo(options) => demo::demo(&options),
        Command::Deb(options) => package::deb(&options),
        Command::Bench(options) => bench::bench(&options),
        Command::Fuzz(options) => {
            setup::setup()?;
            fuzz::fuzz(&options)
        }
    }
}
