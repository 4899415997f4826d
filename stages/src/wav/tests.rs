use std::io::Cursor;
use std::path::Path;

use mentis_pipeline::frame::f32_to_i16;
use mentis_pipeline::{AudioData, AudioFormat, SampleFormat};
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------
// Building test files
// ---------------------------------------------------------------------------

const TAG_PCM: u16 = 0x0001;
const TAG_FLOAT: u16 = 0x0003;
const TAG_EXTENSIBLE: u16 = 0xFFFE;

/// Builds the 16-byte fmt body: WAVEFORMAT plus the bits per sample.
fn fmt16(tag: u16, channels: u16, rate: u32, block_align: u16, bits: u16) -> Vec<u8> {
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&tag.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&rate.to_le_bytes());
    fmt.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
    fmt.extend_from_slice(&block_align.to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    fmt
}

/// Builds the 18-byte WAVEFORMATEX fmt body with `cbSize = 0`.
fn fmt18(tag: u16, channels: u16, rate: u32, block_align: u16, bits: u16) -> Vec<u8> {
    let mut fmt = fmt16(tag, channels, rate, block_align, bits);
    fmt.extend_from_slice(&0_u16.to_le_bytes());
    fmt
}

/// Builds the 40-byte WAVEFORMATEXTENSIBLE fmt body whose SubFormat GUID carries `subformat`.
fn fmt40(subformat: u16, channels: u16, rate: u32, bits: u16, valid_bits: u16, mask: u32) -> Vec<u8> {
    let block_align = channels * bits / 8;
    let mut fmt = fmt16(TAG_EXTENSIBLE, channels, rate, block_align, bits);
    fmt.extend_from_slice(&22_u16.to_le_bytes());
    fmt.extend_from_slice(&valid_bits.to_le_bytes());
    fmt.extend_from_slice(&mask.to_le_bytes());
    fmt.extend_from_slice(&subformat_guid(subformat));
    fmt
}

fn subformat_guid(tag: u16) -> [u8; 16] {
    let mut guid = [0_u8; 16];
    guid[0..2].copy_from_slice(&tag.to_le_bytes());
    guid[4..].copy_from_slice(&[0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71]);
    guid
}

/// Builds the plain (non-extensible) fmt body for `spec`.
fn plain_fmt(spec: PcmSpec) -> Vec<u8> {
    let tag = if spec.encoding.is_float() { TAG_FLOAT } else { TAG_PCM };
    fmt16(tag, spec.channels, spec.sample_rate, spec.block_align() as u16, spec.encoding.bits_per_sample())
}

fn extensible_fmt(spec: PcmSpec) -> Vec<u8> {
    let tag = if spec.encoding.is_float() { TAG_FLOAT } else { TAG_PCM };
    let bits = spec.encoding.bits_per_sample();
    fmt40(tag, spec.channels, spec.sample_rate, bits, bits, 0x3)
}

/// A WAV file: RIFF header, the `before` chunks, fmt, the `between` chunks,
/// then a data chunk whose size field is `data_size` (the real size if `None`).
struct WavBuilder {
    riff_size: Option<u32>,
    before: Vec<([u8; 4], Vec<u8>)>,
    fmt: Vec<u8>,
    between: Vec<([u8; 4], Vec<u8>)>,
    data_size: Option<u32>,
    data: Vec<u8>,
    after: Vec<([u8; 4], Vec<u8>)>,
}

impl WavBuilder {
    fn new(fmt: Vec<u8>, data: Vec<u8>) -> Self {
        WavBuilder { riff_size: None, before: vec![], fmt, between: vec![], data_size: None, data, after: vec![] }
    }

    fn build(&self) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        for (id, chunk) in &self.before {
            write_chunk(&mut body, *id, chunk).expect("writing to a Vec");
        }
        write_chunk(&mut body, *b"fmt ", &self.fmt).expect("writing to a Vec");
        for (id, chunk) in &self.between {
            write_chunk(&mut body, *id, chunk).expect("writing to a Vec");
        }
        body.extend_from_slice(b"data");
        body.extend_from_slice(&self.data_size.unwrap_or(self.data.len() as u32).to_le_bytes());
        body.extend_from_slice(&self.data);
        if self.data.len() % 2 == 1 && !self.after.is_empty() {
            body.push(0);
        }
        for (id, chunk) in &self.after {
            write_chunk(&mut body, *id, chunk).expect("writing to a Vec");
        }
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&self.riff_size.unwrap_or(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&body);
        file
    }
}

fn plain_wav(spec: PcmSpec, data: Vec<u8>) -> Vec<u8> {
    WavBuilder::new(plain_fmt(spec), data).build()
}

fn read_bytes(bytes: &[u8], options: &ReadOptions) -> Result<DecodedAudio, WavError> {
    read_wav(bytes, "test.wav", options)
}

fn f32_options() -> ReadOptions {
    ReadOptions::default()
}

fn i16_options() -> ReadOptions {
    ReadOptions { sample_format: SampleFormat::I16, ..ReadOptions::default() }
}

fn only_track(decoded: &DecodedAudio) -> &AudioData {
    assert_eq!(decoded.tracks.len(), 1, "expected one track");
    &decoded.tracks[0]
}

/// Sample values of each encoding, their encoded bytes, and the `f32` and
/// `i16` values the reader must produce for them.
struct EncodingCase {
    encoding: PcmEncoding,
    bytes: Vec<u8>,
    expected_f32: Vec<f32>,
    expected_i16: Vec<i16>,
}

