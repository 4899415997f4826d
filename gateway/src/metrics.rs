//! The gateway's metrics, served at `/metrics` in the Prometheus text
//! exposition format (version 0.0.4).
//!
//! Tenant ids appear as label values; they are validated to ASCII letters,
//! digits and `-_.:@`, so they need no escaping.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mentis_pipeline::LatencyHistogram;
use parking_lot::Mutex;

/// Bucket bounds of the turn latency histograms, in seconds.
const TURN_BUCKETS: [f64; 11] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0];

/// Bucket bounds of the per-frame audio path latency histogram, in seconds.
const FRAME_BUCKETS: [f64; 11] = [0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, seconds: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn write(&self, text: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(text, "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(text, "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(text, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(text, "{name}_count{braces} {}", self.count);
    }
}

/// The latency marks of a turn that are exported, as label values.
pub const TURN_MARKS: [&str; 4] = ["final_transcript", "first_token", "first_tts_audio", "voice_to_voice"];

#[derive(Debug)]
struct Inner {
    sessions_active: BTreeMap<String, i64>,
    sessions_total: BTreeMap<String, u64>,
    turns_total: BTreeMap<String, u64>,
    audio_seconds: BTreeMap<String, f64>,
    rejections: BTreeMap<&'static str, u64>,
    session_errors: BTreeMap<&'static str, u64>,
    turn_latency: BTreeMap<&'static str, Histogram>,
    frame_latency: Histogram,
    frame_quantiles: LatencyHistogram,
}

/// Counters, gauges and histograms of one gateway process.
#[derive(Debug)]
pub struct GatewayMetrics {
    inner: Mutex<Inner>,
    connections_active: AtomicU64,
    connections_total: AtomicU64,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics::new()
    }
}

impl GatewayMetrics {
    /// Creates zeroed metrics.
    pub fn new() -> Self {
        GatewayMetrics {
            inner: Mutex::new(Inner {
                sessions_active: BTreeMap::new(),
                sessions_total: BTreeMap::new(),
                turns_total: BTreeMap::new(),
                audio_seconds: BTreeMap::new(),
                rejections: BTreeMap::new(),
                session_errors: BTreeMap::new(),
                turn_latency: TURN_MARKS.iter().map(|&mark| (mark, Histogram::new(&TURN_BUCKETS))).collect(),
                frame_latency: Histogram::new(&FRAME_BUCKETS),
                frame_quantiles: LatencyHistogram::new(),
            }),
            connections_active: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
        }
    }

    /// Counts an accepted TCP connection.
    pub fn connection_opened(&self) {
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a closed TCP connection.
    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a session that started for `tenant`.
    pub fn session_started(&self, tenant: &str) {
        let mut inner = self.inner.lock();
        *inner.sessions_active.entry(tenant.to_owned()).or_default() += 1;
        *inner.sessions_total.entry(tenant.to_owned()).or_default() += 1;
    }

    /// Counts a session of `tenant` that ended.
    pub fn session_ended(&self, tenant: &str) {
        *self.inner.lock().sessions_active.entry(tenant.to_owned()).or_default() -= 1;
    }

    /// Counts a rejected request or session by reason, such as `token_expired`.
    pub fn rejected(&self, reason: &'static str) {
        *self.inner.lock().rejections.entry(reason).or_default() += 1;
    }

    /// Counts a fault inside a running session, such as `stage_failed` or `client_vanished`.
    pub fn session_error(&self, kind: &'static str) {
        *self.inner.lock().session_errors.entry(kind).or_default() += 1;
    }

    /// Counts audio received from a client of `tenant`.
    pub fn audio_received(&self, tenant: &str, audio: Duration) {
        *self.inner.lock().audio_seconds.entry(tenant.to_owned()).or_default() += audio.as_secs_f64();
    }

    /// Records a turn whose reply started, with its latencies in milliseconds by mark.
    pub fn turn_completed(&self, tenant: &str, latencies: [(&'static str, Option<f64>); 4]) {
        let mut inner = self.inner.lock();
        *inner.turns_total.entry(tenant.to_owned()).or_default() += 1;
        for (mark, millis) in latencies {
            if let (Some(histogram), Some(millis)) = (inner.turn_latency.get_mut(mark), millis) {
                histogram.observe(millis / 1e3);
            }
        }
    }

    /// Records how long one client audio frame took from arriving at the
    /// gateway to leaving the audio path of the pipeline.
    pub fn frame_latency(&self, latency: Duration) {
        let mut inner = self.inner.lock();
        inner.frame_latency.observe(latency.as_secs_f64());
        inner.frame_quantiles.record(latency);
    }

    /// Returns the quantile `q` of the frame latencies recorded so far, and their count.
    pub fn frame_latency_quantile(&self, q: f64) -> (Duration, u64) {
        let inner = self.inner.lock();
        (inner.frame_quantiles.quantile(q), inner.frame_quantiles.count())
    }

    /// Returns the number of active sessions over all tenants.
    pub fn active_sessions(&self) -> i64 {
        self.inner.lock().sessions_active.values().sum()
    }

    /// Returns how many rejections were counted for `reason`.
    pub fn rejections(&self, reason: &str) -> u64 {
        self.inner.lock().rejections.get(reason).copied().unwrap_or(0)
    }

    /// Returns how many session faults were counted of `kind`.
    pub fn session_errors(&self, kind: &str) -> u64 {
        self.inner.lock().session_errors.get(kind).copied().unwrap_or(0)
    }

    /// Returns the metrics as Prometheus text.
    pub fn render(&self) -> String {
        let inner = self.inner.lock();
        let mut text = String::with_capacity(4_096);

        header(&mut text, "mentis_gateway_connections_active", "gauge", "TCP connections open now.");
        let _ = writeln!(text, "mentis_gateway_connections_active {}", self.connections_active.load(Ordering::Relaxed));
        header(&mut text, "mentis_gateway_connections_total", "counter", "TCP connections accepted.");
        let _ = writeln!(text, "mentis_gateway_connections_total {}", self.connections_total.load(Ordering::Relaxed));

        header(&mut text, "mentis_gateway_sessions_active", "gauge", "Sessions running now, by tenant.");
        for (tenant, count) in &inner.sessions_active {
            let _ = writeln!(text, "mentis_gateway_sessions_active{{tenant=\"{tenant}\"}} {count}");
        }
        header(&mut text, "mentis_gateway_sessions_total", "counter", "Sessions started, by tenant.");
        for (tenant, count) in &inner.sessions_total {
            let _ = writeln!(text, "mentis_gateway_sessions_total{{tenant=\"{tenant}\"}} {count}");
        }
        header(&mut text, "mentis_gateway_turns_total", "counter", "Turns that got reply audio, by tenant.");
        for (tenant, count) in &inner.turns_total {
            let _ = writeln!(text, "mentis_gateway_turns_total{{tenant=\"{tenant}\"}} {count}");
        }
        header(&mut text, "mentis_gateway_audio_received_seconds_total", "counter", "Client audio received, by tenant.");
        for (tenant, seconds) in &inner.audio_seconds {
            let _ = writeln!(text, "mentis_gateway_audio_received_seconds_total{{tenant=\"{tenant}\"}} {seconds}");
        }
        header(&mut text, "mentis_gateway_rejections_total", "counter", "Requests and sessions rejected, by reason.");
        for (reason, count) in &inner.rejections {
            let _ = writeln!(text, "mentis_gateway_rejections_total{{reason=\"{reason}\"}} {count}");
        }
        header(&mut text, "mentis_gateway_session_errors_total", "counter", "Faults in running sessions, by kind.");
        for (kind, count) in &inner.session_errors {
            let _ = writeln!(text, "mentis_gateway_session_errors_total{{kind=\"{kind}\"}} {count}");
        }

        header(&mut text, "mentis_gateway_turn_latency_seconds", "histogram", "Time from the end of user speech to a turn mark.");
        for (mark, histogram) in &inner.turn_latency {
            histogram.write(&mut text, "mentis_gateway_turn_latency_seconds", &format!("mark=\"{mark}\""));
        }
        header(
            &mut text,
            "mentis_gateway_frame_latency_seconds",
            "histogram",
            "Time from a client audio frame arriving to its audio leaving the pipeline's audio path.",
        );
        inner.frame_latency.write(&mut text, "mentis_gateway_frame_latency_seconds", "");
        text
    }
}

fn header(text: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_sessions_and_rejections() {
        let metrics = GatewayMetrics::new();
        metrics.session_started("acme");
        metrics.session_started("acme");
        metrics.session_ended("acme");
        metrics.rejected("token_expired");
        let text = metrics.render();
        assert!(text.contains("mentis_gateway_sessions_active{tenant=\"acme\"} 1"), "{text}");
        assert!(text.contains("mentis_gateway_sessions_total{tenant=\"acme\"} 2"), "{text}");
        assert!(text.contains("mentis_gateway_rejections_total{reason=\"token_expired\"} 1"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = GatewayMetrics::new();
        metrics.turn_completed("acme", [("voice_to_voice", Some(150.0)), ("first_token", None), ("final_transcript", Some(40.0)), ("first_tts_audio", None)]);
        let text = metrics.render();
        assert!(text.contains("mentis_gateway_turn_latency_seconds_bucket{mark=\"voice_to_voice\",le=\"0.1\"} 0"), "{text}");
        assert!(text.contains("mentis_gateway_turn_latency_seconds_bucket{mark=\"voice_to_voice\",le=\"0.2\"} 1"), "{text}");
        assert!(text.contains("mentis_gateway_turn_latency_seconds_count{mark=\"voice_to_voice\"} 1"), "{text}");
        assert!(text.contains("mentis_gateway_turn_latency_seconds_count{mark=\"first_token\"} 0"), "{text}");
        assert!(text.contains("mentis_gateway_turns_total{tenant=\"acme\"} 1"), "{text}");
    }
}
