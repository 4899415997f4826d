//! IPA phonemes from espeak-ng, the phonemizer Piper voices were trained on.
//!
//! espeak-ng (Debian libespeak-ng-dev 1.51, GPL-3.0-or-later) keeps its
//! state in globals and is not thread-safe, so it is initialized once per
//! process and every call holds one process-wide lock. The bindings follow
//! `espeak-ng/speak_lib.h` of that version.
//!
//! `espeak_TextToPhonemes` returns the phonemes of one clause per call and
//! drops the punctuation that ended it. The text is therefore cut into
//! clauses here, so that each clause's final mark can be put back between
//! the phonemes: Piper voices pause and inflect on it.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::tts::{TtsConfigError, TtsError};

/// `AUDIO_OUTPUT_SYNCHRONOUS` of `espeak_AUDIO_OUTPUT`: no audio device is opened.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakINITIALIZE_DONT_EXIT`: return an error instead of exiting the
/// process when the data folder is missing.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
/// `espeakCHARS_AUTO`: UTF-8, or the language's 8-bit character set.
const CHARS_AUTO: c_int = 0;
/// Bit 1 of `phonememode`: IPA phoneme names as UTF-8.
const PHONEMES_IPA: c_int = 0x02;
/// `EE_OK` of `espeak_ERROR`.
const EE_OK: c_int = 0;

// SAFETY: the signatures match speak_lib.h of espeak-ng 1.51; the enum
// parameter `espeak_AUDIO_OUTPUT` and the `espeak_ERROR` result are C ints.
unsafe extern "C" {
    fn espeak_Initialize(output: c_int, buflength: c_int, path: *const c_char, options: c_int) -> c_int;
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_TextToPhonemes(textptr: *mut *const c_void, textmode: c_int, phonememode: c_int) -> *const c_char;
}

/// What the process has set up in espeak-ng.
struct State {
    /// Whether espeak_Initialize has succeeded.
    initialized: bool,
    /// The data folder it was given; `None` for the default.
    data: Option<PathBuf>,
    /// The voice selected last.
    voice: Option<String>,
}

static ESPEAK: Mutex<State> = Mutex::new(State { initialized: false, data: None, voice: None });

/// Initializes espeak-ng (once per process) and checks that `voice` exists.
///
/// `data` is the folder that contains `espeak-ng-data`, or `None` for the
/// location compiled into the library. Only the first successful call's
/// folder counts: espeak-ng cannot be initialized twice.
pub(super) fn prepare(data: Option<&Path>, voice: &str) -> Result<(), TtsConfigError> {
    let mut state = ESPEAK.lock().unwrap_or_else(PoisonError::into_inner);
    if state.initialized && state.data.as_deref() != data {
        tracing::warn!(
            requested = ?data,
            in_use = ?state.data,
            "espeak-ng is already initialized with another data folder; keeping it"
        );
    }
    if !state.initialized {
        let data_name = data.map_or_else(|| "(default)".to_owned(), |path| path.display().to_string());
        let c_data = data
            .map(|path| CString::new(path.as_os_str().as_encoded_bytes()))
            .transpose()
            .map_err(|_| TtsConfigError::EspeakInit { data: data_name.clone(), code: -1 })?;
        let data_ptr = c_data.as_ref().map_or(std::ptr::null(), |path| path.as_ptr());

        // SAFETY: the path is a valid C string or null, and the lock is held.
        let sample_rate = unsafe { espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_ptr, INITIALIZE_DONT_EXIT) };
        if sample_rate <= 0 {
            return Err(TtsConfigError::EspeakInit { data: data_name, code: sample_rate });
        }
        state.initialized = true;
        state.data = data.map(Path::to_path_buf);
        tracing::info!(data = %data_name, "initialized espeak-ng");
    }

    select_voice(&mut state, voice).map_err(|code| TtsConfigError::EspeakVoice { voice: voice.to_owned(), code })
}

/// Selects `voice` unless it is already selected; returns espeak-ng's error code on failure.
fn select_voice(state: &mut State, voice: &str) -> Result<(), c_int> {
    if state.voice.as_deref() == Some(voice) {
        return Ok(());
    }
    let c_voice = CString::new(voice).map_err(|_| -1)?;
    // SAFETY: the name is a valid C string, and the caller holds the lock.
    let code = unsafe { espeak_SetVoiceByName(c_voice.as_ptr()) };
    if code != EE_OK {
        state.voice = None;
        return Err(code);
    }
    state.voice = Some(voice.to_owned());
    Ok(())
}

/// Returns the IPA phonemes of one sentence in `voice`'s language, with
/// the punctuation that ends each clause kept, and a space between clauses.
pub(super) fn phonemize(voice: &str, sentence: &str) -> Result<String, TtsError> {
    let mut state = ESPEAK.lock().unwrap_or_else(PoisonError::into_inner);
    select_voice(&mut state, voice).map_err(|code| TtsError::EspeakVoice { voice: voice.to_owned(), code })?;

    let mut phonemes = String::new();
    for (index, (clause, mark)) in clauses(sentence).into_iter().enumerate() {
        if index > 0 {
            phonemes.push(' ');
        }
        clause_phonemes(clause, &mut phonemes);
        phonemes.extend(mark);
    }
    Ok(phonemes)
}

/// Appends the phonemes of `clause`. The caller holds the espeak-ng lock.
fn clause_phonemes(clause: &str, phonemes: &mut String) {
    // C strings end at the first NUL byte, so NUL characters are dropped.
    let Ok(c_clause) = CString::new(clause.replace('\0', "")) else {
        return;
    };

    // espeak-ng keeps reading state between calls, so each text is read to
    // its end (the pointer becomes null) before the next one starts.
    let mut cursor: *const c_void = c_clause.as_ptr().cast();
    let mut first = true;
    while !cursor.is_null() {
        // SAFETY: `cursor` points into `c_clause`, which outlives the loop;
        // espeak-ng advances it or sets it to null.
        let output = unsafe { espeak_TextToPhonemes(&raw mut cursor, CHARS_AUTO, PHONEMES_IPA) };
        if output.is_null() {
            break;
        }
        // SAFETY: espeak-ng returns a NUL-terminated string in its own
        // buffer, valid until the next call; it is copied at once.
        let piece = unsafe { CStr::from_ptr(output) }.to_string_lossy();
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        if !first {
            phonemes.push(' ');
        }
        phonemes.push_str(piece);
        first = false;
    }
}

/// Closing quotes and brackets that may follow a clause's final mark.
const CLOSERS: &[char] = &['"', '\'', '\u{201D}', '\u{2019}', ')', ']', '}', '\u{BB}'];

/// Cuts a sentence into clauses at commas, semicolons and colons followed by
/// whitespace, and returns each clause with the mark that ends it: that
/// mark, or the sentence's final `.`, `!` or `?`.
pub(super) fn clauses(sentence: &str) -> Vec<(&str, Option<char>)> {
    let mut clauses = Vec::new();
    let mut start = 0;
    let mut chars = sentence.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        let followed_by_space = chars.peek().is_some_and(|&(_, next)| next.is_whitespace());
        if matches!(c, ',' | ';' | ':') && followed_by_space {
            clauses.push((sentence[start..index].trim(), Some(c)));
            start = index + c.len_utf8();
        }
    }

    let last = sentence[start..].trim();
    let mark = last.trim_end_matches(CLOSERS).chars().next_back().filter(|c| matches!(c, '.' | '!' | '?'));
    clauses.push((last, mark));
    clauses.retain(|(clause, _)| clause.chars().any(char::is_alphanumeric));
    clauses
}