fn encoding_cases() -> Vec<EncodingCase> {
    let mut cases = Vec::new();

    let u8_values: [u8; 6] = [128, 0, 255, 1, 200, 64];
    cases.push(EncodingCase {
        encoding: PcmEncoding::U8,
        bytes: u8_values.to_vec(),
        expected_f32: u8_values.iter().map(|&v| (f32::from(v) - 128.0) / 128.0).collect(),
        expected_i16: u8_values.iter().map(|&v| (i16::from(v) - 128) * 256).collect(),
    });

    let i16_values: [i16; 6] = [0, 1, -1, i16::MAX, i16::MIN, 1234];
    cases.push(EncodingCase {
        encoding: PcmEncoding::I16,
        bytes: i16_values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        expected_f32: i16_values.iter().map(|&v| f32::from(v) / 32_768.0).collect(),
        expected_i16: i16_values.to_vec(),
    });

    let i24_values: [i32; 6] = [0, 1, -1, 8_388_607, -8_388_608, 0x12_3456];
    cases.push(EncodingCase {
        encoding: PcmEncoding::I24,
        bytes: i24_values.iter().flat_map(|v| v.to_le_bytes()[0..3].to_vec()).collect(),
        expected_f32: i24_values.iter().map(|&v| v as f32 / 8_388_608.0).collect(),
        expected_i16: i24_values.iter().map(|&v| (v >> 8) as i16).collect(),
    });

    let i32_values: [i32; 6] = [0, 1, -1, i32::MAX, i32::MIN, 0x1234_5678];
    cases.push(EncodingCase {
        encoding: PcmEncoding::I32,
        bytes: i32_values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        expected_f32: i32_values.iter().map(|&v| (f64::from(v) / 2_147_483_648.0) as f32).collect(),
        expected_i16: i32_values.iter().map(|&v| (v >> 16) as i16).collect(),
    });

    let float_values: [f32; 6] = [0.0, 0.5, -0.5, 1.0, -1.0, 0.25];
    cases.push(EncodingCase {
        encoding: PcmEncoding::F32,
        bytes: float_values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        expected_f32: float_values.to_vec(),
        expected_i16: float_values.iter().map(|&v| f32_to_i16(v)).collect(),
    });
    cases.push(EncodingCase {
        encoding: PcmEncoding::F64,
        bytes: float_values.iter().flat_map(|&v| f64::from(v).to_le_bytes()).collect(),
        expected_f32: float_values.to_vec(),
        expected_i16: float_values.iter().map(|&v| f32_to_i16(v)).collect(),
    });
    cases
}

fn assert_samples(decoded_f32: &DecodedAudio, decoded_i16: &DecodedAudio, case: &EncodingCase, label: &str) {
    assert_eq!(only_track(decoded_f32).to_f32(), case.expected_f32, "{label}: f32 samples");
    assert_eq!(only_track(decoded_i16).to_i16(), case.expected_i16, "{label}: i16 samples");
}

// ---------------------------------------------------------------------------
// Encodings and header variants
// ---------------------------------------------------------------------------

#[test]
fn every_encoding_mono_and_stereo() {
    for case in encoding_cases() {
        for channels in [1_u16, 2, 3] {
            let spec = PcmSpec { sample_rate: 16_000, channels, encoding: case.encoding };
            // Six samples make 6, 3 and 2 frames.
            let file = plain_wav(spec, case.bytes.clone());
            let as_f32 = read_bytes(&file, &f32_options()).expect("valid file");
            let as_i16 = read_bytes(&file, &i16_options()).expect("valid file");
            let label = format!("{} x{channels}", case.encoding);
            assert_eq!(as_f32.spec, spec, "{label}: spec");
            assert_eq!(only_track(&as_f32).format(), spec.audio_format(SampleFormat::F32), "{label}: format");
            assert_eq!(only_track(&as_f32).frames(), 6 / usize::from(channels), "{label}: frames");
            assert_samples(&as_f32, &as_i16, &case, &label);
            assert_eq!(as_f32.shortfall, None, "{label}: shortfall");
        }
    }
}

#[test]
fn extensible_every_encoding() {
    for case in encoding_cases() {
        let spec = PcmSpec { sample_rate: 48_000, channels: 2, encoding: case.encoding };
        let file = WavBuilder::new(extensible_fmt(spec), case.bytes.clone()).build();
        let as_f32 = read_bytes(&file, &f32_options()).expect("valid extensible file");
        let as_i16 = read_bytes(&file, &i16_options()).expect("valid extensible file");
        let header = as_f32.header.as_ref().expect("WAV header");
        assert_eq!(header.spec, spec, "{}", case.encoding);
        assert_eq!(header.format_tag, if spec.encoding.is_float() { TAG_FLOAT } else { TAG_PCM });
        assert_eq!(header.channel_mask, Some(0x3));
        assert_samples(&as_f32, &as_i16, &case, &format!("extensible {}", case.encoding));
    }
}

#[test]
fn extensible_valid_bits_below_container() {
    // 20-bit audio in 24-bit containers is left-aligned: it decodes as 24-bit.
    let value: i32 = 0x007F_FFF0; // largest 20-bit value, shifted left by 4
    let bytes = value.to_le_bytes()[0..3].to_vec();
    let file = WavBuilder::new(fmt40(TAG_PCM, 1, 96_000, 24, 20, 0x4), bytes).build();
    let decoded = read_bytes(&file, &f32_options()).expect("valid 20-bit file");
    let header = decoded.header.as_ref().expect("WAV header");
    assert_eq!(header.valid_bits, 20);
    assert_eq!(only_track(&decoded).to_f32(), vec![value as f32 / 8_388_608.0]);
}

