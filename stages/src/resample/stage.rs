//! The resampling stage.

use std::sync::Arc;

use mentis_pipeline::frame::f32_to_i16;
use mentis_pipeline::stage::{Emitter, Processor, StageSpec};
use mentis_pipeline::{
    AudioData, AudioFormat, Control, Frame, FrameMeta, MediaTime, Payload, PortFormat, SampleFormat, Samples,
    StageError, StageName, TurnId,
};

use super::{ResamplerBuildError, ResamplerKind, StreamResampler};

/// A stage that converts audio of one [`AudioFormat`] to another sample rate,
/// keeping its channel count and sample format (16-bit or float).
///
/// Output frames carry the turn of the latest input frame, and timestamps
/// counted from the first input frame of the stream: output frame k starts at
/// that frame's timestamp plus k's first sample index at the output rate.
/// Short input frames are buffered, so an input frame may yield no output. At
/// end of stream the stage flushes the tail; a [`Control::Flush`] or
/// [`Control::Interrupt`] discards what it buffers and starts a new stream.
/// The resampling itself runs inline: it costs microseconds per frame.
#[derive(Debug)]
pub struct Resample {
    name: StageName,
    input: AudioFormat,
    output: AudioFormat,
    resampler: StreamResampler,
    /// Input samples converted to float; reused between frames.
    input_samples: Vec<f32>,
    /// Resampled samples; reused between frames.
    output_samples: Vec<f32>,
    /// Timestamp of the first input frame of the stream.
    origin: Option<MediaTime>,
    /// Output frames emitted since the stream started.
    emitted_frames: u64,
    turn: TurnId,
}

impl Resample {
    /// Builds a stage from `input` to `output_rate` Hz with the FFT resampler.
    pub fn new(name: StageName, input: AudioFormat, output_rate: u32) -> Result<Self, ResamplerBuildError> {
        Resample::with_kind(name, input, output_rate, ResamplerKind::Fft)
    }

    /// Builds a stage from `input` to `output_rate` Hz with the given resampler.
    pub fn with_kind(
        name: StageName,
        input: AudioFormat,
        output_rate: u32,
        kind: ResamplerKind,
    ) -> Result<Self, ResamplerBuildError> {
        let resampler = StreamResampler::new(input.sample_rate, output_rate, input.channels, kind)?;
        let output = AudioFormat { sample_rate: output_rate, ..input };
        Ok(Resample {
            name,
            input,
            output,
            resampler,
            input_samples: Vec::new(),
            output_samples: Vec::new(),
            origin: None,
            emitted_frames: 0,
            turn: TurnId::NONE,
        })
    }

    /// Returns the format the stage emits.
    pub fn output_format(&self) -> AudioFormat {
        self.output
    }

    /// Returns the resampler, for example to apply a drift correction.
    pub fn resampler_mut(&mut self) -> &mut StreamResampler {
        &mut self.resampler
    }

    fn reset(&mut self) {
        self.resampler.reset();
        self.origin = None;
        self.emitted_frames = 0;
    }

    /// Emits the first `len` samples of `output_samples` as one frame.
    fn emit(&mut self, len: usize, out: &mut Emitter<'_>) -> Result<(), StageError> {
        if len == 0 {
            return Ok(());
        }
        let origin = self.origin.unwrap_or(MediaTime::ZERO);
        let timestamp = origin.add(MediaTime::from_samples(self.emitted_frames, self.output.sample_rate).as_duration());

        let resampled = &self.output_samples[..len];
        let samples = match self.output.sample_format {
            SampleFormat::I16 => Samples::I16(resampled.iter().map(|&sample| f32_to_i16(sample)).collect()),
            SampleFormat::F32 => Samples::F32(Arc::from(resampled)),
        };
        let audio = AudioData::new(self.output, samples).map_err(|error| {
            StageError::fatal(format!("stage {} built invalid output audio", self.name)).with_source(error)
        })?;

        self.emitted_frames += audio.frames() as u64;
        let meta = out.next_meta(self.turn, timestamp);
        out.emit(Frame::audio(meta, audio));
        Ok(())
    }
}

impl Processor for Resample {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Audio(self.input), PortFormat::Audio(self.output))
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let Payload::Audio(audio) = &frame.payload else {
            return Err(StageError::config(format!(
                "stage {} resamples audio but received a {} frame",
                self.name,
                frame.kind_name()
            )));
        };
        if audio.format() != self.input {
            return Err(StageError::config(format!(
                "stage {} was built for audio {} but received audio {}",
                self.name,
                self.input,
                audio.format()
            )));
        }
        self.origin.get_or_insert(frame.meta.timestamp);
        self.turn = frame.meta.turn;

        // Convert to float into the reused buffer.
        self.input_samples.clear();
        match audio.samples() {
            Samples::I16(samples) => {
                self.input_samples.extend(samples.iter().map(|&sample| f32::from(sample) / 32_768.0))
            }
            Samples::F32(samples) => self.input_samples.extend_from_slice(samples),
        }

        self.output_samples.resize(self.resampler.output_len_max(self.input_samples.len()), 0.0);
        let written = self
            .resampler
            .process_into(&self.input_samples, &mut self.output_samples)
            .map_err(|error| StageError::fatal(format!("stage {} failed to resample", self.name)).with_source(error))?;
        self.emit(written, out)
    }

    fn control(&mut self, control: &Control, _meta: &FrameMeta, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        if matches!(control, Control::Flush | Control::Interrupt) {
            self.reset();
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter<'_>) -> Result<(), StageError> {
        self.output_samples.resize(self.resampler.flush_len(), 0.0);
        let written = self.resampler.flush_into(&mut self.output_samples).map_err(|error| {
            StageError::fatal(format!("stage {} failed to flush its resampler", self.name)).with_source(error)
        })?;
        self.emit(written, out)?;
        self.reset();
        Ok(())
    }
}
