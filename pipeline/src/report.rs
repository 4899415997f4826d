//! Per-turn latency marks and the session report (JSON and Prometheus text).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::edge::{DropReason, EdgeReport};
use crate::egress::{EgressRecord, UsageRecord};
use crate::id::{SessionId, TurnId};
use crate::privacy::PrivacyTier;

/// A moment in a turn, recorded once on the session's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnMark {
    /// The voice activity detector decided the user stopped speaking.
    EndOfSpeech,
    /// The final transcript of the user's utterance is ready.
    FinalTranscript,
    /// The LLM produced its first token.
    FirstToken,
    /// Speech synthesis produced its first audio.
    FirstTtsAudio,
    /// The first reply audio left the pipeline (played or written).
    FirstAudioOut,
}

impl TurnMark {
    /// Every mark, in pipeline order.
    pub const ALL: [TurnMark; 5] = [
        TurnMark::EndOfSpeech,
        TurnMark::FinalTranscript,
        TurnMark::FirstToken,
        TurnMark::FirstTtsAudio,
        TurnMark::FirstAudioOut,
    ];
}

/// The latency marks of every turn of a session. Cloning shares the record.
#[derive(Debug, Clone, Default)]
pub struct TurnClock {
    marks: Arc<Mutex<BTreeMap<TurnId, BTreeMap<TurnMark, Instant>>>>,
}

impl TurnClock {
    /// Records `mark` for `turn` now, unless it was already recorded: the
    /// first time counts.
    pub fn mark(&self, turn: TurnId, mark: TurnMark) {
        self.mark_at(turn, mark, Instant::now());
    }

    /// Records `mark` for `turn` at `at`, unless it was already recorded.
    pub fn mark_at(&self, turn: TurnId, mark: TurnMark, at: Instant) {
        self.marks.lock().entry(turn).or_default().entry(mark).or_insert(at);
    }

    /// Returns the time of a mark, if recorded.
    pub fn get(&self, turn: TurnId, mark: TurnMark) -> Option<Instant> {
        self.marks.lock().get(&turn).and_then(|marks| marks.get(&mark).copied())
    }

    /// Returns one report per turn with at least one mark.
    pub fn reports(&self) -> Vec<TurnReport> {
        let marks = self.marks.lock();
        marks.iter().map(|(&turn, marks)| TurnReport::from_marks(turn, marks)).collect()
    }
}

/// Latencies of one turn, in milliseconds from the end of the user's speech.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnReport {
    /// The turn.
    pub turn: TurnId,
    /// End of speech to final transcript.
    pub final_transcript_ms: Option<f64>,
    /// End of speech to the first LLM token.
    pub first_token_ms: Option<f64>,
    /// End of speech to the first synthesized audio.
    pub first_tts_audio_ms: Option<f64>,
    /// End of speech to the first audio out: the voice-to-voice latency.
    pub voice_to_voice_ms: Option<f64>,
}

impl TurnReport {
    fn from_marks(turn: TurnId, marks: &BTreeMap<TurnMark, Instant>) -> Self {
        let since_end = |mark: TurnMark| -> Option<f64> {
            let end = marks.get(&TurnMark::EndOfSpeech)?;
            let at = marks.get(&mark)?;
            Some(millis(at.saturating_duration_since(*end)))
        };
        TurnReport {
            turn,
            final_transcript_ms: since_end(TurnMark::FinalTranscript),
            first_token_ms: since_end(TurnMark::FirstToken),
            first_tts_audio_ms: since_end(TurnMark::FirstTtsAudio),
            voice_to_voice_ms: since_end(TurnMark::FirstAudioOut),
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Counters of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage's name.
    pub stage: String,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Processing time per received frame, median, in microseconds.
    pub processing_p50_micros: f64,
    /// Processing time per received frame, 95th percentile, in microseconds.
    pub processing_p95_micros: f64,
    /// Processing time per received frame, 99th percentile, in microseconds.
    pub processing_p99_micros: f64,
    /// Total processing time, in microseconds.
    pub processing_total_micros: f64,
}

impl StageReport {
    pub(crate) fn new(stage: String, counters: &crate::stage::StageCounters) -> Self {
        let processing = &counters.processing;
        StageReport {
            stage,
            frames_in: counters.frames_in,
            frames_out: counters.frames_out,
            processing_p50_micros: micros(processing.quantile(0.50)),
            processing_p95_micros: micros(processing.quantile(0.95)),
            processing_p99_micros: micros(processing.quantile(0.99)),
            processing_total_micros: micros(processing.sum()),
        }
    }
}

/// Everything measured in one session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    /// The session.
    pub session: SessionId,
    /// The tier the pipeline was built for.
    pub tier: PrivacyTier,
    /// One entry per stage, in the order they were added.
    pub stages: Vec<StageReport>,
    /// One entry per edge, in the order they were connected.
    pub edges: Vec<EdgeReport>,
    /// One entry per turn with latency marks.
    pub turns: Vec<TurnReport>,
    /// Every connection the session opened, in the order they opened.
    pub egress: Vec<EgressRecord>,
    /// What each network backend used.
    pub usage: Vec<UsageRecord>,
}

impl SessionReport {
    /// Returns the report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }

