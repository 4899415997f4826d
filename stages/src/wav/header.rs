//! Parsing the RIFF/WAVE header up to the start of the audio data.

use std::io::{self, Read};

use super::{PcmEncoding, PcmSpec, WavError};

/// Format tags of `WAVEFORMATEX.wFormatTag` (mmreg.h).
const WAVE_FORMAT_PCM: u16 = 0x0001;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 0x0003;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// The last 14 bytes of the KSDATAFORMAT_SUBTYPE_* GUIDs (ksmedia.h), as
/// stored in a file. The first two bytes hold the format tag, little-endian:
/// 0x0001 for PCM and 0x0003 for IEEE float.
const SUBFORMAT_GUID_TAIL: [u8; 14] =
    [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71];

/// The size of `WAVEFORMAT` plus `wBitsPerSample`, the smallest valid fmt chunk.
const FMT_PCM_BYTES: u32 = 16;
/// The size of `WAVEFORMATEXTENSIBLE`.
const FMT_EXTENSIBLE_BYTES: u32 = 40;
/// The largest fmt chunk read. The supported encodings need at most 40 bytes,
/// and codec-specific extra bytes can make it longer. A size beyond this limit
/// is a corrupt header rather than a real format.
const MAX_FMT_BYTES: u32 = 4096;

/// A data chunk size that writers use when they cannot seek back to fill in
/// the real size, for example ffmpeg writing to a pipe.
const SIZE_UNKNOWN: u32 = 0xFFFF_FFFF;

/// The parsed header of a WAV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavHeader {
    /// The sample layout.
    pub spec: PcmSpec,
    /// The `wFormatTag` of the fmt chunk, such as 0x0001 (PCM) or 0xFFFE (extensible).
    pub format_tag: u16,
    /// Significant bits per sample. Only extensible headers make it smaller than
    /// the container size (20-bit audio in 24-bit samples, for example). The
    /// samples are left-aligned, so they decode like full-size ones.
    pub valid_bits: u16,
    /// The speaker positions of the channels, from an extensible header.
    pub channel_mask: Option<u32>,
    /// The data chunk size, or `None` when the header says "until the end of
    /// the file" (a size of 0 or 0xFFFFFFFF).
    pub data_size: Option<u64>,
    /// Byte offset of the first sample in the file.
    pub data_offset: u64,
}

/// A reader that counts the bytes taken from it, for error messages.
#[derive(Debug)]
pub(super) struct CountingReader<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> CountingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        CountingReader { inner, offset: 0 }
    }

    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// Fills `buf` unless the input ends first; returns the bytes read.
    pub(super) fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(read) => {
                    filled += read;
                    self.offset += read as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }

    /// Appends up to `limit` bytes to `buf`, fewer only when the input ends;
    /// returns the bytes read. The buffer grows as bytes arrive, so a large
    /// limit on a short input allocates little.
    pub(super) fn read_up_to(&mut self, limit: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
        let read = (&mut self.inner).take(limit as u64).read_to_end(buf)?;
        self.offset += read as u64;
        Ok(read)
    }

    /// Reads and discards up to `count` bytes; returns how many there were.
    fn skip(&mut self, count: u64) -> io::Result<u64> {
        let skipped = io::copy(&mut (&mut self.inner).take(count), &mut io::sink())?;
        self.offset += skipped;
        Ok(skipped)
    }
}

