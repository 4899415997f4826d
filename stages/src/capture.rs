//! A source stage that plays a WAV or raw PCM file into a pipeline.
//!
//! [`FileCapture`] cuts the file into blocks of a fixed duration (20 ms by
//! default) and emits them with media timestamps from the start of the file,
//! either as fast as the graph takes them or paced like a live microphone.
//! While the stage runs, file reads go to tokio's blocking pool, half a second
//! of audio at a time, so the stage's task does not wait on the disk.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Duration;

use mentis_pipeline::{
    AudioData, AudioFormat, Frame, MediaTime, PortFormat, SampleFormat, Samples, Stage, StageError, StageFuture,
    StageIo, StageName, StageSpec, TurnId,
};

use crate::wav::{self, ChannelMode, PcmReader, PcmSpec, Truncation, WavError};

/// The file a [`FileCapture`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureSource {
    /// A WAV file; its header gives the format.
    Wav(PathBuf),
    /// Headerless little-endian PCM in the given layout.
    Raw {
        /// The file.
        path: PathBuf,
        /// Its sample layout.
        spec: PcmSpec,
    },
}

/// The release schedule of the blocks of a [`FileCapture`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pacing {
    /// As fast as the graph accepts them: for batch processing and tests.
    #[default]
    AsFastAsPossible,
    /// Block `n` is released at the start time plus its media timestamp, on
    /// the tokio clock, as a live microphone would deliver it.
    RealTime,
}

/// Settings of a [`FileCapture`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureOptions {
    /// The duration of each emitted block. It is rounded down to whole sample
    /// frames, and the last block of the file may be shorter.
    pub block: Duration,
    /// The sample storage of the emitted audio.
    pub sample_format: SampleFormat,
    /// [`ChannelMode::Keep`] or [`ChannelMode::Downmix`]. A capture has one
    /// output, so [`ChannelMode::Split`] is rejected.
    pub channel_mode: ChannelMode,
    /// The release schedule of the blocks.
    pub pacing: Pacing,
    /// The policy for a file whose data chunk is shorter than declared.
    pub truncation: Truncation,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            block: Duration::from_millis(20),
            sample_format: SampleFormat::I16,
            channel_mode: ChannelMode::Keep,
            pacing: Pacing::AsFastAsPossible,
            truncation: Truncation::KeepWholeFrames,
        }
    }
}

/// An invalid capture configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The file cannot be opened or its header is invalid.
    #[error(transparent)]
    Wav(#[from] WavError),
    /// The block duration holds no whole sample frame at the file's rate.
    #[error("{file}: a block of {block:?} holds no sample frame at {sample_rate} Hz; use a block of at least {min:?}")]
    BlockTooShort {
        /// The file.
        file: String,
        /// The requested block duration.
        block: Duration,
        /// The file's sample rate.
        sample_rate: u32,
        /// The shortest block that holds one sample frame.
        min: Duration,
    },
    /// [`ChannelMode::Split`] was requested for a multi-channel file.
    #[error(
        "{file} has {channels} channels, and a capture stage has one output, so it cannot split them; \
         use ChannelMode::Keep or ChannelMode::Downmix"
    )]
    SplitUnsupported {
        /// The file.
        file: String,
        /// The file's channel count.
        channels: u16,
    },
}

impl From<CaptureError> for StageError {
    fn from(error: CaptureError) -> Self {
        match error {
            CaptureError::Wav(error) => error.into(),
            other => StageError::config(other.to_string()).with_source(other),
        }
    }
}

/// Audio read ahead per trip to the blocking pool, before rounding to whole
/// blocks: enough to keep the thread hops rare, small enough to hold in memory.
const READ_AHEAD: Duration = Duration::from_millis(500);

/// A source stage that emits the audio of a file as fixed-duration blocks.
///
/// Blocks carry media timestamps counted from the first sample of the file,
/// sequence numbers from 0, and [`TurnId::NONE`]. After the last block the
/// stage returns, and the runtime sends end of stream.
#[derive(Debug)]
pub struct FileCapture {
    name: StageName,
    reader: Option<PcmReader<BufReader<File>>>,
    format: AudioFormat,
    block_frames: usize,
    options: CaptureOptions,
}

impl FileCapture {
    /// Opens the file and parses its header, so that format errors surface
    /// before the pipeline is built.
    pub fn open(name: StageName, source: CaptureSource, options: CaptureOptions) -> Result<Self, CaptureError> {
        let reader = match &source {
            CaptureSource::Wav(path) => wav::open_wav(path)?,
            CaptureSource::Raw { path, spec } => wav::open_raw(path, *spec)?,
        };
        let reader = reader.with_truncation(options.truncation);
        let spec = reader.spec();

        // The output format follows the channel mode.
        let channels = match options.channel_mode {
            ChannelMode::Keep => spec.channels,
            ChannelMode::Downmix => 1,
            ChannelMode::Split if spec.channels == 1 => 1,
            ChannelMode::Split => {
                return Err(CaptureError::SplitUnsupported { file: reader.name().to_owned(), channels: spec.channels });
            }
        };
        let format = AudioFormat { sample_rate: spec.sample_rate, channels, sample_format: options.sample_format };

        let block_frames = format.frames_in(options.block);
        if block_frames == 0 {
            return Err(CaptureError::BlockTooShort {
                file: reader.name().to_owned(),
                block: options.block,
                sample_rate: spec.sample_rate,
                min: format.duration_of(1),
            });
        }
        Ok(FileCapture { name, reader: Some(reader), format, block_frames, options })
    }

