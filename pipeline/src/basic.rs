//! Small general-purpose stages: a pass-through, a tone source, a counting
//! sink, and the channel source and sink that connect a graph to the code
//! that embeds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::edge::{self, EdgeConfig, Receiver, Sender};
use crate::error::StageError;
use crate::format::{AudioFormat, PortFormat, SampleFormat};
use crate::frame::{AudioData, Frame, MediaTime, Samples};
use crate::id::{StageName, TurnId};
use crate::stage::{Stage, StageFuture, StageIo, StageSpec};

/// Forwards every frame unchanged.
#[derive(Debug)]
pub struct PassThrough {
    name: StageName,
    format: PortFormat,
}

impl PassThrough {
    /// Creates a pass-through that accepts and emits `format`.
    pub fn new(name: StageName, format: PortFormat) -> Self {
        PassThrough { name, format }
    }
}

impl Stage for PassThrough {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), self.format, self.format)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            while let Some(frame) = io.inbox.recv().await {
                io.outbox.send(frame).await?;
            }
            Ok(())
        })
    }
}

impl From<AudioFormat> for PortFormat {
    fn from(format: AudioFormat) -> Self {
        PortFormat::Audio(format)
    }
}

/// Emits a sine tone as a fixed number of audio frames, as fast as the graph
/// takes them, or paced on the tokio clock.
#[derive(Debug)]
pub struct ToneSource {
    name: StageName,
    format: AudioFormat,
    block: Duration,
    frames: u64,
    frequency_hz: f32,
    paced: bool,
}

impl ToneSource {
    /// Creates a 440 Hz tone of `frames` blocks of `block` each. `format` must have a
    /// sample rate above zero and at least one channel.
    pub fn new(name: StageName, format: AudioFormat, block: Duration, frames: u64) -> Self {
        ToneSource { name, format, block, frames, frequency_hz: 440.0, paced: false }
    }

    /// Releases each block when its media time comes, on the tokio clock.
    #[must_use]
    pub fn paced(mut self) -> Self {
        self.paced = true;
        self
    }
}

impl Stage for ToneSource {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::None, PortFormat::Audio(self.format))
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let frames_per_block = self.format.frames_in(self.block);
            let channels = usize::from(self.format.channels);
            let rate = self.format.sample_rate as f32;
            let start = tokio::time::Instant::now();
            let mut position: u64 = 0;
            for index in 0..self.frames {
                if self.paced {
                    tokio::time::sleep_until(start + self.block * u32::try_from(index).unwrap_or(u32::MAX)).await;
                }
                let mut samples = Vec::with_capacity(frames_per_block * channels);
                for offset in 0..frames_per_block as u64 {
                    let t = (position + offset) as f32 / rate;
                    let value = (std::f32::consts::TAU * self.frequency_hz * t).sin() * 0.25;
                    samples.extend(std::iter::repeat_n(value, channels));
                }
                let samples = match self.format.sample_format {
                    SampleFormat::F32 => Samples::F32(samples.into()),
                    SampleFormat::I16 => Samples::I16(samples.iter().map(|&s| crate::frame::f32_to_i16(s)).collect()),
                };
                let audio = AudioData::new(self.format, samples)
                    .map_err(|error| StageError::config(format!("tone source format is invalid: {error}")))?;
                let meta = io.outbox.next_meta(TurnId::NONE, MediaTime::from_samples(position, self.format.sample_rate));
                io.outbox.send(Frame::audio(meta, audio)).await?;
                position += frames_per_block as u64;
            }
            Ok(())
        })
    }
}

/// Counts the frames it receives and discards them.
#[derive(Debug)]
pub struct CountingSink {
    name: StageName,
    count: Arc<AtomicU64>,
}

impl CountingSink {
    /// Creates a sink and the counter it increments.
    pub fn new(name: StageName) -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (CountingSink { name, count: Arc::clone(&count) }, count)
    }
}

impl Stage for CountingSink {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Any, PortFormat::None)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            while let Some(_frame) = io.inbox.recv().await {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    }
}

/// A source fed by the embedding code through a [`Sender`].
#[derive(Debug)]
pub struct ChannelSource {
    name: StageName,
    format: PortFormat,
    receiver: Receiver,
}

impl ChannelSource {
    /// Creates a source stage that emits `format`, and the sender that feeds it. The
    /// source ends when the sender is dropped.
    pub fn new(name: StageName, format: PortFormat, config: EdgeConfig) -> (Sender, Self) {
        let (sender, receiver) = edge::channel(format!("input -> {name}"), config);
        (sender, ChannelSource { name, format, receiver })
    }
}

impl Stage for ChannelSource {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::None, self.format)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            loop {
                let next = tokio::select! {
                    biased;
                    () = io.inbox.cancel_token().cancelled() => return Ok(()),
                    next = self.receiver.recv() => next,
                };
                match next {
                    Some(frame) if frame.as_control() == Some(&crate::frame::Control::EndOfStream) => return Ok(()),
                    Some(frame) => io.outbox.send(frame).await?,
                    None => return Ok(()),
                }
            }
        })
    }
}

/// A sink that hands every frame to the embedding code through a [`Receiver`].
#[derive(Debug)]
pub struct ChannelSink {
    name: StageName,
    format: PortFormat,
    sender: Option<Sender>,
}

impl ChannelSink {
    /// Creates a sink stage that accepts `format`, and the receiver that drains it.
    /// After a clean end the receiver gets one `EndOfStream` frame and then
    /// `None`; after a cancellation it gets only `None`.
    pub fn new(name: StageName, format: PortFormat, config: EdgeConfig) -> (Self, Receiver) {
        let (sender, receiver) = edge::channel(format!("{name} -> output"), config);
        (ChannelSink { name, format, sender: Some(sender) }, receiver)
    }
}

impl Stage for ChannelSink {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), self.format, PortFormat::None)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let Some(sender) = self.sender.take() else {
                return Err(StageError::fatal("the channel sink was run twice"));
            };
            while let Some(frame) = io.inbox.recv().await {
                if sender.send(frame).await.is_err() {
                    return Err(StageError::fatal("the receiver of the channel sink was dropped"));
                }
            }
            if !io.is_cancelled() {
                let meta = io.outbox.next_meta(TurnId::NONE, MediaTime::ZERO);
                // The embedding code may have stopped reading; it needs no end marker then.
                let _ = sender.send(Frame::control(meta, crate::frame::Control::EndOfStream)).await;
            }
            Ok(())
        })
    }
}
