//! Stage implementations for mentis pipelines, one module per stage kind.
//!
//! Everything here runs on the device. Backends that need a system library or
//! a model file sit behind a cargo feature (see `Cargo.toml`).

pub mod capture;
#[cfg(feature = "device")]
pub mod device;
pub mod llm;
pub mod models;
#[cfg(feature = "net")]
pub mod net;
pub mod opus;
pub mod resample;
pub mod playback;
pub mod vad;
pub mod sink;
pub mod stt;
pub mod text;
pub mod tts;
pub mod wav;
pub mod wer;
