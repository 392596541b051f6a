//! Rebuild the XDP program when bpf-linker changes (it is not a cargo
//! dependency, so cargo would not notice otherwise).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
