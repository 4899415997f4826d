//! WAV files and headerless raw PCM: reading, writing and channel handling.
//!
//! The reader accepts RIFF/WAVE files with PCM (8-bit unsigned, 16, 24 and
//! 32-bit signed) or IEEE float (32 and 64-bit) samples, any channel count, and
//! the `WAVE_FORMAT_EXTENSIBLE` header. It reads from any [`std::io::Read`]
//! without seeking, so it also takes a pipe. Samples come out interleaved as
//! `f32` or `i16` in [`AudioData`] blocks. [`ChannelMode`] then keeps, downmixes
//! or splits the channels. The writer produces 16-bit PCM or 32-bit float files.
//!
//! Field layouts follow Microsoft's `WAVEFORMATEX` and `WAVEFORMATEXTENSIBLE`
//! structures (mmreg.h and ksmedia.h in the Windows SDK) and the RIFF chunk
//! rules (every chunk is followed by a pad byte when its size is odd).
//!
//! A data chunk shorter than its declared size is not an error by default: the
//! reader delivers every whole sample frame present and reports the missing
//! bytes as a [`Shortfall`]. [`Truncation::Error`] turns that into
//! [`WavError::TruncatedData`]. A trailing partial sample frame is never
//! delivered.

mod convert;
mod header;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub mod fuzzing;

use std::fmt;
use std::io;
use std::path::Path;

use mentis_pipeline::frame::AudioDataError;
use mentis_pipeline::{AudioData, AudioFormat, SampleFormat, StageError};

pub use convert::apply_channel_mode;
pub use header::WavHeader;
pub use reader::{PcmReader, Shortfall};
pub use writer::{WavWriter, write_chunk};

/// The highest sample rate accepted, in Hz: 768 kHz is the top rate of current
/// audio interfaces, so a header above it is corrupt rather than unusual.
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// The storage of one sample in a file. All encodings are little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcmEncoding {
    /// 8-bit unsigned integers, silence at 128.
    U8,
    /// 16-bit signed integers.
    I16,
    /// 24-bit signed integers packed in 3 bytes.
    I24,
    /// 32-bit signed integers.
    I32,
    /// 32-bit IEEE floats, nominally in [-1.0, 1.0].
    F32,
    /// 64-bit IEEE floats, nominally in [-1.0, 1.0].
    F64,
}

impl PcmEncoding {
    /// Returns the size of one sample in bytes.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            PcmEncoding::U8 => 1,
            PcmEncoding::I16 => 2,
            PcmEncoding::I24 => 3,
            PcmEncoding::I32 | PcmEncoding::F32 => 4,
            PcmEncoding::F64 => 8,
        }
    }

    /// Returns the size of one sample in bits, as a WAV header states it.
    pub const fn bits_per_sample(self) -> u16 {
        (self.bytes_per_sample() * 8) as u16
    }

    /// Returns whether the samples are IEEE floats.
    pub const fn is_float(self) -> bool {
        matches!(self, PcmEncoding::F32 | PcmEncoding::F64)
    }
}

impl fmt::Display for PcmEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PcmEncoding::U8 => "u8",
            PcmEncoding::I16 => "s16le",
            PcmEncoding::I24 => "s24le",
            PcmEncoding::I32 => "s32le",
            PcmEncoding::F32 => "f32le",
            PcmEncoding::F64 => "f64le",
        })
    }
}

/// The layout of PCM samples in a file: rate, channels and encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PcmSpec {
    /// Sample frames per second, in Hz.
    pub sample_rate: u32,
    /// Number of interleaved channels.
    pub channels: u16,
    /// The storage of each sample.
    pub encoding: PcmEncoding,
}

impl PcmSpec {
    /// Mono 16-bit little-endian PCM, the layout of most speech recordings.
    pub const fn mono_s16le(sample_rate: u32) -> Self {
        PcmSpec { sample_rate, channels: 1, encoding: PcmEncoding::I16 }
    }

