//! A sink stage that writes the audio it receives into a WAV file.
//!
//! [`WavSink`] appends every audio frame in arrival order, or, in timeline
//! mode, places each frame at its media timestamp and fills gaps with
//! silence, so that a reply recorded from a session lines up with the input
//! recording. The writes run on a dedicated blocking thread (the sink is a
//! [`Processor`] with [`Execution::Blocking`]).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mentis_pipeline::{
    AudioFormat, Emitter, Execution, Frame, MediaTime, PortFormat, Processor, ProcessorStage, SampleFormat, Stage,
    StageError, StageFuture, StageIo, StageName, StageSpec,
};

use crate::wav::{MAX_SAMPLE_RATE, WavError, WavWriter};

/// Settings of a [`WavSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkOptions {
    /// The one format the sink accepts. `None` accepts any audio
    /// ([`PortFormat::AnyAudio`]) and takes the rate and channel count of the
    /// first frame; later frames must match it.
    pub format: Option<AudioFormat>,
    /// The sample storage of the file: 16-bit PCM or 32-bit float. `None`
    /// uses the sample format of the input.
    pub file_sample_format: Option<SampleFormat>,
    /// Place each frame at its media timestamp instead of right after the
    /// previous one, writing silence into gaps.
    pub timeline: bool,
}

/// Live counters of a [`WavSink`], readable while the session runs and after it.
#[derive(Debug, Clone, Default)]
pub struct SinkCounters(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    frames: AtomicU64,
    sample_frames: AtomicU64,
    silence_frames: AtomicU64,
    overlapping_frames: AtomicU64,
    ignored_frames: AtomicU64,
    finished: AtomicBool,
}

impl SinkCounters {
    /// Returns the number of audio frames written.
    pub fn frames(&self) -> u64 {
        self.0.frames.load(Ordering::Relaxed)
    }

    /// Returns the number of sample frames in the file, silence included.
    pub fn sample_frames(&self) -> u64 {
        self.0.sample_frames.load(Ordering::Relaxed)
    }

    /// Returns the number of silent sample frames written into timeline gaps.
    pub fn silence_frames(&self) -> u64 {
        self.0.silence_frames.load(Ordering::Relaxed)
    }

    /// Returns the number of frames that, in timeline mode, started before the
    /// end of the audio already written. They are appended at the end instead,
    /// which shifts them later than their timestamps.
    pub fn overlapping_frames(&self) -> u64 {
        self.0.overlapping_frames.load(Ordering::Relaxed)
    }

    /// Returns the number of data frames that were not audio and were skipped.
    pub fn ignored_frames(&self) -> u64 {
        self.0.ignored_frames.load(Ordering::Relaxed)
    }

    /// Returns whether the file's header contains its final sizes.
    pub fn is_finished(&self) -> bool {
        self.0.finished.load(Ordering::Acquire)
    }
}

/// A sink stage that writes audio frames into a WAV file.
///
/// The header's sizes are filled in at end of stream. After a cancellation
/// they are filled in when the stage is dropped; if that fails, the sizes
/// still read as "until the end of the file" (0xFFFFFFFF).
///
/// NOTE: after a cancellation, `Session::wait` can return before that drop
/// has run, because the drop happens on the blocking thread after it has left
/// the session's task tracker. [`SinkCounters::is_finished`] reports when the
/// file is complete.
#[derive(Debug)]
pub struct WavSink {
    stage: ProcessorStage<SinkWriter>,
}

impl WavSink {
    /// Creates (or truncates) the file at `path` and returns the sink with its
    /// counters. With a known input format the header is written at once.
    pub fn create(
        name: StageName,
        path: impl AsRef<Path>,
        options: SinkOptions,
    ) -> Result<(WavSink, SinkCounters), WavError> {
        let writer = SinkWriter::create(name, path.as_ref(), options)?;
        let counters = writer.counters.clone();
        Ok((WavSink { stage: ProcessorStage::new(writer) }, counters))
    }
}

impl Stage for WavSink {
    fn spec(&self) -> StageSpec {
        self.stage.spec()
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        self.stage.run(io)
    }
}

fn file_format(input: AudioFormat, file_sample_format: Option<SampleFormat>) -> AudioFormat {
    AudioFormat { sample_format: file_sample_format.unwrap_or(input.sample_format), ..input }
}

struct SinkWriter {
    name: StageName,
    path: PathBuf,
    options: SinkOptions,
    /// The opened file, until the first frame gives its format.
    file: Option<BufWriter<File>>,
    writer: Option<WavWriter<BufWriter<File>>>,
    counters: SinkCounters,
    warned_overlap: bool,
    warned_non_audio: bool,
}

impl std::fmt::Debug for SinkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkWriter").field("name", &self.name).field("path", &self.path).finish_non_exhaustive()
    }
}

