//! The `mentis-gateway` binary's key commands against an SQLite store:
//! a tenant's first key is printed once, and `revoke-key` revokes a key read
//! from standard input, so the store no longer accepts it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mentis_gateway::store::{SqliteStore, Store};
use mentis_pipeline::Secret;

fn write_config(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join("signing.key");
    std::fs::write(&key, "cli-test-signing-key-0123456789abcdef0123456789").expect("write the signing key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("owner-only signing key");
    let database = dir.join("gateway.sqlite");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nsigning_key_file = \"{}\"\npipelines = [\"loadtest\"]\n\n[store]\nbackend = \"sqlite\"\npath = \"{}\"\n",
        key.display(),
        database.display()
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

fn gateway(config: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mentis-gateway"))
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mentis-gateway");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("mentis-gateway ends")
}

#[tokio::test]
async fn revoke_key_stops_the_key_authenticating() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = write_config(dir.path());

    let created = gateway(&config, &["create-tenant", "--id", "acme", "--tier", "self_hosted"], "");
    assert!(created.status.success(), "create-tenant failed: {}", String::from_utf8_lossy(&created.stderr));
    let key = String::from_utf8(created.stdout).expect("UTF-8 key").trim().to_owned();
    assert!(key.starts_with("mgk_"), "create-tenant printed {key:?}");

    let store = SqliteStore::open(&dir.path().join("gateway.sqlite")).await.expect("open the store");
    assert!(store.authenticate(&Secret::new(key.clone())).await.expect("lookup").is_some(), "the new key works");

    let revoked = gateway(&config, &["revoke-key", "--tenant", "acme"], &key);
    assert!(revoked.status.success(), "revoke-key failed: {}", String::from_utf8_lossy(&revoked.stderr));
    assert!(store.authenticate(&Secret::new(key.clone())).await.expect("lookup").is_none(), "the revoked key still works");

    // Revoking it again names what is wrong and never prints the key.
    let again = gateway(&config, &["revoke-key", "--tenant", "acme"], &key);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("no active key of tenant acme"), "{stderr}");
    assert!(!stderr.contains(&key), "stderr shows the key");
    assert!(!String::from_utf8_lossy(&again.stdout).contains(&key), "stdout shows the key");

    // An empty standard input is an error, not a revocation of nothing.
    let empty = gateway(&config, &["revoke-key", "--tenant", "acme"], "");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no key on standard input"));
}
