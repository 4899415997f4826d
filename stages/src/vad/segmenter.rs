//! Turns per-frame speech probabilities into speech segments.
//!
//! The [`Segmenter`] is pure logic shared by every detector. It takes one
//! probability per detector frame (WebRTC VAD reports 0.0 or 1.0, Silero a
//! value in between) and reports where segments start and stop, in samples
//! from the start of the stream. Frame `k` covers samples
//! `[k * frame_samples, (k + 1) * frame_samples)`.
//!
//! The rules, with `F` the frame length:
//!
//! - A frame counts as speech when its probability reaches `threshold`, or,
//!   once a run of speech has begun, `neg_threshold` (hysteresis).
//! - Speech starts once consecutive speech frames add up to `min_speech`. The
//!   segment's onset is the first frame of that run. Its start is `pre_roll`
//!   earlier, but never before the end of the previous segment or the start
//!   of the stream.
//! - Speech stops once non-speech frames add up to `end_silence`. The segment
//!   ends where its last speech frame ends, and the turn ends with it.
//! - A segment never covers more than `max_segment` of audio (pre-roll
//!   included). A speech frame that would cross that limit closes the segment
//!   at the end of its last speech frame and opens a continuation segment of
//!   the same utterance at once, without waiting for `min_speech` again.
//! - At end of stream an open segment stops where its last speech frame ends,
//!   and an onset that has not reached `min_speech` is dropped.

use std::time::Duration;

use super::VadConfigError;

/// How the segmenter decides; durations are media time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmenterConfig {
    /// Probability at or above which a frame starts a run of speech, in (0, 1].
    pub threshold: f32,
    /// Probability at or above which a frame continues a run of speech that
    /// has begun, in [0, `threshold`].
    pub neg_threshold: f32,
    /// Consecutive speech needed before speech counts as started.
    pub min_speech: Duration,
    /// Non-speech needed after the last speech frame before speech counts as
    /// stopped and the turn as ended.
    pub end_silence: Duration,
    /// Audio before the onset that is added to the front of each segment.
    pub pre_roll: Duration,
    /// Maximum segment length, pre-roll included. Longer speech is split.
    pub max_segment: Duration,
}

impl SegmenterConfig {
    /// Defaults for detectors that report 0.0 or 1.0 per frame, such as WebRTC VAD.
    pub const fn binary() -> Self {
        SegmenterConfig {
            threshold: 0.5,
            neg_threshold: 0.5,
            min_speech: Duration::from_millis(BINARY_MIN_SPEECH_MS),
            end_silence: Duration::from_millis(DEFAULT_END_SILENCE_MS),
            pre_roll: Duration::from_millis(DEFAULT_PRE_ROLL_MS),
            max_segment: Duration::from_secs(DEFAULT_MAX_SEGMENT_SECS),
        }
    }

    /// Defaults for detectors that report a probability, such as Silero VAD:
    /// speech from 0.5, kept down to 0.35 (the 0.15 margin that Silero's own
    /// `get_speech_timestamps` uses).
    pub const fn probability() -> Self {
        SegmenterConfig {
            threshold: 0.5,
            neg_threshold: 0.35,
            min_speech: Duration::from_millis(PROBABILITY_MIN_SPEECH_MS),
            ..SegmenterConfig::binary()
        }
    }
}

/// Minimum speech for probability detectors.
pub const PROBABILITY_MIN_SPEECH_MS: u64 = 100;

/// Minimum speech for binary detectors. After a reset libfvad reports its
/// first frames as speech and keeps that decision for a few more frames (its
/// hangover). On seeded white noise at -40 to -30 dBFS, in mode 3 with 20 ms
/// frames, those runs lasted up to 100 ms over 199 seeds, so 150 ms stays
/// above them.
pub const BINARY_MIN_SPEECH_MS: u64 = 150;

/// Default silence that ends a turn: long enough that pauses inside a
/// sentence do not split it, short enough that a reply can start soon after
/// the person stops. A chosen trade-off, not a measured optimum.
pub const DEFAULT_END_SILENCE_MS: u64 = 700;

/// Default pre-roll: covers soft word onsets that a detector reports late.
pub const DEFAULT_PRE_ROLL_MS: u64 = 300;

