//! Tests of the Opus stages: packets of every frame-count code built by hand
//! from real encoded frames, DTX, lost and corrupt packets, a round trip on
//! real recordings, and property tests of the decoder's input path. The
//! logging of corrupt packets is tested in `opus_logging.rs`.
//!
//! The round trip reads the LibriVox clips of Debian's `pocketsphinx-testdata`
//! (`apt-get install pocketsphinx-testdata`); it fails rather than skips when
//! they are missing.
//!
//! ```text
//! cargo test -p mentis-stages --no-default-features --test opus_codec
//! ```

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::harness::{
    Harness, assert_contiguous, audio_blocks, sample_frames_of, samples_of, stage_name, test_signal,
};
use mentis_pipeline::frame::FrameMeta;
use mentis_pipeline::{AudioFormat, Codec, EncodedAudio, Frame, MediaTime, Payload, SampleFormat, TurnId};
use mentis_stages::opus::fuzzing::{TimedPacket, decode_and_check, opus_decoder as fuzz_opus_decoder};
use mentis_stages::opus::{OpusApplication, OpusBuildError, OpusDecoder, OpusEncoder, OpusEncoderConfig};
use proptest::prelude::*;

const RATE: u32 = 48_000;

/// Samples per channel of a 20 ms frame at 48 kHz.
const FRAME: usize = 960;

fn mono() -> AudioFormat {
    AudioFormat::mono_f32(RATE)
}

fn decoder(format: AudioFormat) -> OpusDecoder {
    OpusDecoder::new(stage_name("opus-decoder"), format).unwrap_or_else(|error| panic!("{error}"))
}

fn packet_frame(timestamp: MediaTime, duration: Duration, data: Vec<u8>) -> Frame {
    let packet = EncodedAudio { codec: Codec::Opus, sample_rate: RATE, channels: 1, duration, data: Bytes::from(data) };
    let meta = FrameMeta { timestamp, ..FrameMeta::new(common::harness::SESSION) };
    Frame::new(meta, Payload::Encoded(packet))
}

/// Encodes `count` 20 ms frames of the test signal at 48 kHz mono with
/// libopus directly, and returns the single-frame (code 0) packets.
fn code0_packets(count: usize, vbr: bool) -> Vec<Vec<u8>> {
    let mut encoder = opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio)
        .unwrap_or_else(|error| panic!("{error}"));
    encoder.set_bitrate(opus::Bitrate::Bits(48_000)).unwrap_or_else(|error| panic!("{error}"));
    encoder.set_vbr(vbr).unwrap_or_else(|error| panic!("{error}"));
    let signal = test_signal(RATE, 1, count * FRAME);
    let packets: Vec<Vec<u8>> = signal
        .chunks(FRAME)
        .map(|frame| encoder.encode_vec_float(frame, 4_000).unwrap_or_else(|error| panic!("{error}")))
        .collect();
    for (index, packet) in packets.iter().enumerate() {
        assert_eq!(packet[0] & 0x03, 0, "packet {index} is not a single-frame packet");
        assert_eq!(packet[0] & 0xFC, packets[0][0] & 0xFC, "packet {index} has another configuration");
    }
    packets
}

/// Encodes a frame length as RFC 6716 section 3.2.1 specifies: one byte below
/// 252, otherwise two bytes whose value is first + 4 × second.
fn frame_length(len: usize) -> Vec<u8> {
    assert!(len <= 1_275, "an Opus frame holds at most 1275 bytes");
    if len < 252 {
        vec![len as u8]
    } else {
        let first = 252 + (len & 0x03);
        vec![first as u8, ((len - first) / 4) as u8]
    }
}

/// Frame data of a code 0 packet: everything after the TOC byte.
fn frame_data(packet: &[u8]) -> &[u8] {
    &packet[1..]
}

