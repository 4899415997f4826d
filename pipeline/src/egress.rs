//! The record of what left the device: every connection a session opened,
//! and what each network backend consumed.
//!
//! A network stage records each connection in the session's [`EgressLog`]
//! when it opens it, adds the bytes it sends and receives, and closes the
//! entry when the connection ends. It counts what it used at its provider
//! (audio seconds, tokens, characters, time to first byte) in the session's
//! [`UsageLog`]. Both end up in the
//! [`SessionReport`](crate::report::SessionReport), so a user can see exactly
//! where data went and how much.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::histogram::LatencyHistogram;
use crate::id::StageName;
use crate::privacy::{PrivacyTier, is_local_address};

/// Returns the tier a connection to `address` belongs to: self-hosted for
/// local-network addresses, cloud for the rest.
pub fn tier_of_address(address: IpAddr) -> PrivacyTier {
    if is_local_address(address) { PrivacyTier::SelfHosted } else { PrivacyTier::Cloud }
}

/// One connection as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EgressRecord {
    /// The stage that opened it.
    pub stage: String,
    /// The tier of the address connected to: `self_hosted` for local-network
    /// addresses, `cloud` for the rest.
    pub tier: PrivacyTier,
    /// The host name from the endpoint URL.
    pub host: String,
    /// The address the connection went to.
    pub address: IpAddr,
    /// The port.
    pub port: u16,
    /// `http`, `https`, `ws` or `wss`.
    pub scheme: String,
    /// Bytes written to the socket, TLS records included.
    pub bytes_sent: u64,
    /// Bytes read from the socket, TLS records included.
    pub bytes_received: u64,
    /// When the connection opened, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// When it closed, in milliseconds since the Unix epoch, or `None` while it is open.
    pub ended_unix_ms: Option<u64>,
}

/// The live counters of one connection.
#[derive(Debug)]
struct Entry {
    stage: StageName,
    host: String,
    address: IpAddr,
    port: u16,
    scheme: String,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    started: SystemTime,
    ended: Mutex<Option<SystemTime>>,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

impl Entry {
    fn record(&self) -> EgressRecord {
        EgressRecord {
            stage: self.stage.to_string(),
            tier: tier_of_address(self.address),
            host: self.host.clone(),
            address: self.address,
            port: self.port,
            scheme: self.scheme.clone(),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            started_unix_ms: unix_ms(self.started),
            ended_unix_ms: self.ended.lock().map(unix_ms),
        }
    }
}

/// The connections of one session. Cloning shares the log.
#[derive(Clone, Default)]
pub struct EgressLog(Arc<Mutex<Vec<Arc<Entry>>>>);

impl fmt::Debug for EgressLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressLog").field("connections", &self.0.lock().len()).finish()
    }
}

/// The destination of a connection, for [`EgressLog::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The host name from the endpoint URL.
    pub host: String,
    /// The address connected to.
    pub address: IpAddr,
    /// The port.
    pub port: u16,
    /// `http`, `https`, `ws` or `wss`.
    pub scheme: String,
}

impl EgressLog {
    /// Records a connection `stage` opens now and returns the handle that
    /// counts its bytes. The entry is closed when the handle is dropped.
    pub fn open(&self, stage: &StageName, destination: Destination) -> ConnectionRecord {
        let entry = Arc::new(Entry {
            stage: stage.clone(),
            host: destination.host,
            address: destination.address,
            port: destination.port,
            scheme: destination.scheme,
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            started: SystemTime::now(),
            ended: Mutex::new(None),
        });
        self.0.lock().push(Arc::clone(&entry));
        ConnectionRecord(entry)
    }

    /// Returns every connection recorded so far, in the order they opened.
    pub fn records(&self) -> Vec<EgressRecord> {
        self.0.lock().iter().map(|entry| entry.record()).collect()
    }
}

/// Counter of the bytes of one open connection. Dropping the last clone closes its entry.
#[derive(Debug, Clone)]
pub struct ConnectionRecord(Arc<Entry>);

