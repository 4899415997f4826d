//! Writing 16-bit PCM and 32-bit float WAV files.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use mentis_pipeline::{AudioData, AudioFormat, SampleFormat, Samples};

use super::convert::{encode_f32, encode_i16};
use super::{MAX_SAMPLE_RATE, WavError};

/// The size that [`WavWriter`] writes into the RIFF and data size fields
/// until [`WavWriter::finish`] fills in the real ones. Readers take it as
/// "data runs to the end of the file", so a file whose writer never finished
/// (a crash, a killed process) still reads back.
const SIZE_UNTIL_FINISHED: u32 = 0xFFFF_FFFF;

/// Writes one RIFF chunk: its id, its size, the body, and a pad byte when the
/// size is odd, as RIFF requires.
pub fn write_chunk<W: Write>(out: &mut W, id: [u8; 4], body: &[u8]) -> io::Result<()> {
    let size = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a RIFF chunk body must be smaller than 4 GiB"))?;
    out.write_all(&id)?;
    out.write_all(&size.to_le_bytes())?;
    out.write_all(body)?;
    if size % 2 == 1 {
        out.write_all(&[0])?;
    }
    Ok(())
}

/// Writes a WAV file of 16-bit PCM (for [`SampleFormat::I16`]) or 32-bit IEEE
/// float (for [`SampleFormat::F32`]) samples.
///
/// The header goes out when the writer is made; [`WavWriter::finish`] seeks
/// back to fill in the sizes. Audio of the other sample format is converted;
/// audio of another rate or channel count is rejected.
#[derive(Debug)]
pub struct WavWriter<W: Write + Seek> {
    out: W,
    name: String,
    format: AudioFormat,
    /// Byte offset of the data chunk's size field.
    data_size_offset: u64,
    /// Byte offset of the fact chunk's sample count, for float files.
    fact_offset: Option<u64>,
    data_bytes: u64,
    bytes: Vec<u8>,
}

impl WavWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes its header.
    pub fn create(path: impl AsRef<Path>, format: AudioFormat) -> Result<Self, WavError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::create(path).map_err(|source| WavError::Open { file: name.clone(), source })?;
        WavWriter::new(BufWriter::new(file), name, format)
    }
}

impl<W: Write + Seek> WavWriter<W> {
    /// Writes the header of a file of `format` to `out`; `name` stands for it in errors.
    pub fn new(mut out: W, name: impl Into<String>, format: AudioFormat) -> Result<Self, WavError> {
        let name = name.into();
        if format.channels == 0 || !(1..=MAX_SAMPLE_RATE).contains(&format.sample_rate) {
            return Err(WavError::InvalidField {
                file: name,
                field: if format.channels == 0 { "channels" } else { "sample rate" },
                value: if format.channels == 0 { 0 } else { u64::from(format.sample_rate) },
                expected: format!("at least 1 channel and a rate from 1 to {MAX_SAMPLE_RATE} Hz"),
            });
        }

        let (format_tag, bytes_per_sample): (u16, u16) = match format.sample_format {
            SampleFormat::I16 => (0x0001, 2),
            SampleFormat::F32 => (0x0003, 4),
        };
        let block_align = u32::from(format.channels) * u32::from(bytes_per_sample);
        let Ok(block_align_field) = u16::try_from(block_align) else {
            return Err(WavError::InvalidField {
                file: name,
                field: "channels",
                value: u64::from(format.channels),
                expected: format!("at most {} channels of {}", u16::MAX / bytes_per_sample, format.sample_format),
            });
        };

        // WAVEFORMATEX fields. Float files carry cbSize = 0 and a fact chunk,
        // as the format requires for every encoding other than PCM.
        let mut fmt = Vec::with_capacity(18);
        fmt.extend_from_slice(&format_tag.to_le_bytes());
        fmt.extend_from_slice(&format.channels.to_le_bytes());
        fmt.extend_from_slice(&format.sample_rate.to_le_bytes());
        fmt.extend_from_slice(&(format.sample_rate.saturating_mul(block_align)).to_le_bytes());
        fmt.extend_from_slice(&block_align_field.to_le_bytes());
        fmt.extend_from_slice(&(bytes_per_sample * 8).to_le_bytes());
        if format.sample_format == SampleFormat::F32 {
            fmt.extend_from_slice(&0_u16.to_le_bytes());
        }

        let mut header = Vec::with_capacity(64);
        header.extend_from_slice(b"RIFF");
        header.extend_from_slice(&SIZE_UNTIL_FINISHED.to_le_bytes());
        header.extend_from_slice(b"WAVE");
        let chunk_error = |source| WavError::Io { file: name.clone(), operation: "writing", offset: 0, source };
        write_chunk(&mut header, *b"fmt ", &fmt).map_err(chunk_error)?;
        let mut fact_offset = None;
        if format.sample_format == SampleFormat::F32 {
            fact_offset = Some(header.len() as u64 + 8);
            write_chunk(&mut header, *b"fact", &0_u32.to_le_bytes()).map_err(chunk_error)?;
        }
        header.extend_from_slice(b"data");
        let data_size_offset = header.len() as u64;
        header.extend_from_slice(&SIZE_UNTIL_FINISHED.to_le_bytes());

        out.write_all(&header).map_err(|source| WavError::Io {
            file: name.clone(),
            operation: "writing",
            offset: 0,
            source,
        })?;
        Ok(WavWriter { out, name, format, data_size_offset, fact_offset, data_bytes: 0, bytes: Vec::new() })
    }

