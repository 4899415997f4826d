//! Streaming speech recognition through CMU PocketSphinx.
//!
//! Binds the C API of Debian's libpocketsphinx 0.8+5prealpha (declarations
//! from `/usr/include/pocketsphinx/pocketsphinx.h` and sphinxbase's
//! `cmd_ln.h` and `logmath.h`). The decoder takes 16-bit samples as they
//! arrive, so a hypothesis is available while the person is still speaking.
//! The default model is the US English one of Debian's `pocketsphinx-en-us`.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use mentis_pipeline::frame::f32_to_i16;

use super::{Recognition, Recognizer, SttError};
use crate::vad::Pcm;

const ENGINE: &str = "pocketsphinx";

/// The folder where Debian's `pocketsphinx-en-us` installs the US English model.
pub const DEBIAN_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

/// Opaque C types.
#[repr(C)]
struct PsDecoder {
    _private: [u8; 0],
}
#[repr(C)]
struct CmdLn {
    _private: [u8; 0],
}
#[repr(C)]
struct ArgDefinition {
    _private: [u8; 0],
}
#[repr(C)]
struct LogMath {
    _private: [u8; 0],
}

// SAFETY: the signatures match pocketsphinx.h, cmd_ln.h and logmath.h of
// Debian's libpocketsphinx-dev and libsphinxbase-dev 0.8+5prealpha, where
// int32 is `int` and int16 is `short` (sphinxbase's prim_type.h).
unsafe extern "C" {
    fn ps_args() -> *const ArgDefinition;
    fn cmd_ln_parse_r(
        inout_cmdln: *mut CmdLn,
        defn: *const ArgDefinition,
        argc: i32,
        argv: *mut *mut c_char,
        strict: i32,
    ) -> *mut CmdLn;
    fn cmd_ln_free_r(cmdln: *mut CmdLn) -> c_int;
    fn ps_init(config: *mut CmdLn) -> *mut PsDecoder;
    fn ps_free(ps: *mut PsDecoder) -> c_int;
    fn ps_start_utt(ps: *mut PsDecoder) -> c_int;
    fn ps_process_raw(
        ps: *mut PsDecoder,
        data: *const i16,
        n_samples: usize,
        no_search: c_int,
        full_utt: c_int,
    ) -> c_int;
    fn ps_end_utt(ps: *mut PsDecoder) -> c_int;
    fn ps_get_hyp(ps: *mut PsDecoder, out_best_score: *mut i32) -> *const c_char;
    fn ps_get_prob(ps: *mut PsDecoder) -> i32;
    fn ps_get_logmath(ps: *mut PsDecoder) -> *mut LogMath;
    fn logmath_exp(lmath: *mut LogMath, logb_p: c_int) -> f64;
}

/// Settings of a [`PocketSphinxRecognizer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PocketSphinxConfig {
    /// The acoustic model folder (`-hmm`).
    pub acoustic_model: PathBuf,
    /// The n-gram language model (`-lm`).
    pub language_model: PathBuf,
    /// The pronunciation dictionary (`-dict`).
    pub dictionary: PathBuf,
    /// Whether to silence the library's log. PocketSphinx logs to stderr by
    /// default; the setting sends every decoder's log in the process to
    /// `/dev/null`, because the library keeps one global log file.
    pub quiet: bool,
}

impl PocketSphinxConfig {
    /// Returns the settings for the US English model of Debian's `pocketsphinx-en-us`.
    pub fn en_us() -> Self {
        PocketSphinxConfig::from_model_dir(Path::new(DEBIAN_MODEL_DIR))
    }

    /// Returns the settings for a model folder laid out like Debian's `en-us` folder.
    pub fn from_model_dir(dir: &Path) -> Self {
        PocketSphinxConfig {
            acoustic_model: dir.join("en-us"),
            language_model: dir.join("en-us.lm.bin"),
            dictionary: dir.join("cmudict-en-us.dict"),
            quiet: true,
        }
    }

    /// Returns an error naming the first model file or folder that is missing.
    pub fn check_files(&self) -> Result<(), SttError> {
        let hint = "; on Debian, `apt-get install pocketsphinx-en-us` installs it";
        let missing = |path: &Path| SttError::ModelNotFound { engine: ENGINE, path: path.to_owned(), hint };
        if !self.acoustic_model.is_dir() {
            return Err(missing(&self.acoustic_model));
        }
        for file in [&self.language_model, &self.dictionary] {
            if !file.is_file() {
                return Err(missing(file));
            }
        }
        Ok(())
    }

