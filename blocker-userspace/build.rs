//! Compile the XDP program (blocker-ebpf) for the bpf target and leave the
//! object in OUT_DIR, where `datapath` embeds it.
use anyhow::{Context as _, anyhow};
use cargo_metadata::MetadataCommand;

fn main() -> anyhow::Result<()> {
    // Under cargo-fuzz (`--cfg fuzzing`) only the pure parts of the library
    // run: embed an empty object instead of building the eBPF crate with the
    // sanitizer's flags.
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
        for name in ["blocker", "blocker-bench"] {
            std::fs::write(std::path::Path::new(&out_dir).join(name), [])
                .context("writing the placeholder object")?;
        }
        return Ok(());
    }
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "blocker-ebpf")
        .ok_or_else(|| anyhow!("blocker-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("blocker-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