    /// Returns the size of one sample frame (one sample per channel) in bytes.
    pub fn block_align(&self) -> usize {
        usize::from(self.channels) * self.encoding.bytes_per_sample()
    }

    /// Returns the pipeline format of samples read from this layout.
    pub fn audio_format(&self, sample_format: SampleFormat) -> AudioFormat {
        AudioFormat { sample_rate: self.sample_rate, channels: self.channels, sample_format }
    }

    /// Checks the channel count and sample rate, naming `file` in the error.
    pub(crate) fn validate(&self, file: &str) -> Result<(), WavError> {
        if self.channels == 0 {
            return Err(WavError::InvalidField {
                file: file.to_owned(),
                field: "channels",
                value: 0,
                expected: "at least 1".to_owned(),
            });
        }
        if !(1..=MAX_SAMPLE_RATE).contains(&self.sample_rate) {
            return Err(WavError::InvalidField {
                file: file.to_owned(),
                field: "sample rate",
                value: u64::from(self.sample_rate),
                expected: format!("a rate from 1 to {MAX_SAMPLE_RATE} Hz"),
            });
        }
        Ok(())
    }
}

impl fmt::Display for PcmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} Hz {} ch", self.encoding, self.sample_rate, self.channels)
    }
}

/// The treatment of the channels of multi-channel audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelMode {
    /// Keep every channel, interleaved as in the file.
    #[default]
    Keep,
    /// Average all channels into one mono channel.
    Downmix,
    /// Return one mono track per channel, in file order.
    Split,
}

/// The policy for data that ends before its declared size or inside a sample frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Deliver every whole sample frame present and report the missing bytes
    /// as a [`Shortfall`] (and one `warn` event).
    #[default]
    KeepWholeFrames,
    /// Return [`WavError::TruncatedData`] once the end of the file is reached.
    /// Blocks read before that point have already been delivered.
    Error,
}

/// Options of [`read_wav_file`], [`read_raw_file`] and [`read_wav`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// The sample storage of the returned audio.
    pub sample_format: SampleFormat,
    /// The treatment of multi-channel audio.
    pub channel_mode: ChannelMode,
    /// The policy for a data chunk cut short.
    pub truncation: Truncation,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            sample_format: SampleFormat::F32,
            channel_mode: ChannelMode::Keep,
            truncation: Truncation::KeepWholeFrames,
        }
    }
}

/// A whole file read into memory.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    /// The sample layout of the file.
    pub spec: PcmSpec,
    /// The parsed header, or `None` for raw PCM.
    pub header: Option<WavHeader>,
    /// One block with every channel for [`ChannelMode::Keep`], one mono block
    /// for [`ChannelMode::Downmix`], one mono block per channel for
    /// [`ChannelMode::Split`].
    pub tracks: Vec<AudioData>,
    /// The bytes the file lacked, when it ended early or mid-frame.
    pub shortfall: Option<Shortfall>,
}