    /// Returns the decoder's command-line arguments.
    fn arguments(&self) -> Result<Vec<CString>, SttError> {
        let mut arguments = Vec::new();
        let mut push_path = |flag: &str, path: &Path| -> Result<(), SttError> {
            let value =
                path.to_str().and_then(|text| CString::new(text).ok()).ok_or_else(|| SttError::InvalidSetting {
                    engine: ENGINE,
                    name: "model path",
                    value: path.display().to_string(),
                    reason: "the path must be UTF-8 without NUL bytes",
                })?;
            arguments.push(c_string(flag));
            arguments.push(value);
            Ok(())
        };
        push_path("-hmm", &self.acoustic_model)?;
        push_path("-lm", &self.language_model)?;
        push_path("-dict", &self.dictionary)?;
        if self.quiet {
            arguments.push(c_string("-logfn"));
            arguments.push(c_string("/dev/null"));
        }
        Ok(arguments)
    }
}

impl Default for PocketSphinxConfig {
    fn default() -> Self {
        PocketSphinxConfig::en_us()
    }
}

/// Builds a C string from a literal without NUL bytes.
fn c_string(text: &str) -> CString {
    CString::new(text).unwrap_or_default()
}

/// An owned PocketSphinx decoder and the configuration it was built from.
struct Decoder {
    decoder: NonNull<PsDecoder>,
    config: NonNull<CmdLn>,
    /// The argument strings; sphinxbase documents that `cmd_ln_parse_r` may
    /// keep pointers into them, so they live as long as the configuration.
    _arguments: Vec<CString>,
}

// SAFETY: the decoder has no thread affinity; it is used through `&mut self`
// only, so from one thread at a time.
unsafe impl Send for Decoder {}

impl Decoder {
    fn new(config: &PocketSphinxConfig) -> Result<Self, SttError> {
        let arguments = config.arguments()?;
        let mut argv: Vec<*mut c_char> = arguments.iter().map(|argument| argument.as_ptr().cast_mut()).collect();
        let argc = i32::try_from(argv.len()).unwrap_or(i32::MAX);
        let load_error = |message: &str| SttError::ModelLoad {
            engine: ENGINE,
            path: config.acoustic_model.clone(),
            source: message.into(),
        };

        // SAFETY: ps_args returns a static table; argv contains argc valid C strings
        // that outlive the configuration (they move into the Decoder). strict = 1
        // rejects unknown arguments, and NULL is checked.
        let parsed = unsafe { cmd_ln_parse_r(std::ptr::null_mut(), ps_args(), argc, argv.as_mut_ptr(), 1) };
        let Some(parsed) = NonNull::new(parsed) else {
            return Err(load_error("sphinxbase rejected the decoder arguments"));
        };

        // SAFETY: parsed is a valid configuration; ps_init keeps its own reference.
        let decoder = unsafe { ps_init(parsed.as_ptr()) };
        let Some(decoder) = NonNull::new(decoder) else {
            // SAFETY: parsed is ours and nothing else refers to it.
            unsafe { cmd_ln_free_r(parsed.as_ptr()) };
            return Err(load_error("ps_init failed to load the model (run with quiet = false to see its log)"));
        };
        Ok(Decoder { decoder, config: parsed, _arguments: arguments })
    }

    fn call_error(function: &str, status: c_int) -> SttError {
        SttError::Recognition { engine: ENGINE, message: format!("{function} returned {status}"), source: None }
    }

    fn start_utterance(&mut self) -> Result<(), SttError> {
        // SAFETY: the decoder pointer is valid until Drop.
        let status = unsafe { ps_start_utt(self.decoder.as_ptr()) };
        if status < 0 { Err(Decoder::call_error("ps_start_utt", status)) } else { Ok(()) }
    }

    fn process(&mut self, samples: &[i16]) -> Result<(), SttError> {
        // SAFETY: the pointer and length describe a live slice; no_search = 0
        // and full_utt = 0 decode the block as part of a longer utterance.
        let status = unsafe { ps_process_raw(self.decoder.as_ptr(), samples.as_ptr(), samples.len(), 0, 0) };
        if status < 0 { Err(Decoder::call_error("ps_process_raw", status)) } else { Ok(()) }
    }