impl SinkWriter {
    fn create(name: StageName, path: &Path, options: SinkOptions) -> Result<Self, WavError> {
        let file_name = path.display().to_string();
        let file = File::create(path).map_err(|source| WavError::Open { file: file_name.clone(), source })?;
        let file = BufWriter::new(file);

        // With a known format the header goes out now; otherwise the first
        // frame decides it.
        let (file, writer) = match options.format {
            Some(format) => {
                let file_format = file_format(format, options.file_sample_format);
                (None, Some(WavWriter::new(file, file_name, file_format)?))
            }
            None => (Some(file), None),
        };
        Ok(SinkWriter {
            name,
            path: path.to_path_buf(),
            options,
            file,
            writer,
            counters: SinkCounters::default(),
            warned_overlap: false,
            warned_non_audio: false,
        })
    }

    /// Returns the writer, writing the header from `format` on first use.
    fn writer_for(&mut self, format: AudioFormat) -> Result<&mut WavWriter<BufWriter<File>>, WavError> {
        if self.writer.is_none() {
            let Some(file) = self.file.take() else {
                return Err(WavError::Io {
                    file: self.path.display().to_string(),
                    operation: "writing",
                    offset: 0,
                    source: std::io::Error::other("the file was closed by an earlier error"),
                });
            };
            let file_format = file_format(format, self.options.file_sample_format);
            let writer = WavWriter::new(file, self.path.display().to_string(), file_format)?;
            tracing::info!(stage = %self.name, file = %self.path.display(), format = %file_format, "writing WAV file");
            self.writer = Some(writer);
        }
        match self.writer.as_mut() {
            Some(writer) => Ok(writer),
            None => unreachable!("the writer was just created"),
        }
    }

    /// Returns the sample frame index where a frame stamped `timestamp` belongs.
    fn timeline_index(timestamp: MediaTime, sample_rate: u32) -> u64 {
        // Rounded to the nearest frame, so that back-to-back frames whose
        // timestamps were rounded down land exactly after each other.
        let index = (u128::from(timestamp.0) * u128::from(sample_rate) + 500_000_000) / 1_000_000_000;
        u64::try_from(index).unwrap_or(u64::MAX)
    }
}

/// The maximum gap timeline mode fills with silence, in seconds. A timestamp
/// further ahead than this is taken as a broken clock rather than a pause,
/// because filling it would write gigabytes of zeros.
const MAX_TIMELINE_GAP_SECONDS: u64 = 3600;

impl Processor for SinkWriter {
    fn spec(&self) -> StageSpec {
        let input = self.options.format.map_or(PortFormat::AnyAudio, PortFormat::Audio);
        StageSpec::new(self.name.clone(), input, PortFormat::None).with_execution(Execution::Blocking)
    }

    fn process(&mut self, frame: Frame, _out: &mut Emitter) -> Result<(), StageError> {
        let Some(audio) = frame.as_audio() else {
            self.counters.0.ignored_frames.fetch_add(1, Ordering::Relaxed);
            if !self.warned_non_audio {
                self.warned_non_audio = true;
                let kind = frame.kind_name();
                tracing::warn!(stage = %self.name, kind, "WAV sink skips frames that are not audio");
            }
            return Ok(());
        };
        let timeline = self.options.timeline;
        let format = audio.format();
        let writer = self.writer_for(format)?;

        // In timeline mode, fill the gap before the frame with silence. A
        // frame that starts inside audio already written goes at the end.
        let mut silence = 0;
        let mut overlapped = false;
        if timeline {
            let target = SinkWriter::timeline_index(frame.meta.timestamp, format.sample_rate);
            let written = writer.frames_written();
            let max_gap = MAX_TIMELINE_GAP_SECONDS * u64::from(format.sample_rate.min(MAX_SAMPLE_RATE));
            if target > written {
                silence = target - written;
                if silence > max_gap {
                    return Err(StageError::fatal(format!(
                        "WAV sink {}: a frame stamped {:?} would need {silence} sample frames of silence, \
                         more than {MAX_TIMELINE_GAP_SECONDS} s; check the timestamps of the upstream stage",
                        self.name,
                        frame.meta.timestamp.as_duration()
                    )));
                }
                writer.write_silence(silence)?;
            } else {
                overlapped = target < written;
            }
        }
        writer.write_audio(audio)?;
        let total = writer.frames_written();

        let counters = &self.counters.0;
        counters.frames.fetch_add(1, Ordering::Relaxed);
        counters.sample_frames.store(total, Ordering::Relaxed);
        counters.silence_frames.fetch_add(silence, Ordering::Relaxed);
        if overlapped {
            counters.overlapping_frames.fetch_add(1, Ordering::Relaxed);
            if !self.warned_overlap {
                self.warned_overlap = true;
                tracing::warn!(
                    stage = %self.name,
                    timestamp_ms = frame.meta.timestamp.as_duration().as_millis(),
                    "WAV sink got a frame that overlaps audio already written; appending it, later than its timestamp"
                );
            }
        }
        tracing::trace!(stage = %self.name, seq = frame.meta.seq, silence, "wrote audio frame");
        Ok(())
    }