#[test]
fn fmt_chunk_sizes_16_18_40() {
    let spec = PcmSpec::mono_s16le(16_000);
    let data: Vec<u8> = [100_i16, -100, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut fmt40_plain = fmt18(TAG_PCM, 1, 16_000, 2, 16);
    fmt40_plain.extend_from_slice(&[0; 22]);
    for (label, fmt) in [
        ("16", plain_fmt(spec)),
        ("18", fmt18(TAG_PCM, 1, 16_000, 2, 16)),
        ("40 plain", fmt40_plain),
        ("40 extensible", extensible_fmt(spec)),
    ] {
        let file = WavBuilder::new(fmt, data.clone()).build();
        let decoded = read_bytes(&file, &i16_options()).unwrap_or_else(|error| panic!("fmt {label}: {error}"));
        assert_eq!(only_track(&decoded).to_i16(), vec![100, -100, 7], "fmt {label}");
    }
}

#[test]
fn float_fmt18_with_fact_chunk() {
    let spec = PcmSpec { sample_rate: 22_050, channels: 1, encoding: PcmEncoding::F32 };
    let mut builder = WavBuilder::new(
        fmt18(TAG_FLOAT, 1, 22_050, 4, 32),
        [0.5_f32, -0.25].iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    builder.between.push((*b"fact", 2_u32.to_le_bytes().to_vec()));
    let decoded = read_bytes(&builder.build(), &f32_options()).expect("float file with fact chunk");
    assert_eq!(decoded.spec, spec);
    assert_eq!(only_track(&decoded).to_f32(), vec![0.5, -0.25]);
}

// ---------------------------------------------------------------------------
// Chunks, padding and streaming sizes
// ---------------------------------------------------------------------------

/// Mono 16-bit samples whose bytes never look like a chunk id.
fn ramp_i16(frames: usize) -> (Vec<i16>, Vec<u8>) {
    let samples: Vec<i16> = (0..frames).map(|i| (i as i16).wrapping_mul(97)).collect();
    let bytes = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
    (samples, bytes)
}

#[test]
fn odd_list_chunk_and_pad_skipped() {
    let (samples, data) = ramp_i16(50);
    let mut builder = WavBuilder::new(plain_fmt(PcmSpec::mono_s16le(16_000)), data);
    // 17 bytes of 0x7F and a pad byte: if either reached the audio, the
    // samples would shift by one byte and contain 0x7F7F.
    builder.before.push((*b"JUNK", vec![0x7F; 3]));
    builder.between.push((*b"LIST", vec![0x7F; 17]));
    let file = builder.build();
    let pad_at = file.windows(4).position(|w| w == b"LIST").expect("LIST chunk") + 8 + 17;
    assert_eq!(file[pad_at], 0, "pad byte after the 17-byte chunk");
    assert_eq!(&file[pad_at + 1..pad_at + 5], b"data", "data chunk right after the pad byte");

    let decoded = read_bytes(&file, &i16_options()).expect("file with odd chunks");
    assert_eq!(only_track(&decoded).to_i16(), samples);
    assert_eq!(decoded.header.as_ref().map(|h| h.data_offset), Some(pad_at as u64 + 9));
}

#[test]
fn chunks_after_data_not_read() {
    let (samples, data) = ramp_i16(5);
    let mut builder = WavBuilder::new(plain_fmt(PcmSpec::mono_s16le(8_000)), data);
    builder.after.push((*b"LIST", b"INFOISFT\x05\0\0\0mentis\0".to_vec()));
    let decoded = read_bytes(&builder.build(), &i16_options()).expect("file with trailing chunk");
    assert_eq!(only_track(&decoded).to_i16(), samples);
}

#[test]
fn streaming_sizes_read_to_end() {
    let (samples, data) = ramp_i16(321);
    for (riff_size, data_size) in [
        (Some(0xFFFF_FFFF), Some(0xFFFF_FFFF)),
        (None, Some(0xFFFF_FFFF)),
        (None, Some(0)),
        (Some(0xFFFF_FFFF), None),
        (Some(0), Some(0)),
    ] {
        let mut builder = WavBuilder::new(plain_fmt(PcmSpec::mono_s16le(16_000)), data.clone());
        builder.riff_size = riff_size;
        builder.data_size = data_size;
        let decoded = read_bytes(&builder.build(), &i16_options()).expect("streamed file");
        let label = format!("riff {riff_size:?} data {data_size:?}");
        assert_eq!(only_track(&decoded).to_i16(), samples, "{label}");
        assert_eq!(decoded.shortfall, None, "{label}");
        let expected_size = if data_size.is_some() { None } else { Some(data.len() as u64) };
        assert_eq!(decoded.header.as_ref().and_then(|h| h.data_size), expected_size, "{label}");
    }
}

#[test]
fn streaming_size_drops_partial_frame() {
    // A stereo stream cut mid-frame: 3 whole frames and 2 bytes more.
    let spec = PcmSpec { sample_rate: 16_000, channels: 2, encoding: PcmEncoding::I16 };
    let mut builder = WavBuilder::new(plain_fmt(spec), vec![1; 14]);
    builder.data_size = Some(0xFFFF_FFFF);
    let decoded = read_bytes(&builder.build(), &i16_options()).expect("stream cut mid-frame");
    assert_eq!(only_track(&decoded).frames(), 3);
    assert_eq!(decoded.shortfall, Some(Shortfall { missing_bytes: 0, partial_frame_bytes: 2 }));
}

// ---------------------------------------------------------------------------
// Truncated data
// ---------------------------------------------------------------------------

#[test]
fn truncated_data_keeps_whole_frames() {
    let (samples, data) = ramp_i16(25);
    let mut builder = WavBuilder::new(plain_fmt(PcmSpec::mono_s16le(16_000)), data[..49].to_vec());
    builder.data_size = Some(100);
    let decoded = read_bytes(&builder.build(), &i16_options()).expect("lenient read");
    assert_eq!(only_track(&decoded).to_i16(), samples[..24].to_vec());
    assert_eq!(decoded.shortfall, Some(Shortfall { missing_bytes: 51, partial_frame_bytes: 1 }));
}

#[test]
fn truncated_data_strict_error() {
    let (_, data) = ramp_i16(25);
    let mut builder = WavBuilder::new(plain_fmt(PcmSpec::mono_s16le(16_000)), data[..50].to_vec());
    builder.data_size = Some(100);
    let options = ReadOptions { truncation: Truncation::Error, ..ReadOptions::default() };
    let error = read_bytes(&builder.build(), &options).expect_err("strict read of a short data chunk");
    assert!(matches!(error, WavError::TruncatedData { declared: 100, actual: 50, .. }), "{error:?}");
    assert!(error.to_string().contains("test.wav"), "{error}");
}

#[test]
fn odd_declared_size_drops_partial_frame() {
    let (samples, mut data) = ramp_i16(4);
    data.push(0x55);
    let decoded = read_bytes(&plain_wav(PcmSpec::mono_s16le(16_000), data), &i16_options()).expect("odd data size");
    assert_eq!(only_track(&decoded).to_i16(), samples);
    assert_eq!(decoded.shortfall, Some(Shortfall { missing_bytes: 0, partial_frame_bytes: 1 }));

    let strict = ReadOptions { truncation: Truncation::Error, ..i16_options() };
    let (_, mut data) = ramp_i16(4);
    data.push(0x55);
    let error = read_bytes(&plain_wav(PcmSpec::mono_s16le(16_000), data), &strict).expect_err("strict");
    assert!(matches!(error, WavError::PartialFrame { bytes: 1, block_align: 2, .. }), "{error:?}");
}

// ---------------------------------------------------------------------------
// Malformed headers
// ---------------------------------------------------------------------------

fn header_error(file: &[u8]) -> WavError {
    let error = read_bytes(file, &f32_options()).expect_err("malformed file");
    assert!(error.to_string().contains("test.wav"), "message names the file: {error}");
    error
}

#[test]
fn every_truncated_header_is_an_error() {
    let mut builder = WavBuilder::new(extensible_fmt(PcmSpec::mono_s16le(16_000)), vec![0; 8]);
    builder.before.push((*b"LIST", vec![1; 5]));
    let file = builder.build();
    let data_offset = file.len() - 8;
    for end in 0..data_offset {
        let error = header_error(&file[..end]);
        assert!(
            matches!(error, WavError::TruncatedHeader { .. } | WavError::MissingChunk { .. }),
            "prefix of {end} bytes: {error:?}"
        );
    }
    let error = header_error(&file[..6]);
    assert!(
        matches!(&error, WavError::TruncatedHeader { field, offset: 6, .. } if field == "RIFF header"),
        "{error:?}"
    );
}

#[test]
fn not_riff_or_not_wave() {
    let error = header_error(b"OggS\0\0\0\0WAVEfmt ");
    assert!(matches!(&error, WavError::NotWav { offset: 0, found, .. } if found == "OggS"), "{error:?}");
    let error = header_error(b"RIFF\x04\0\0\0AVI ");
    assert!(matches!(&error, WavError::NotWav { offset: 8, found, .. } if found == "AVI "), "{error:?}");
    let error = header_error(b"RF64\xff\xff\xff\xffWAVE");
    assert!(matches!(error, WavError::Rf64 { .. }), "{error:?}");
}

#[test]
fn invalid_fmt_fields() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero channels", fmt16(TAG_PCM, 0, 16_000, 0, 16), "channels"),
        ("rate 0", fmt16(TAG_PCM, 1, 0, 2, 16), "sample rate"),
        ("rate 768001", fmt16(TAG_PCM, 1, 768_001, 2, 16), "sample rate"),
        ("block align", fmt16(TAG_PCM, 2, 16_000, 2, 16), "block align"),
        ("fmt size 14", fmt16(TAG_PCM, 1, 16_000, 2, 16)[..14].to_vec(), "fmt chunk size"),
        ("extensible in 18 bytes", fmt18(TAG_EXTENSIBLE, 1, 16_000, 2, 16), "fmt chunk size"),
        ("valid bits", fmt40(TAG_PCM, 1, 16_000, 16, 24, 0), "valid bits per sample"),
    ];
    for (label, fmt, field) in cases {
        let error = header_error(&WavBuilder::new(fmt, vec![0; 4]).build());
        match &error {
            WavError::InvalidField { field: actual, .. } => assert_eq!(*actual, field, "{label}"),
            other => panic!("{label}: expected an invalid {field}, got {other:?}"),
        }
    }

    let mut extensible = fmt40(TAG_PCM, 1, 16_000, 16, 16, 0);
    extensible[16] = 10;
    let error = header_error(&WavBuilder::new(extensible, vec![0; 4]).build());
    assert!(matches!(error, WavError::InvalidField { field: "fmt cbSize", value: 10, .. }), "{error:?}");
}

