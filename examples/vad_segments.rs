//! Finds the speech segments of a recording with voice activity detection and
//! prints where each one starts and ends.
//!
//! ```text
//! cargo run --release --example vad_segments -- [--silero] [FILE.wav]
//! ```
//!
//! The pipeline graph is: a channel source that emits 10 ms frames at 48 kHz,
//! a `Resample` stage to 16 kHz, a `Vad` stage (WebRTC VAD, or Silero VAD
//! with `--silero`), and a channel sink. A 16 kHz file is upsampled to 48 kHz
//! in memory first, standing in for a 48 kHz microphone. A file at another
//! sample rate goes in at its own rate and is resampled to 16 kHz.
//!
//! FILE must be a mono WAV file. It defaults to a LibriVox clip from Debian's
//! `pocketsphinx-testdata` package. `--silero` needs the ONNX Runtime library
//! and the Silero model that `scripts/setup --audio` downloads.

use std::path::PathBuf;
use std::sync::Arc;

use mentis::pipeline::basic::{ChannelSink, ChannelSource};
use mentis::pipeline::{
    AudioData, AudioFormat, Control, EdgeConfig, Frame, FrameMeta, GraphBuilder, MediaTime, PortFormat,
    PrivacyPolicy, PrivacyTier, SessionId, StageName, TurnId, processor,
};
use mentis::stages::resample::{Resample, ResamplerKind, StreamResampler};
use mentis::stages::vad::{SileroConfig, SileroVad, Vad, WebRtcConfig, WebRtcVad};
use mentis::stages::wav;

const DEFAULT_FILE: &str = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav";

/// The rate the VAD runs at, in Hz.
const VAD_RATE: u32 = 16_000;

/// The rate a 16 kHz file is upsampled to before it enters the pipeline, in Hz.
const DEVICE_RATE: u32 = 48_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();

    let mut use_silero = false;
    let mut path = PathBuf::from(DEFAULT_FILE);
    for argument in std::env::args().skip(1) {
        match argument.as_str() {
            "--silero" => use_silero = true,
            "--help" | "-h" => {
                println!("usage: vad_segments [--silero] [FILE.wav]");
                return Ok(());
            }
            _ => path = PathBuf::from(argument),
        }
    }

    // Read the file, then bring 16 kHz audio up to the device rate.
    let (samples, file_rate) = read_mono(&path)?;
    let (samples, input_rate) = if file_rate == VAD_RATE {
        let mut upsampler = StreamResampler::new(VAD_RATE, DEVICE_RATE, 1, ResamplerKind::Fft)?;
        let mut upsampled = upsampler.process(&samples)?;
        upsampled.extend(upsampler.flush()?);
        (upsampled, DEVICE_RATE)
    } else {
        (samples, file_rate)
    };
    println!(
        "{}: {:.2} s, {} Hz into the pipeline, VAD at {VAD_RATE} Hz with {}",
        path.display(),
        samples.len() as f64 / f64::from(input_rate),
        input_rate,
        if use_silero { "Silero" } else { "WebRTC" }
    );

    // source -> resample -> vad -> sink, every edge lossless: this is a batch run.
    let input_format = AudioFormat::mono_i16(input_rate);
    let vad_format = AudioFormat::mono_i16(VAD_RATE);
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let (sender, source) = ChannelSource::new(StageName::new("input")?, PortFormat::Audio(input_format), EdgeConfig::lossless(32));
    let resample = Resample::new(StageName::new("resample")?, input_format, VAD_RATE)?;
    let vad = if use_silero {
        processor(Vad::new(StageName::new("vad")?, SileroVad::new(SileroConfig::new(VAD_RATE))?)?)
    } else {
        processor(Vad::new(StageName::new("vad")?, WebRtcVad::new(WebRtcConfig::new(VAD_RATE))?)?)
    };
    let (sink, mut receiver) = ChannelSink::new(StageName::new("output")?, PortFormat::Audio(vad_format), EdgeConfig::lossless(1_024));
    graph.chain(vec![Box::new(source), processor(resample), vad, Box::new(sink)], EdgeConfig::lossless(32));
    let session = graph.build()?.start(SessionId(1));

    // Feed 10 ms frames; dropping the sender ends the stream.
    let feeder = tokio::spawn(async move {
        let block = (input_rate / 100) as usize;
        let mut first = 0_u64;
        for chunk in samples.chunks(block) {
            let pcm: Vec<i16> = chunk.iter().map(|&sample| mentis::pipeline::frame::f32_to_i16(sample)).collect();
            let audio = AudioData::from_i16(input_rate, 1, Arc::<[i16]>::from(pcm))?;
            let meta = FrameMeta { timestamp: MediaTime::from_samples(first, input_rate), ..FrameMeta::new(SessionId(1)) };
            first += chunk.len() as u64;
            if sender.send(Frame::audio(meta, audio)).await.is_err() {
                break;
            }
        }
        Ok::<(), mentis::pipeline::frame::AudioDataError>(())
    });

    // Print each segment as its events arrive.
    let mut open: Option<(TurnId, MediaTime)> = None;
    let mut segments = 0;
    while let Some(frame) = receiver.recv().await {
        match frame.as_control() {
            Some(Control::SpeechStarted) => open = Some((frame.meta.turn, frame.meta.timestamp)),
            Some(Control::SpeechStopped) => {
                let start = open.take().map_or(frame.meta.timestamp, |(_, start)| start);
                segments += 1;
                println!(
                    "segment {segments} ({}): {:7.3} s to {:7.3} s",
                    frame.meta.turn,
                    start.as_duration().as_secs_f64(),
                    frame.meta.timestamp.as_duration().as_secs_f64()
                );
            }
            Some(Control::EndOfTurn) => println!("  end of {}", frame.meta.turn),
            Some(Control::Interrupt) => println!("  interrupt for {}", frame.meta.turn),
            Some(Control::EndOfStream) => break,
            _ => {}
        }
    }

    feeder.await??;
    session.wait().await?;
    println!("{segments} segment(s)");
    Ok(())
}

/// Reads a mono WAV file as floats; returns the samples and the sample rate.
fn read_mono(path: &PathBuf) -> Result<(Vec<f32>, u32), Box<dyn std::error::Error>> {
    let mut reader = wav::open_wav(path)?;
    let spec = reader.spec();
    if spec.channels != 1 {
        return Err(format!("{} has {} channels; this example takes mono files", path.display(), spec.channels).into());
    }
    let mut samples = Vec::new();
    while reader.read_f32(8_192, &mut samples)? > 0 {}
    Ok((samples, spec.sample_rate))
}
