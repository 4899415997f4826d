//! The secret type never shows its value and rejects files others can read.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use mentis_pipeline::Secret;
use mentis_pipeline::secret::SecretError;

const KEY: &str = "sk-test-6f1d0c9a4b7e4f21";

#[test]
fn debug_and_display_redact() {
    let secret = Secret::new(KEY);
    let shown = format!("{secret:?} {secret} {:?}", Some(&secret));
    assert!(!shown.contains(KEY), "{shown}");
    assert!(shown.contains("[redacted]"));
    assert_eq!(secret.expose(), KEY);
}

/// Collects everything a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logged_secret_stays_redacted() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_max_level(tracing::Level::TRACE).finish();
    let secret = Secret::new(KEY);
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(key = ?secret, "connecting");
        tracing::warn!(key = %secret, "retrying");
        tracing::error!("failed with {secret:?}");
    });
    let output = String::from_utf8(captured.0.lock().expect("capture lock").clone()).expect("utf-8 logs");
    assert!(output.contains("connecting"), "{output}");
    assert!(output.contains("retrying"), "{output}");
    assert!(!output.contains(KEY), "{output}");
}

#[test]
fn file_readable_by_others_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("key");
    std::fs::write(&path, format!("{KEY}\n")).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = Secret::from_file(&path).expect_err("mode 644");
    assert!(matches!(error, SecretError::Permissions { mode: 0o644, .. }));
    let message = error.to_string();
    assert!(message.contains("chmod 600"), "{message}");
    assert!(!message.contains(KEY));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let secret = Secret::from_file(&path).expect("mode 600");
    assert_eq!(secret.expose(), KEY, "the trailing newline is trimmed");
}

#[test]
fn empty_file_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("key");
    std::fs::write(&path, "\n").expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(matches!(Secret::from_file(&path), Err(SecretError::Empty { .. })));
}

#[test]
fn missing_variable_named() {
    let error = Secret::from_env("MENTIS_TEST_SURELY_UNSET_KEY").expect_err("unset");
    assert!(error.to_string().contains("MENTIS_TEST_SURELY_UNSET_KEY"));
}

#[test]
fn equality_compares_values() {
    assert_eq!(Secret::new("abc"), Secret::new("abc"));
    assert_ne!(Secret::new("abc"), Secret::new("abd"));
    assert_ne!(Secret::new("abc"), Secret::new("abcd"));
}