#[test]
fn invalid_field_message_names_value() {
    let error = header_error(&WavBuilder::new(fmt16(TAG_PCM, 1, 900_000, 2, 16), vec![]).build());
    let message = error.to_string();
    assert!(message.contains("sample rate is 900000"), "{message}");
    assert!(message.contains("768000"), "{message}");
}

#[test]
fn unsupported_formats() {
    let error = header_error(&WavBuilder::new(fmt16(0x0055, 1, 16_000, 1, 0), vec![]).build());
    assert!(matches!(error, WavError::UnsupportedFormatTag { tag: 0x0055, .. }), "{error:?}");
    assert!(error.to_string().contains("0x0055"), "{error}");

    let error = header_error(&WavBuilder::new(fmt16(TAG_PCM, 1, 16_000, 2, 12), vec![]).build());
    assert!(matches!(error, WavError::UnsupportedBits { bits: 12, .. }), "{error:?}");
    let error = header_error(&WavBuilder::new(fmt16(TAG_FLOAT, 1, 16_000, 2, 16), vec![]).build());
    assert!(matches!(error, WavError::UnsupportedBits { bits: 16, kind: "IEEE float", .. }), "{error:?}");

    // An extensible header whose GUID is A-law (tag 6, known tail).
    let error = header_error(&WavBuilder::new(fmt40(0x0006, 1, 8_000, 8, 8, 0), vec![]).build());
    match &error {
        WavError::UnsupportedSubFormat { guid, .. } => assert_eq!(guid, "00000006-0000-0010-8000-00aa00389b71"),
        other => panic!("expected an unsupported GUID, got {other:?}"),
    }
    // A GUID of another family altogether.
    let mut fmt = fmt40(TAG_PCM, 1, 8_000, 8, 8, 0);
    fmt[24..40].copy_from_slice(&[0xAB; 16]);
    let error = header_error(&WavBuilder::new(fmt, vec![]).build());
    assert!(matches!(error, WavError::UnsupportedSubFormat { .. }), "{error:?}");
}

