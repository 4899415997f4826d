//! File capture and WAV sink stages, run inside real pipeline graphs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mentis_pipeline::basic::{ChannelSink, ChannelSource};
use mentis_pipeline::{
    AudioData, AudioFormat, Control, EdgeConfig, Frame, FrameMeta, GraphBuilder, MediaTime, PortFormat, PrivacyPolicy,
    PrivacyTier, SampleFormat, SessionError, SessionId, StageName, TurnId,
};
use mentis_stages::capture::{CaptureError, CaptureOptions, CaptureSource, FileCapture, Pacing};
use mentis_stages::sink::{SinkCounters, SinkOptions, WavSink};
use mentis_stages::wav::{self, ChannelMode, PcmEncoding, PcmSpec, ReadOptions, WavError, WavWriter};

const LIBRIVOX: &str = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav";
const GOFORWARD: &str = "/usr/share/pocketsphinx/test/data/goforward.raw";

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

fn require(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(path.exists(), "{} is missing: run scripts/setup (Debian package pocketsphinx-testdata)", path.display());
    path
}

fn read_i16(path: &Path) -> (AudioFormat, Vec<i16>) {
    let options = ReadOptions { sample_format: SampleFormat::I16, ..ReadOptions::default() };
    let decoded = wav::read_wav_file(path, &options).unwrap_or_else(|error| panic!("{error}"));
    let track = &decoded.tracks[0];
    (track.format(), track.to_i16())
}

/// Runs capture -> sink to completion and returns the sink's counters.
async fn capture_into_sink(capture: FileCapture, output: &Path, options: SinkOptions) -> SinkCounters {
    let (sink, counters) = WavSink::create(name("sink"), output, options).expect("sink file");
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let source = graph.add(capture);
    let sink = graph.add(sink);
    graph.connect(source, sink, EdgeConfig::lossless(8));
    let pipeline = graph.build().expect("valid graph");
    pipeline.start(SessionId(1)).wait().await.expect("session ends cleanly");
    counters
}

#[tokio::test]
async fn librivox_round_trip_i16() {
    let input = require(LIBRIVOX);
    let dir = tempfile::tempdir().expect("temporary folder");
    let output = dir.path().join("copy.wav");

    let capture = FileCapture::open(name("capture"), CaptureSource::Wav(input.clone()), CaptureOptions::default())
        .expect("open capture");
    assert_eq!(capture.format(), AudioFormat::mono_i16(16_000));
    assert_eq!(capture.block_frames(), 320);
    let counters = capture_into_sink(capture, &output, SinkOptions::default()).await;

    let (input_format, input_samples) = read_i16(&input);
    let (output_format, output_samples) = read_i16(&output);
    assert_eq!(output_format, input_format);
    assert_eq!(output_samples.len(), input_samples.len());
    assert!(output_samples == input_samples, "samples differ after capture and sink");
    assert_eq!(counters.sample_frames(), input_samples.len() as u64);
    assert_eq!(counters.frames(), input_samples.len().div_ceil(320) as u64);
    assert_eq!(counters.silence_frames(), 0);
    assert!(counters.is_finished());
}

#[tokio::test]
async fn raw_capture_to_float_file() {
    let input = require(GOFORWARD);
    let dir = tempfile::tempdir().expect("temporary folder");
    let output = dir.path().join("goforward.wav");

    let source = CaptureSource::Raw { path: input.clone(), spec: PcmSpec::mono_s16le(16_000) };
    let options = CaptureOptions {
        sample_format: SampleFormat::F32,
        block: Duration::from_millis(30),
        ..CaptureOptions::default()
    };
    let capture = FileCapture::open(name("capture"), source, options).expect("open capture");
    assert_eq!(capture.format(), AudioFormat::mono_f32(16_000));
    let sink_options = SinkOptions { format: Some(AudioFormat::mono_f32(16_000)), ..SinkOptions::default() };
    capture_into_sink(capture, &output, sink_options).await;

    let decoded = wav::read_wav_file(&output, &ReadOptions::default()).expect("float output");
    assert_eq!(decoded.spec.encoding, PcmEncoding::F32);
    let raw = std::fs::read(&input).expect("raw bytes");
    let expected: Vec<f32> =
        raw.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0).collect();
    assert!(decoded.tracks[0].to_f32() == expected, "float samples differ from the raw file");
}