/// Builds a code 1 packet (two frames of equal size, RFC 6716 section 3.2.3).
fn code1_packet(first: &[u8], second: &[u8]) -> Vec<u8> {
    assert_eq!(first.len(), second.len(), "code 1 needs frames of equal size");
    let mut packet = vec![(first[0] & 0xFC) | 1];
    packet.extend_from_slice(frame_data(first));
    packet.extend_from_slice(frame_data(second));
    packet
}

/// Builds a code 2 packet (two frames, the first one's length coded,
/// RFC 6716 section 3.2.4).
fn code2_packet(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut packet = vec![(first[0] & 0xFC) | 2];
    packet.extend(frame_length(frame_data(first).len()));
    packet.extend_from_slice(frame_data(first));
    packet.extend_from_slice(frame_data(second));
    packet
}

/// Builds a code 3 packet (RFC 6716 section 3.2.5). The TOC byte is followed
/// by a frame count byte (bit 7 VBR, bit 6 padding, bits 0-5 the count) and
/// the padding length. VBR packets then give the lengths of all frames but
/// the last. The frames and the padding bytes come last.
fn code3_packet(frames: &[Vec<u8>], vbr: bool, padding: u8) -> Vec<u8> {
    assert!(padding < 255, "this helper codes the padding length in one byte");
    let mut packet = vec![(frames[0][0] & 0xFC) | 3];
    let mut count = frames.len() as u8;
    if vbr {
        count |= 0x80;
    }
    if padding > 0 {
        count |= 0x40;
    }
    packet.push(count);
    if padding > 0 {
        packet.push(padding);
    }
    if vbr {
        for frame in &frames[..frames.len() - 1] {
            packet.extend(frame_length(frame_data(frame).len()));
        }
    } else {
        let len = frame_data(&frames[0]).len();
        assert!(frames.iter().all(|frame| frame_data(frame).len() == len), "CBR code 3 needs frames of equal size");
    }
    for frame in frames {
        packet.extend_from_slice(frame_data(frame));
    }
    packet.extend(std::iter::repeat_n(0, usize::from(padding)));
    packet
}

/// Decodes packets one after another with a fresh libopus decoder.
fn decode_each(packets: &[Vec<u8>]) -> Vec<f32> {
    let mut decoder = opus::Decoder::new(RATE, opus::Channels::Mono).unwrap_or_else(|error| panic!("{error}"));
    let mut output = Vec::new();
    let mut buffer = vec![0.0_f32; 5_760];
    for packet in packets {
        let frames = decoder.decode_float(packet, &mut buffer, false).unwrap_or_else(|error| panic!("{error}"));
        output.extend_from_slice(&buffer[..frames]);
    }
    output
}

/// Decodes one multi-frame packet through the stage and checks that it gives
/// the same samples as the frames decoded one by one.
fn check_multi_frame(label: &str, packet: Vec<u8>, frames: &[Vec<u8>]) {
    let mut harness = Harness::new(decoder(mono()));
    let duration = Duration::from_millis(20 * frames.len() as u64);
    let output = harness.push(packet_frame(MediaTime::ZERO, duration, packet));
    assert_eq!(sample_frames_of(&output), frames.len() * FRAME, "{label}: decoded sample frames");
    assert_eq!(harness.processor.stats().corrupt_packets, 0, "{label}: rejected as corrupt");

    let expected = decode_each(frames);
    let actual = samples_of(&output);
    let difference = common::harness::max_difference(&actual, &expected);
    assert!(difference <= 1e-6, "{label}: differs from frame-by-frame decoding by {difference}");
}

#[test]
fn toc_code_1_two_equal_frames() {
    let frames = code0_packets(2, false);
    check_multi_frame("code 1", code1_packet(&frames[0], &frames[1]), &frames);
}

#[test]
fn toc_code_2_two_frames() {
    let frames = code0_packets(2, true);
    check_multi_frame("code 2", code2_packet(&frames[0], &frames[1]), &frames);
}

