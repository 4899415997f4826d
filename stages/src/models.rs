//! Where model files and runtime libraries live on disk.
//!
//! `scripts/setup` downloads them into one cache folder, by default
//! `$HOME/.cache/mentis/models`, overridden by the `MENTIS_MODELS` variable.

use std::path::PathBuf;

/// The environment variable that overrides the model cache folder.
pub const MODELS_ENV: &str = "MENTIS_MODELS";

/// Returns the model cache folder.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODELS_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("mentis").join("models")
}