#[tokio::test]
async fn stereo_capture_downmixed() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("stereo.wav");
    let output = dir.path().join("mono.wav");
    let stereo_format = AudioFormat { channels: 2, ..AudioFormat::mono_i16(8_000) };
    let mut writer = WavWriter::create(&input, stereo_format).expect("create input");
    // Left 100, right 300 for 250 frames (not a whole number of 20 ms blocks).
    let samples: Vec<i16> = (0..250).flat_map(|_| [100, 300]).collect();
    writer.write_i16(&samples).expect("write input");
    writer.finish().expect("finish input");

    let keep = FileCapture::open(name("capture"), CaptureSource::Wav(input.clone()), CaptureOptions::default())
        .expect("open capture");
    assert_eq!(keep.format().channels, 2);

    let options = CaptureOptions { channel_mode: ChannelMode::Downmix, ..CaptureOptions::default() };
    let capture = FileCapture::open(name("capture"), CaptureSource::Wav(input), options).expect("open capture");
    assert_eq!(capture.format(), AudioFormat::mono_i16(8_000));
    let counters = capture_into_sink(capture, &output, SinkOptions::default()).await;

    let (format, mono) = read_i16(&output);
    assert_eq!(format, AudioFormat::mono_i16(8_000));
    assert_eq!(mono, vec![200; 250]);
    // 160-frame blocks: 160 + 90.
    assert_eq!(counters.frames(), 2);
}