/// An error reading or writing a WAV or raw PCM file. Every variant names the
/// file (or the stream name given to the reader).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// The file could not be opened or created.
    #[error("cannot open {file}: {source}; check the path and its permissions")]
    Open {
        /// The path.
        file: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing failed after the file was opened.
    #[error("{operation} {file} failed at byte {offset}: {source}")]
    Io {
        /// The path or stream name.
        file: String,
        /// `reading` or `writing`.
        operation: &'static str,
        /// Byte offset in the file where the operation failed.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with a RIFF/WAVE header.
    #[error(
        "{file} is not a WAV file: bytes {offset}..{} are {found:?} where {expected:?} is expected; \
         if it is headerless PCM, read it as raw audio with its format",
        offset + 4
    )]
    NotWav {
        /// The path or stream name.
        file: String,
        /// Byte offset of the unexpected four bytes.
        offset: u64,
        /// The four bytes found, printable characters kept and others escaped.
        found: String,
        /// The four bytes expected there.
        expected: &'static str,
    },
    /// The file is RF64 (a WAV variant for data over 4 GiB).
    #[error("{file} is an RF64 file, which is not supported; convert it to WAV or raw PCM")]
    Rf64 {
        /// The path or stream name.
        file: String,
    },
    /// The file ends inside the header.
    #[error("{file} is truncated: it ends at byte {offset}, inside the {field}")]
    TruncatedHeader {
        /// The path or stream name.
        file: String,
        /// The part of the header being read, such as `fmt chunk`.
        field: String,
        /// The byte offset where the file ends.
        offset: u64,
    },
    /// A required chunk is missing.
    #[error("{file} has no {chunk} chunk{}", if *chunk == "fmt" { " before its data chunk" } else { "" })]
    MissingChunk {
        /// The path or stream name.
        file: String,
        /// `fmt` or `data`.
        chunk: &'static str,
    },
    /// A header field has a value that cannot be right.
    #[error("{file}: {field} is {value}, expected {expected}")]
    InvalidField {
        /// The path or stream name.
        file: String,
        /// The field, such as `channels` or `block align`.
        field: &'static str,
        /// Its value in the file.
        value: u64,
        /// A description of the valid values.
        expected: String,
    },
    /// The format tag names an encoding this reader does not decode.
    #[error(
        "{file}: format tag {tag:#06x} is not supported; only PCM (0x0001), IEEE float (0x0003) \
         and extensible (0xfffe) are; convert the file, for example with `sox IN -e signed -b 16 OUT.wav`"
    )]
    UnsupportedFormatTag {
        /// The path or stream name.
        file: String,
        /// The format tag.
        tag: u16,
    },
    /// The SubFormat GUID of an extensible header names an unsupported encoding.
    #[error("{file}: SubFormat GUID {guid} is not supported; only PCM and IEEE float are")]
    UnsupportedSubFormat {
        /// The path or stream name.
        file: String,
        /// The GUID in its usual text form.
        guid: String,
    },
    /// The sample size is not one this reader decodes for the encoding.
    #[error("{file}: {bits} bits per sample is not supported for {kind} samples; expected {supported}")]
    UnsupportedBits {
        /// The path or stream name.
        file: String,
        /// `PCM` or `IEEE float`.
        kind: &'static str,
        /// The bits per sample in the header.
        bits: u16,
        /// The sizes that are supported.
        supported: &'static str,
    },
    /// The data chunk is shorter than declared, and [`Truncation::Error`] was set.
    #[error("{file}: the data chunk declares {declared} bytes but only {actual} are present")]
    TruncatedData {
        /// The path or stream name.
        file: String,
        /// The size in the chunk header.
        declared: u64,
        /// The bytes present.
        actual: u64,
    },
    /// The data ends inside a sample frame, and [`Truncation::Error`] was set.
    #[error("{file}: the data ends with {bytes} bytes of a partial sample frame of {block_align} bytes")]
    PartialFrame {
        /// The path or stream name.
        file: String,
        /// The bytes after the last whole frame.
        bytes: u64,
        /// The size of a whole sample frame.
        block_align: usize,
    },
    /// Audio given to the writer does not match the file's format.
    #[error("{file}: cannot write {actual} audio into a WAV file of {expected}; resample or remix it first")]
    FormatMismatch {
        /// The path or stream name.
        file: String,
        /// The file's format.
        expected: AudioFormat,
        /// The format of the rejected audio.
        actual: AudioFormat,
    },
    /// Samples given to the writer do not fill whole sample frames.
    #[error("{file}: {samples} samples do not split into frames of {channels} channels")]
    PartialWrite {
        /// The path or stream name.
        file: String,
        /// The number of samples passed.
        samples: usize,
        /// The file's channel count.
        channels: u16,
    },
    /// The data chunk would exceed the 4 GiB limit of the RIFF size fields.
    #[error("{file}: the data chunk would reach {bytes} bytes, over the 4 GiB limit of WAV; split the recording")]
    TooLarge {
        /// The path or stream name.
        file: String,
        /// The data size that was rejected.
        bytes: u64,
    },
    /// Decoded samples could not be wrapped as pipeline audio.
    #[error("{file}: {source}")]
    Audio {
        /// The path or stream name.
        file: String,
        /// The reason the samples were rejected.
        #[source]
        source: AudioDataError,
    },
}

