//! Feeds arbitrary bytes to the NDJSON splitter and decoder, cut into reads
//! the fuzzer chooses. Run from the repository root with
//! `cargo +nightly fuzz run ndjson fuzz/corpus/ndjson fuzz/seeds/ndjson`.
//!
//! Byte 0 modulo 8 of an input is the number of read lengths that follow it;
//! the rest is the stream. The seeds are small streams in the shape Ollama
//! sends, one with a line that is not JSON.
//!
//! The body is `mentis_stages::net::ndjson::fuzzing::ndjson_splitter`, which
//! the stages test suite also runs over generated inputs on stable Rust. It
//! panics when the chosen reads, or one-byte reads, give other lines, decoded
//! values or errors than one read of the whole stream, or when a returned
//! line breaks an invariant of the splitter.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mentis_stages::net::ndjson::fuzzing::ndjson_splitter(data);
});