    fn end_utterance(&mut self) -> Result<(), SttError> {
        // SAFETY: the decoder pointer is valid until Drop.
        let status = unsafe { ps_end_utt(self.decoder.as_ptr()) };
        if status < 0 { Err(Decoder::call_error("ps_end_utt", status)) } else { Ok(()) }
    }

    /// Returns the current best hypothesis, or `None` when there is none.
    fn hypothesis(&mut self) -> Option<String> {
        let mut score = 0_i32;
        // SAFETY: the decoder pointer is valid; the returned string belongs to
        // the decoder and is copied before the next call into it.
        let text = unsafe { ps_get_hyp(self.decoder.as_ptr(), &mut score) };
        if text.is_null() {
            return None;
        }
        // SAFETY: a non-null result is a NUL-terminated string.
        Some(unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned())
    }

    /// Returns the posterior probability of the final hypothesis in [0, 1].
    fn posterior(&mut self) -> Option<f32> {
        // SAFETY: the decoder pointer is valid; the log-math table belongs to it.
        let (log_probability, logmath) =
            unsafe { (ps_get_prob(self.decoder.as_ptr()), ps_get_logmath(self.decoder.as_ptr())) };
        if logmath.is_null() {
            return None;
        }
        // SAFETY: logmath is the decoder's non-null table.
        let probability = unsafe { logmath_exp(logmath, log_probability) };
        probability.is_finite().then_some(probability.clamp(0.0, 1.0) as f32)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: both pointers came from ps_init and cmd_ln_parse_r and are
        // freed once; ps_free releases the decoder's own reference to the
        // configuration, and cmd_ln_free_r releases ours.
        unsafe {
            ps_free(self.decoder.as_ptr());
            cmd_ln_free_r(self.config.as_ptr());
        }
    }
}

/// PocketSphinx, for [`super::PocketSphinxStt`].
pub struct PocketSphinxRecognizer {
    config: PocketSphinxConfig,
    decoder: Decoder,
    in_utterance: bool,
    /// Conversion buffer for float input.
    converted: Vec<i16>,
}

impl std::fmt::Debug for PocketSphinxRecognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PocketSphinxRecognizer")
            .field("config", &self.config)
            .field("in_utterance", &self.in_utterance)
            .finish_non_exhaustive()
    }
}

impl PocketSphinxRecognizer {
    /// Loads the model.
    pub fn new(config: PocketSphinxConfig) -> Result<Self, SttError> {
        config.check_files()?;
        let decoder = Decoder::new(&config)?;
        tracing::info!(acoustic_model = %config.acoustic_model.display(), "PocketSphinx model loaded");
        Ok(PocketSphinxRecognizer { config, decoder, in_utterance: false, converted: Vec::new() })
    }

    /// Returns the settings.
    pub fn config(&self) -> &PocketSphinxConfig {
        &self.config
    }

    fn require_utterance(&mut self) -> Result<(), SttError> {
        if !self.in_utterance {
            self.decoder.start_utterance()?;
            self.in_utterance = true;
        }
        Ok(())
    }
}

impl Recognizer for PocketSphinxRecognizer {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn streams_partials(&self) -> bool {
        true
    }

    fn start_utterance(&mut self) -> Result<(), SttError> {
        self.cancel_utterance();
        self.require_utterance()
    }

    fn accept(&mut self, samples: Pcm<'_>) -> Result<(), SttError> {
        self.require_utterance()?;
        match samples {
            Pcm::I16(block) => self.decoder.process(block),
            Pcm::F32(block) => {
                self.converted.clear();
                self.converted.extend(block.iter().map(|&sample| f32_to_i16(sample)));
                self.decoder.process(&self.converted)
            }
        }
    }

    fn partial(&mut self) -> Result<Option<String>, SttError> {
        if !self.in_utterance {
            return Ok(None);
        }
        Ok(self.decoder.hypothesis())
    }

    fn finish_utterance(&mut self) -> Result<Recognition, SttError> {
        if !self.in_utterance {
            return Ok(Recognition::default());
        }
        self.in_utterance = false;
        self.decoder.end_utterance()?;
        let text = self.decoder.hypothesis().unwrap_or_default();
        let confidence = self.decoder.posterior();
        Ok(Recognition { text, confidence, no_speech_probability: None })
    }

    fn cancel_utterance(&mut self) {
        if self.in_utterance {
            self.in_utterance = false;
            if let Err(error) = self.decoder.end_utterance() {
                tracing::warn!(%error, "PocketSphinx failed to end a cancelled utterance");
            }
        }
    }
}