    fn finish(&mut self, _out: &mut Emitter) -> Result<(), StageError> {
        let Some(writer) = self.writer.take() else {
            // No format was ever known, so there is no valid header to write.
            let file = self.path.display();
            tracing::warn!(stage = %self.name, %file, "no audio reached the WAV sink, so the file stays empty");
            return Ok(());
        };
        let frames = writer.frames_written();
        writer.finish()?;
        self.counters.0.finished.store(true, Ordering::Release);
        tracing::info!(stage = %self.name, file = %self.path.display(), frames, "WAV file finished");
        Ok(())
    }
}

impl Drop for SinkWriter {
    fn drop(&mut self) {
        // Reached with a writer only when the session was cancelled before end
        // of stream: fill in the sizes so that every tool reads the file.
        let Some(writer) = self.writer.take() else {
            return;
        };
        match writer.finish() {
            Ok(_) => {
                self.counters.0.finished.store(true, Ordering::Release);
                tracing::info!(stage = %self.name, file = %self.path.display(), "WAV file finished after cancellation");
            }
            Err(error) => {
                tracing::warn!(stage = %self.name, %error, "WAV sink could not finish its file after cancellation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mentis_pipeline::{AudioData, FrameMeta, SessionId};

    use super::*;
    use crate::wav::{ReadOptions, read_wav_file};

    fn audio_frame(seq: u64, samples: Vec<i16>) -> Frame {
        let meta = FrameMeta { seq, ..FrameMeta::new(SessionId(1)) };
        Frame::audio(meta, AudioData::from_i16(16_000, 1, samples).expect("valid audio"))
    }

    #[test]
    fn dropped_sink_finishes_file() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("cancelled.wav");
        let options = SinkOptions { file_sample_format: Some(SampleFormat::F32), ..SinkOptions::default() };
        let mut writer =
            SinkWriter::create(StageName::new("sink").expect("valid name"), &path, options).expect("create");
        let counters = writer.counters.clone();
        let mut emitter = Emitter::new(SessionId(1));
        writer.process(audio_frame(0, vec![16_384; 160]), &mut emitter).expect("write");
        writer.process(audio_frame(1, vec![-16_384; 160]), &mut emitter).expect("write");

        // Dropped without finish, as after a cancellation.
        drop(writer);
        assert!(counters.is_finished());
        let decoded = read_wav_file(&path, &ReadOptions::default()).expect("finished file");
        let header = decoded.header.as_ref().expect("WAV header");
        assert_eq!(header.data_size, Some(320 * 4));
        let samples = decoded.tracks[0].to_f32();
        assert_eq!(samples.len(), 320);
        assert!(samples[..160].iter().all(|&s| s == 0.5));
        assert!(samples[160..].iter().all(|&s| s == -0.5));
    }

    #[test]
    fn non_audio_frames_skipped() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("text.wav");
        let name = StageName::new("sink").expect("valid name");
        let options =
            SinkOptions { format: Some(mentis_pipeline::AudioFormat::mono_i16(16_000)), ..SinkOptions::default() };
        let mut writer = SinkWriter::create(name, &path, options).expect("create");
        let counters = writer.counters.clone();
        let mut emitter = Emitter::new(SessionId(1));
        let text = mentis_pipeline::TextDelta { text: "hello".to_owned(), last: true };
        let frame = Frame::new(FrameMeta::new(SessionId(1)), mentis_pipeline::Payload::Text(text));
        writer.process(frame, &mut emitter).expect("skipped");
        writer.finish(&mut emitter).expect("finish");
        assert_eq!(counters.ignored_frames(), 1);
        assert_eq!(counters.frames(), 0);
        assert!(counters.is_finished());
        let decoded = read_wav_file(&path, &ReadOptions::default()).expect("empty but valid file");
        assert_eq!(decoded.tracks[0].frames(), 0);
    }

    #[test]
    fn timeline_index_rounds_to_nearest() {
        // 441 frames at 44.1 kHz last exactly 10 ms; 1/3 ms at 48 kHz is 16 frames.
        assert_eq!(SinkWriter::timeline_index(MediaTime::from_samples(441, 44_100), 44_100), 441);
        assert_eq!(SinkWriter::timeline_index(MediaTime::from_samples(1, 44_100), 44_100), 1);
        assert_eq!(SinkWriter::timeline_index(MediaTime(333_333), 48_000), 16);
        assert_eq!(SinkWriter::timeline_index(MediaTime::ZERO, 16_000), 0);
    }
}