/// Default maximum segment length: Whisper transcribes 30 s windows, so a
/// segment of at most 30 s fits one window.
pub const DEFAULT_MAX_SEGMENT_SECS: u64 = 30;

/// The reason a segment stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// Silence lasted `end_silence`; the turn ended.
    Silence,
    /// The segment reached `max_segment`; a continuation segment follows at once.
    MaxLength,
    /// The stream ended during the segment; the turn ended.
    EndOfStream,
}

impl StopReason {
    /// Returns whether the stop also ends the speaker's turn.
    pub fn ends_turn(self) -> bool {
        !matches!(self, StopReason::MaxLength)
    }
}

/// A change of speech state, with positions in samples from the start of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentEvent {
    /// A segment started.
    Started {
        /// First sample of the segment, pre-roll included.
        start: u64,
        /// First sample of the first speech frame.
        onset: u64,
        /// Whether the segment continues an utterance split at `max_segment`.
        continuation: bool,
    },
    /// The open segment stopped.
    Stopped {
        /// One past the last sample of the segment: the end of its last speech frame.
        end: u64,
        /// The reason it stopped.
        reason: StopReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No speech.
    Silence,
    /// Speech frames seen, fewer than `min_speech` of them.
    Onset { onset: u64, speech: u64 },
    /// Inside a segment.
    Speech { start: u64, last_speech_end: u64, silence: u64 },
}

/// The durations of a [`SegmenterConfig`] in samples.
#[derive(Debug, Clone, Copy)]
struct Limits {
    min_speech: u64,
    end_silence: u64,
    pre_roll: u64,
    max_segment: u64,
}

/// Segments a stream of per-frame speech probabilities.
#[derive(Debug, Clone)]
pub struct Segmenter {
    config: SegmenterConfig,
    sample_rate: u32,
    frame_samples: u64,
    limits: Limits,
    state: State,
    /// End of the frames pushed so far.
    position: u64,
    /// End of the previous segment; pre-roll never reaches before it.
    previous_end: u64,
}

impl Segmenter {
    /// Validates `config` for frames of `frame_samples` samples at `sample_rate` Hz.
    pub fn new(config: SegmenterConfig, sample_rate: u32, frame_samples: usize) -> Result<Self, VadConfigError> {
        let thresholds_valid = config.threshold.is_finite()
            && config.neg_threshold.is_finite()
            && config.threshold > 0.0
            && config.threshold <= 1.0
            && config.neg_threshold >= 0.0
            && config.neg_threshold <= config.threshold;
        if !thresholds_valid {
            return Err(VadConfigError::InvalidThresholds {
                threshold: config.threshold,
                neg_threshold: config.neg_threshold,
            });
        }
        if sample_rate == 0 || frame_samples == 0 {
            return Err(VadConfigError::InvalidFrame { sample_rate, frame_samples });
        }

        let frame_samples = frame_samples as u64;
        let limits = Limits {
            min_speech: samples_in(config.min_speech, sample_rate),
            end_silence: samples_in(config.end_silence, sample_rate),
            pre_roll: samples_in(config.pre_roll, sample_rate),
            max_segment: samples_in(config.max_segment, sample_rate),
        };

        // The first segment may hold the pre-roll, the minimum speech rounded
        // up to whole frames, and the frame that a split moves into the
        // continuation. A shorter limit could not be kept.
        let min_speech_frames = limits.min_speech.div_ceil(frame_samples).max(1);
        let shortest = limits.pre_roll + (min_speech_frames + 1) * frame_samples;
        if limits.max_segment < shortest {
            return Err(VadConfigError::MaxSegmentTooShort {
                max_segment: config.max_segment,
                minimum: duration_of(shortest, sample_rate),
            });
        }

        Ok(Segmenter {
            config,
            sample_rate,
            frame_samples,
            limits,
            state: State::Silence,
            position: 0,
            previous_end: 0,
        })
    }

    /// Returns the configuration.
    pub fn config(&self) -> &SegmenterConfig {
        &self.config
    }

    /// Returns the sample rate that positions count in.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Returns the number of samples per frame.
    pub fn frame_samples(&self) -> u64 {
        self.frame_samples
    }

    /// Returns the end of the frames pushed so far, in samples.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Returns whether a segment is open.
    pub fn in_segment(&self) -> bool {
        matches!(self.state, State::Speech { .. })
    }

