//! The XDP program lives in `main.rs` (built for the bpf target by
//! blocker-userspace's build script); this library is empty on purpose.
#![no_std]