#[tokio::test]
async fn capture_config_errors() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let missing = dir.path().join("missing.wav");
    let error = FileCapture::open(name("capture"), CaptureSource::Wav(missing), CaptureOptions::default())
        .expect_err("missing file");
    assert!(matches!(error, CaptureError::Wav(WavError::Open { .. })), "{error:?}");
    assert!(error.to_string().contains("missing.wav"), "{error}");

    let input = require(LIBRIVOX);
    let options = CaptureOptions { block: Duration::from_micros(10), ..CaptureOptions::default() };
    let error =
        FileCapture::open(name("capture"), CaptureSource::Wav(input), options).expect_err("block under one sample");
    assert!(matches!(error, CaptureError::BlockTooShort { sample_rate: 16_000, .. }), "{error:?}");

    let stereo = dir.path().join("stereo.wav");
    let writer =
        WavWriter::create(&stereo, AudioFormat { channels: 2, ..AudioFormat::mono_i16(8_000) }).expect("create");
    writer.finish().expect("finish");
    let options = CaptureOptions { channel_mode: ChannelMode::Split, ..CaptureOptions::default() };
    let error = FileCapture::open(name("capture"), CaptureSource::Wav(stereo), options).expect_err("split");
    assert!(matches!(error, CaptureError::SplitUnsupported { channels: 2, .. }), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn paced_capture_follows_media_clock() {
    let input = require(LIBRIVOX);
    let options = CaptureOptions { pacing: Pacing::RealTime, ..CaptureOptions::default() };
    let capture = FileCapture::open(name("capture"), CaptureSource::Wav(input), options).expect("open capture");

    let (sink, mut receiver) = ChannelSink::new(name("sink"), PortFormat::AnyAudio, EdgeConfig::lossless(4));
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let source = graph.add(capture);
    let sink = graph.add(sink);
    graph.connect(source, sink, EdgeConfig::lossless(4));
    let start = tokio::time::Instant::now();
    let session = graph.build().expect("valid graph").start(SessionId(7));

    // Frame n arrives exactly n x 20 ms after the start, stamped with that media time.
    let mut index: u64 = 0;
    let mut frames = 0;
    while let Some(frame) = receiver.recv().await {
        if frame.as_control() == Some(&Control::EndOfStream) {
            continue;
        }
        let block = frame.as_audio().expect("audio frame");
        let expected = Duration::from_millis(20) * u32::try_from(index).expect("small index");
        assert_eq!(start.elapsed(), expected, "release time of frame {index}");
        assert_eq!(frame.meta.timestamp, MediaTime::from_duration(expected), "timestamp of frame {index}");
        assert_eq!(frame.meta.seq, index, "sequence number");
        assert_eq!(frame.meta.session, SessionId(7));
        frames += block.frames();
        index += 1;
    }
    session.wait().await.expect("session ends cleanly");

    // 47,840 samples: 149 full blocks of 320 and one of 160.
    assert_eq!(frames, 47_840);
    assert_eq!(index, 150);
    assert_eq!(start.elapsed(), Duration::from_millis(20 * 149));
}

/// Sends frames stamped at the given media times into a timeline-mode sink.
async fn run_timeline_sink(
    output: &Path,
    frames: Vec<(Duration, Vec<i16>)>,
    format: PortFormat,
) -> Result<SinkCounters, SessionError> {
    let (sender, source) = ChannelSource::new(name("input"), format, EdgeConfig::lossless(16));
    let options = SinkOptions { timeline: true, ..SinkOptions::default() };
    let (sink, counters) = WavSink::create(name("sink"), output, options).expect("sink file");
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let source = graph.add(source);
    let sink = graph.add(sink);
    graph.connect(source, sink, EdgeConfig::lossless(16));
    let session = graph.build().expect("valid graph").start(SessionId(2));

    for (seq, (at, samples)) in frames.into_iter().enumerate() {
        let meta = FrameMeta {
            session: SessionId(2),
            turn: TurnId(1),
            seq: seq as u64,
            timestamp: MediaTime::from_duration(at),
        };
        let audio = AudioData::from_i16(8_000, 1, samples).expect("valid audio");
        if sender.send(Frame::audio(meta, audio)).await.is_err() {
            break;
        }
    }
    drop(sender);
    session.wait().await.map(|_| counters)
}

#[tokio::test]
async fn timeline_sink_fills_gaps() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let output = dir.path().join("reply.wav");
    let format = PortFormat::Audio(AudioFormat::mono_i16(8_000));
    // 8 kHz: 10 ms = 80 frames. The reply starts at 100 ms, pauses from
    // 120 ms to 200 ms, and one frame overlaps the one before it.
    let frames = vec![
        (Duration::from_millis(100), vec![1; 80]),
        (Duration::from_millis(110), vec![2; 80]),
        (Duration::from_millis(200), vec![3; 80]),
        (Duration::from_millis(205), vec![4; 80]),
    ];
    let counters = run_timeline_sink(&output, frames, format).await.expect("session ends cleanly");

    let (_, samples) = read_i16(&output);
    let mut expected = vec![0_i16; 800];
    expected.extend(vec![1; 80]);
    expected.extend(vec![2; 80]);
    expected.extend(vec![0; 640]);
    expected.extend(vec![3; 80]);
    expected.extend(vec![4; 80]);
    assert_eq!(samples.len(), expected.len());
    assert!(samples == expected, "timeline layout differs");
    assert_eq!(counters.frames(), 4);
    assert_eq!(counters.silence_frames(), 1_440);
    assert_eq!(counters.overlapping_frames(), 1);
    assert_eq!(counters.sample_frames(), 1_760);
}

#[tokio::test]
async fn any_audio_sink_rejects_format_change() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let output = dir.path().join("mixed.wav");
    let (sender, source) = ChannelSource::new(name("input"), PortFormat::AnyAudio, EdgeConfig::lossless(4));
    let (sink, counters) = WavSink::create(name("sink"), &output, SinkOptions::default()).expect("sink file");
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let source = graph.add(source);
    let sink = graph.add(sink);
    graph.connect(source, sink, EdgeConfig::lossless(4));
    let session = graph.build().expect("valid graph").start(SessionId(3));

    let meta = FrameMeta::new(SessionId(3));
    let first = AudioData::from_i16(16_000, 1, vec![5_i16; 160]).expect("valid audio");
    let second = AudioData::from_i16(48_000, 1, vec![5_i16; 480]).expect("valid audio");
    // The sink may stop before the second send, so its result is not checked.
    sender.send(Frame::audio(meta, first)).await.expect("first frame");
    let _ = sender.send(Frame::audio(FrameMeta { seq: 1, ..meta }, second)).await;
    drop(sender);

    let error = session.wait().await.expect_err("a 48 kHz frame into a 16 kHz file");
    assert_eq!(error.stage().as_str(), "sink");
    let message = error.to_string();
    assert!(message.contains("mixed.wav"), "{message}");
    assert!(message.contains("48000 Hz"), "{message}");
    assert_eq!(counters.frames(), 1);
}
