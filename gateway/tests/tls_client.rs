//! The client streams the recording to a gateway served over TLS on
//! 127.0.0.1, with a certificate from a test CA, and gets transcripts and
//! reply audio back. A client that does not trust the CA cannot connect.

mod common;

use std::sync::Arc;

use common::*;
use mentis_gateway::client::{Endpoint, stream_session};
use mentis_gateway::protocol::{AudioEncoding, CloseCode, ServerEvent};
use mentis_gateway::server::ServerSettings;
use mentis_gateway::tenants::Limits;
use mentis_pipeline::PrivacyTier;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct TestPki {
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// A CA, a `localhost` certificate it signs, and the TLS configurations that use them.
fn pki() -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params").signed_by(&leaf_key, &ca).expect("leaf certificate");

    let dir = tempfile::tempdir().expect("temp dir");
    let (ca_path, cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    std::fs::write(&cert_path, leaf.pem()).expect("write certificate");
    std::fs::write(&key_path, leaf_key.serialize_pem()).expect("write key");
    let server = mentis_gateway::tls::server_config(&cert_path, &key_path).expect("server TLS");
    let client = mentis_gateway::tls::client_config(&ca_path).expect("client TLS");
    TestPki { _dir: dir, server, client }
}

#[tokio::test]
async fn client_streams_over_tls() {
    let pki = pki();
    let gateway =
        TestGateway::start_with_tls(ServerSettings::default(), acme_limits(), Limits::default(), Some(pki.server), Some(pki.client)).await;
    let token = gateway.token(ACME_KEY, "tls-user").await;
    let ws = gateway.endpoint.connect(&token, None).await.expect("wss connect");
    let start = start_message("loadtest", PrivacyTier::OnDevice, AudioEncoding::Pcm16, 16_000);
    let mut printed = Vec::new();
    let record = stream_session(ws, &plan(start, recording_frames(), true), |event| {
        if let ServerEvent::Transcript { turn, is_final: true, text, .. } = event {
            printed.push(format!("turn {turn}: {text}"));
        }
    })
    .await
    .expect("session");

    for (turn, latency) in &record.reply_latencies {
        println!("turn {turn} reply latency: {:.0} ms", latency.as_secs_f64() * 1e3);
    }
    assert!(!printed.is_empty(), "no transcript: {:?}", record.events);
    assert!(!record.reply_latencies.is_empty());
    assert!(record.reply_audio_bytes > 0);
    assert_eq!(record.close_code, Some(CloseCode::Normal.code()));
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let pki = pki();
    let other = pki_client_only();
    let gateway = TestGateway::start_with_tls(ServerSettings::default(), acme_limits(), Limits::default(), Some(pki.server), Some(pki.client)).await;
    let untrusted = Endpoint { tls: Some(other), ..gateway.endpoint.clone() };
    let error = untrusted.http(http::Method::GET, "/healthz", &[], Vec::new()).await.expect_err("untrusted CA");
    assert!(matches!(error, mentis_gateway::client::ClientError::Connect { .. }), "{error}");
    let metrics = gateway.running.metrics();
    assert!(eventually(std::time::Duration::from_secs(1), || metrics.rejections("tls_handshake_failed") == 1).await);
}

fn pki_client_only() -> Arc<rustls::ClientConfig> {
    pki().client
}

#[tokio::test]
async fn plain_ws_is_refused_off_loopback() {
    let gateway = mentis_gateway::server::Gateway::builder(Arc::new(tenants(acme_limits(), Limits::default())), signer()).build();
    let error = gateway.bind("0.0.0.0:0".parse().expect("address"), None).await.expect_err("no TLS off loopback");
    assert!(matches!(error, mentis_gateway::server::ServeError::PlainTextNotLoopback { .. }), "{error}");
}