impl WavError {
    /// Returns whether the error comes from the operating system (a missing
    /// file, a failed read) rather than from the file's contents.
    pub fn is_io(&self) -> bool {
        matches!(self, WavError::Open { .. } | WavError::Io { .. })
    }
}

impl From<WavError> for StageError {
    fn from(error: WavError) -> Self {
        // A wrong file or format is a configuration problem, because the next
        // try would repeat it. A failed read or write of an open file is fatal.
        let message = error.to_string();
        match error {
            WavError::Io { .. } => StageError::fatal(message).with_source(error),
            _ => StageError::config(message).with_source(error),
        }
    }
}

/// Opens a WAV file for streaming reads; the header is parsed here.
pub fn open_wav(path: impl AsRef<Path>) -> Result<PcmReader<io::BufReader<std::fs::File>>, WavError> {
    let path = path.as_ref();
    let file = open_file(path)?;
    PcmReader::wav(io::BufReader::new(file), path.display().to_string())
}

/// Opens a headerless little-endian PCM file with the given layout.
pub fn open_raw(path: impl AsRef<Path>, spec: PcmSpec) -> Result<PcmReader<io::BufReader<std::fs::File>>, WavError> {
    let path = path.as_ref();
    let file = open_file(path)?;
    PcmReader::raw(io::BufReader::new(file), path.display().to_string(), spec)
}

/// Reads a whole WAV file.
pub fn read_wav_file(path: impl AsRef<Path>, options: &ReadOptions) -> Result<DecodedAudio, WavError> {
    let reader = open_wav(path)?.with_truncation(options.truncation);
    read_to_end(reader, options)
}

/// Reads a whole headerless PCM file with the given layout.
pub fn read_raw_file(path: impl AsRef<Path>, spec: PcmSpec, options: &ReadOptions) -> Result<DecodedAudio, WavError> {
    let reader = open_raw(path, spec)?.with_truncation(options.truncation);
    read_to_end(reader, options)
}

/// Reads a whole WAV stream, such as a byte slice or a pipe; `name` stands for
/// the file in error messages.
pub fn read_wav<R: io::Read>(
    source: R,
    name: impl Into<String>,
    options: &ReadOptions,
) -> Result<DecodedAudio, WavError> {
    let reader = PcmReader::wav(source, name.into())?.with_truncation(options.truncation);
    read_to_end(reader, options)
}

/// Sample frames decoded per read when a whole file is read. Keeps the byte
/// buffer at 64 Ki frames (128 KiB for mono 16-bit) while the samples grow.
const READ_BLOCK_FRAMES: usize = 64 * 1024;

fn read_to_end<R: io::Read>(mut reader: PcmReader<R>, options: &ReadOptions) -> Result<DecodedAudio, WavError> {
    let spec = reader.spec();
    let format = spec.audio_format(options.sample_format);
    let audio = match options.sample_format {
        SampleFormat::F32 => {
            let mut samples = Vec::new();
            while reader.read_f32(READ_BLOCK_FRAMES, &mut samples)? > 0 {}
            AudioData::from_f32(format.sample_rate, format.channels, samples)
        }
        SampleFormat::I16 => {
            let mut samples = Vec::new();
            while reader.read_i16(READ_BLOCK_FRAMES, &mut samples)? > 0 {}
            AudioData::from_i16(format.sample_rate, format.channels, samples)
        }
    }
    .map_err(|source| WavError::Audio { file: reader.name().to_owned(), source })?;

    let tracks = apply_channel_mode(options.channel_mode, &audio);
    Ok(DecodedAudio { spec, header: reader.header().cloned(), tracks, shortfall: reader.shortfall() })
}

fn open_file(path: &Path) -> Result<std::fs::File, WavError> {
    std::fs::File::open(path).map_err(|source| WavError::Open { file: path.display().to_string(), source })
}