/// Parses the header of `source` and leaves it at the first sample.
pub(super) fn parse<R: Read>(source: &mut CountingReader<R>, file: &str) -> Result<WavHeader, WavError> {
    let parser = Parser { file };

    // RIFF header: "RIFF", the RIFF size, "WAVE". The RIFF size is not used:
    // the data chunk size bounds the audio, and streaming writers put
    // 0xFFFFFFFF here.
    let mut riff = [0_u8; 12];
    parser.read_exact(source, &mut riff, "RIFF header")?;
    if &riff[0..4] == b"RF64" {
        return Err(WavError::Rf64 { file: file.to_owned() });
    }
    parser.expect_tag(&riff[0..4], b"RIFF", 0)?;
    parser.expect_tag(&riff[8..12], b"WAVE", 8)?;

    // Chunks until "data". Unknown chunks (LIST, fact, cue, ...) are skipped
    // with their pad byte.
    let mut spec = None;
    loop {
        let mut chunk_header = [0_u8; 8];
        let chunk_start = source.offset();
        let read = source.fill(&mut chunk_header).map_err(|error| parser.io_error(source, error))?;
        if read == 0 {
            let chunk = if spec.is_none() { "fmt" } else { "data" };
            return Err(WavError::MissingChunk { file: file.to_owned(), chunk });
        }
        if read < chunk_header.len() {
            return Err(parser.truncated("chunk header".to_owned(), source.offset()));
        }
        let id = [chunk_header[0], chunk_header[1], chunk_header[2], chunk_header[3]];
        let size = u32::from_le_bytes([chunk_header[4], chunk_header[5], chunk_header[6], chunk_header[7]]);

        match &id {
            b"fmt " => {
                if spec.is_some() {
                    return Err(WavError::InvalidField {
                        file: file.to_owned(),
                        field: "fmt chunk count",
                        value: 2,
                        expected: "one fmt chunk".to_owned(),
                    });
                }
                spec = Some(parser.parse_fmt(source, size)?);
            }
            b"data" => {
                let Some((spec, format_tag, valid_bits, channel_mask)) = spec else {
                    return Err(WavError::MissingChunk { file: file.to_owned(), chunk: "fmt" });
                };
                let data_size = match size {
                    0 | SIZE_UNKNOWN => None,
                    size => Some(u64::from(size)),
                };
                return Ok(WavHeader {
                    spec,
                    format_tag,
                    valid_bits,
                    channel_mask,
                    data_size,
                    data_offset: source.offset(),
                });
            }
            _ => {
                let padded = u64::from(size) + u64::from(size & 1);
                let skipped = source.skip(padded).map_err(|error| parser.io_error(source, error))?;
                // A missing pad byte at the very end does not matter, but a
                // chunk cut short means the data chunk cannot follow.
                if skipped < u64::from(size) {
                    let field = format!("{} chunk at byte {chunk_start}", printable(&id));
                    return Err(parser.truncated(field, source.offset()));
                }
            }
        }
    }
}

struct Parser<'a> {
    file: &'a str,
}

/// The parts of the fmt chunk the reader keeps: layout, format tag, valid bits, channel mask.
type FmtChunk = (PcmSpec, u16, u16, Option<u32>);

