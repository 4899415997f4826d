//! Microphone capture and speaker playback through cpal (feature `device`).
//!
//! A device callback must never block, allocate or log, so the callbacks
//! here only move samples between the device buffer and the pipeline's
//! wait-free ring ([`mentis_pipeline::ring`]). [`Microphone`] drains its ring
//! every block period and emits audio frames; [`Speaker`] fills its ring from
//! the frames it receives and the output callback plays them, writing
//! silence on underrun. Overruns and underruns are counted, not logged.
//!
//! cpal streams are not `Send` on every platform, so each stream lives on a
//! thread of its own for as long as the stage runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use mentis_pipeline::ring::{RingConsumer, RingProducer, ring};
use mentis_pipeline::{
    AudioData, AudioFormat, Frame, MediaTime, PortFormat, Stage, StageError, StageFuture, StageIo, StageName,
    StageSpec, TurnId,
};

/// Ring capacity, in time: room for this much audio between the device
/// thread and the stage absorbs scheduling hiccups of the async runtime.
const RING_DURATION: Duration = Duration::from_millis(500);

/// A device that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The system has no default device of this kind.
    #[error("no default {kind} device found; connect one or check the sound server (ALSA on Linux)")]
    NoDevice {
        /// "input" or "output".
        kind: &'static str,
    },
    /// The device rejected a request.
    #[error("the default {kind} device failed to {action}: {message}")]
    Device {
        /// "input" or "output".
        kind: &'static str,
        /// The operation that failed.
        action: &'static str,
        /// The driver's message.
        message: String,
    },
}

/// Counters shared with the device callback.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Samples the callback could not store because the ring was full.
    pub overrun_samples: AtomicU64,
    /// Samples of silence played because the ring was empty.
    pub underrun_samples: AtomicU64,
    /// Errors the device reported while streaming.
    pub stream_errors: AtomicU64,
}

/// Moves captured samples into the ring, which counts what does not fit as
/// overrun. It takes no lock and allocates nothing (tested in `tests/device.rs`).
pub fn capture_callback(producer: &mut RingProducer<f32>, data: &[f32]) {
    producer.push(data);
}

/// Fills `out` from the ring and the rest with silence, counting the silence
/// as underrun. It takes no lock and allocates nothing (tested in `tests/device.rs`).
pub fn playback_callback(consumer: &mut RingConsumer<f32>, out: &mut [f32], underrun: &AtomicU64) {
    let read = consumer.pop(out);
    if read < out.len() {
        out[read..].fill(0.0);
        underrun.fetch_add((out.len() - read) as u64, Ordering::Relaxed);
    }
}

fn device_error(kind: &'static str, action: &'static str) -> impl Fn(cpal::Error) -> DeviceError {
    move |error| DeviceError::Device { kind, action, message: error.to_string() }
}

/// Opens a stream on its own thread and keeps it alive until `stop` closes.
fn run_stream_thread(
    build: impl FnOnce() -> Result<cpal::Stream, DeviceError> + Send + 'static,
    kind: &'static str,
) -> Result<(std::thread::JoinHandle<()>, std::sync::mpsc::SyncSender<()>), DeviceError> {
    // One start-up report, and a stop signal given by dropping the sender:
    // neither channel ever holds more than one message.
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name(format!("mentis-{kind}-device"))
        .spawn(move || {
            let stream = match build().and_then(|stream| {
                stream.play().map_err(device_error(kind, "start"))?;
                Ok(stream)
            }) {
                Ok(stream) => stream,
                Err(error) => {
                    let _ = started_tx.send(Err(error));
                    return;
                }
            };
            let _ = started_tx.send(Ok(()));
            // Blocks until the stage drops its sender.
            let _ = stop_rx.recv();
            drop(stream);
        })
        .map_err(|error| DeviceError::Device { kind, action: "start a thread", message: error.to_string() })?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok((thread, stop_tx)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(DeviceError::Device { kind, action: "start", message: "the device thread ended".to_owned() }),
    }
}

/// Captures the default microphone as f32 audio frames of `block` each.
#[derive(Debug)]
pub struct Microphone {
    name: StageName,
    device: cpal::Device,
    config: cpal::StreamConfig,
    block: Duration,
    counters: Arc<DeviceCounters>,
}

impl Microphone {
    /// Opens the default input device with its default configuration.
    pub fn open(name: StageName, block: Duration) -> Result<Self, DeviceError> {
        let host = cpal::default_host();
        let device = host.default_input_device().ok_or(DeviceError::NoDevice { kind: "input" })?;
        let config = device.default_input_config().map_err(device_error("input", "report its configuration"))?;
        Ok(Microphone { name, device, config: config.config(), block, counters: Arc::default() })
    }