    /// Returns the format of the file.
    pub fn format(&self) -> AudioFormat {
        self.format
    }

    /// Returns the number of sample frames written.
    pub fn frames_written(&self) -> u64 {
        let frame_bytes = u64::from(self.format.channels) * self.bytes_per_sample();
        self.data_bytes / frame_bytes
    }

    /// Appends a block of audio, converting its sample format if needed.
    pub fn write_audio(&mut self, audio: &AudioData) -> Result<(), WavError> {
        let actual = audio.format();
        if actual.sample_rate != self.format.sample_rate || actual.channels != self.format.channels {
            return Err(WavError::FormatMismatch { file: self.name.clone(), expected: self.format, actual });
        }
        match audio.samples() {
            Samples::I16(samples) => self.write_i16(samples),
            Samples::F32(samples) => self.write_f32(samples),
        }
    }

    /// Appends interleaved 16-bit samples.
    pub fn write_i16(&mut self, samples: &[i16]) -> Result<(), WavError> {
        self.check_whole_frames(samples.len())?;
        self.bytes.clear();
        match self.format.sample_format {
            SampleFormat::I16 => encode_i16(samples, &mut self.bytes),
            SampleFormat::F32 => {
                let floats: Vec<f32> = samples.iter().map(|&sample| f32::from(sample) / 32_768.0).collect();
                encode_f32(&floats, &mut self.bytes);
            }
        }
        self.flush_bytes()
    }

    /// Appends interleaved float samples; values outside [-1.0, 1.0] are
    /// clamped when the file stores 16-bit samples.
    pub fn write_f32(&mut self, samples: &[f32]) -> Result<(), WavError> {
        self.check_whole_frames(samples.len())?;
        self.bytes.clear();
        match self.format.sample_format {
            SampleFormat::F32 => encode_f32(samples, &mut self.bytes),
            SampleFormat::I16 => {
                let integers: Vec<i16> =
                    samples.iter().map(|&sample| mentis_pipeline::frame::f32_to_i16(sample)).collect();
                encode_i16(&integers, &mut self.bytes);
            }
        }
        self.flush_bytes()
    }

    /// Appends `frames` sample frames of silence.
    pub fn write_silence(&mut self, frames: u64) -> Result<(), WavError> {
        // Zero bytes are silence in both 16-bit PCM and float. Written in
        // blocks so that a long gap needs no large buffer.
        const BLOCK_BYTES: u64 = 64 * 1024;
        let total = frames.saturating_mul(u64::from(self.format.channels) * self.bytes_per_sample());
        let mut left = total;
        while left > 0 {
            let now = left.min(BLOCK_BYTES);
            self.bytes.clear();
            self.bytes.resize(now as usize, 0);
            self.flush_bytes()?;
            left -= now;
        }
        Ok(())
    }

    /// Fills in the RIFF, data and fact sizes, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W, WavError> {
        let end = self.data_size_offset + 4 + self.data_bytes;
        let frames = self.frames_written();
        let riff_size = end - 8;
        let data_bytes = self.data_bytes;
        let data_size_offset = self.data_size_offset;
        let fact_offset = self.fact_offset;

        // Each size fits u32: flush_bytes rejects data that would not.
        let result = (|| -> io::Result<()> {
            self.out.seek(SeekFrom::Start(4))?;
            self.out.write_all(&(riff_size as u32).to_le_bytes())?;
            self.out.seek(SeekFrom::Start(data_size_offset))?;
            self.out.write_all(&(data_bytes as u32).to_le_bytes())?;
            if let Some(offset) = fact_offset {
                self.out.seek(SeekFrom::Start(offset))?;
                self.out.write_all(&(u32::try_from(frames).unwrap_or(u32::MAX)).to_le_bytes())?;
            }
            self.out.seek(SeekFrom::Start(end))?;
            self.out.flush()
        })();
        result.map_err(|source| WavError::Io { file: self.name.clone(), operation: "writing", offset: end, source })?;
        Ok(self.out)
    }

    fn bytes_per_sample(&self) -> u64 {
        match self.format.sample_format {
            SampleFormat::I16 => 2,
            SampleFormat::F32 => 4,
        }
    }

    fn check_whole_frames(&self, samples: usize) -> Result<(), WavError> {
        if !samples.is_multiple_of(usize::from(self.format.channels)) {
            return Err(WavError::PartialWrite { file: self.name.clone(), samples, channels: self.format.channels });
        }
        Ok(())
    }

    fn flush_bytes(&mut self) -> Result<(), WavError> {
        // The RIFF size (the file length minus 8) must stay below 0xFFFFFFFF,
        // which readers take as "unknown size"; the data size is smaller still.
        let new_total = self.data_bytes + self.bytes.len() as u64;
        if self.data_size_offset + 4 + new_total - 8 > u64::from(u32::MAX - 1) {
            return Err(WavError::TooLarge { file: self.name.clone(), bytes: new_total });
        }
        let offset = self.data_size_offset + 4 + self.data_bytes;
        self.out.write_all(&self.bytes).map_err(|source| WavError::Io {
            file: self.name.clone(),
            operation: "writing",
            offset,
            source,
        })?;
        self.data_bytes = new_total;
        Ok(())
    }
}