#[test]
fn toc_code_2_long_first_frame() {
    // 400 bytes needs the two-byte length form.
    let mut encoder = opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio)
        .unwrap_or_else(|error| panic!("{error}"));
    encoder.set_bitrate(opus::Bitrate::Bits(160_000)).unwrap_or_else(|error| panic!("{error}"));
    encoder.set_vbr(false).unwrap_or_else(|error| panic!("{error}"));
    let signal = test_signal(RATE, 1, 2 * FRAME);
    let frames: Vec<Vec<u8>> = signal
        .chunks(FRAME)
        .map(|frame| encoder.encode_vec_float(frame, 4_000).unwrap_or_else(|error| panic!("{error}")))
        .collect();
    assert!(frame_data(&frames[0]).len() >= 252, "frame of {} bytes", frame_data(&frames[0]).len());
    check_multi_frame("code 2, two-byte length", code2_packet(&frames[0], &frames[1]), &frames);
}

#[test]
fn toc_code_0_single_frame() {
    let frames = code0_packets(1, true);
    check_multi_frame("code 0", frames[0].clone(), &frames);
}

#[test]
fn toc_code_3_cbr() {
    let frames = code0_packets(3, false);
    check_multi_frame("code 3 CBR", code3_packet(&frames, false, 0), &frames);
}

#[test]
fn toc_code_3_vbr() {
    let frames = code0_packets(4, true);
    check_multi_frame("code 3 VBR", code3_packet(&frames, true, 0), &frames);
}

#[test]
fn toc_code_3_padded() {
    let frames = code0_packets(2, true);
    check_multi_frame("code 3 VBR with padding", code3_packet(&frames, true, 5), &frames);
    let frames = code0_packets(2, false);
    check_multi_frame("code 3 CBR with padding", code3_packet(&frames, false, 3), &frames);
}

#[test]
fn toc_code_3_holds_120_ms() {
    // Six 20 ms frames: the longest legal packet, which fills the output buffer.
    let frames = code0_packets(6, true);
    check_multi_frame("code 3, 120 ms", code3_packet(&frames, true, 0), &frames);
}

#[test]
fn packet_over_120_ms_is_corrupt() {
    // Seven 20 ms frames exceed the 120 ms limit of RFC 6716 section 3.2.5.
    let frames = code0_packets(7, true);
    let mut harness = Harness::new(decoder(mono()));
    let output =
        harness.push(packet_frame(MediaTime::ZERO, Duration::from_millis(140), code3_packet(&frames, true, 0)));
    assert_eq!(harness.processor.stats().corrupt_packets, 1);
    // Concealment covers the declared duration, capped at the 120 ms a packet can hold.
    assert_eq!(sample_frames_of(&output), 6 * FRAME);
}

#[test]
fn dtx_packet_is_concealed() {
    let frames = code0_packets(1, true);
    let toc_only = vec![frames[0][0]];
    let mut harness = Harness::new(decoder(mono()));
    let mut output = harness.push(packet_frame(MediaTime::ZERO, Duration::from_millis(20), frames[0].clone()));
    // One byte: the TOC byte alone gives the duration, 20 ms.
    output.extend(harness.push(packet_frame(MediaTime::from_samples(960, RATE), Duration::ZERO, toc_only)));
    // Empty: the declared duration, 40 ms.
    output.extend(harness.push(packet_frame(
        MediaTime::from_samples(1_920, RATE),
        Duration::from_millis(40),
        Vec::new(),
    )));

    let stats = harness.processor.stats();
    assert_eq!(stats.dtx_packets, 2);
    assert_eq!(stats.concealed_frames, 3 * 960);
    assert_eq!(sample_frames_of(&output), 4 * 960);
    assert_contiguous("DTX", &output, MediaTime::ZERO);
}