#[test]
fn missing_or_misplaced_chunks() {
    // data before fmt
    let mut file = b"RIFF\x24\0\0\0WAVE".to_vec();
    file.extend_from_slice(b"data\x02\0\0\0\0\0");
    let error = header_error(&file);
    assert!(matches!(error, WavError::MissingChunk { chunk: "fmt", .. }), "{error:?}");

    // fmt but no data
    let mut file = b"RIFF\x24\0\0\0WAVE".to_vec();
    write_chunk(&mut file, *b"fmt ", &plain_fmt(PcmSpec::mono_s16le(8_000))).expect("Vec write");
    let error = header_error(&file);
    assert!(matches!(error, WavError::MissingChunk { chunk: "data", .. }), "{error:?}");

    // two fmt chunks
    let mut builder = WavBuilder::new(plain_fmt(PcmSpec::mono_s16le(8_000)), vec![]);
    builder.between.push((*b"fmt ", plain_fmt(PcmSpec::mono_s16le(8_000))));
    let error = header_error(&builder.build());
    assert!(matches!(error, WavError::InvalidField { field: "fmt chunk count", .. }), "{error:?}");

    // a chunk that claims more bytes than the file has
    let mut file = b"RIFF\x24\0\0\0WAVE".to_vec();
    file.extend_from_slice(b"LIST\xff\0\0\0abc");
    let error = header_error(&file);
    assert!(matches!(&error, WavError::TruncatedHeader { field, .. } if field.starts_with("LIST chunk")), "{error:?}");
}

#[test]
fn huge_channel_count_reads_bounded() {
    // 8,191 channels of f64 is the largest block align a header can state.
    // The data runs to the end, so each read buffer is capped, not sized from the header.
    let spec = PcmSpec { sample_rate: 8_000, channels: 8_191, encoding: PcmEncoding::F64 };
    let mut builder = WavBuilder::new(plain_fmt(spec), vec![0; 8 * 8_191 * 2 + 3]);
    builder.data_size = Some(0xFFFF_FFFF);
    let decoded = read_bytes(&builder.build(), &f32_options()).expect("wide file");
    assert_eq!(only_track(&decoded).frames(), 2);
    assert_eq!(decoded.shortfall, Some(Shortfall { missing_bytes: 0, partial_frame_bytes: 3 }));
}

// ---------------------------------------------------------------------------
// Channel modes
// ---------------------------------------------------------------------------

#[test]
fn channel_modes_on_stereo() {
    let spec = PcmSpec { sample_rate: 16_000, channels: 2, encoding: PcmEncoding::I16 };
    let samples: [i16; 6] = [100, 300, -50, 51, 32_767, 32_767];
    let file = plain_wav(spec, samples.iter().flat_map(|v| v.to_le_bytes()).collect());

    let keep = read_bytes(&file, &ReadOptions { channel_mode: ChannelMode::Keep, ..i16_options() }).expect("keep");
    assert_eq!(only_track(&keep).format().channels, 2);
    assert_eq!(only_track(&keep).to_i16(), samples.to_vec());

    let downmix =
        read_bytes(&file, &ReadOptions { channel_mode: ChannelMode::Downmix, ..i16_options() }).expect("downmix");
    assert_eq!(only_track(&downmix).format().channels, 1);
    assert_eq!(only_track(&downmix).to_i16(), vec![200, 1, 32_767]);

    let split = read_bytes(&file, &ReadOptions { channel_mode: ChannelMode::Split, ..i16_options() }).expect("split");
    assert_eq!(split.tracks.len(), 2);
    assert_eq!(split.tracks[0].to_i16(), vec![100, -50, 32_767]);
    assert_eq!(split.tracks[1].to_i16(), vec![300, 51, 32_767]);
    assert!(split.tracks.iter().all(|track| track.format().channels == 1));

    let downmix_f32 =
        read_bytes(&file, &ReadOptions { channel_mode: ChannelMode::Downmix, ..f32_options() }).expect("downmix f32");
    let expected: Vec<f32> = [200.0_f32, 0.5, 32_767.0].iter().map(|v| v / 32_768.0).collect();
    for (actual, expected) in only_track(&downmix_f32).to_f32().iter().zip(&expected) {
        assert!((actual - expected).abs() < 1e-6, "{actual} vs {expected}");
    }
}

#[test]
fn channel_modes_keep_mono() {
    let mono = AudioData::from_f32(8_000, 1, vec![0.1_f32, 0.2]).expect("valid audio");
    for mode in [ChannelMode::Keep, ChannelMode::Downmix, ChannelMode::Split] {
        assert_eq!(apply_channel_mode(mode, &mono), vec![mono.clone()], "{mode:?}");
    }
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

fn write_to_vec(format: AudioFormat, blocks: &[AudioData]) -> Vec<u8> {
    let mut writer = WavWriter::new(Cursor::new(Vec::new()), "out.wav", format).expect("header");
    for block in blocks {
        writer.write_audio(block).expect("write");
    }
    writer.finish().expect("finish").into_inner()
}

#[test]
fn writer_i16_header_and_sizes() {
    let audio = AudioData::from_i16(16_000, 2, vec![1_i16, -1, 1000, -1000]).expect("valid audio");
    let bytes =
        write_to_vec(AudioFormat { channels: 2, ..AudioFormat::mono_i16(16_000) }, std::slice::from_ref(&audio));
    assert_eq!(bytes.len(), 44 + 8);
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]), 44);
    assert_eq!(&bytes[36..40], b"data");
    assert_eq!(u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]), 8);
    let header = fmt16(TAG_PCM, 2, 16_000, 4, 16);
    assert_eq!(&bytes[20..36], header.as_slice(), "fmt body");

    let decoded = read_bytes(&bytes, &i16_options()).expect("written file");
    assert_eq!(only_track(&decoded), &audio);
}

#[test]
fn writer_f32_fact_chunk() {
    let audio = AudioData::from_f32(48_000, 1, vec![0.5_f32, -0.5, 0.125]).expect("valid audio");
    let bytes = write_to_vec(AudioFormat::mono_f32(48_000), std::slice::from_ref(&audio));
    let fact = bytes.windows(4).position(|w| w == b"fact").expect("fact chunk");
    assert_eq!(u32::from_le_bytes([bytes[fact + 8], bytes[fact + 9], bytes[fact + 10], bytes[fact + 11]]), 3);
    let decoded = read_bytes(&bytes, &f32_options()).expect("written file");
    assert_eq!(only_track(&decoded), &audio);
    assert_eq!(decoded.header.as_ref().map(|h| h.format_tag), Some(TAG_FLOAT));
}

