//! The network transport against local servers on 127.0.0.1: TLS with a
//! private CA, the tier check at connect time, the egress record, status
//! errors with `Retry-After`, the time limits, and closing on drop.

mod net_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mentis_pipeline::{PrivacyError, PrivacyTier, Secret};
use mentis_stages::net::http::{Request, send};
use mentis_stages::net::{NetError, Timeouts};
use net_support::{TestServer, TestTls, connector, eventually, full, short_timeouts, streamed};
use url::Url;

fn ok(body: &'static str) -> http::Response<net_support::Body> {
    http::Response::new(full(body))
}

#[tokio::test]
async fn transport_https_private_ca_recorded() {
    let tls = Arc::new(TestTls::new());
    let server = TestServer::http(Some(Arc::clone(&tls)), |request| async move {
        assert_eq!(request.path_and_query, "/v1/echo?x=1");
        http::Response::new(full(request.body))
    })
    .await;

    let (connector, egress) = connector(PrivacyTier::Cloud, Some(&tls), Timeouts::default());

    let request = Request::post(server.url("/v1/echo?x=1"), "text/plain", "hello over TLS").expect("request");
    let body = send(&connector, request).await.expect("response").bytes(1024).await.expect("body");

    assert_eq!(body, b"hello over TLS");

    let records = egress.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!((record.host.as_str(), record.port, record.scheme.as_str()), ("localhost", server.address.port(), "https"));
    assert_eq!(record.tier, PrivacyTier::SelfHosted, "127.0.0.1 is a local address");
    // The TLS handshake alone is far more than the 14-byte body.
    assert!(record.bytes_sent > 200, "the TLS handshake is counted as sent: {record:?}");
    assert!(record.bytes_received > 200, "the TLS handshake is counted as received: {record:?}");
}