#[test]
fn lost_packets_are_concealed() {
    let packets = code0_packets(3, true);
    let mut harness = Harness::new(decoder(mono()));
    let mut output = Vec::new();
    // The third packet arrives 60 ms late: three packets went missing.
    for (packet, start_ms) in packets.iter().zip([0_u64, 20, 100]) {
        let timestamp = MediaTime::from_duration(Duration::from_millis(start_ms));
        output.extend(harness.push(packet_frame(timestamp, Duration::from_millis(20), packet.clone())));
    }
    let stats = harness.processor.stats();
    assert_eq!(stats.gaps, 1);
    assert_eq!(stats.concealed_frames, 3 * FRAME as u64);
    assert_eq!(sample_frames_of(&output), 6 * FRAME);
    assert_contiguous("gap", &output, MediaTime::ZERO);
}

#[test]
fn long_gap_jumps_timeline() {
    let packets = code0_packets(2, true);
    let mut harness = Harness::new(decoder(mono()));
    let first = harness.push(packet_frame(MediaTime::ZERO, Duration::from_millis(20), packets[0].clone()));
    let second_at = MediaTime::from_duration(Duration::from_secs(5));
    let after = harness.push(packet_frame(second_at, Duration::from_millis(20), packets[1].clone()));

    // One second is concealed, then the packet plays at its own timestamp.
    assert_eq!(sample_frames_of(&first), FRAME);
    assert_eq!(sample_frames_of(&after), RATE as usize + FRAME);
    let last = after.last().unwrap_or_else(|| panic!("no output after the gap"));
    assert_eq!(last.meta.timestamp, second_at);
}

#[test]
fn corrupt_packets_are_counted_and_concealed() {
    // Code 1 needs an even number of bytes after the TOC byte; 3 is invalid.
    let frames = code0_packets(1, true);
    let corrupt = vec![(frames[0][0] & 0xFC) | 1, 1, 2, 3];
    let mut harness = Harness::new(decoder(mono()));
    let mut output = Vec::new();
    for index in 0..50_u64 {
        let timestamp = MediaTime::from_samples(index * FRAME as u64, RATE);
        output.extend(harness.push(packet_frame(timestamp, Duration::from_millis(20), corrupt.clone())));
    }
    // A valid packet after them decodes normally.
    output.extend(harness.push(packet_frame(
        MediaTime::from_samples(50 * FRAME as u64, RATE),
        Duration::from_millis(20),
        frames[0].clone(),
    )));

    let stats = harness.processor.stats();
    assert_eq!(stats.corrupt_packets, 50);
    assert_eq!(stats.concealed_frames, 50 * FRAME as u64, "each corrupt packet is concealed for 20 ms");
    assert_eq!(sample_frames_of(&output), 51 * FRAME);
    assert_contiguous("corrupt", &output, MediaTime::ZERO);
}

#[test]
fn encoder_rejects_44k1() {
    let error = OpusEncoder::new(stage_name("opus-encoder"), AudioFormat::mono_i16(44_100)).expect_err("44.1 kHz");
    assert!(matches!(error, OpusBuildError::UnsupportedRate { rate: 44_100 }));
    let message = error.to_string();
    assert!(message.contains("44100 Hz"), "{message}");
    assert!(message.contains("8000, 12000, 16000, 24000, 48000"), "{message}");
}

#[test]
fn encoder_rejects_bitrate_out_of_range() {
    let config = OpusEncoderConfig { bitrate: Some(100), ..OpusEncoderConfig::default() };
    let error = OpusEncoder::with_config(stage_name("opus-encoder"), mono(), config).expect_err("100 b/s");
    assert!(matches!(error, OpusBuildError::InvalidBitrate { bitrate: 100 }));
}

#[test]
fn decoder_rejects_mismatched_packets() {
    let mut decoder = decoder(mono());
    let packet = EncodedAudio {
        codec: Codec::Opus,
        sample_rate: 16_000,
        channels: 1,
        duration: Duration::from_millis(20),
        data: Bytes::from_static(&[0; 8]),
    };
    let frame = Frame::new(FrameMeta::new(common::harness::SESSION), Payload::Encoded(packet));
    let mut emitter = mentis_pipeline::Emitter::new(common::harness::SESSION);
    let error = mentis_pipeline::Processor::process(&mut decoder, frame, &mut emitter)
        .expect_err("16 kHz packet into a 48 kHz decoder");
    assert!(error.to_string().contains("16000 Hz"), "{error}");
}