#[test]
fn writer_converts_sample_format() {
    let floats = AudioData::from_f32(8_000, 1, vec![0.5_f32, 2.0, -2.0]).expect("valid audio");
    let bytes = write_to_vec(AudioFormat::mono_i16(8_000), &[floats]);
    let decoded = read_bytes(&bytes, &i16_options()).expect("written file");
    assert_eq!(only_track(&decoded).to_i16(), vec![16_384, i16::MAX, i16::MIN]);

    let integers = AudioData::from_i16(8_000, 1, vec![16_384_i16, -32_768]).expect("valid audio");
    let bytes = write_to_vec(AudioFormat::mono_f32(8_000), &[integers]);
    let decoded = read_bytes(&bytes, &f32_options()).expect("written file");
    assert_eq!(only_track(&decoded).to_f32(), vec![0.5, -1.0]);
}

#[test]
fn writer_rejects_other_format() {
    let mut writer = WavWriter::new(Cursor::new(Vec::new()), "out.wav", AudioFormat::mono_i16(16_000)).expect("header");
    let stereo = AudioData::from_i16(16_000, 2, vec![0_i16; 4]).expect("valid audio");
    let error = writer.write_audio(&stereo).expect_err("stereo into mono");
    assert!(matches!(error, WavError::FormatMismatch { .. }), "{error:?}");
    let resampled = AudioData::from_i16(48_000, 1, vec![0_i16; 4]).expect("valid audio");
    let error = writer.write_audio(&resampled).expect_err("48 kHz into 16 kHz");
    assert!(error.to_string().contains("out.wav"), "{error}");

    let mut stereo_writer = WavWriter::new(
        Cursor::new(Vec::new()),
        "out.wav",
        AudioFormat { channels: 2, ..AudioFormat::mono_i16(16_000) },
    )
    .expect("header");
    let error = stereo_writer.write_i16(&[1, 2, 3]).expect_err("half a frame");
    assert!(matches!(error, WavError::PartialWrite { samples: 3, channels: 2, .. }), "{error:?}");

    let error = WavWriter::new(Cursor::new(Vec::new()), "out.wav", AudioFormat::mono_i16(1_000_000)).expect_err("rate");
    assert!(matches!(error, WavError::InvalidField { field: "sample rate", .. }), "{error:?}");
}

#[test]
fn writer_silence_and_count() {
    let mut writer =
        WavWriter::new(Cursor::new(Vec::new()), "out.wav", AudioFormat { channels: 2, ..AudioFormat::mono_f32(8_000) })
            .expect("header");
    writer.write_f32(&[0.5, 0.5]).expect("write");
    writer.write_silence(40_000).expect("silence");
    writer.write_f32(&[0.25, 0.25]).expect("write");
    assert_eq!(writer.frames_written(), 40_002);
    let bytes = writer.finish().expect("finish").into_inner();
    let decoded = read_bytes(&bytes, &f32_options()).expect("written file");
    let samples = only_track(&decoded).to_f32();
    assert_eq!(samples.len(), 80_004);
    assert_eq!(&samples[..2], &[0.5, 0.5]);
    assert!(samples[2..80_002].iter().all(|&s| s == 0.0));
    assert_eq!(&samples[80_002..], &[0.25, 0.25]);
}

#[test]
fn unfinished_writer_file_still_reads() {
    let mut bytes = Vec::new();
    let mut writer = WavWriter::new(Cursor::new(&mut bytes), "out.wav", AudioFormat::mono_i16(16_000)).expect("header");
    writer.write_i16(&[5, 6, 7]).expect("write");
    // Dropped without finish, as after a crash. The size fields still mean "to the end".
    drop(writer);
    let decoded = read_bytes(&bytes, &i16_options()).expect("unfinished file");
    assert_eq!(only_track(&decoded).to_i16(), vec![5, 6, 7]);
}

#[test]
fn write_chunk_pads_odd_size() {
    let mut out = Vec::new();
    write_chunk(&mut out, *b"LIST", &[9; 17]).expect("Vec write");
    assert_eq!(out.len(), 8 + 17 + 1);
    assert_eq!(&out[4..8], &17_u32.to_le_bytes());
    assert_eq!(out[25], 0);
    let mut even = Vec::new();
    write_chunk(&mut even, *b"JUNK", &[9; 4]).expect("Vec write");
    assert_eq!(even.len(), 12);
}

#[test]
fn writer_file_on_disk_round_trip() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("tone.wav");
    let audio =
        AudioData::from_i16(16_000, 1, (0..1600).map(|i| (i * 7) as i16).collect::<Vec<_>>()).expect("valid audio");
    let mut writer = WavWriter::create(&path, AudioFormat::mono_i16(16_000)).expect("create");
    writer.write_audio(&audio).expect("write");
    writer.finish().expect("finish");
    let decoded = read_wav_file(&path, &i16_options()).expect("read back");
    assert_eq!(only_track(&decoded), &audio);

    let missing = dir.path().join("missing.wav");
    let error = read_wav_file(&missing, &f32_options()).expect_err("missing file");
    assert!(matches!(error, WavError::Open { .. }), "{error:?}");
    assert!(error.is_io(), "{error:?}");
    assert!(error.to_string().contains("missing.wav"), "{error}");
}

// ---------------------------------------------------------------------------
// Raw PCM and real recordings
// ---------------------------------------------------------------------------

const TEST_DATA: &str = "/usr/share/pocketsphinx/test/data";

fn require_test_data(path: &Path) {
    assert!(path.exists(), "{} is missing: run scripts/setup (Debian package pocketsphinx-testdata)", path.display());
}

