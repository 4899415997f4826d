//! Feeds arbitrary bytes to the WAV reader. Run from the repository root with
//! `cargo +nightly fuzz run wav_reader fuzz/corpus/wav_reader fuzz/seeds/wav_reader`.
//! The seeds are small valid files of every encoding; starting from them the
//! fuzzer reaches the sample decoding within seconds instead of stopping at
//! the RIFF header.
//!
//! The body is `mentis_stages::wav::fuzzing::wav_reader`, which the stages
//! test suite also runs over generated inputs on stable Rust. It panics only
//! when a decoded file breaks an invariant of the reader.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mentis_stages::wav::fuzzing::wav_reader(data);
});