impl ConnectionRecord {
    /// Adds bytes written to the socket.
    pub fn sent(&self, bytes: usize) {
        self.0.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Adds bytes read from the socket.
    pub fn received(&self, bytes: usize) {
        self.0.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Marks the connection closed now. Later calls keep the first time.
    pub fn close(&self) {
        let mut ended = self.0.ended.lock();
        if ended.is_none() {
            *ended = Some(SystemTime::now());
        }
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        // Clones share the entry: the last one to go closes it.
        if Arc::strong_count(&self.0) <= 2 {
            self.close();
        }
    }
}

/// The usage of one backend of one stage, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    /// The stage.
    pub stage: String,
    /// The backend, such as `"deepgram"` or `"anthropic"`.
    pub backend: String,
    /// Requests (or streaming connections) started.
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Seconds of audio sent for transcription.
    pub audio_seconds: f64,
    /// Prompt tokens, as the provider reported them.
    pub tokens_in: u64,
    /// Generated tokens, as the provider reported them.
    pub tokens_out: u64,
    /// Characters sent for speech synthesis.
    pub characters: u64,
    /// Median time from sending a request to its first response byte, in milliseconds.
    pub first_byte_p50_ms: Option<f64>,
    /// 95th percentile of the same, in milliseconds.
    pub first_byte_p95_ms: Option<f64>,
}

/// The live counters of one backend of one stage.
#[derive(Debug, Default)]
pub struct BackendUsage {
    requests: AtomicU64,
    failures: AtomicU64,
    audio_micros: AtomicU64,
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    characters: AtomicU64,
    first_byte: Mutex<LatencyHistogram>,
}

impl BackendUsage {
    /// Counts a request (or a streaming connection) started.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that failed.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds audio sent for transcription.
    pub fn audio(&self, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.audio_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Adds tokens the provider reported.
    pub fn tokens(&self, input: u64, output: u64) {
        self.tokens_in.fetch_add(input, Ordering::Relaxed);
        self.tokens_out.fetch_add(output, Ordering::Relaxed);
    }

    /// Adds characters sent for speech synthesis.
    pub fn characters(&self, count: usize) {
        self.characters.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Records the time from sending a request to its first response byte.
    pub fn first_byte(&self, latency: Duration) {
        self.first_byte.lock().record(latency);
    }

    fn record(&self, stage: &str, backend: &str) -> UsageRecord {
        let first_byte = self.first_byte.lock();
        let quantile_ms =
            |q: f64| (first_byte.count() > 0).then(|| first_byte.quantile(q).as_secs_f64() * 1e3);
        UsageRecord {
            stage: stage.to_owned(),
            backend: backend.to_owned(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            audio_seconds: self.audio_micros.load(Ordering::Relaxed) as f64 / 1e6,
            tokens_in: self.tokens_in.load(Ordering::Relaxed),
            tokens_out: self.tokens_out.load(Ordering::Relaxed),
            characters: self.characters.load(Ordering::Relaxed),
            first_byte_p50_ms: quantile_ms(0.5),
            first_byte_p95_ms: quantile_ms(0.95),
        }
    }
}

/// The backend usage of one session, by stage and backend. Cloning shares the log.
#[derive(Clone, Default)]
pub struct UsageLog(Arc<Mutex<BTreeMap<(String, String), Arc<BackendUsage>>>>);

impl fmt::Debug for UsageLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageLog").field("backends", &self.0.lock().len()).finish()
    }
}

impl UsageLog {
    /// Returns the counters of `backend` in `stage`, creating them on first use.
    pub fn backend(&self, stage: &StageName, backend: &str) -> Arc<BackendUsage> {
        let key = (stage.to_string(), backend.to_owned());
        Arc::clone(self.0.lock().entry(key).or_default())
    }

    /// Returns every backend's usage so far.
    pub fn records(&self) -> Vec<UsageRecord> {
        self.0.lock().iter().map(|((stage, backend), usage)| usage.record(stage, backend)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn destination(address: IpAddr) -> Destination {
        Destination { host: "example.test".to_owned(), address, port: 443, scheme: "https".to_owned() }
    }

    #[test]
    fn connection_counts_bytes_and_closes_on_drop() {
        let log = EgressLog::default();
        let stage = StageName::new("stt").expect("valid name");
        let connection = log.open(&stage, destination(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))));
        connection.sent(100);
        connection.sent(20);
        connection.received(7);
        let open = log.records();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].bytes_sent, open[0].bytes_received), (120, 7));
        assert_eq!(open[0].tier, PrivacyTier::Cloud);
        assert_eq!(open[0].ended_unix_ms, None);

        let clone = connection.clone();
        drop(connection);
        assert_eq!(log.records()[0].ended_unix_ms, None, "a clone still holds the connection");
        drop(clone);
        let closed = &log.records()[0];
        assert!(closed.ended_unix_ms.is_some_and(|end| end >= closed.started_unix_ms));
    }

    #[test]
    fn local_addresses_are_self_hosted() {
        assert_eq!(tier_of_address(IpAddr::V4(Ipv4Addr::LOCALHOST)), PrivacyTier::SelfHosted);
        assert_eq!(tier_of_address(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9))), PrivacyTier::SelfHosted);
        assert_eq!(tier_of_address(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))), PrivacyTier::Cloud);
    }

    #[test]
    fn usage_accumulates_per_stage_and_backend() {
        let log = UsageLog::default();
        let stage = StageName::new("llm").expect("valid name");
        let usage = log.backend(&stage, "openai");
        usage.request();
        usage.tokens(12, 30);
        log.backend(&stage, "openai").tokens(3, 4);
        usage.first_byte(Duration::from_millis(80));
        log.backend(&stage, "ollama").failure();
        let records = log.records();
        assert_eq!(records.len(), 2);
        let openai = records.iter().find(|record| record.backend == "openai").expect("openai usage");
        assert_eq!((openai.requests, openai.tokens_in, openai.tokens_out), (1, 15, 34));
        let p50 = openai.first_byte_p50_ms.expect("one first byte recorded");
        assert!((70.0..=90.0).contains(&p50), "p50 {p50} ms");
        let ollama = records.iter().find(|record| record.backend == "ollama").expect("ollama usage");
        assert_eq!((ollama.failures, ollama.first_byte_p50_ms), (1, None));
    }
}