    /// Returns the total number of frames dropped on every edge.
    pub fn total_drops(&self) -> u64 {
        self.edges.iter().flat_map(|edge| edge.drops.iter()).map(|(_, count)| count).sum()
    }

    /// Returns the report in the Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut text = String::new();
        let session = self.session.0;

        let _ = writeln!(text, "# HELP mentis_stage_frames_total Frames received or sent by a stage.");
        let _ = writeln!(text, "# TYPE mentis_stage_frames_total counter");
        for stage in &self.stages {
            let labels = format!("session=\"{session}\",stage=\"{}\"", stage.stage);
            let _ = writeln!(text, "mentis_stage_frames_total{{{labels},direction=\"in\"}} {}", stage.frames_in);
            let _ = writeln!(text, "mentis_stage_frames_total{{{labels},direction=\"out\"}} {}", stage.frames_out);
        }

        let _ = writeln!(text, "# HELP mentis_stage_processing_seconds Processing time per received frame.");
        let _ = writeln!(text, "# TYPE mentis_stage_processing_seconds summary");
        for stage in &self.stages {
            let labels = format!("session=\"{session}\",stage=\"{}\"", stage.stage);
            for (quantile, value) in [
                ("0.5", stage.processing_p50_micros),
                ("0.95", stage.processing_p95_micros),
                ("0.99", stage.processing_p99_micros),
            ] {
                let _ = writeln!(text, "mentis_stage_processing_seconds{{{labels},quantile=\"{quantile}\"}} {}", value / 1e6);
            }
            let _ = writeln!(text, "mentis_stage_processing_seconds_sum{{{labels}}} {}", stage.processing_total_micros / 1e6);
            let _ = writeln!(text, "mentis_stage_processing_seconds_count{{{labels}}} {}", stage.frames_in);
        }

        let _ = writeln!(text, "# HELP mentis_edge_depth Data frames queued on an edge now.");
        let _ = writeln!(text, "# TYPE mentis_edge_depth gauge");
        for edge in &self.edges {
            let _ = writeln!(text, "mentis_edge_depth{{session=\"{session}\",edge=\"{}\"}} {}", edge.edge, edge.depth);
        }
        let _ = writeln!(text, "# HELP mentis_edge_high_water Most data frames ever queued on an edge.");
        let _ = writeln!(text, "# TYPE mentis_edge_high_water gauge");
        for edge in &self.edges {
            let _ = writeln!(text, "mentis_edge_high_water{{session=\"{session}\",edge=\"{}\"}} {}", edge.edge, edge.high_water);
        }
        let _ = writeln!(text, "# HELP mentis_edge_queue_seconds Time a frame waited on an edge.");
        let _ = writeln!(text, "# TYPE mentis_edge_queue_seconds summary");
        for edge in &self.edges {
            let labels = format!("session=\"{session}\",edge=\"{}\"", edge.edge);
            for (quantile, value) in [("0.5", edge.queue_p50_micros), ("0.99", edge.queue_p99_micros)] {
                let _ = writeln!(text, "mentis_edge_queue_seconds{{{labels},quantile=\"{quantile}\"}} {}", value / 1e6);
            }
            let _ = writeln!(text, "mentis_edge_queue_seconds_sum{{{labels}}} {}", edge.queue_time.sum().as_secs_f64());
            let _ = writeln!(text, "mentis_edge_queue_seconds_count{{{labels}}} {}", edge.queue_time.count());
        }
        let _ = writeln!(text, "# HELP mentis_edge_dropped_frames_total Frames an edge discarded, by reason.");
        let _ = writeln!(text, "# TYPE mentis_edge_dropped_frames_total counter");
        for edge in &self.edges {
            for reason in DropReason::ALL {
                let count = edge.drops.iter().find(|(r, _)| *r == reason).map_or(0, |(_, c)| *c);
                let _ = writeln!(
                    text,
                    "mentis_edge_dropped_frames_total{{session=\"{session}\",edge=\"{}\",reason=\"{}\"}} {count}",
                    edge.edge,
                    reason.as_str()
                );
            }
        }