#[test]
fn raw_goforward_s16le() {
    let path = Path::new(TEST_DATA).join("goforward.raw");
    require_test_data(&path);
    let size = std::fs::metadata(&path).expect("metadata").len();
    let decoded = read_raw_file(&path, PcmSpec::mono_s16le(16_000), &i16_options()).expect("raw file");
    let track = only_track(&decoded);
    assert_eq!(track.frames() as u64, size / 2);
    assert_eq!(decoded.shortfall, None);
    // "go forward ten meters" lasts a few seconds and is not silent.
    let seconds = track.duration().as_secs_f64();
    assert!((1.0..10.0).contains(&seconds), "{seconds} s");
    assert!(track.to_i16().iter().any(|&s| s.unsigned_abs() > 3_000), "speech is audible");

    let bytes = std::fs::read(&path).expect("raw bytes");
    let expected: Vec<i16> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    assert_eq!(track.to_i16(), expected);
}

#[test]
fn raw_partial_frame_and_invalid_spec() {
    let spec = PcmSpec { sample_rate: 8_000, channels: 2, encoding: PcmEncoding::I16 };
    let reader = PcmReader::raw(&[1_u8, 0, 2, 0, 3][..], "cut.raw", spec).expect("valid spec");
    let mut reader = reader;
    let mut samples = Vec::new();
    assert_eq!(reader.read_i16(10, &mut samples).expect("read"), 1);
    assert_eq!(samples, vec![1, 2]);
    assert_eq!(reader.read_i16(10, &mut samples).expect("read after end"), 0);
    assert_eq!(reader.shortfall(), Some(Shortfall { missing_bytes: 0, partial_frame_bytes: 1 }));

    let error = PcmReader::raw(&[][..], "bad.raw", PcmSpec { channels: 0, ..spec }).expect_err("no channels");
    assert!(matches!(error, WavError::InvalidField { field: "channels", .. }), "{error:?}");
    let error = PcmReader::raw(&[][..], "bad.raw", PcmSpec { sample_rate: 0, ..spec }).expect_err("rate 0");
    assert!(error.to_string().contains("bad.raw"), "{error}");
}

/// Sample counts of the LibriVox clips as `soxi` (sox 14.4.2) reports them.
const LIBRIVOX_FRAMES: [(&str, usize); 5] = [
    ("sense_and_sensibility_01_austen_64kb-0870.wav", 113_600),
    ("sense_and_sensibility_01_austen_64kb-0880.wav", 47_840),
    ("sense_and_sensibility_01_austen_64kb-0890.wav", 84_800),
    ("sense_and_sensibility_01_austen_64kb-0920.wav", 96_800),
    ("sense_and_sensibility_01_austen_64kb-0930.wav", 52_640),
];

