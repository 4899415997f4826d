//! Silero VAD v6 through ONNX Runtime.
//!
//! The model (PyPI `silero-vad` 6.2.3, `silero_vad/data/silero_vad.onnx`) has
//! three inputs: `input` f32 `[1, context + frame]`, `state` f32 `[2, 1, 128]`
//! and `sr` int64 (a scalar). At 16 kHz a frame is 512 new samples behind the
//! last 64 samples of the previous frame (256 behind 32 at 8 kHz). It
//! returns `output` f32 `[1, 1]`, the speech probability of the frame, and
//! `stateN`, the state to pass to the next call. The context matters: fed 512
//! samples alone, the model rated no frame of a LibriVox clip above 0.07,
//! against 0.99 with the context in front.
//!
//! ONNX Runtime is loaded at run time (`ort` with `load-dynamic`) from
//! `ORT_DYLIB_PATH`, or from `onnxruntime/libonnxruntime.so.1.32.0` in the
//! model cache folder ([`crate::models::models_dir`]) when that is unset.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use mentis_pipeline::stage::Execution;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;

use super::segmenter::SegmenterConfig;
use super::{Pcm, Rechunker, VadConfigError, VadError, VoiceDetector};

/// Sample rates the model accepts, in Hz.
pub const SUPPORTED_RATES: &[u32] = &[8_000, 16_000];

/// Size of the recurrent state: `[2, 1, 128]`.
const STATE_LEN: usize = 2 * 128;

/// The model file, relative to the model cache folder.
pub const MODEL_FILE: &str = "silero/silero_vad.onnx";

/// The ONNX Runtime library, relative to the model cache folder.
pub const RUNTIME_FILE: &str = "onnxruntime/libonnxruntime.so.1.32.0";

/// The environment variable that overrides the ONNX Runtime library path.
pub const RUNTIME_ENV: &str = "ORT_DYLIB_PATH";

/// Returns where ONNX Runtime is loaded from: `ORT_DYLIB_PATH` when set and
/// not empty, else [`RUNTIME_FILE`] in the model cache folder.
pub fn runtime_library_path() -> PathBuf {
    match std::env::var_os(RUNTIME_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => crate::models::models_dir().join(RUNTIME_FILE),
    }
}

/// Returns the default model path: [`MODEL_FILE`] in the model cache folder.
pub fn default_model_path() -> PathBuf {
    crate::models::models_dir().join(MODEL_FILE)
}

/// The process's ONNX Runtime environment. `ort` allows one per process, so
/// every ONNX model in this crate must create its sessions from this one.
static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Loads ONNX Runtime and returns the process's environment, creating it on
/// the first successful call. A failed call changes nothing, so a later call
/// can succeed once the library is in place.
///
/// The library is loaded once per process: after the first load, a changed
/// `ORT_DYLIB_PATH` has no effect.
pub fn onnx_environment() -> Result<Environment, VadConfigError> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(environment) = slot.as_ref() {
        return Ok(environment.clone());
    }

    // Check for the file first: the loader's own error for a missing file
    // does not say how to get it.
    let path = runtime_library_path();
    if !path.is_file() {
        return Err(VadConfigError::RuntimeNotFound { path });
    }
    let builder = ort::init_from(&path).map_err(|source| VadConfigError::RuntimeLoad { path: path.clone(), source })?;
    let environment = builder
        .with_name("mentis")
        .with_telemetry(false)
        .build()
        .map_err(|source| VadConfigError::Environment { source })?;
    tracing::info!(path = %path.display(), "loaded ONNX Runtime");

    *slot = Some(environment.clone());
    Ok(environment)
}

/// Settings of a [`SileroVad`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SileroConfig {
    /// Input sample rate, in Hz: 8000 or 16000.
    pub sample_rate: u32,
    /// The model file.
    pub model_path: PathBuf,
}

impl SileroConfig {
    /// Returns the settings for the model in the cache folder at `sample_rate`.
    pub fn new(sample_rate: u32) -> Self {
        SileroConfig { sample_rate, model_path: default_model_path() }
    }
}

/// The Silero voice activity detector: a speech probability per 32 ms frame.
pub struct SileroVad {
    config: SileroConfig,
    session: Session,
    frame_samples: usize,
    context_samples: usize,
    /// The model input: the context samples, then the new frame.
    input: Vec<f32>,
    state: Vec<f32>,
    sample_rate_input: [i64; 1],
    rechunker: Rechunker<f32>,
    converted: Vec<f32>,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad")
            .field("config", &self.config)
            .field("buffered", &self.rechunker.waiting())
            .finish_non_exhaustive()
    }
}

impl SileroVad {
    /// Loads ONNX Runtime (once per process) and the model.
    ///
    /// Fails with [`VadConfigError::RuntimeNotFound`] or
    /// [`VadConfigError::ModelNotFound`], naming the path, when a file is
    /// missing.
    pub fn new(config: SileroConfig) -> Result<Self, VadConfigError> {
        let (frame_samples, context_samples) = match config.sample_rate {
            16_000 => (512, 64),
            8_000 => (256, 32),
            sample_rate => {
                return Err(VadConfigError::UnsupportedSampleRate {
                    detector: "Silero",
                    sample_rate,
                    supported: SUPPORTED_RATES,
                });
            }
        };
        if !config.model_path.is_file() {
            return Err(VadConfigError::ModelNotFound { path: config.model_path.clone() });
        }

        let environment = onnx_environment()?;
        let session = open_session(&environment, &config)
            .map_err(|source| VadConfigError::ModelLoad { path: config.model_path.clone(), source })?;
        check_signature(&session, &config)?;

        Ok(SileroVad {
            session,
            frame_samples,
            context_samples,
            input: vec![0.0; context_samples + frame_samples],
            state: vec![0.0; STATE_LEN],
            sample_rate_input: [i64::from(config.sample_rate)],
            rechunker: Rechunker::new(frame_samples),
            converted: Vec::new(),
            config,
        })
    }

