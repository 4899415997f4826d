//! Feeds arbitrary bytes to the Opus decoding stage as a stream of packets.
//! Run from the repository root with `cargo +nightly fuzz run opus_decoder`.
//!
//! The body is `mentis_stages::opus::fuzzing::opus_decoder`, which the stages
//! test suite also runs over generated inputs on stable Rust. It panics only
//! when the decoder fails on a packet, emits no audio for one, or leaves a
//! jump in its output timeline.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mentis_stages::opus::fuzzing::opus_decoder(data);
});