    /// Returns the first sample that a later event may still claim: audio
    /// before it belongs to the open segment (if any) or to no segment, and
    /// can be released.
    ///
    /// Outside a segment that is the pre-roll reach of the next possible onset.
    /// Inside one it is the end of the last speech frame, because the frames
    /// after it belong to the segment only if speech resumes.
    pub fn hold_from(&self) -> u64 {
        match self.state {
            State::Silence => self.position.saturating_sub(self.limits.pre_roll).max(self.previous_end),
            State::Onset { onset, .. } => onset.saturating_sub(self.limits.pre_roll).max(self.previous_end),
            State::Speech { last_speech_end, .. } => last_speech_end,
        }
    }

    /// Takes the probability of the next frame and appends the events it causes.
    ///
    /// A NaN probability counts as no speech.
    pub fn push(&mut self, probability: f32, events: &mut Vec<SegmentEvent>) {
        let frame_start = self.position;
        let frame_end = frame_start + self.frame_samples;
        self.position = frame_end;

        match self.state {
            State::Silence => {
                if probability >= self.config.threshold {
                    self.continue_onset(frame_start, self.frame_samples, frame_end, events);
                }
            }
            State::Onset { onset, speech } => {
                if probability >= self.config.neg_threshold {
                    self.continue_onset(onset, speech + self.frame_samples, frame_end, events);
                } else {
                    self.state = State::Silence;
                }
            }
            State::Speech { start, last_speech_end, silence } => {
                if probability >= self.config.neg_threshold {
                    self.continue_speech(start, last_speech_end, frame_start, frame_end, events);
                } else {
                    let silence = silence + self.frame_samples;
                    if silence >= self.limits.end_silence {
                        self.stop(last_speech_end, StopReason::Silence, events);
                    } else {
                        self.state = State::Speech { start, last_speech_end, silence };
                    }
                }
            }
        }
    }

    /// Closes an open segment at end of stream and drops an unconfirmed onset.
    pub fn finish(&mut self, events: &mut Vec<SegmentEvent>) {
        match self.state {
            State::Speech { last_speech_end, .. } => self.stop(last_speech_end, StopReason::EndOfStream, events),
            State::Onset { .. } => self.state = State::Silence,
            State::Silence => {}
        }
    }

    /// Forgets all state, for a new stream starting at position 0.
    pub fn reset(&mut self) {
        self.state = State::Silence;
        self.position = 0;
        self.previous_end = 0;
    }

    fn continue_onset(&mut self, onset: u64, speech: u64, frame_end: u64, events: &mut Vec<SegmentEvent>) {
        if speech < self.limits.min_speech {
            self.state = State::Onset { onset, speech };
            return;
        }
        let start = self.segment_start(onset);
        events.push(SegmentEvent::Started { start, onset, continuation: false });
        self.state = State::Speech { start, last_speech_end: frame_end, silence: 0 };
    }

    fn continue_speech(
        &mut self,
        start: u64,
        last_speech_end: u64,
        frame_start: u64,
        frame_end: u64,
        events: &mut Vec<SegmentEvent>,
    ) {
        if frame_end - start <= self.limits.max_segment {
            self.state = State::Speech { start, last_speech_end: frame_end, silence: 0 };
            return;
        }

        // This frame would make the segment too long: close it before the
        // frame and let the frame open the continuation.
        self.stop(last_speech_end, StopReason::MaxLength, events);
        let start = self.segment_start(frame_start);
        events.push(SegmentEvent::Started { start, onset: frame_start, continuation: true });
        self.state = State::Speech { start, last_speech_end: frame_end, silence: 0 };
    }

    fn stop(&mut self, end: u64, reason: StopReason, events: &mut Vec<SegmentEvent>) {
        events.push(SegmentEvent::Stopped { end, reason });
        self.previous_end = end;
        self.state = State::Silence;
    }

    fn segment_start(&self, onset: u64) -> u64 {
        onset.saturating_sub(self.limits.pre_roll).max(self.previous_end)
    }
}

/// Returns the whole number of samples in `duration`, rounded down.
fn samples_in(duration: Duration, sample_rate: u32) -> u64 {
    let samples = duration.as_nanos() * u128::from(sample_rate) / 1_000_000_000;
    u64::try_from(samples).unwrap_or(u64::MAX)
}