#[tokio::test]
async fn transport_unknown_ca_rejected() {
    let tls = Arc::new(TestTls::new());
    let server = TestServer::http(Some(Arc::clone(&tls)), |_| async { ok("never") }).await;
    let (connector, _) = connector(PrivacyTier::Cloud, None, Timeouts::default());

    let request = Request::post(server.url("/"), "text/plain", "secret audio").expect("request");
    let error = send(&connector, request).await.expect_err("the certificate must not verify");

    assert!(matches!(error, NetError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("ca_file"), "the message explains how to trust a private CA: {error}");
}

#[tokio::test]
async fn transport_tier_checked_before_connect() {
    // No server listens on these addresses: the check must fail before connecting.
    let (on_device, egress) = connector(PrivacyTier::OnDevice, None, Timeouts::default());
    let request = Request::post(Url::parse("http://127.0.0.1:9/").expect("url"), "text/plain", "x").expect("request");
    let error = send(&on_device, request).await.expect_err("on-device opens no socket");

    assert!(matches!(error, NetError::Privacy(PrivacyError::NetworkOnDevice { .. })), "{error:?}");
    assert!(egress.records().is_empty());

    // 203.0.113.0/24 is documentation space (RFC 5737): public, and never contacted here.
    let (self_hosted, egress) = connector(PrivacyTier::SelfHosted, None, Timeouts::default());
    let request = Request::post(Url::parse("http://203.0.113.7:8080/v1").expect("url"), "text/plain", "x").expect("request");
    let error = send(&self_hosted, request).await.expect_err("a public address is not self-hosted");
    assert!(matches!(error, NetError::Privacy(PrivacyError::PublicAddress { .. })), "{error:?}");
    assert!(egress.records().is_empty());
}

#[tokio::test]
async fn transport_429_retry_after_retryable() {
    let server = TestServer::http(None, |_| async {
        http::Response::builder()
            .status(429)
            .header("retry-after", "2")
            .body(full(r#"{"error":{"message":"Rate limit reached","type":"rate_limit_error"}}"#))
            .expect("response")
    })
    .await;

    let (connector, _) = connector(PrivacyTier::SelfHosted, None, Timeouts::default());
    let error = send(&connector, Request::post(server.url("/"), "text/plain", "x").expect("request"))
        .await
        .expect_err("429");
    match &error {
        NetError::Status { status: 429, retry_after, body, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(2)));
            assert!(body.contains("Rate limit reached"));
        }
        other => panic!("expected a 429 status error, got {other:?}"),
    }
    assert!(error.is_retryable());
}

#[tokio::test]
async fn transport_key_absent_from_errors() {
    const KEY: &str = "sk-test-0123456789abcdef";
    let server = TestServer::http(None, |request| async move {
        // A careless server that echoes the header back must not make the client print it.
        let echoed = request.headers.get("authorization").map(|value| value.as_bytes().to_vec()).unwrap_or_default();
        http::Response::builder().status(401).body(full(Bytes::from(echoed))).expect("response")
    })
    .await;

    let (connector, _) = connector(PrivacyTier::SelfHosted, None, Timeouts::default());
    let mut request = Request::post(server.url("/"), "text/plain", "x").expect("request");
    request.secret_header(http::header::AUTHORIZATION, "Bearer ", &Secret::new(KEY)).expect("header");

    assert!(!format!("{request:?}").contains(KEY), "Debug shows the key");

    let error = send(&connector, request).await.expect_err("401");
    assert!(matches!(error, NetError::Status { status: 401, .. }));
    assert!(error.to_string().contains("API key was refused"), "{error}");
    // The echoed body is part of the message, with the key masked.
    assert!(error.to_string().contains("Bearer [redacted]"), "{error}");
    assert!(!error.to_string().contains(KEY), "the error shows the key: {error}");
    assert!(!format!("{error:?}").contains(KEY), "Debug of the error shows the key");
}

#[tokio::test]
async fn transport_slow_first_byte_and_body_time_out() {
    let server = TestServer::http(None, |request| async move {
        if request.path_and_query == "/slow" {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return ok("late");
        }
        let (sender, body) = streamed();
        tokio::spawn(async move {
            let _ = sender.send(Bytes::from_static(b"data: first\n\n")).await;
            // Then silence, with the connection open.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(sender);
        });
        http::Response::new(body)
    })
    .await;

    let (connector, _) = connector(PrivacyTier::SelfHosted, None, short_timeouts());

    let started = Instant::now();
    let error = send(&connector, Request::post(server.url("/slow"), "text/plain", "x").expect("request"))
        .await
        .expect_err("first byte timeout");

    assert!(matches!(error, NetError::FirstByteTimeout { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    let mut response =
        send(&connector, Request::post(server.url("/stall"), "text/plain", "x").expect("request")).await.expect("headers");
    assert_eq!(response.chunk().await.expect("first chunk").as_deref(), Some(&b"data: first\n\n"[..]));
    let error = response.chunk().await.expect_err("idle timeout");
    assert!(matches!(error, NetError::IdleTimeout { .. }), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn transport_dropped_response_closes_socket() {
    let server = TestServer::http(None, |_| async {
        let (sender, body) = streamed();
        tokio::spawn(async move {
            for _ in 0..1000 {
                if sender.send(Bytes::from_static(b"data: token\n\n")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        http::Response::new(body)
    })
    .await;

    let (connector, egress) = connector(PrivacyTier::SelfHosted, None, Timeouts::default());
    let mut response =
        send(&connector, Request::post(server.url("/"), "text/plain", "x").expect("request")).await.expect("headers");
    response.chunk().await.expect("a chunk").expect("not the end");

    assert_eq!(server.open.load(Ordering::SeqCst), 1);

    let dropped = Instant::now();
    drop(response);
    assert!(
        eventually(Duration::from_millis(100), || server.open.load(Ordering::SeqCst) == 0).await,
        "the server still sees the connection {:?} after the drop",
        dropped.elapsed()
    );
    assert!(eventually(Duration::from_millis(100), || egress.records()[0].ended_unix_ms.is_some()).await);
}
