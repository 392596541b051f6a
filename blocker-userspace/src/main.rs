//! The `blocker` binary: everything is in the library's `cli` module.
fn main() -> std::process::ExitCode {
    blocker::cli::main()
}
