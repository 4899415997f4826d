//! Voice activity detection cost per 20 ms of 16 kHz mono audio, in
//! microseconds of CPU time on the calling thread.
//!
//! - `vad_detector/webrtc` and `vad_detector/silero`: the detector alone rates
//!   one 20 ms block (320 samples). WebRTC VAD decides each 20 ms frame; Silero
//!   runs one inference per 32 ms (512 samples), so its time is the average
//!   over blocks that run zero or one inference, that is 0.625 inferences.
//! - `vad_stage/webrtc` and `vad_stage/silero`: the whole [`Vad`] processor
//!   (detector, segmenter, turn tagging and held audio) takes one 20 ms block.
//!
//! The audio is a LibriVox recording from Debian's `pocketsphinx-testdata`,
//! looped, so the detectors see real speech and pauses. Silero needs the
//! files that `scripts/setup --audio` downloads.
//!
//! Run with `cargo bench --bench vad`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mentis::pipeline::stage::{Emitter, Processor};
use mentis::pipeline::{AudioData, Frame, FrameMeta, MediaTime, SessionId, StageName};
use mentis::stages::vad::{Pcm, SileroConfig, SileroVad, Vad, VoiceDetector, WebRtcConfig, WebRtcVad};
use mentis::stages::wav::PcmReader;

const RATE: u32 = 16_000;
/// 20 ms at 16 kHz.
const BLOCK: usize = 320;
const RECORDING: &str = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav";

fn read_recording() -> Vec<i16> {
    let source = std::fs::File::open(RECORDING)
        .unwrap_or_else(|error| panic!("cannot open {RECORDING}: {error}; install pocketsphinx-testdata"));
    let mut reader =
        PcmReader::wav(std::io::BufReader::new(source), RECORDING).unwrap_or_else(|error| panic!("{error}"));
    let mut samples = Vec::new();
    while reader.read_i16(8_192, &mut samples).unwrap_or_else(|error| panic!("{error}")) > 0 {}
    samples
}

fn webrtc() -> WebRtcVad {
    WebRtcVad::new(WebRtcConfig::new(RATE)).unwrap_or_else(|error| panic!("{error}"))
}

fn silero() -> SileroVad {
    SileroVad::new(SileroConfig::new(RATE))
        .unwrap_or_else(|error| panic!("Silero VAD is not available: {error}\nRun `scripts/setup --audio` first."))
}

/// Feeds the recording to the detector block by block, round and round.
fn bench_detector<D: VoiceDetector>(criterion: &mut Criterion, name: &str, mut detector: D, blocks: &[&[i16]]) {
    let mut group = criterion.benchmark_group("vad_detector");
    group.throughput(Throughput::Elements(BLOCK as u64));
    let mut probabilities = Vec::with_capacity(4);
    let mut next = 0;
    group.bench_function(name, |bencher| {
        bencher.iter(|| {
            probabilities.clear();
            let block = blocks[next % blocks.len()];
            next += 1;
            detector.push(Pcm::I16(black_box(block)), &mut probabilities).unwrap_or_else(|error| panic!("{error}"));
            black_box(&probabilities);
        });
    });
    group.finish();
}

/// Feeds the recording to a [`Vad`] stage as 20 ms frames with increasing
/// timestamps, draining what it emits.
fn bench_stage<D: VoiceDetector>(criterion: &mut Criterion, name: &str, detector: D, blocks: &[&[i16]]) {
    let stage_name = StageName::new("vad").unwrap_or_else(|error| panic!("{error}"));
    let mut vad = Vad::new(stage_name, detector).unwrap_or_else(|error| panic!("{error}"));
    let audio: Vec<AudioData> = blocks
        .iter()
        .map(|block| AudioData::from_i16(RATE, 1, block.to_vec()).unwrap_or_else(|error| panic!("{error}")))
        .collect();
    let mut out = Emitter::new(SessionId(1));
    let mut position = 0_u64;

    let mut group = criterion.benchmark_group("vad_stage");
    group.throughput(Throughput::Elements(BLOCK as u64));
    group.bench_function(name, |bencher| {
        bencher.iter(|| {
            let block = &audio[(position / BLOCK as u64) as usize % audio.len()];
            let meta = FrameMeta { timestamp: MediaTime::from_samples(position, RATE), ..FrameMeta::new(SessionId(1)) };
            position += BLOCK as u64;
            vad.process(Frame::audio(meta, block.clone()), &mut out).unwrap_or_else(|error| panic!("{error}"));
            for frame in out.drain() {
                black_box(frame);
            }
        });
    });
    group.finish();
}

fn vad_benches(criterion: &mut Criterion) {
    let recording = read_recording();
    let blocks: Vec<&[i16]> = recording.chunks_exact(BLOCK).collect();

    bench_detector(criterion, "webrtc", webrtc(), &blocks);
    bench_detector(criterion, "silero", silero(), &blocks);
    bench_stage(criterion, "webrtc", webrtc(), &blocks);
    bench_stage(criterion, "silero", silero(), &blocks);
}

criterion_group!(vad, vad_benches);
criterion_main!(vad);