    /// Returns the format of the frames the stage emits.
    pub fn format(&self) -> AudioFormat {
        AudioFormat {
            sample_rate: self.config.sample_rate,
            channels: self.config.channels,
            sample_format: mentis_pipeline::SampleFormat::F32,
        }
    }

    /// Returns the counters shared with the device callback.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        Arc::clone(&self.counters)
    }
}

impl Stage for Microphone {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::None, PortFormat::Audio(self.format()))
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let format = self.format();
            let channels = usize::from(format.channels);
            let (mut producer, mut consumer) = ring::<f32>(format.frames_in(RING_DURATION) * channels);

            let device = self.device.clone();
            let config = self.config.clone();
            let counters = Arc::clone(&self.counters);
            let (_thread, stop) = run_stream_thread(
                move || {
                    let errors = Arc::clone(&counters);
                    device
                        .build_input_stream(
                            config,
                            move |data: &[f32], _: &cpal::InputCallbackInfo| capture_callback(&mut producer, data),
                            move |_error| {
                                errors.stream_errors.fetch_add(1, Ordering::Relaxed);
                            },
                            None,
                        )
                        .map_err(device_error("input", "open a stream"))
                },
                "input",
            )
            .map_err(|error| StageError::config(error.to_string()))?;

            let block_samples = format.frames_in(self.block).max(1) * channels;
            let mut buffer = vec![0.0_f32; block_samples];
            let mut position: u64 = 0;
            let mut ticker = tokio::time::interval(self.block);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !io.is_cancelled() {
                ticker.tick().await;
                while consumer.available() >= block_samples {
                    let read = consumer.pop(&mut buffer);
                    let audio = AudioData::from_f32(format.sample_rate, format.channels, buffer[..read].to_vec())
                        .map_err(|error| StageError::fatal(format!("captured audio is invalid: {error}")))?;
                    let meta = io.outbox.next_meta(TurnId::NONE, MediaTime::from_samples(position, format.sample_rate));
                    position += (read / channels) as u64;
                    io.outbox.send(Frame::audio(meta, audio)).await?;
                }
                self.counters.overrun_samples.store(consumer.overrun(), Ordering::Relaxed);
            }
            drop(stop);
            Ok(())
        })
    }
}

/// Plays f32 audio frames of one format on the default speaker.
#[derive(Debug)]
pub struct Speaker {
    name: StageName,
    device: cpal::Device,
    format: AudioFormat,
    counters: Arc<DeviceCounters>,
}

impl Speaker {
    /// Opens the default output device for audio in `format`, which must be
    /// f32. The device must accept the format's rate and channel count.
    pub fn open(name: StageName, format: AudioFormat) -> Result<Self, DeviceError> {
        let host = cpal::default_host();
        let device = host.default_output_device().ok_or(DeviceError::NoDevice { kind: "output" })?;
        Ok(Speaker { name, device, format, counters: Arc::default() })
    }

    /// Returns the counters shared with the device callback.
    pub fn counters(&self) -> Arc<DeviceCounters> {
        Arc::clone(&self.counters)
    }
}

impl Stage for Speaker {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.format), PortFormat::None)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let channels = usize::from(self.format.channels);
            let (mut producer, mut consumer) = ring::<f32>(self.format.frames_in(RING_DURATION) * channels);
            let config = cpal::StreamConfig {
                channels: self.format.channels,
                sample_rate: self.format.sample_rate,
                buffer_size: cpal::BufferSize::Default,
            };
            let device = self.device.clone();
            let counters = Arc::clone(&self.counters);
            let (_thread, stop) = run_stream_thread(
                move || {
                    let errors = Arc::clone(&counters);
                    device
                        .build_output_stream(
                            config,
                            move |out: &mut [f32], _: &cpal::OutputCallbackInfo| {
                                playback_callback(&mut consumer, out, &counters.underrun_samples);
                            },
                            move |_error| {
                                errors.stream_errors.fetch_add(1, Ordering::Relaxed);
                            },
                            None,
                        )
                        .map_err(device_error("output", "open a stream"))
                },
                "output",
            )
            .map_err(|error| StageError::config(error.to_string()))?;

            let capacity = producer.free();
            while let Some(frame) = io.inbox.recv().await {
                let Some(audio) = frame.as_audio() else {
                    continue;
                };
                let samples = audio.to_f32();
                let mut written = 0;
                // The speaker plays in real time: wait for room instead of dropping audio.
                while written < samples.len() {
                    let room = producer.free().min(samples.len() - written);
                    written += producer.push(&samples[written..written + room]);
                    if written < samples.len() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if io.is_cancelled() {
                        return Ok(());
                    }
                }
            }
            // Let the queued audio play out before closing the stream.
            while producer.free() < capacity && !io.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(stop);
            Ok(())
        })
    }
}