#[test]
fn librivox_recordings() {
    let folder = Path::new(TEST_DATA).join("librivox");
    require_test_data(&folder);
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .expect("librivox folder")
        .map(|entry| entry.expect("folder entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wav"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "expected five LibriVox clips, found {files:?}");

    for path in files {
        let name = path.display();
        let decoded = read_wav_file(&path, &i16_options()).unwrap_or_else(|error| panic!("{error}"));
        let header = decoded.header.as_ref().expect("WAV header");
        assert_eq!(decoded.spec, PcmSpec::mono_s16le(16_000), "{name}");
        assert_eq!(decoded.shortfall, None, "{name}");
        let track = only_track(&decoded);
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let expected_frames = LIBRIVOX_FRAMES.iter().find(|(clip, _)| *clip == file_name).map(|(_, frames)| *frames);
        assert_eq!(Some(track.frames()), expected_frames, "{name}: sample count");

        // The samples are the data chunk's bytes, whatever chunks precede it.
        let bytes = std::fs::read(&path).expect("file bytes");
        let start = header.data_offset as usize;
        let end = start + header.data_size.expect("declared size") as usize;
        let expected: Vec<i16> = bytes[start..end].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(track.to_i16(), expected, "{name}");

        // Streaming in 20 ms blocks gives the same samples.
        let mut reader = open_wav(&path).expect("open");
        let mut streamed = Vec::new();
        while reader.read_i16(320, &mut streamed).expect("read") > 0 {}
        assert_eq!(streamed, expected, "{name}: streamed");
    }
}

#[test]
fn fuzz_seed_files_read() {
    // The seed corpus of the wav_reader fuzz target must stay valid, or the
    // fuzzer starts from inputs that stop at the header.
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wav_reader");
    let mut paths: Vec<_> =
        std::fs::read_dir(&folder).expect("seed folder").map(|entry| entry.expect("folder entry").path()).collect();
    paths.sort();
    assert!(paths.len() >= 6, "expected the seed files in {}", folder.display());
    for path in paths {
        let name = path.display().to_string();
        let decoded = read_wav_file(&path, &f32_options()).unwrap_or_else(|error| panic!("{error}"));
        assert!(only_track(&decoded).frames() > 0, "{name}: no audio");
        let truncated = name.ends_with("i32_truncated.wav");
        assert_eq!(decoded.shortfall.is_some(), truncated, "{name}: shortfall");
        fuzzing::wav_reader(&std::fs::read(&path).expect("seed bytes"));
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn sample_format_strategy() -> impl Strategy<Value = SampleFormat> {
    prop_oneof![Just(SampleFormat::I16), Just(SampleFormat::F32)]
}

fn encoding_strategy() -> impl Strategy<Value = PcmEncoding> {
    prop_oneof![
        Just(PcmEncoding::U8),
        Just(PcmEncoding::I16),
        Just(PcmEncoding::I24),
        Just(PcmEncoding::I32),
        Just(PcmEncoding::F32),
        Just(PcmEncoding::F64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The writer's output reads back sample for sample in its own format.
    #[test]
    fn write_then_read_round_trips(
        sample_format in sample_format_strategy(),
        channels in 1_u16..=8,
        sample_rate in 1_u32..=MAX_SAMPLE_RATE,
        values in proptest::collection::vec(any::<i16>(), 0..400),
        block in 1_usize..64,
    ) {
        let frames = values.len() / usize::from(channels);
        let values = &values[..frames * usize::from(channels)];
        let format = AudioFormat { sample_rate, channels, sample_format };
        let floats: Vec<f32> = values.iter().map(|&v| f32::from(v) / 32_768.0).collect();
        let audio = match sample_format {
            SampleFormat::I16 => AudioData::from_i16(sample_rate, channels, values.to_vec()),
            SampleFormat::F32 => AudioData::from_f32(sample_rate, channels, floats),
        }
        .expect("valid audio");
        let bytes = write_to_vec(format, std::slice::from_ref(&audio));

        let options = ReadOptions { sample_format, ..ReadOptions::default() };
        let decoded = read_bytes(&bytes, &options).expect("written file reads");
        prop_assert_eq!(only_track(&decoded), &audio);
        prop_assert_eq!(decoded.shortfall, None);

        // The other sample format gets the same values, converted.
        let other = ReadOptions { sample_format: SampleFormat::I16, ..ReadOptions::default() };
        let decoded = read_bytes(&bytes, &other).expect("written file reads");
        prop_assert_eq!(only_track(&decoded).to_i16(), values.to_vec());

        // Streaming in arbitrary blocks returns the same frames.
        let mut reader = PcmReader::wav(&bytes[..], "out.wav").expect("header");
        let mut streamed = Vec::new();
        while reader.read_i16(block, &mut streamed).expect("read") > 0 {}
        prop_assert_eq!(streamed, values.to_vec());
    }

    /// Files in every encoding, plain or extensible, with odd chunks in
    /// between, decode to the values their samples encode.
    #[test]
    fn any_encoding_decodes(
        encoding in encoding_strategy(),
        channels in 1_u16..=6,
        sample_rate in 1_u32..=MAX_SAMPLE_RATE,
        extensible in any::<bool>(),
        junk_sizes in proptest::collection::vec(0_usize..20, 0..3),
        values in proptest::collection::vec(-1.0_f64..1.0, 0..120),
        streaming_size in any::<bool>(),
    ) {
        let spec = PcmSpec { sample_rate, channels, encoding };
        let frames = values.len() / usize::from(channels);
        let values = &values[..frames * usize::from(channels)];

        // Encode each value and note what the reader must return for it.
        let mut data = Vec::new();
        let mut expected = Vec::new();
        for &value in values {
            let decoded = match encoding {
                PcmEncoding::U8 => {
                    let byte = ((value * 128.0).floor() + 128.0) as u8;
                    data.push(byte);
                    (f32::from(byte) - 128.0) / 128.0
                }
                PcmEncoding::I16 => {
                    let sample = (value * 32_768.0).floor() as i16;
                    data.extend_from_slice(&sample.to_le_bytes());
                    f32::from(sample) / 32_768.0
                }
                PcmEncoding::I24 => {
                    let sample = (value * 8_388_608.0).floor() as i32;
                    data.extend_from_slice(&sample.to_le_bytes()[0..3]);
                    sample as f32 / 8_388_608.0
                }
                PcmEncoding::I32 => {
                    let sample = (value * 2_147_483_648.0).floor() as i32;
                    data.extend_from_slice(&sample.to_le_bytes());
                    (f64::from(sample) / 2_147_483_648.0) as f32
                }
                PcmEncoding::F32 => {
                    data.extend_from_slice(&(value as f32).to_le_bytes());
                    value as f32
                }
                PcmEncoding::F64 => {
                    data.extend_from_slice(&value.to_le_bytes());
                    value as f32
                }
            };
            expected.push(decoded);
        }

        let fmt = if extensible { extensible_fmt(spec) } else { plain_fmt(spec) };
        let mut builder = WavBuilder::new(fmt, data);
        for size in junk_sizes {
            builder.between.push((*b"JUNK", vec![0xEE; size]));
        }
        if streaming_size {
            builder.data_size = Some(0xFFFF_FFFF);
        }
        let decoded = read_bytes(&builder.build(), &f32_options()).expect("valid file");
        prop_assert_eq!(decoded.spec, spec);
        prop_assert_eq!(only_track(&decoded).to_f32(), expected);
    }

    /// The fuzz target's body never panics on arbitrary bytes.
    #[test]
    fn fuzz_body_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::wav_reader(&data);
    }

    /// The fuzz target's body never panics on random bytes after a valid header.
    #[test]
    fn fuzz_body_random_after_header(
        fmt_choice in 0_usize..4,
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let spec = PcmSpec { sample_rate: 16_000, channels: 2, encoding: PcmEncoding::I24 };
        let fmt = match fmt_choice {
            0 => plain_fmt(spec),
            1 => extensible_fmt(spec),
            2 => fmt18(TAG_FLOAT, 3, 44_100, 24, 64),
            _ => fmt16(TAG_PCM, 1, 8_000, 1, 8),
        };
        let mut file = b"RIFF\xff\xff\xff\xffWAVE".to_vec();
        write_chunk(&mut file, *b"fmt ", &fmt).expect("Vec write");
        file.extend_from_slice(&body);
        fuzzing::wav_reader(&file);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The fuzz target's body never panics on mutated valid files: flipped
    /// bytes, cut ends and inserted bytes, in header and data alike.
    #[test]
    fn fuzz_body_mutated_files(
        encoding in encoding_strategy(),
        channels in 1_u16..=4,
        extensible in any::<bool>(),
        junk in 0_usize..6,
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0_u8..3), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let spec = PcmSpec { sample_rate: 16_000, channels, encoding };
        let fmt = if extensible { extensible_fmt(spec) } else { plain_fmt(spec) };
        let mut builder = WavBuilder::new(fmt, (0..spec.block_align() * 5).map(|i| i as u8).collect());
        builder.before.push((*b"LIST", vec![0x41; junk]));
        let mut file = builder.build();
        for (index, byte, kind) in mutations {
            let at = index.index(file.len());
            match kind {
                0 => file[at] = byte,
                1 => file[at] ^= 1 << (byte % 8),
                _ => file.insert(at, byte),
            }
        }
        let keep = cut.index(file.len() + 1).max(file.len() / 2);
        file.truncate(keep);
        fuzzing::wav_reader(&file);
    }
}
