//! Feeds arbitrary text to the parser of ElevenLabs' stream-input text to
//! speech server messages. Run from the repository root with
//! `cargo +nightly fuzz run elevenlabs_messages fuzz/corpus/elevenlabs_messages`.
//!
//! WebSocket text frames are UTF-8, so the input is decoded lossily before it
//! is parsed. Errors are expected for most inputs; only a panic is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = mentis_stages::tts::elevenlabs::messages::parse_server_message(&text);
});
