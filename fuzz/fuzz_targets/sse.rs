//! Feeds arbitrary bytes to the server-sent events parser, cut into reads the
//! fuzzer chooses. Run from the repository root with
//! `cargo +nightly fuzz run sse fuzz/corpus/sse fuzz/seeds/sse`.
//!
//! Byte 0 modulo 8 of an input is the number of read lengths that follow it;
//! the rest is the event stream. The seeds are small streams in the shapes
//! OpenAI and Anthropic send, one with every line ending and one cut short.
//!
//! The body is `mentis_stages::net::sse::fuzzing::sse_parser`, which the
//! stages test suite also runs over generated inputs on stable Rust. It
//! panics when the chosen reads, or one-byte reads, give other events or
//! errors than one read of the whole stream, or when an emitted event or the
//! buffered size breaks an invariant of the parser.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mentis_stages::net::sse::fuzzing::sse_parser(data);
});
