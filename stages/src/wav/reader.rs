//! Streaming reads of PCM sample frames from a WAV or raw source.

use std::io::Read;

use mentis_pipeline::{AudioData, SampleFormat};

use super::convert::{decode_f32, decode_i16};
use super::header::{self, CountingReader, WavHeader};
use super::{PcmSpec, Truncation, WavError};

/// The largest byte buffer one read fills, 1 MiB. A sample frame is at most
/// 524,280 bytes (65,535 channels of 8 bytes), so one frame always fits.
const MAX_READ_BYTES: usize = 1024 * 1024;

/// The bytes a source lacked when its data ended. Only whole sample frames are ever
/// delivered, so these bytes were not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// Bytes the data chunk declared beyond the end of the file. Zero for raw
    /// PCM and for WAV streams read to the end.
    pub missing_bytes: u64,
    /// Bytes after the last whole sample frame, which were dropped.
    pub partial_frame_bytes: u64,
}

/// Reads sample frames from a WAV file or headerless PCM, block by block.
///
/// Each read appends whole sample frames, interleaved, converted to `f32` in
/// [-1.0, 1.0] or to `i16`. Reads after the end return 0 frames.
#[derive(Debug)]
pub struct PcmReader<R> {
    source: CountingReader<R>,
    name: String,
    spec: PcmSpec,
    header: Option<WavHeader>,
    /// Data bytes still expected, or `None` to read to the end of the input.
    remaining: Option<u64>,
    truncation: Truncation,
    bytes: Vec<u8>,
    frames_read: u64,
    shortfall: Option<Shortfall>,
    ended: bool,
}

impl<R: Read> PcmReader<R> {
    /// Parses the WAV header of `source`; `name` stands for it in errors.
    pub fn wav(source: R, name: impl Into<String>) -> Result<Self, WavError> {
        let name = name.into();
        let mut source = CountingReader::new(source);
        let header = header::parse(&mut source, &name)?;
        Ok(PcmReader {
            source,
            name,
            spec: header.spec,
            remaining: header.data_size,
            header: Some(header),
            truncation: Truncation::default(),
            bytes: Vec::new(),
            frames_read: 0,
            shortfall: None,
            ended: false,
        })
    }

    /// Reads headerless little-endian PCM with the given layout until the
    /// input ends; `name` stands for it in errors.
    pub fn raw(source: R, name: impl Into<String>, spec: PcmSpec) -> Result<Self, WavError> {
        let name = name.into();
        spec.validate(&name)?;
        Ok(PcmReader {
            source: CountingReader::new(source),
            name,
            spec,
            header: None,
            remaining: None,
            truncation: Truncation::default(),
            bytes: Vec::new(),
            frames_read: 0,
            shortfall: None,
            ended: false,
        })
    }

