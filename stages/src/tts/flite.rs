//! flite speech synthesis with the US English voice slt.
//!
//! flite (Debian flite1-dev 2.2, BSD-style licence) is a small C engine. Its
//! slt voice is compiled into `libflite_cmu_us_slt` and speaks at 16 kHz.
//! The bindings below follow `flite.h` and `cst_wave.h` of flite 2.2;
//! `register_cmu_us_slt` has no header and is declared as in flite's
//! `lang/cmu_us_slt/cmu_us_slt.c`, where it returns a voice that it caches
//! in a global.
//!
//! flite keeps global state (the voice list, lexicon caches) and is not
//! thread-safe, so initialization runs once per process and every call
//! into flite holds one process-wide lock.

use std::ffi::{CString, c_char, c_int, c_short};
use std::ptr::NonNull;
use std::sync::{Mutex, Once, PoisonError};

use mentis_pipeline::StageName;

use super::{SpeechEngine, Tts, TtsConfigError, TtsError};

/// The flite speech stage.
pub type FliteTts = Tts<Flite>;

/// The voice's name, for errors.
const VOICE: &str = "cmu_us_slt";

/// Text synthesized once at construction to learn the voice's sample rate.
const PROBE_TEXT: &str = "Hello.";

/// flite's `cst_wave`, from `cst_wave.h`.
#[repr(C)]
struct CstWave {
    _kind: *const c_char,
    sample_rate: c_int,
    num_samples: c_int,
    num_channels: c_int,
    samples: *mut c_short,
}

/// flite's `cst_voice`, used only behind a pointer.
#[repr(C)]
struct CstVoice {
    _private: [u8; 0],
}

// SAFETY: the signatures match flite 2.2's declarations: `flite_init`,
// `flite_text_to_wave` in flite.h, `delete_wave` in cst_wave.h, and
// `register_cmu_us_slt` in lang/cmu_us_slt/cmu_us_slt.c.
unsafe extern "C" {
    fn flite_init() -> c_int;
    fn register_cmu_us_slt(voxdir: *const c_char) -> *mut CstVoice;
    fn flite_text_to_wave(text: *const c_char, voice: *mut CstVoice) -> *mut CstWave;
    fn delete_wave(wave: *mut CstWave);
}

/// The registered slt voice.
struct VoiceHandle(NonNull<CstVoice>);

// SAFETY: the voice is only used while `VOICE_LOCK` is held, so it is never
// touched by two threads at once.
unsafe impl Send for VoiceHandle {}

static INIT: Once = Once::new();

/// Every call into flite after initialization holds this lock; it also
/// holds the voice once registered.
static VOICE_LOCK: Mutex<Option<VoiceHandle>> = Mutex::new(None);

/// flite with its slt voice. Every instance shares the process's one voice.
#[derive(Debug)]
pub struct Flite {
    sample_rate: u32,
}

impl Flite {
    /// Initializes flite (once per process), registers the slt voice, and
    /// synthesizes a short probe to learn the voice's sample rate.
    pub fn slt() -> Result<Self, TtsConfigError> {
        // SAFETY: flite_init takes no arguments; `Once` runs it one time.
        INIT.call_once(|| unsafe {
            flite_init();
        });

        {
            let mut voice = VOICE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            if voice.is_none() {
                // SAFETY: a null voxdir is allowed for voices compiled into
                // the library; the lock serializes flite calls.
                let registered = unsafe { register_cmu_us_slt(std::ptr::null()) };
                let registered = NonNull::new(registered).ok_or(TtsConfigError::FliteVoice { voice: VOICE })?;
                *voice = Some(VoiceHandle(registered));
                tracing::info!(voice = VOICE, "registered the flite voice");
            }
        }

        let mut probe = Vec::new();
        let sample_rate = synthesize_wave(PROBE_TEXT, &mut probe, None)
            .map_err(|source| TtsConfigError::Probe { engine: "flite", source })?;
        Ok(Flite { sample_rate })
    }
}

impl FliteTts {
    /// Creates the flite stage with the slt voice and default settings.
    pub fn slt(name: StageName) -> Result<Self, TtsConfigError> {
        Tts::new(name, Flite::slt()?)
    }
}

impl SpeechEngine for Flite {
    fn name(&self) -> &'static str {
        "flite"
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    fn synthesize(&mut self, text: &str, samples: &mut Vec<f32>) -> Result<(), TtsError> {
        synthesize_wave(text, samples, Some(self.sample_rate)).map(|_| ())
    }
}

/// Synthesizes `text` with the slt voice, appends the samples, and returns
/// the wave's sample rate. With `expected_rate`, a wave at another rate is
/// an error.
fn synthesize_wave(text: &str, samples: &mut Vec<f32>, expected_rate: Option<u32>) -> Result<u32, TtsError> {
    // C strings end at the first NUL byte, so NUL characters are dropped.
    let c_text = CString::new(text.replace('\0', "")).map_err(|_| TtsError::FliteNoAudio { text: text.to_owned() })?;

    let voice = VOICE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(handle) = voice.as_ref() else {
        return Err(TtsError::FliteNoAudio { text: text.to_owned() });
    };
    // SAFETY: both pointers are valid for the call, and the lock is held.
    let wave = unsafe { flite_text_to_wave(c_text.as_ptr(), handle.0.as_ptr()) };
    let Some(wave) = NonNull::new(wave) else {
        return Err(TtsError::FliteNoAudio { text: text.to_owned() });
    };

    // SAFETY: flite returned a valid wave, owned here until delete_wave.
    let result = unsafe { copy_wave(wave.as_ref(), text, samples, expected_rate) };
    // SAFETY: the wave came from flite_text_to_wave and is freed once.
    unsafe { delete_wave(wave.as_ptr()) };
    result
}

/// Checks a wave's header and appends its samples as floats.
///
/// # Safety
///
/// `wave.samples` must point to `wave.num_samples * wave.num_channels`
/// valid samples when that product is above zero.
unsafe fn copy_wave(
    wave: &CstWave,
    text: &str,
    samples: &mut Vec<f32>,
    expected_rate: Option<u32>,
) -> Result<u32, TtsError> {
    let invalid = || TtsError::FliteWave {
        text: text.to_owned(),
        channels: wave.num_channels,
        samples: wave.num_samples,
        sample_rate: wave.sample_rate,
    };
    let sample_rate = u32::try_from(wave.sample_rate).ok().filter(|&rate| rate > 0).ok_or_else(invalid)?;
    if wave.num_channels != 1 {
        return Err(invalid());
    }
    if let Some(expected) = expected_rate
        && expected != sample_rate
    {
        return Err(TtsError::FliteRateChanged { text: text.to_owned(), sample_rate, expected });
    }
    let count = usize::try_from(wave.num_samples).map_err(|_| invalid())?;
    if count == 0 {
        return Ok(sample_rate);
    }
    if wave.samples.is_null() {
        return Err(invalid());
    }

    // SAFETY: the caller guarantees `count` mono samples behind the pointer.
    let pcm = unsafe { std::slice::from_raw_parts(wave.samples, count) };
    samples.extend(pcm.iter().map(|&sample| f32::from(sample) / 32_768.0));
    Ok(sample_rate)
}