// ---------------------------------------------------------------------------
// Round trip on a real recording
// ---------------------------------------------------------------------------

const LIBRIVOX_DIR: &str = "/usr/share/pocketsphinx/test/data/librivox";

const LIBRIVOX_CLIPS: [&str; 5] = [
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
];

/// Reads a LibriVox clip: 16 kHz mono 16-bit.
fn read_recording(clip: &str) -> Vec<i16> {
    let path = format!("{LIBRIVOX_DIR}/{clip}");
    let mut reader = mentis_stages::wav::open_wav(&path)
        .unwrap_or_else(|error| panic!("{error}; install the Debian package pocketsphinx-testdata"));
    let spec = reader.spec();
    assert_eq!((spec.sample_rate, spec.channels), (16_000, 1), "{path} is not 16 kHz mono");
    let mut samples = Vec::new();
    while reader.read_i16(8_192, &mut samples).unwrap_or_else(|error| panic!("{error}")) > 0 {}
    samples
}

/// Returns (SNR in dB, normalized correlation) of `decoded` against
/// `original`, with `decoded` shifted back by `lag` samples.
fn compare(original: &[f32], decoded: &[f32], lag: usize) -> (f64, f64) {
    let pairs = original.iter().zip(&decoded[lag..]).map(|(&a, &b)| (f64::from(a), f64::from(b)));
    let (mut signal, mut noise, mut cross, mut decoded_energy) = (0.0, 0.0, 0.0, 0.0);
    for (a, b) in pairs {
        signal += a * a;
        noise += (a - b) * (a - b);
        cross += a * b;
        decoded_energy += b * b;
    }
    (10.0 * (signal / noise).log10(), cross / (signal * decoded_energy).sqrt())
}

/// Encodes and decodes each LibriVox clip at 16 kHz, 24 kb/s, 20 ms frames,
/// and checks the sample count and the minimum SNR and correlation over the
/// clips, after removing the encoder's lookahead.
fn check_round_trip(application: OpusApplication, min_snr_db: f64, min_correlation: f64) {
    let format = AudioFormat::mono_i16(16_000);
    for clip in LIBRIVOX_CLIPS {
        let samples = read_recording(clip);
        let original: Vec<f32> = samples.iter().map(|&sample| f32::from(sample) / 32_768.0).collect();

        let config = OpusEncoderConfig { bitrate: Some(24_000), application, ..OpusEncoderConfig::default() };
        let mut encoder = OpusEncoder::with_config(stage_name("opus-encoder"), format, config)
            .unwrap_or_else(|error| panic!("{error}"));
        let lookahead = encoder.lookahead().unwrap_or_else(|error| panic!("{error}"));
        let packets = Harness::new(encoder).run(audio_blocks(format, &original, 333, MediaTime::ZERO, TurnId(1)));
        let decoded = samples_of(&Harness::new(decoder(format)).run(packets));

        // The count is the input rounded up to whole 20 ms frames.
        assert_eq!(decoded.len(), samples.len().div_ceil(320) * 320, "{clip}: decoded samples");

        let (snr, correlation) = compare(&original, &decoded, lookahead);
        println!(
            "{application:?} {clip}: lookahead {lookahead} samples, SNR {snr:.1} dB, correlation {correlation:.4}"
        );
        assert!(snr >= min_snr_db, "{application:?} {clip}: SNR {snr:.1} dB");
        assert!(correlation >= min_correlation, "{application:?} {clip}: correlation {correlation:.4}");
    }
}

// Thresholds sit below the lowest values measured over the five clips with
// Debian's libopus 1.3.1: Audio 12.1 dB and 0.968 (clip 0880, the others
// 15.3 to 17.0 dB), VoIP 3.9 dB and 0.784. On clip 0870, VoIP's SNR stays
// near 5 dB at every bitrate from 16 to 64 kb/s, while Audio's rises from
// 13 to 17 dB. So VoIP's low figure comes from processing that does not
// depend on the bitrate, not from coding noise.

