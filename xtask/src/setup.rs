//! Installs what is missing, and only that.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{have, output, run};

/// Debian packages: LLVM 22 for bpf-linker; the tools the tests, the demo,
/// the benchmark and the package check drive (the real minisign, iproute2,
/// ping, curl, Prometheus and promtool, openssl for the test CA,
/// systemd-analyze, nftables and xdp-tools' xdp-filter to compare with,
/// rsvg-convert for the benchmark's plot).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "minisign",
    "iproute2",
    "iputils-ping",
    "curl",
    "util-linux",
    "prometheus",
    "openssl",
    "systemd",
    "gzip",
    "nftables",
    "xdp-tools",
    "librsvg2-bin",
];

const BPF_LINKER_VERSION: &str = "0.13";
/// cargo-fuzz drives the fuzz targets under `fuzz/` (with nightly).
const CARGO_FUZZ_VERSION: &str = "0.13";

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!("setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(&missing))?;
    }

    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let rustc = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .context("the nightly toolchain is needed for the eBPF program")?;
    let rustc = String::from_utf8_lossy(&rustc.stdout);
    let llvm = rustc
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if !llvm.starts_with("22.") {
        bail!(
            "the nightly toolchain uses LLVM {llvm}; bpf-linker here is built against LLVM 22 and the two must match"
        );
    }

    let linker_ok = have("bpf-linker")
        && output(Command::new("bpf-linker").arg("--version"))
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).contains(&format!(" {BPF_LINKER_VERSION}."))
            })
            .unwrap_or(false);
    if !linker_ok {
        let install = |locked: bool| {
            let mut cmd = Command::new("cargo");
            cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22").args([
                "install",
                "bpf-linker",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
            ]);
            if locked {
                cmd.arg("--locked");
            }
            run(&mut cmd)
        };
        install(true).or_else(|_| install(false))?;
    }

    let fuzz_ok = output(Command::new("cargo").args(["fuzz", "--version"]))
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!(" {CARGO_FUZZ_VERSION}."))
        })
        .unwrap_or(false);
    if !fuzz_ok {
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            &format!("~{CARGO_FUZZ_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }

    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        if crate::util::is_root() {
            run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        } else {
            eprintln!("setup: warning: /sys/fs/bpf is not mounted (needs root)");
        }
    }
    Ok(())
}
