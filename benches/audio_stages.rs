//! CPU cost of the audio conversion stages, in time per 20 ms frame of audio.
//! One real-time stream uses (time per frame) / 20 ms of one core.
//!
//! - `resample/fft_48k_to_16k` and `resample/sinc_48k_to_16k`: one 20 ms
//!   block (960 mono float samples) through `StreamResampler::process_into`
//!   in steady state, with the FFT and the sinc resampler.
//! - `resample/stage_48k_to_16k_i16`: the same block as a 16-bit audio frame
//!   through the `Resample` stage, including the sample conversions and the
//!   output frame.
//! - `opus/libopus_48k_mono_20ms`: encoding one 20 ms frame at 48 kHz mono
//!   (libopus defaults, VoIP application) and decoding the packet, with
//!   libopus alone and buffers allocated beforehand.
//! - `opus/stages_48k_mono_20ms`: the same through the `OpusEncoder` and
//!   `OpusDecoder` stages, frames and packets included.
//!
//! Run with `cargo bench --no-default-features --bench audio_stages`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mentis::pipeline::stage::{Emitter, Processor};
use mentis::pipeline::{AudioData, AudioFormat, Frame, FrameMeta, MediaTime, SessionId, StageName, TurnId};
use mentis::stages::opus::{OpusDecoder, OpusEncoder};
use mentis::stages::resample::{Resample, ResamplerKind, StreamResampler};

/// Sample frames in 20 ms at 48 kHz.
const FRAME_48K: usize = 960;

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

/// 20 ms of two tones and a little noise at 48 kHz, so that neither codec nor
/// resampler sees silence.
fn test_frame() -> Vec<f32> {
    let mut state = 0x2545_F491_u32;
    (0..FRAME_48K)
        .map(|index| {
            let time = index as f32 / 48_000.0;
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state as f32 / u32::MAX as f32 - 0.5) * 0.02;
            0.4 * (std::f32::consts::TAU * 220.0 * time).sin()
                + 0.2 * (std::f32::consts::TAU * 1_870.0 * time).sin()
                + noise
        })
        .collect()
}

fn audio_frame(seq: u64, samples: &[f32]) -> Frame {
    let pcm: Vec<i16> = samples.iter().map(|&sample| mentis::pipeline::frame::f32_to_i16(sample)).collect();
    let audio = AudioData::from_i16(48_000, 1, pcm).expect("valid audio");
    let timestamp = MediaTime::from_samples(seq * FRAME_48K as u64, 48_000);
    Frame::audio(FrameMeta { session: SessionId(1), turn: TurnId(1), seq, timestamp }, audio)
}

fn resample_benches(c: &mut Criterion) {
    let input = test_frame();
    let mut group = c.benchmark_group("resample");

    for (label, kind) in [("fft_48k_to_16k", ResamplerKind::Fft), ("sinc_48k_to_16k", ResamplerKind::Sinc)] {
        let mut resampler = StreamResampler::new(48_000, 16_000, 1, kind).expect("supported rates");
        let mut output = vec![0.0_f32; resampler.output_len_max(2 * FRAME_48K)];
        group.bench_function(label, |b| {
            b.iter(|| black_box(resampler.process_into(black_box(&input), &mut output).expect("resampled")));
        });
    }

    let mut stage = Resample::new(name("resample"), AudioFormat::mono_i16(48_000), 16_000).expect("supported rates");
    let mut emitter = Emitter::new(SessionId(1));
    let mut seq = 0;
    group.bench_function("stage_48k_to_16k_i16", |b| {
        b.iter_batched(
            || {
                seq += 1;
                audio_frame(seq, &input)
            },
            |frame| {
                stage.process(frame, &mut emitter).expect("resampled");
                emitter.drain().for_each(drop);
            },
            criterion::BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn opus_benches(c: &mut Criterion) {
    let input = test_frame();
    let mut group = c.benchmark_group("opus");

    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("libopus encoder");
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).expect("libopus decoder");
    let mut packet = vec![0_u8; 4_000];
    let mut pcm = vec![0.0_f32; 5_760];
    group.bench_function("libopus_48k_mono_20ms", |b| {
        b.iter(|| {
            let len = encoder.encode_float(black_box(&input), &mut packet).expect("encoded");
            black_box(decoder.decode_float(&packet[..len], &mut pcm, false).expect("decoded"))
        });
    });

    let format = AudioFormat::mono_i16(48_000);
    let mut encoder_stage = OpusEncoder::new(name("opus-encoder"), format).expect("Opus rate");
    let mut decoder_stage = OpusDecoder::new(name("opus-decoder"), format).expect("Opus rate");
    let mut encoded = Emitter::new(SessionId(1));
    let mut decoded = Emitter::new(SessionId(1));
    let mut seq = 0;
    group.bench_function("stages_48k_mono_20ms", |b| {
        b.iter_batched(
            || {
                seq += 1;
                audio_frame(seq, &input)
            },
            |frame| {
                encoder_stage.process(frame, &mut encoded).expect("encoded");
                for packet in encoded.drain() {
                    decoder_stage.process(packet, &mut decoded).expect("decoded");
                }
                decoded.drain().for_each(drop);
            },
            criterion::BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(resample, resample_benches);
criterion_group!(codec, opus_benches);
criterion_main!(resample, codec);
