//! A secret type for API keys and tokens.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// An API key or token. The bytes are zeroed when the value is dropped, and
/// `Debug` and `Display` print `[redacted]`, so a secret that reaches a log
/// line or an error message shows nothing. Read the value only where it is
/// put on the wire, with [`Secret::expose`].
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

/// A secret that could not be loaded. The messages never contain the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set or not valid UTF-8.
    #[error("environment variable {name} is not set; export it with the key's value")]
    MissingVariable {
        /// The variable's name.
        name: String,
    },
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file can be read by users other than its owner.
    #[error("secret file {path} has mode {mode:o}, readable by group or others; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The variable or file contains no secret.
    #[error("the secret from {origin} is empty")]
    Empty {
        /// The variable or file it came from.
        origin: String,
    },
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Zeroizing::new(value.into()))
    }

    /// Reads a secret from an environment variable.
    pub fn from_env(name: &str) -> Result<Self, SecretError> {
        let value = std::env::var(name).map_err(|_| SecretError::MissingVariable { name: name.to_owned() })?;
        let value = Zeroizing::new(value);
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty { origin: format!("environment variable {name}") });
        }
        Ok(Secret::new(trimmed))
    }

    /// Reads a secret from a file that only its owner can read. Surrounding
    /// whitespace, such as the trailing newline editors add, is removed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SecretError> {
        let path = path.as_ref();
        let read_error = |source| SecretError::Read { path: path.to_owned(), source };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        check_mode(path, &metadata)?;

        let value = Zeroizing::new(std::fs::read_to_string(path).map_err(read_error)?);
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty { origin: format!("file {}", path.display()) });
        }
        Ok(Secret::new(trimmed))
    }

    /// Returns the secret value, to put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, metadata: &std::fs::Metadata) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _metadata: &std::fs::Metadata) -> Result<(), SecretError> {
    Ok(())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for Secret {
    /// Compares in constant time for equal lengths, so that comparing a
    /// presented key with a stored one leaks no prefix length.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0_u8, |difference, (x, y)| difference | (x ^ y)) == 0
    }
}

impl Eq for Secret {}
