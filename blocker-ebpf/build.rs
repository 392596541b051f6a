//! Rebuild the XDP program when bpf-linker changes (it is not a cargo
//! dependency, so cargo would not notice otherwise), let its code
//! generator load a packet's addresses a word at a time, and keep it from
//! merging the tails of map lookups.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
    // Header fields sit at 2-byte offsets (after a 14-byte Ethernet header
    // and any 4-byte VLAN tags): without this, LLVM assembles every address
    // from single bytes, 36 loads for two IPv6 addresses. The kernel allows
    // unaligned packet loads where the CPU does them efficiently (x86-64,
    // arm64: CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS).
    println!("cargo::rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    // No tail merging: LLVM merged the two table generations' entry
    // lookups of a source address into one call site, reached with either
    // map. The verifier inlines a map lookup only where one map reaches it,
    // so every source hit paid a helper call and an indirect call (15 ns,
    // as much as the rest of the hit). The test
    // `the_program_calls_no_helper_but_the_clock` keeps it so.
    println!("cargo::rustc-link-arg=--llvm-args=-enable-tail-merge=false");
}