    /// Returns the format of the emitted audio.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Returns the number of sample frames per block.
    pub fn block_frames(&self) -> usize {
        self.block_frames
    }
}

impl Stage for FileCapture {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::None, PortFormat::Audio(self.format))
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let Some(mut reader) = self.reader.take() else {
                return Err(StageError::fatal(format!("file capture {} has already played its file", self.name)));
            };
            let blocks_per_chunk = (self.format.frames_in(READ_AHEAD) / self.block_frames).max(1);
            let chunk_frames = blocks_per_chunk * self.block_frames;
            let start = tokio::time::Instant::now();
            let mut position: u64 = 0;

            loop {
                // Read the next chunk on the blocking pool; the reader travels
                // there and back.
                let options = self.options;
                let (returned, chunk) = tokio::task::spawn_blocking(move || read_chunk(reader, chunk_frames, options))
                    .await
                    .map_err(|join_error| {
                        StageError::fatal(format!("the file read of the capture stage failed: {join_error}"))
                    })?;
                reader = returned;
                let Some(chunk) = chunk? else { break };

                // Cut it into blocks and release each at its media time.
                for block in split_blocks(&chunk, self.block_frames) {
                    let timestamp = MediaTime::from_samples(position, self.format.sample_rate);
                    if self.options.pacing == Pacing::RealTime {
                        tokio::time::sleep_until(start + timestamp.as_duration()).await;
                    }
                    position += block.frames() as u64;
                    let meta = io.outbox.next_meta(TurnId::NONE, timestamp);
                    tracing::trace!(seq = meta.seq, frames = block.frames(), "captured block");
                    io.outbox.send(Frame::audio(meta, block)).await?;
                }
                if reader.is_ended() {
                    break;
                }
            }

            tracing::info!(
                stage = %self.name,
                file = reader.name(),
                frames = position,
                duration_s = self.format.duration_of(usize::try_from(position).unwrap_or(usize::MAX)).as_secs_f64(),
                "file capture reached the end of its file"
            );
            Ok(())
        })
    }
}

/// Reads up to `frames` sample frames and applies the channel mode; `None` at
/// the end of the file. Runs on the blocking pool.
fn read_chunk(
    mut reader: PcmReader<BufReader<File>>,
    frames: usize,
    options: CaptureOptions,
) -> (PcmReader<BufReader<File>>, Result<Option<AudioData>, WavError>) {
    let result = read_whole_chunk(&mut reader, frames, options);
    (reader, result)
}

fn read_whole_chunk(
    reader: &mut PcmReader<BufReader<File>>,
    frames: usize,
    options: CaptureOptions,
) -> Result<Option<AudioData>, WavError> {
    // One read may return fewer frames than requested (it is capped at 1 MiB),
    // so keep reading until the chunk is full or the file ends.
    let spec = reader.spec();
    let format = spec.audio_format(options.sample_format);
    let mut read = 0;
    let audio = match options.sample_format {
        SampleFormat::F32 => {
            let mut samples = Vec::with_capacity(frames * usize::from(spec.channels));
            while read < frames {
                match reader.read_f32(frames - read, &mut samples)? {
                    0 => break,
                    count => read += count,
                }
            }
            AudioData::from_f32(format.sample_rate, format.channels, samples)
        }
        SampleFormat::I16 => {
            let mut samples = Vec::with_capacity(frames * usize::from(spec.channels));
            while read < frames {
                match reader.read_i16(frames - read, &mut samples)? {
                    0 => break,
                    count => read += count,
                }
            }
            AudioData::from_i16(format.sample_rate, format.channels, samples)
        }
    }
    .map_err(|source| WavError::Audio { file: reader.name().to_owned(), source })?;
    if read == 0 {
        return Ok(None);
    }

    // Keep and Downmix give one block; Split was rejected at open for
    // multi-channel files and is the identity for mono ones.
    let mut tracks = wav::apply_channel_mode(options.channel_mode, &audio);
    Ok(tracks.pop())
}

/// Cuts interleaved audio into blocks of `block_frames` sample frames; the
/// last block holds the rest.
fn split_blocks(audio: &AudioData, block_frames: usize) -> Vec<AudioData> {
    let format = audio.format();
    let block_samples = block_frames * usize::from(format.channels);
    let wrap = |samples: Samples| match AudioData::new(format, samples) {
        Ok(block) => block,
        // Whole frames of valid audio in the same format pass every check.
        Err(error) => unreachable!("a block of valid audio was rejected: {error}"),
    };
    match audio.samples() {
        Samples::I16(samples) => samples.chunks(block_samples).map(|block| wrap(Samples::I16(block.into()))).collect(),
        Samples::F32(samples) => samples.chunks(block_samples).map(|block| wrap(Samples::F32(block.into()))).collect(),
    }
}
