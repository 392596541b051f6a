//! The order feed: parse and validate (contract §1).
mod model;
pub use model::*;
