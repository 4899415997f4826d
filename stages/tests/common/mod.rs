//! Helpers shared by the stage test suites. Each test binary includes this
//! module with `mod common;` and uses what it needs.

#![allow(dead_code)]

/// Pushes frames through one [`Processor`] outside a graph and collects what
/// it emits, and builds the audio that goes in.
pub mod harness {
    use std::sync::Arc;

    use mentis_pipeline::stage::{Emitter, Processor};
    use mentis_pipeline::{
        AudioData, AudioFormat, Control, Frame, FrameMeta, MediaTime, Payload, SampleFormat, Samples, SessionId,
        StageName, TurnId,
    };

    /// The session every harness frame belongs to.
    pub const SESSION: SessionId = SessionId(7);

    /// Block sizes, in sample frames, that every suite cuts its input into:
    /// single frames, small odd sizes, common 10 and 20 ms sizes, and one
    /// larger than any stage's internal chunk.
    pub const BLOCK_SIZES: [usize; 8] = [1, 7, 160, 333, 480, 960, 1_021, 4_096];

    /// Returns a valid stage name, for stages built in tests.
    pub fn stage_name(name: &str) -> StageName {
        StageName::new(name).unwrap_or_else(|error| panic!("{error}"))
    }

    /// A processor with the emitter the runtime would give it.
    #[derive(Debug)]
    pub struct Harness<P> {
        /// The processor under test.
        pub processor: P,
        emitter: Emitter<'static>,
    }

    impl<P: Processor> Harness<P> {
        /// Wraps a processor.
        pub fn new(processor: P) -> Self {
            Harness { processor, emitter: Emitter::new(SESSION) }
        }

        /// Passes one data frame to `process` and returns what it emitted.
        /// Panics when `process` fails, naming the frame.
        pub fn push(&mut self, frame: Frame) -> Vec<Frame> {
            let label = format!("{} frame at {:?}", frame.kind_name(), frame.meta.timestamp);
            if let Err(error) = self.processor.process(frame, &mut self.emitter) {
                panic!("process failed on the {label}: {error}");
            }
            self.emitter.drain().collect()
        }

        /// Pushes every frame in order and returns everything emitted.
        pub fn push_all(&mut self, frames: impl IntoIterator<Item = Frame>) -> Vec<Frame> {
            frames.into_iter().flat_map(|frame| self.push(frame)).collect()
        }

        /// Passes a control event to `control` and returns what it emitted.
        pub fn control(&mut self, control: Control) -> Vec<Frame> {
            let meta = FrameMeta::new(SESSION);
            if let Err(error) = self.processor.control(&control, &meta, &mut self.emitter) {
                panic!("control failed on {control:?}: {error}");
            }
            self.emitter.drain().collect()
        }

        /// Calls `finish`, as at end of stream, and returns what it emitted.
        pub fn finish(&mut self) -> Vec<Frame> {
            if let Err(error) = self.processor.finish(&mut self.emitter) {
                panic!("finish failed: {error}");
            }
            self.emitter.drain().collect()
        }

        /// Pushes the frames, then finishes: one whole session.
        pub fn run(&mut self, frames: impl IntoIterator<Item = Frame>) -> Vec<Frame> {
            let mut emitted = self.push_all(frames);
            emitted.extend(self.finish());
            emitted
        }
    }

    /// Returns a deterministic test signal of `frames` sample frames per channel at
    /// `sample_rate`, interleaved, peak below 0.9: three tones below 3.5 kHz
    /// (so every supported rate carries them), a different phase per channel,
    /// and a little seeded noise.
    pub fn test_signal(sample_rate: u32, channels: u16, frames: usize) -> Vec<f32> {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut samples = Vec::with_capacity(frames * usize::from(channels));
        for index in 0..frames {
            let time = index as f64 / f64::from(sample_rate);
            for channel in 0..channels {
                let phase = f64::from(channel) * 0.7;
                let tones = 0.3 * (std::f64::consts::TAU * 97.0 * time + phase).sin()
                    + 0.25 * (std::f64::consts::TAU * 733.0 * time).sin()
                    + 0.2 * (std::f64::consts::TAU * 2_411.0 * time + phase).sin();
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 11) as f64 / (1_u64 << 53) as f64 - 0.5;
                samples.push((tones + 0.02 * noise) as f32);
            }
        }
        samples
    }

    /// Wraps float samples as audio in `format`, converting them to 16-bit
    /// when `format` stores 16-bit samples.
    pub fn audio(format: AudioFormat, samples: &[f32]) -> AudioData {
        let samples = match format.sample_format {
            SampleFormat::F32 => Samples::F32(Arc::from(samples)),
            SampleFormat::I16 => {
                Samples::I16(samples.iter().map(|&sample| mentis_pipeline::frame::f32_to_i16(sample)).collect())
            }
        };
        AudioData::new(format, samples).unwrap_or_else(|error| panic!("test audio in {format}: {error}"))
    }

    /// Cuts interleaved `samples` into audio frames of `block` sample frames
    /// (the last one shorter), with contiguous timestamps from `start`, turn
    /// `turn`, and sequence numbers from 0.
    pub fn audio_blocks(
        format: AudioFormat,
        samples: &[f32],
        block: usize,
        start: MediaTime,
        turn: TurnId,
    ) -> Vec<Frame> {
        let channels = usize::from(format.channels);
        samples
            .chunks(block * channels)
            .scan(0_usize, |first_frame, chunk| {
                let timestamp = start.add(format.duration_of(*first_frame));
                *first_frame += chunk.len() / channels;
                Some((timestamp, chunk))
            })
            .enumerate()
            .map(|(seq, (timestamp, chunk))| {
                let meta = FrameMeta { session: SESSION, turn, seq: seq as u64, timestamp };
                Frame::audio(meta, audio(format, chunk))
            })
            .collect()
    }

    /// Returns `frames` with an empty audio frame before each one.
    pub fn with_empty_blocks(frames: Vec<Frame>) -> Vec<Frame> {
        let mut result = Vec::with_capacity(frames.len() * 2);
        for frame in frames {
            if let Payload::Audio(audio) = &frame.payload {
                result.push(Frame::audio(frame.meta, self::audio(audio.format(), &[])));
            }
            result.push(frame);
        }
        result
    }

    /// Returns the audio frames' samples, concatenated, as floats.
    pub fn samples_of(frames: &[Frame]) -> Vec<f32> {
        frames.iter().filter_map(Frame::as_audio).flat_map(AudioData::to_f32).collect()
    }

    /// Returns the number of sample frames (per channel) in the audio frames.
    pub fn sample_frames_of(frames: &[Frame]) -> usize {
        frames.iter().filter_map(Frame::as_audio).map(AudioData::frames).sum()
    }

    /// Panics unless each audio frame starts where the previous one ended,
    /// the first at `start`.
    pub fn assert_contiguous(label: &str, frames: &[Frame], start: MediaTime) {
        let mut frames_before = 0_u64;
        for (index, frame) in frames.iter().enumerate() {
            let Some(audio) = frame.as_audio() else {
                continue;
            };
            let expected = start.add(MediaTime::from_samples(frames_before, audio.format().sample_rate).as_duration());
            assert_eq!(
                frame.meta.timestamp,
                expected,
                "{label}: frame {index} does not start where frame {} ended",
                index.saturating_sub(1)
            );
            frames_before += audio.frames() as u64;
        }
    }

    /// Returns the largest absolute difference between two sample sequences
    /// over their common length.
    pub fn max_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }
}
