//! blocker's controller: everything but the packet path.
//!
//! Feed bytes flow one way, one module per step:
//! `sync` (fetch) → `signature` (verify) → `feed` (parse, validate) →
//! `policy` (orders in force at `now`, guardrails) → `compile` (map entries) →
//! `datapath` (the only module that touches aya: load, attach, pin, maps) →
//! `metrics` (observe).
//!
//! Around them: `config` (the operator's file), `state` (last good feed and
//! order slots in `state_dir`), `audit` (the append-only evidence log),
//! `daemon` (`blocker run`), `cli` (one module per subcommand), and
//! `reference` (the contract's matching rules in plain Rust: the oracle the
//! tests hold the compiler and the datapath to).
pub mod audit;
mod bits;
pub mod cli;
pub mod compile;
pub mod config;
pub mod daemon;
pub mod datapath;
mod fasthash;
pub mod feed;
mod gallop;
pub mod layout;
pub mod metrics;
mod parallel;
pub mod policy;
pub mod reference;
pub mod signature;
pub mod state;
pub mod sync;