#[test]
fn round_trip_librivox_audio() {
    check_round_trip(OpusApplication::Audio, 10.0, 0.95);
}

#[test]
fn round_trip_librivox_voip() {
    check_round_trip(OpusApplication::Voip, 3.0, 0.75);
}

// ---------------------------------------------------------------------------
// Property tests of the decoder's input path
// ---------------------------------------------------------------------------

/// Returns a strategy for the property test's packets: random bytes, real
/// packets, and real packets with one byte changed, each with the gap before
/// it in 2.5 ms steps and a declared duration index.
fn timed_packets() -> impl Strategy<Value = Vec<(Vec<u8>, u8, u8)>> {
    let packet = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        (0..8_usize, any::<u8>(), any::<usize>()).prop_map(|(index, value, position)| {
            let mut packet = REAL_PACKETS.with(|packets| packets[index].clone());
            let position = position % packet.len();
            packet[position] = value;
            packet
        }),
        (0..8_usize).prop_map(|index| REAL_PACKETS.with(|packets| packets[index].clone())),
    ];
    proptest::collection::vec((packet, 0..40_u8, 0..8_u8), 1..40)
}

thread_local! {
    static REAL_PACKETS: Vec<Vec<u8>> = code0_packets(8, true);
}

/// Declared durations the property test picks from, in 2.5 ms steps (0 for none).
const DECLARED_STEPS: [u64; 8] = [0, 1, 2, 4, 8, 16, 24, 48];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoder_timeline_stays_continuous(packets in timed_packets()) {
        let mut timestamp = MediaTime::from_duration(Duration::from_secs(2));
        let mut timed = Vec::new();
        for (data, gap_steps, declared) in packets {
            timestamp = timestamp.add(Duration::from_micros(2_500 * u64::from(gap_steps)));
            let duration = Duration::from_micros(2_500 * DECLARED_STEPS[usize::from(declared)]);
            timed.push(TimedPacket {
                timestamp,
                packet: EncodedAudio { codec: Codec::Opus, sample_rate: RATE, channels: 1, duration, data: Bytes::from(data) },
            });
            timestamp = timestamp.add(if duration.is_zero() { Duration::from_millis(20) } else { duration });
        }
        let format = AudioFormat { sample_rate: RATE, channels: 1, sample_format: SampleFormat::I16 };
        let summary = decode_and_check(format, &timed);
        prop_assert!(summary.frames >= timed.len());
    }

    #[test]
    fn decoder_survives_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2_048)) {
        fuzz_opus_decoder(&data);
    }
}

#[test]
fn decodes_48_khz_packets_straight_to_16_khz() {
    let packets = code0_packets(10, false);
    let decoder = decoder(mono()).with_output_rate(16_000).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(decoder.output_format().sample_rate, 16_000);
    let mut harness = Harness::new(decoder);
    let mut output = Vec::new();
    for (index, packet) in packets.into_iter().enumerate() {
        let timestamp = MediaTime::from_duration(Duration::from_millis(20 * index as u64));
        output.extend(harness.push(packet_frame(timestamp, Duration::from_millis(20), packet)));
    }
    for frame in &output {
        assert_eq!(frame.as_audio().map(|audio| audio.format().sample_rate), Some(16_000));
    }
    // Ten 20 ms packets give 200 ms: 3,200 samples at 16 kHz.
    let samples = samples_of(&output);
    assert_eq!(samples.len(), 3_200);
    // libopus decoding at 16 kHz matches decoding at 48 kHz and keeping every third sample, roughly.
    let full_rate = decode_each(&code0_packets(10, false));
    let energy = |signal: &[f32]| signal.iter().map(|sample| sample * sample).sum::<f32>() / signal.len() as f32;
    let ratio = energy(&samples) / energy(&full_rate);
    assert!((0.7..1.3).contains(&ratio), "energy ratio {ratio}");
}