        let _ = writeln!(text, "# HELP mentis_turn_latency_seconds Time from the end of user speech to a turn mark.");
        let _ = writeln!(text, "# TYPE mentis_turn_latency_seconds gauge");
        for turn in &self.turns {
            for (mark, value) in [
                ("final_transcript", turn.final_transcript_ms),
                ("first_token", turn.first_token_ms),
                ("first_tts_audio", turn.first_tts_audio_ms),
                ("first_audio_out", turn.voice_to_voice_ms),
            ] {
                if let Some(ms) = value {
                    let _ = writeln!(
                        text,
                        "mentis_turn_latency_seconds{{session=\"{session}\",turn=\"{}\",mark=\"{mark}\"}} {}",
                        turn.turn.0,
                        ms / 1e3
                    );
                }
            }
        }
        write_network(&mut text, session, &self.egress, &self.usage);
        text
    }
}

/// Writes the egress and backend usage series.
fn write_network(text: &mut String, session: u64, egress: &[EgressRecord], usage: &[UsageRecord]) {
    let _ = writeln!(text, "# HELP mentis_egress_bytes_total Bytes a session exchanged with a host outside the process.");
    let _ = writeln!(text, "# TYPE mentis_egress_bytes_total counter");
    let mut by_host: BTreeMap<(&str, &str, u16, &str), (u64, u64)> = BTreeMap::new();
    for record in egress {
        let tier = match record.tier {
            PrivacyTier::OnDevice => "on_device",
            PrivacyTier::SelfHosted => "self_hosted",
            PrivacyTier::Cloud => "cloud",
        };
        let totals = by_host.entry((&record.stage, &record.host, record.port, tier)).or_default();
        totals.0 += record.bytes_sent;
        totals.1 += record.bytes_received;
    }
    for ((stage, host, port, tier), (sent, received)) in &by_host {
        let labels = format!("session=\"{session}\",stage=\"{stage}\",host=\"{host}\",port=\"{port}\",tier=\"{tier}\"");
        let _ = writeln!(text, "mentis_egress_bytes_total{{{labels},direction=\"sent\"}} {sent}");
        let _ = writeln!(text, "mentis_egress_bytes_total{{{labels},direction=\"received\"}} {received}");
    }

    let _ = writeln!(text, "# HELP mentis_backend_usage_total What a network backend used: requests, failures, audio seconds, tokens, characters.");
    let _ = writeln!(text, "# TYPE mentis_backend_usage_total counter");
    for record in usage {
        let labels = format!("session=\"{session}\",stage=\"{}\",backend=\"{}\"", record.stage, record.backend);
        for (kind, value) in [
            ("requests", record.requests as f64),
            ("failures", record.failures as f64),
            ("audio_seconds", record.audio_seconds),
            ("tokens_in", record.tokens_in as f64),
            ("tokens_out", record.tokens_out as f64),
            ("characters", record.characters as f64),
        ] {
            let _ = writeln!(text, "mentis_backend_usage_total{{{labels},kind=\"{kind}\"}} {value}");
        }
    }
    let _ = writeln!(text, "# HELP mentis_backend_first_byte_seconds Time from a request to its first response byte.");
    let _ = writeln!(text, "# TYPE mentis_backend_first_byte_seconds gauge");
    for record in usage {
        let labels = format!("session=\"{session}\",stage=\"{}\",backend=\"{}\"", record.stage, record.backend);
        for (quantile, value) in [("0.5", record.first_byte_p50_ms), ("0.95", record.first_byte_p95_ms)] {
            if let Some(ms) = value {
                let _ = writeln!(text, "mentis_backend_first_byte_seconds{{{labels},quantile=\"{quantile}\"}} {}", ms / 1e3);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_clock_keeps_first_mark() {
        let clock = TurnClock::default();
        let start = Instant::now();
        let turn = TurnId(1);
        clock.mark_at(turn, TurnMark::EndOfSpeech, start);
        clock.mark_at(turn, TurnMark::FirstToken, start + Duration::from_millis(300));
        clock.mark_at(turn, TurnMark::FirstToken, start + Duration::from_millis(900));
        clock.mark_at(turn, TurnMark::FirstAudioOut, start + Duration::from_millis(700));
        let reports = clock.reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].first_token_ms, Some(300.0));
        assert_eq!(reports[0].voice_to_voice_ms, Some(700.0));
        assert_eq!(reports[0].final_transcript_ms, None);
    }
}
