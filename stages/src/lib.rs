//! Stage implementations for mentis pipelines, one module per stage kind.
//!
//! Everything here runs on the device. Backends that need a system library or
//! a model file sit behind a cargo feature (see `Cargo.toml`).

pub mod models;
