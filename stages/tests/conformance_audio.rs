//! Conformance suites for the audio conversion stages: one suite per stage
//! kind, run against every implementation of that kind over a matrix of
//! sample rates, channel counts, sample formats and block sizes.
//!
//! - Resamplers ([`Resample`] with the FFT and the sinc resampler): every pair
//!   of supported rates, mono 16-bit and stereo float.
//! - Codecs ([`OpusEncoder`] and [`OpusDecoder`]): every Opus rate and frame
//!   duration, mono 16-bit and stereo float.
//!
//! Each suite checks sample-count conservation, the end-of-stream flush, that
//! a reset between sessions gives the same output for the same input, and that
//! empty and odd-sized blocks change nothing.
//!
//! ```text
//! cargo test -p mentis-stages --no-default-features --test conformance_audio
//! ```

mod common;

use common::harness::{
    BLOCK_SIZES, Harness, assert_contiguous, audio_blocks, max_difference, sample_frames_of, samples_of, stage_name,
    test_signal, with_empty_blocks,
};
use mentis_pipeline::stage::Processor;
use mentis_pipeline::{AudioFormat, Control, Frame, MediaTime, Payload, SampleFormat, TurnId};
use mentis_stages::opus::{FrameDuration, OPUS_RATES, OpusDecoder, OpusEncoder, OpusEncoderConfig};
use mentis_stages::resample::{Resample, ResamplerKind, SUPPORTED_RATES};

/// Where the test streams start on the media timeline.
const START: MediaTime = MediaTime(3_000_000_000);

/// The turn every input frame belongs to.
const TURN: TurnId = TurnId(4);

/// The channel layouts and sample formats each suite covers.
const LAYOUTS: [(u16, SampleFormat); 2] = [(1, SampleFormat::I16), (2, SampleFormat::F32)];

/// Input length for a rate: a quarter second plus an odd remainder, so that
/// no chunk or frame size divides it.
fn input_frames(rate: u32) -> usize {
    rate as usize / 4 + 37
}

// ---------------------------------------------------------------------------
// Resamplers
// ---------------------------------------------------------------------------

/// Runs the resampler suite against stages built by `make(input, output_rate)`.
fn resampler_suite<P: Processor>(implementation: &str, make: impl Fn(AudioFormat, u32) -> P) {
    for input_rate in SUPPORTED_RATES {
        for output_rate in SUPPORTED_RATES {
            if input_rate == output_rate {
                continue;
            }
            for (channels, sample_format) in LAYOUTS {
                let format = AudioFormat { sample_rate: input_rate, channels, sample_format };
                check_resampler(implementation, &make, format, output_rate);
            }
        }
    }
}

fn check_resampler<P: Processor>(
    implementation: &str,
    make: &impl Fn(AudioFormat, u32) -> P,
    format: AudioFormat,
    output_rate: u32,
) {
    let label = format!("{implementation} {format} -> {output_rate} Hz");
    let frames = input_frames(format.sample_rate);
    let signal = test_signal(format.sample_rate, format.channels, frames);
    let whole = audio_blocks(format, &signal, frames, START, TURN);

    // One block: the reference every other run must reproduce.
    let mut harness = Harness::new(make(format, output_rate));
    let mut reference = harness.push_all(whole.clone());
    let flushed = harness.finish();
    assert!(!flushed.is_empty(), "{label}: the flush emitted nothing although a tail was buffered");
    reference.extend(flushed);

    // Sample count: round(N × out / in), give or take one frame.
    let expected = (frames as f64 * f64::from(output_rate) / f64::from(format.sample_rate)).round() as i64;
    let produced = sample_frames_of(&reference) as i64;
    assert!((produced - expected).abs() <= 1, "{label}: {produced} frames out, expected {expected} ± 1");

    // Format, timeline and turn of the output.
    let output_format = AudioFormat { sample_rate: output_rate, ..format };
    for frame in &reference {
        let audio = frame.as_audio().unwrap_or_else(|| panic!("{label}: emitted a {} frame", frame.kind_name()));
        assert_eq!(audio.format(), output_format, "{label}: output format");
        assert_eq!(frame.meta.turn, TURN, "{label}: output turn");
    }
    assert_contiguous(&label, &reference, START);
    let reference_samples = samples_of(&reference);

    // Any block size gives the same samples.
    for block in BLOCK_SIZES {
        let output = Harness::new(make(format, output_rate)).run(audio_blocks(format, &signal, block, START, TURN));
        assert_same_samples(&format!("{label}, blocks of {block}"), &samples_of(&output), &reference_samples);
        assert_contiguous(&format!("{label}, blocks of {block}"), &output, START);
    }

    // Empty blocks between the others emit nothing and change nothing.
    let blocks = with_empty_blocks(audio_blocks(format, &signal, 333, START, TURN));
    let mut harness = Harness::new(make(format, output_rate));
    let mut output = Vec::new();
    for frame in blocks {
        let empty = frame.as_audio().is_some_and(|audio| audio.frames() == 0);
        let emitted = harness.push(frame);
        if empty {
            assert!(emitted.is_empty(), "{label}: an empty block emitted audio");
        }
        output.extend(emitted);
    }
    output.extend(harness.finish());
    assert_same_samples(&format!("{label}, with empty blocks"), &samples_of(&output), &reference_samples);

    // After a flush or an interrupt mid-stream, the same input gives the same output.
    for control in [Control::Flush, Control::Interrupt] {
        let mut harness = Harness::new(make(format, output_rate));
        harness.push_all(audio_blocks(
            format,
            &signal[..frames / 2 * usize::from(format.channels)],
            480,
            MediaTime::ZERO,
            TurnId(1),
        ));
        harness.control(control.clone());
        let output = harness.run(whole.clone());
        assert_same_samples(&format!("{label}, after {control:?}"), &samples_of(&output), &reference_samples);
        assert_contiguous(&format!("{label}, after {control:?}"), &output, START);
    }

    // A second session after end of stream repeats the first.
    let mut harness = Harness::new(make(format, output_rate));
    harness.run(whole.clone());
    let output = harness.run(whole.clone());
    assert_same_samples(&format!("{label}, second session"), &samples_of(&output), &reference_samples);
    assert_contiguous(&format!("{label}, second session"), &output, START);

    // A session without input flushes nothing.
    let output = Harness::new(make(format, output_rate)).finish();
    assert!(output.is_empty(), "{label}: an empty session emitted {} frames", output.len());
}