    /// Sets what happens when the data ends early or mid-frame.
    #[must_use]
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        self
    }

    /// Returns the sample layout of the source.
    pub fn spec(&self) -> PcmSpec {
        self.spec
    }

    /// Returns the parsed WAV header, or `None` for raw PCM.
    pub fn header(&self) -> Option<&WavHeader> {
        self.header.as_ref()
    }

    /// Returns the name used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the number of sample frames delivered so far.
    pub fn frames_read(&self) -> u64 {
        self.frames_read
    }

    /// Returns what the data lacked, once the end has been reached.
    pub fn shortfall(&self) -> Option<Shortfall> {
        self.shortfall
    }

    /// Returns whether the end of the data has been reached.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Appends up to `max_frames` sample frames to `out` as floats; returns the
    /// number of frames appended, which is 0 only at the end. One call reads at
    /// most 1 MiB of data.
    pub fn read_f32(&mut self, max_frames: usize, out: &mut Vec<f32>) -> Result<usize, WavError> {
        let frames = self.read_bytes(max_frames)?;
        decode_f32(self.spec.encoding, &self.bytes, out);
        Ok(frames)
    }

    /// Appends up to `max_frames` sample frames to `out` as 16-bit integers;
    /// returns the number of frames appended, which is 0 only at the end. One
    /// call reads at most 1 MiB of data.
    pub fn read_i16(&mut self, max_frames: usize, out: &mut Vec<i16>) -> Result<usize, WavError> {
        let frames = self.read_bytes(max_frames)?;
        decode_i16(self.spec.encoding, &self.bytes, out);
        Ok(frames)
    }

    /// Reads up to `max_frames` sample frames as one block of audio; `None` at
    /// the end.
    pub fn read_audio(
        &mut self,
        max_frames: usize,
        sample_format: SampleFormat,
    ) -> Result<Option<AudioData>, WavError> {
        let format = self.spec.audio_format(sample_format);
        let audio = match sample_format {
            SampleFormat::F32 => {
                let mut samples = Vec::new();
                if self.read_f32(max_frames, &mut samples)? == 0 {
                    return Ok(None);
                }
                AudioData::from_f32(format.sample_rate, format.channels, samples)
            }
            SampleFormat::I16 => {
                let mut samples = Vec::new();
                if self.read_i16(max_frames, &mut samples)? == 0 {
                    return Ok(None);
                }
                AudioData::from_i16(format.sample_rate, format.channels, samples)
            }
        };
        audio.map(Some).map_err(|source| WavError::Audio { file: self.name.clone(), source })
    }

    /// Fills `self.bytes` with up to `max_frames` whole frames; returns their count.
    fn read_bytes(&mut self, max_frames: usize) -> Result<usize, WavError> {
        self.bytes.clear();
        if self.ended || max_frames == 0 {
            return Ok(0);
        }

        // Ask for whole frames, never past the declared end of the data, and
        // at most MAX_READ_BYTES per call.
        let block_align = self.spec.block_align();
        let frames_cap = (MAX_READ_BYTES / block_align).max(1);
        let mut requested = max_frames.min(frames_cap).saturating_mul(block_align) as u64;
        if let Some(remaining) = self.remaining {
            requested = requested.min(remaining);
        }
        let requested = usize::try_from(requested).unwrap_or(usize::MAX);
        let read = self.source.read_up_to(requested, &mut self.bytes).map_err(|error| WavError::Io {
            file: self.name.clone(),
            operation: "reading",
            offset: self.source.offset(),
            source: error,
        })?;
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining -= read as u64;
        }

        // A short read means the input ended; so does reaching the declared size.
        let input_ended = read < requested;
        let whole = read / block_align * block_align;
        self.bytes.truncate(whole);
        if input_ended || self.remaining == Some(0) {
            self.ended = true;
            let missing_bytes = if input_ended { self.remaining.unwrap_or(0) } else { 0 };
            let partial_frame_bytes = (read - whole) as u64;
            self.end_with(missing_bytes, partial_frame_bytes)?;
        }

        let frames = whole / block_align;
        self.frames_read += frames as u64;
        Ok(frames)
    }

    /// Records what the data lacked and applies the truncation policy.
    fn end_with(&mut self, missing_bytes: u64, partial_frame_bytes: u64) -> Result<(), WavError> {
        if missing_bytes == 0 && partial_frame_bytes == 0 {
            return Ok(());
        }
        self.shortfall = Some(Shortfall { missing_bytes, partial_frame_bytes });
        if self.truncation == Truncation::Error {
            if missing_bytes > 0 {
                let declared = self.header.as_ref().and_then(|header| header.data_size).unwrap_or(0);
                return Err(WavError::TruncatedData {
                    file: self.name.clone(),
                    declared,
                    actual: declared - missing_bytes,
                });
            }
            return Err(WavError::PartialFrame {
                file: self.name.clone(),
                bytes: partial_frame_bytes,
                block_align: self.spec.block_align(),
            });
        }
        tracing::warn!(
            file = %self.name,
            missing_bytes,
            partial_frame_bytes,
            "audio data ends early; delivering the whole sample frames present"
        );
        Ok(())
    }
}
