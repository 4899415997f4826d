//! The self-hostable server that apps connect to when their pipeline runs off
//! the device. Nothing is implemented yet: the crate exists so that the
//! workspace layout is fixed and the root package can re-export it.

pub use mentis_pipeline as pipeline;