    /// Returns the settings.
    pub fn config(&self) -> &SileroConfig {
        &self.config
    }
}

fn open_session(environment: &Environment, config: &SileroConfig) -> ort::Result<Session> {
    // One thread per session: an inference takes about 0.1 ms (benches/vad.rs
    // on a 2-core x86-64 VM), and many sessions share the machine's cores.
    let session = Session::builder(environment)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?
        .commit_from_file(&config.model_path)?;
    Ok(session)
}

fn check_signature(session: &Session, config: &SileroConfig) -> Result<(), VadConfigError> {
    for name in ["input", "state", "sr"] {
        if !session.inputs().iter().any(|input| input.name() == name) {
            return Err(VadConfigError::ModelSignature { path: config.model_path.clone(), kind: "input", name });
        }
    }
    for name in ["output", "stateN"] {
        if !session.outputs().iter().any(|output| output.name() == name) {
            return Err(VadConfigError::ModelSignature { path: config.model_path.clone(), kind: "output", name });
        }
    }
    Ok(())
}

/// The parts of [`SileroVad`] that one inference touches, borrowed apart from
/// the rechunker that feeds them.
struct Model<'a> {
    session: &'a mut Session,
    input: &'a mut [f32],
    state: &'a mut [f32],
    sample_rate_input: &'a [i64; 1],
    context_samples: usize,
}

impl Model<'_> {
    /// Runs one frame and returns its speech probability, keeping the state
    /// and the context for the next frame.
    fn run(&mut self, frame: &[f32]) -> Result<f32, VadError> {
        let inference = |source| VadError::Inference { source };

        // The previous frame's last samples are already in front.
        self.input[self.context_samples..].copy_from_slice(frame);

        let input = TensorRef::from_array_view(([1_usize, self.input.len()], &*self.input)).map_err(inference)?;
        let state = TensorRef::from_array_view(([2_usize, 1, 128], &*self.state)).map_err(inference)?;
        let sample_rate = TensorRef::from_array_view(((), &self.sample_rate_input[..])).map_err(inference)?;
        let outputs = self
            .session
            .run(ort::inputs!["input" => input, "state" => state, "sr" => sample_rate])
            .map_err(inference)?;

        let probability = match outputs.get("output") {
            Some(value) => {
                let (_, values) = value.try_extract_tensor::<f32>().map_err(inference)?;
                match values {
                    [probability] => *probability,
                    other => return Err(VadError::OutputShape { name: "output", expected: 1, actual: other.len() }),
                }
            }
            None => return Err(VadError::OutputShape { name: "output", expected: 1, actual: 0 }),
        };
        if !(0.0..=1.0).contains(&probability) {
            return Err(VadError::InvalidProbability { value: probability });
        }

        let Some(next_state) = outputs.get("stateN") else {
            return Err(VadError::OutputShape { name: "stateN", expected: STATE_LEN, actual: 0 });
        };
        let (_, next_state) = next_state.try_extract_tensor::<f32>().map_err(inference)?;
        if next_state.len() != STATE_LEN {
            return Err(VadError::OutputShape { name: "stateN", expected: STATE_LEN, actual: next_state.len() });
        }
        self.state.copy_from_slice(next_state);

        // The frame's last samples become the next frame's context.
        let total = self.input.len();
        self.input.copy_within(total - self.context_samples.., 0);
        Ok(probability)
    }
}

impl VoiceDetector for SileroVad {
    fn name(&self) -> &'static str {
        "silero"
    }

    fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    fn execution(&self) -> Execution {
        Execution::Blocking
    }

    fn default_segmenter(&self) -> SegmenterConfig {
        SegmenterConfig::probability()
    }

    fn push(&mut self, samples: Pcm<'_>, probabilities: &mut Vec<f32>) -> Result<(), VadError> {
        let mut model = Model {
            session: &mut self.session,
            input: &mut self.input,
            state: &mut self.state,
            sample_rate_input: &self.sample_rate_input,
            context_samples: self.context_samples,
        };
        let mut each_frame = |frame: &[f32]| -> Result<(), VadError> {
            probabilities.push(model.run(frame)?);
            Ok(())
        };
        match samples {
            Pcm::F32(samples) => self.rechunker.push(samples, &mut each_frame),
            Pcm::I16(samples) => {
                self.converted.clear();
                self.converted.extend(samples.iter().map(|&sample| f32::from(sample) / 32_768.0));
                self.rechunker.push(&self.converted, &mut each_frame)
            }
        }
    }

    fn buffered(&self) -> usize {
        self.rechunker.waiting()
    }

    fn reset(&mut self) {
        self.state.fill(0.0);
        self.input.fill(0.0);
        self.rechunker.clear();
    }
}