impl Parser<'_> {
    fn parse_fmt<R: Read>(&self, source: &mut CountingReader<R>, size: u32) -> Result<FmtChunk, WavError> {
        // Read the whole chunk (bounded) and its pad byte.
        if !(FMT_PCM_BYTES..=MAX_FMT_BYTES).contains(&size) {
            return Err(self.invalid("fmt chunk size", size, format!("{FMT_PCM_BYTES} to {MAX_FMT_BYTES} bytes")));
        }
        let mut fmt = vec![0_u8; size as usize + (size & 1) as usize];
        let read = source.fill(&mut fmt).map_err(|error| self.io_error(source, error))?;
        if read < size as usize {
            return Err(self.truncated("fmt chunk".to_owned(), source.offset()));
        }

        // WAVEFORMATEX: wFormatTag, nChannels, nSamplesPerSec, nAvgBytesPerSec,
        // nBlockAlign, wBitsPerSample, then cbSize when the chunk has 18 bytes or more.
        let u16_at = |at: usize| u16::from_le_bytes([fmt[at], fmt[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([fmt[at], fmt[at + 1], fmt[at + 2], fmt[at + 3]]);
        let format_tag = u16_at(0);
        let channels = u16_at(2);
        let sample_rate = u32_at(4);
        let block_align = u16_at(12);
        let bits = u16_at(14);

        // WAVEFORMATEXTENSIBLE adds wValidBitsPerSample, dwChannelMask and the
        // SubFormat GUID, whose first two bytes are the real format tag.
        let (tag, valid_bits, channel_mask) = if format_tag == WAVE_FORMAT_EXTENSIBLE {
            if size < FMT_EXTENSIBLE_BYTES {
                return Err(self.invalid(
                    "fmt chunk size",
                    size,
                    format!("{FMT_EXTENSIBLE_BYTES} bytes or more for format tag 0xfffe (extensible)"),
                ));
            }
            let extension_size = u16_at(16);
            if extension_size < 22 {
                return Err(self.invalid(
                    "fmt cbSize",
                    extension_size,
                    "22 or more for format tag 0xfffe (extensible)",
                ));
            }
            let guid = &fmt[24..40];
            if guid[2..] != SUBFORMAT_GUID_TAIL {
                return Err(WavError::UnsupportedSubFormat { file: self.file.to_owned(), guid: guid_text(guid) });
            }
            let valid_bits = match u16_at(18) {
                0 => bits,
                valid => valid,
            };
            (u16_at(24), valid_bits, Some(u32_at(20)))
        } else {
            (format_tag, bits, None)
        };

        let encoding = match tag {
            WAVE_FORMAT_PCM => match bits {
                8 => PcmEncoding::U8,
                16 => PcmEncoding::I16,
                24 => PcmEncoding::I24,
                32 => PcmEncoding::I32,
                _ => return Err(self.unsupported_bits("PCM", bits, "8, 16, 24 or 32")),
            },
            WAVE_FORMAT_IEEE_FLOAT => match bits {
                32 => PcmEncoding::F32,
                64 => PcmEncoding::F64,
                _ => return Err(self.unsupported_bits("IEEE float", bits, "32 or 64")),
            },
            _ if format_tag == WAVE_FORMAT_EXTENSIBLE => {
                return Err(WavError::UnsupportedSubFormat {
                    file: self.file.to_owned(),
                    guid: guid_text(&fmt[24..40]),
                });
            }
            _ => return Err(WavError::UnsupportedFormatTag { file: self.file.to_owned(), tag }),
        };

        // The reader trusts the block align to frame the data, so it must match.
        // nAvgBytesPerSec is not checked: some writers get it wrong and no
        // reading depends on it.
        let spec = PcmSpec { sample_rate, channels, encoding };
        spec.validate(self.file)?;
        let expected_align = u64::from(channels) * encoding.bytes_per_sample() as u64;
        if u64::from(block_align) != expected_align {
            return Err(self.invalid(
                "block align",
                block_align,
                format!("{expected_align} ({channels} channels of {bits}-bit samples)"),
            ));
        }
        if valid_bits > bits {
            return Err(self.invalid(
                "valid bits per sample",
                valid_bits,
                format!("at most the {bits} bits per sample"),
            ));
        }
        Ok((spec, tag, valid_bits, channel_mask))
    }

    fn read_exact<R: Read>(&self, source: &mut CountingReader<R>, buf: &mut [u8], field: &str) -> Result<(), WavError> {
        let read = source.fill(buf).map_err(|error| self.io_error(source, error))?;
        if read < buf.len() {
            return Err(self.truncated(field.to_owned(), source.offset()));
        }
        Ok(())
    }

    fn expect_tag(&self, found: &[u8], expected: &'static [u8; 4], offset: u64) -> Result<(), WavError> {
        if found == expected {
            return Ok(());
        }
        Err(WavError::NotWav {
            file: self.file.to_owned(),
            offset,
            found: printable(found),
            expected: std::str::from_utf8(expected).unwrap_or("?"),
        })
    }

    fn invalid(&self, field: &'static str, value: impl Into<u64>, expected: impl Into<String>) -> WavError {
        WavError::InvalidField { file: self.file.to_owned(), field, value: value.into(), expected: expected.into() }
    }

    fn unsupported_bits(&self, kind: &'static str, bits: u16, supported: &'static str) -> WavError {
        WavError::UnsupportedBits { file: self.file.to_owned(), kind, bits, supported }
    }

    fn truncated(&self, field: String, offset: u64) -> WavError {
        WavError::TruncatedHeader { file: self.file.to_owned(), field, offset }
    }

    fn io_error<R>(&self, source: &CountingReader<R>, error: io::Error) -> WavError {
        WavError::Io { file: self.file.to_owned(), operation: "reading", offset: source.offset, source: error }
    }
}

/// Shows bytes as text, escaping those that are not printable ASCII.
fn printable(bytes: &[u8]) -> String {
    bytes.iter().flat_map(|&byte| std::ascii::escape_default(byte)).map(char::from).collect()
}

/// Formats a GUID stored in a file (Data1 to Data3 little-endian) in its
/// registry form, such as 00000001-0000-0010-8000-00aa00389b71.
fn guid_text(guid: &[u8]) -> String {
    if guid.len() != 16 {
        return format!("{guid:02x?}");
    }
    let data1 = u32::from_le_bytes([guid[0], guid[1], guid[2], guid[3]]);
    let data2 = u16::from_le_bytes([guid[4], guid[5]]);
    let data3 = u16::from_le_bytes([guid[6], guid[7]]);
    let tail: String = guid[10..].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{data1:08x}-{data2:04x}-{data3:04x}-{:02x}{:02x}-{tail}", guid[8], guid[9])
}