fn assert_same_samples(label: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{label}: sample count");
    let difference = max_difference(actual, expected);
    assert!(difference <= 1e-6, "{label}: samples differ by up to {difference}");
}

fn fft_resampler(input: AudioFormat, output_rate: u32) -> Resample {
    Resample::with_kind(stage_name("resample-fft"), input, output_rate, ResamplerKind::Fft)
        .unwrap_or_else(|error| panic!("{error}"))
}

fn sinc_resampler(input: AudioFormat, output_rate: u32) -> Resample {
    Resample::with_kind(stage_name("resample-sinc"), input, output_rate, ResamplerKind::Sinc)
        .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn resampler_fft_conforms() {
    resampler_suite("fft", fft_resampler);
}

#[test]
fn resampler_sinc_conforms() {
    resampler_suite("sinc", sinc_resampler);
}

// ---------------------------------------------------------------------------
// Codecs
// ---------------------------------------------------------------------------

/// Runs the codec suite at each of `rates` against encoders built by
/// `make_encoder(format)` and decoders built by `make_decoder(format)`. The
/// encoder must emit packets of one fixed duration.
fn codec_suite<E: Processor, D: Processor>(
    implementation: &str,
    rates: &[u32],
    make_encoder: impl Fn(AudioFormat) -> E,
    make_decoder: impl Fn(AudioFormat) -> D,
) {
    for &rate in rates {
        for (channels, sample_format) in LAYOUTS {
            let format = AudioFormat { sample_rate: rate, channels, sample_format };
            check_codec(implementation, &make_encoder, &make_decoder, format);
        }
    }
}

fn check_codec<E: Processor, D: Processor>(
    implementation: &str,
    make_encoder: &impl Fn(AudioFormat) -> E,
    make_decoder: &impl Fn(AudioFormat) -> D,
    format: AudioFormat,
) {
    let label = format!("{implementation} {format}");
    let frames = input_frames(format.sample_rate);
    let signal = test_signal(format.sample_rate, format.channels, frames);
    let whole = audio_blocks(format, &signal, frames, START, TURN);

    // One block: the reference packets.
    let mut encoder = Harness::new(make_encoder(format));
    let mut packets = encoder.push_all(whole.clone());
    let flushed = encoder.finish();
    packets.extend(flushed.iter().cloned());

    // Packet count: the input rounded up to whole frames, the last one padded by the flush.
    let duration = packet_of(&label, &packets[0]).duration;
    let frame_frames = format.frames_in(duration);
    assert!(frame_frames > 0, "{label}: packets declare no duration");
    let expected_packets = frames.div_ceil(frame_frames);
    assert_eq!(packets.len(), expected_packets, "{label}: packets for {frames} frames of {frame_frames}");
    let expected_flushed = usize::from(!frames.is_multiple_of(frame_frames));
    assert_eq!(flushed.len(), expected_flushed, "{label}: packets emitted by the flush");

    // Every packet: same duration, contiguous timestamps, the input's turn.
    for (index, packet) in packets.iter().enumerate() {
        assert_eq!(packet_of(&label, packet).duration, duration, "{label}: packet {index} duration");
        let expected = START.add(format.duration_of(index * frame_frames));
        assert_eq!(packet.meta.timestamp, expected, "{label}: packet {index} timestamp");
        assert_eq!(packet.meta.turn, TURN, "{label}: packet {index} turn");
    }

    let summary = summarize(&label, &packets);

    // Decoding conserves the padded sample count and the timeline.
    let decoded = Harness::new(make_decoder(format)).run(packets.clone());
    assert_eq!(sample_frames_of(&decoded), expected_packets * frame_frames, "{label}: decoded sample frames");
    assert_contiguous(&format!("{label}, decoded"), &decoded, START);
    for frame in &decoded {
        let audio =
            frame.as_audio().unwrap_or_else(|| panic!("{label}: decoder emitted a {} frame", frame.kind_name()));
        assert_eq!(audio.format(), format, "{label}: decoded format");
    }

    // Any block size, with or without empty blocks between, gives the same packets.
    for block in BLOCK_SIZES {
        let output = Harness::new(make_encoder(format)).run(audio_blocks(format, &signal, block, START, TURN));
        assert_eq!(summarize(&label, &output), summary, "{label}: packets from blocks of {block}");
    }
    let output =
        Harness::new(make_encoder(format)).run(with_empty_blocks(audio_blocks(format, &signal, 333, START, TURN)));
    assert_eq!(summarize(&label, &output), summary, "{label}: packets with empty blocks");

    // After a flush or an interrupt mid-stream, both ends repeat themselves.
    for control in [Control::Flush, Control::Interrupt] {
        let mut encoder = Harness::new(make_encoder(format));
        encoder.push_all(audio_blocks(
            format,
            &signal[..frames / 2 * usize::from(format.channels)],
            480,
            MediaTime::ZERO,
            TurnId(1),
        ));
        encoder.control(control.clone());
        let output = encoder.run(whole.clone());
        assert_eq!(summarize(&label, &output), summary, "{label}: packets after {control:?}");

        let mut decoder = Harness::new(make_decoder(format));
        decoder.push_all(packets[..packets.len() / 2].iter().cloned());
        decoder.control(control.clone());
        let output = decoder.run(packets.clone());
        assert_eq!(output.len(), decoded.len(), "{label}: decoded frames after {control:?}");
        assert_eq!(samples_of(&output), samples_of(&decoded), "{label}: decoded samples after {control:?}");
        assert_contiguous(&format!("{label}, decoded after {control:?}"), &output, START);
    }

    // A second session after end of stream repeats the first, at both ends.
    let mut encoder = Harness::new(make_encoder(format));
    encoder.run(whole.clone());
    let output = encoder.run(whole.clone());
    assert_eq!(summarize(&label, &output), summary, "{label}: packets of a second session");
    let mut decoder = Harness::new(make_decoder(format));
    decoder.run(packets.clone());
    let output = decoder.run(packets.clone());
    assert_eq!(samples_of(&output), samples_of(&decoded), "{label}: decoded samples of a second session");

    // A session without input encodes nothing.
    let output = Harness::new(make_encoder(format)).finish();
    assert!(output.is_empty(), "{label}: an empty session emitted {} packets", output.len());
}

/// Returns what identifies each packet: timestamp, turn, duration and bytes
/// (the sequence number counts on across sessions of one harness).
fn summarize(label: &str, frames: &[Frame]) -> Vec<(MediaTime, TurnId, std::time::Duration, bytes::Bytes)> {
    frames
        .iter()
        .map(|frame| {
            let packet = packet_of(label, frame);
            (frame.meta.timestamp, frame.meta.turn, packet.duration, packet.data.clone())
        })
        .collect()
}

fn packet_of<'a>(label: &str, frame: &'a Frame) -> &'a mentis_pipeline::EncodedAudio {
    match &frame.payload {
        Payload::Encoded(packet) => packet,
        _ => panic!("{label}: encoder emitted a {} frame", frame.kind_name()),
    }
}

fn opus_encoder(format: AudioFormat, frame_duration: FrameDuration) -> OpusEncoder {
    let config = OpusEncoderConfig { frame_duration, ..OpusEncoderConfig::default() };
    OpusEncoder::with_config(stage_name("opus-encoder"), format, config).unwrap_or_else(|error| panic!("{error}"))
}

fn opus_decoder(format: AudioFormat) -> OpusDecoder {
    OpusDecoder::new(stage_name("opus-decoder"), format).unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn codec_opus_conforms() {
    for frame_duration in FrameDuration::ALL {
        let implementation = format!("opus {frame_duration:?}");
        codec_suite(&implementation, &OPUS_RATES, |format| opus_encoder(format, frame_duration), opus_decoder);
    }
}
