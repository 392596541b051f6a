//! Running commands, loudly.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd`, printing it first; fails naming it.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let text = describe(cmd);
    eprintln!("+ {text}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting `{text}`"))?;
    if !status.success() {
        bail!("`{text}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its output (success or not).
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    let text = describe(cmd);
    cmd.output().with_context(|| format!("starting `{text}`"))
}

/// Whether `program --version`-like probing finds it on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Builds the controller; the XDP program is built and embedded by its build script.
pub fn build(release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "blocker-userspace"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

/// The built `blocker` binary.
pub fn blocker_binary(release: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join("blocker")
}