fn duration_of(samples: u64, sample_rate: u32) -> Duration {
    let nanos = u128::from(samples) * 1_000_000_000 / u128::from(sample_rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 ms frames at 1 kHz: one frame is 10 samples, one sample 1 ms, so
    /// positions read as milliseconds.
    const RATE: u32 = 1_000;
    const FRAME: usize = 10;

    fn config() -> SegmenterConfig {
        SegmenterConfig {
            threshold: 0.5,
            neg_threshold: 0.3,
            min_speech: Duration::from_millis(30),
            end_silence: Duration::from_millis(50),
            pre_roll: Duration::from_millis(20),
            max_segment: Duration::from_millis(1_000),
        }
    }

    fn segmenter(config: SegmenterConfig) -> Segmenter {
        match Segmenter::new(config, RATE, FRAME) {
            Ok(segmenter) => segmenter,
            Err(error) => panic!("test config rejected: {error}"),
        }
    }

    /// Runs a pattern of frames through a segmenter: `#` speech (1.0), `.`
    /// silence (0.0), `~` a probability between the two thresholds (0.4).
    fn run(segmenter: &mut Segmenter, pattern: &str) -> Vec<SegmentEvent> {
        let mut events = Vec::new();
        for symbol in pattern.chars() {
            let probability = match symbol {
                '#' => 1.0,
                '.' => 0.0,
                '~' => 0.4,
                other => panic!("unknown pattern symbol {other:?}"),
            };
            segmenter.push(probability, &mut events);
        }
        events
    }

    fn run_to_end(config: SegmenterConfig, pattern: &str) -> Vec<SegmentEvent> {
        let mut segmenter = segmenter(config);
        let mut events = run(&mut segmenter, pattern);
        segmenter.finish(&mut events);
        events
    }

    fn started(start: u64, onset: u64) -> SegmentEvent {
        SegmentEvent::Started { start, onset, continuation: false }
    }

    fn stopped(end: u64, reason: StopReason) -> SegmentEvent {
        SegmentEvent::Stopped { end, reason }
    }

    #[test]
    fn silence_gives_no_events() {
        assert_eq!(run_to_end(config(), &".".repeat(500)), vec![]);
    }

    #[test]
    fn speech_shorter_than_minimum_is_ignored() {
        // Two speech frames (20 ms) each time, below the 30 ms minimum.
        assert_eq!(run_to_end(config(), "..##....##....##.."), vec![]);
    }

    #[test]
    fn onset_interrupted_by_silence_restarts() {
        // ## . ### : the first run is too short, the second starts speech.
        let events = run_to_end(config(), "....##.###..........");
        assert_eq!(events, vec![started(50, 70), stopped(100, StopReason::Silence)]);
    }

    #[test]
    fn speech_starts_after_minimum_and_stops_after_silence() {
        let mut segmenter = segmenter(config());

        // Speech from frame 5 (50 ms); confirmed on its third frame.
        let events = run(&mut segmenter, ".....##");
        assert_eq!(events, vec![]);
        let events = run(&mut segmenter, "#");
        assert_eq!(events, vec![started(30, 50)]);

        // Four silent frames (40 ms) are below the 50 ms end silence.
        let events = run(&mut segmenter, "##....");
        assert_eq!(events, vec![]);
        assert!(segmenter.in_segment());

        // The fifth silent frame ends the segment at the last speech frame.
        let events = run(&mut segmenter, ".");
        assert_eq!(events, vec![stopped(100, StopReason::Silence)]);
        assert!(!segmenter.in_segment());
    }

    #[test]
    fn short_pause_keeps_one_segment() {
        let events = run_to_end(config(), "..#####....#####..........");
        assert_eq!(events, vec![started(0, 20), stopped(160, StopReason::Silence)]);
    }

    #[test]
    fn pre_roll_clamped_to_stream_start() {
        let events = run_to_end(config(), ".###......");
        assert_eq!(events, vec![started(0, 10), stopped(40, StopReason::Silence)]);
    }

    #[test]
    fn pre_roll_does_not_overlap_previous_segment() {
        let config = SegmenterConfig { pre_roll: Duration::from_millis(100), ..config() };
        // First segment 0..30 (frames 0-2), stops after 50 ms of silence at
        // 80; the next onset at 90 would reach back to -10 with its pre-roll,
        // so it starts at the previous end instead.
        let events = run_to_end(config, "###......###......");
        assert_eq!(
            events,
            vec![
                started(0, 0),
                stopped(30, StopReason::Silence),
                started(30, 90),
                stopped(120, StopReason::Silence),
            ]
        );
    }

    #[test]
    fn full_pre_roll_after_long_silence() {
        let events = run_to_end(config(), "###..........###......");
        assert_eq!(
            events,
            vec![
                started(0, 0),
                stopped(30, StopReason::Silence),
                started(110, 130),
                stopped(160, StopReason::Silence),
            ]
        );
    }

    #[test]
    fn hysteresis_keeps_speech_between_thresholds() {
        // `~` (0.4) is below the threshold but above the negative threshold.
        let events = run_to_end(config(), "###~~~~~~~~......");
        assert_eq!(events, vec![started(0, 0), stopped(110, StopReason::Silence)]);
    }

    #[test]
    fn probability_between_thresholds_does_not_start_speech() {
        assert_eq!(run_to_end(config(), "..~~~~~~~~~~~~.."), vec![]);
    }

    #[test]
    fn hysteresis_continues_an_onset() {
        // One frame over the threshold, then two between the thresholds: 30 ms of speech.
        let events = run_to_end(config(), "#~~......");
        assert_eq!(events, vec![started(0, 0), stopped(30, StopReason::Silence)]);
    }

    #[test]
    fn equal_thresholds_act_as_binary() {
        let config = SegmenterConfig { neg_threshold: 0.5, ..config() };
        let events = run_to_end(config, "###~.........");
        assert_eq!(events, vec![started(0, 0), stopped(30, StopReason::Silence)]);
    }

    #[test]
    fn nan_probability_counts_as_silence() {
        let mut segmenter = segmenter(config());
        let mut events = Vec::new();
        for _ in 0..10 {
            segmenter.push(f32::NAN, &mut events);
        }
        segmenter.finish(&mut events);
        assert_eq!(events, vec![]);
    }

    #[test]
    fn end_of_stream_closes_open_segment() {
        let events = run_to_end(config(), "..######..");
        assert_eq!(events, vec![started(0, 20), stopped(80, StopReason::EndOfStream)]);
        assert!(StopReason::EndOfStream.ends_turn());
    }

    #[test]
    fn end_of_stream_drops_unconfirmed_onset() {
        assert_eq!(run_to_end(config(), "....##"), vec![]);
    }

    #[test]
    fn long_speech_split_at_maximum() {
        let config = SegmenterConfig { max_segment: Duration::from_millis(100), ..config() };
        // Speech from 50 for 250 ms: segments [30, 130), [130, 230), [230, 300).
        let pattern = format!(".....{}......", "#".repeat(25));
        let events = run_to_end(config, &pattern);
        assert_eq!(
            events,
            vec![
                started(30, 50),
                stopped(130, StopReason::MaxLength),
                SegmentEvent::Started { start: 130, onset: 130, continuation: true },
                stopped(230, StopReason::MaxLength),
                SegmentEvent::Started { start: 230, onset: 230, continuation: true },
                stopped(300, StopReason::Silence),
            ]
        );
        assert!(!StopReason::MaxLength.ends_turn());
        assert!(StopReason::Silence.ends_turn());
    }

    #[test]
    fn split_after_pause_takes_pause_as_pre_roll() {
        let config = SegmenterConfig { max_segment: Duration::from_millis(100), ..config() };
        // Segment from 0; speech until 80, a 30 ms pause, speech again at 110
        // would reach 120 > 100, so the segment stops at 80 and the
        // continuation starts at max(110 - 20, 80) = 90.
        let events = run_to_end(config, "########...####.....");
        assert_eq!(
            events,
            vec![
                started(0, 0),
                stopped(80, StopReason::MaxLength),
                SegmentEvent::Started { start: 90, onset: 110, continuation: true },
                stopped(150, StopReason::Silence),
            ]
        );
    }

    #[test]
    fn segments_never_exceed_maximum() {
        let config = SegmenterConfig { max_segment: Duration::from_millis(70), ..config() };
        let pattern = "...##########..###.#.########...........#####################.....";
        let events = run_to_end(config, pattern);
        let mut open = None;
        for event in &events {
            match *event {
                SegmentEvent::Started { start, .. } => open = Some(start),
                SegmentEvent::Stopped { end, .. } => {
                    let Some(start) = open.take() else { panic!("stop without start in {events:?}") };
                    assert!(end - start <= 70, "segment {start}..{end} is longer than 70 in {events:?}");
                }
            }
        }
        assert_eq!(open, None);
    }

    #[test]
    fn hold_from_tracks_pre_roll_and_segment() {
        let mut segmenter = segmenter(config());
        run(&mut segmenter, "..........");
        // Silence up to 100: the next onset could reach back 20.
        assert_eq!(segmenter.hold_from(), 80);

        run(&mut segmenter, "##");
        // Onset at 100, not yet confirmed.
        assert_eq!(segmenter.hold_from(), 80);

        run(&mut segmenter, "#..");
        // In a segment whose last speech frame ends at 130.
        assert_eq!(segmenter.hold_from(), 130);

        run(&mut segmenter, "...");
        // Stopped at 130 after 50 ms of silence; position 180.
        assert_eq!(segmenter.hold_from(), 160);
    }

    #[test]
    fn hold_from_never_before_previous_end() {
        let config = SegmenterConfig { pre_roll: Duration::from_millis(100), ..config() };
        let mut segmenter = segmenter(config);
        run(&mut segmenter, "###.....");
        assert_eq!(segmenter.hold_from(), 30);
    }

    #[test]
    fn reset_repeats_results() {
        let pattern = "..####.....####......###.####..........";
        let mut segmenter = segmenter(config());
        let mut first = run(&mut segmenter, pattern);
        segmenter.finish(&mut first);
        segmenter.reset();
        assert_eq!(segmenter.position(), 0);
        let mut second = run(&mut segmenter, pattern);
        segmenter.finish(&mut second);
        assert_eq!(first, second);
        assert!(!first.is_empty());
    }

    #[test]
    fn zero_minimum_starts_on_first_speech_frame() {
        let config = SegmenterConfig { min_speech: Duration::ZERO, ..config() };
        let events = run_to_end(config, "...#......");
        assert_eq!(events, vec![started(10, 30), stopped(40, StopReason::Silence)]);
    }

    #[test]
    fn invalid_thresholds_rejected() {
        for (threshold, neg_threshold) in [(0.0, 0.0), (1.5, 0.5), (0.5, 0.6), (0.5, -0.1), (f32::NAN, 0.1)] {
            let config = SegmenterConfig { threshold, neg_threshold, ..config() };
            match Segmenter::new(config, RATE, FRAME) {
                Err(VadConfigError::InvalidThresholds { threshold: t, neg_threshold: n }) => {
                    assert_eq!(t.to_bits(), threshold.to_bits());
                    assert_eq!(n.to_bits(), neg_threshold.to_bits());
                }
                other => panic!("thresholds {threshold}/{neg_threshold} gave {other:?}"),
            }
        }
    }

    #[test]
    fn empty_frame_rejected() {
        let result = Segmenter::new(config(), RATE, 0);
        assert!(
            matches!(result, Err(VadConfigError::InvalidFrame { sample_rate: RATE, frame_samples: 0 })),
            "{result:?}"
        );
    }

    #[test]
    fn too_short_maximum_rejected() {
        // Pre-roll 20 + minimum speech 30 + one frame 10 = 60 ms.
        let too_short = SegmenterConfig { max_segment: Duration::from_millis(59), ..config() };
        match Segmenter::new(too_short, RATE, FRAME) {
            Err(VadConfigError::MaxSegmentTooShort { max_segment, minimum }) => {
                assert_eq!(max_segment, Duration::from_millis(59));
                assert_eq!(minimum, Duration::from_millis(60));
            }
            other => panic!("expected MaxSegmentTooShort, got {other:?}"),
        }
        let shortest = SegmenterConfig { max_segment: Duration::from_millis(60), ..config() };
        assert!(Segmenter::new(shortest, RATE, FRAME).is_ok());
    }
}
