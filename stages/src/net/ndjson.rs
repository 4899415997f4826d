//! Newline-delimited JSON: splitting a streamed body into lines, and decoding
//! each line into a typed value.
//!
//! Ollama streams `/api/chat` and `/api/generate` replies this way, one JSON
//! object per line, and may end the body without a final newline.
//! [`NdjsonSplitter`] cuts the bytes into lines: `\n` ends a line, one `\r`
//! before it is dropped, lines of JSON whitespace only are skipped, and one
//! byte order mark at the start of the stream is dropped. [`NdjsonDecoder`]
//! runs serde_json over each line.
//!
//! The result does not depend on how the bytes are split across `push` calls:
//! a line is decoded only once it is complete, so a UTF-8 character split
//! between two reads is decoded like one that arrived whole. Bytes that are
//! not UTF-8, and lines longer than the limit, end the stream with a typed
//! error. A line that is not valid JSON for the target type is an error for
//! that line only.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use thiserror::Error;

/// The default limit on one line, in bytes: 1 MiB.
///
/// Ollama's streamed objects carry one token each, plus timing counters in the
/// last one, so they are a few hundred bytes. This estimate leaves a wide
/// margin while stopping a body that never sends a newline from growing the
/// buffer without bound.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// The maximum length of the excerpt of a bad line in
/// [`NdjsonError::InvalidJson`], in characters, ellipses included.
pub const EXCERPT_CHARS: usize = 120;

/// The UTF-8 encoding of U+FEFF, dropped when it starts the stream.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// A failure to split or decode an NDJSON stream.
///
/// [`InvalidUtf8`](Self::InvalidUtf8) and [`LineTooLong`](Self::LineTooLong)
/// end the stream: later `push` and `finish` calls return them again.
/// [`InvalidJson`](Self::InvalidJson) concerns one line only.
#[derive(Debug, Clone, Error)]
pub enum NdjsonError {
    /// A complete line is not valid UTF-8.
    #[error("NDJSON line {line} is not valid UTF-8 at byte {offset} (0x{byte:02x}) of the stream; the body is corrupt")]
    InvalidUtf8 {
        /// Line number, counting from 1 and including blank lines.
        line: u64,
        /// Stream offset of the first byte that is not part of a valid UTF-8
        /// character, counted from the first byte of the body.
        offset: u64,
        /// The byte at `offset`.
        byte: u8,
    },
    /// A line grew past the limit before its newline arrived.
    #[error(
        "NDJSON line {line}, starting at byte {offset}, is longer than the limit of {limit} bytes; raise the \
         limit with with_limit if the server really sends lines this long"
    )]
    LineTooLong {
        /// Line number, counting from 1 and including blank lines.
        line: u64,
        /// Stream offset of the line's first byte.
        offset: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// A line is not valid JSON, or does not match the target type.
    #[error("NDJSON line {line} is invalid: {source}; the line reads {excerpt:?}")]
    InvalidJson {
        /// Line number, counting from 1 and including blank lines.
        line: u64,
        /// At most [`EXCERPT_CHARS`] characters of the line around the error,
        /// with `…` marking text left out.
        excerpt: String,
        /// The error from serde_json, shared so that the error stays `Clone`.
        source: Arc<serde_json::Error>,
    },
}

/// One complete, non-blank line.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    /// Line number, counting from 1.
    number: u64,
    /// The line without its newline and without one `\r` before it.
    text: &'a str,
}

/// Splits a streamed body into lines, one stream at a time.
///
/// Feed the body's bytes to [`push`](Self::push) as they arrive and call
/// [`finish`](Self::finish) at the end of the body. At most one line, no
/// longer than the limit, is buffered.
#[derive(Debug)]
pub struct NdjsonSplitter {
    /// Maximum length of one line in bytes, `\r` included.
    limit: usize,
    /// The start of the current line, received in earlier reads.
    line: Vec<u8>,
    /// Stream offset of the current line's first byte.
    line_start: u64,
    /// Stream offset of the next byte to arrive.
    offset: u64,
    /// Number of the current line, counting from 1.
    line_number: u64,
    /// The error that ended the stream, returned again by later calls.
    failed: Option<NdjsonError>,
}

impl Default for NdjsonSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl NdjsonSplitter {
    /// Creates a splitter with the default limit, [`DEFAULT_MAX_LINE_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_LINE_BYTES)
    }

    /// Creates a splitter that rejects a line longer than `max_line_bytes`,
    /// counting a `\r` before the newline but not the newline itself.
    pub fn with_limit(max_line_bytes: usize) -> Self {
        Self { limit: max_line_bytes, line: Vec::new(), line_start: 0, offset: 0, line_number: 1, failed: None }
    }

    /// Splits the next bytes of the stream and appends every complete,
    /// non-blank line to `lines`.
    ///
    /// On error, the lines completed before the offending one are already in
    /// `lines`, and the stream is over: later calls return the same error
    /// until [`finish`](Self::finish).
    pub fn push(&mut self, bytes: &[u8], lines: &mut Vec<String>) -> Result<(), NdjsonError> {
        self.push_each(bytes, |line| lines.push(line.text.to_owned()))
    }

    /// Ends the stream and returns its last line when that line had no
    /// newline, as Ollama may send it, and is not blank.
    ///
    /// Returns the stored error when an earlier call failed. Either way the
    /// splitter is then ready for a new stream.
    pub fn finish(&mut self) -> Result<Option<String>, NdjsonError> {
        let mut last = None;
        let result = self.finish_each(|line| last = Some(line.text.to_owned()));
        result.map(|()| last)
    }

    /// Returns the number of bytes buffered for the unfinished line.
    pub fn buffered_bytes(&self) -> usize {
        self.line.len()
    }

    /// Returns the limit on one line, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Splits `bytes` into lines, handing each complete non-blank one to
    /// `each`, and stores the error that ends the stream.
    fn push_each(&mut self, bytes: &[u8], each: impl FnMut(Line<'_>)) -> Result<(), NdjsonError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.split(bytes, each);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    /// Ends the stream, handing an unterminated last line to `each`, and
    /// resets the splitter for a new stream.
    fn finish_each(&mut self, each: impl FnOnce(Line<'_>)) -> Result<(), NdjsonError> {
        let result = match self.failed.take() {
            Some(error) => Err(error),
            None => {
                let line = std::mem::take(&mut self.line);
                let result = self.decode_line(&line).map(|decoded| decoded.map(each));
                self.line = line;
                result.map(|_| ())
            }
        };
        self.line.clear();
        self.line_start = 0;
        self.offset = 0;
        self.line_number = 1;
        result
    }

    fn split(&mut self, mut bytes: &[u8], mut each: impl FnMut(Line<'_>)) -> Result<(), NdjsonError> {
        while let Some(end) = bytes.iter().position(|&byte| byte == b'\n') {
            // Hand on the completed line, joined with its start from earlier
            // reads when there is one.
            self.check_line_length(self.line.len() + end)?;
            if self.line.is_empty() {
                if let Some(line) = self.decode_line(&bytes[..end])? {
                    each(line);
                }
            } else {
                self.line.extend_from_slice(&bytes[..end]);
                let line = std::mem::take(&mut self.line);
                let result = self.decode_line(&line).map(|decoded| decoded.map(&mut each));
                // Keep the allocation for the next partial line.
                self.line = line;
                self.line.clear();
                result?;
            }

            bytes = &bytes[end + 1..];
            self.offset += end as u64 + 1;
            self.line_start = self.offset;
            self.line_number += 1;
        }

        // Keep the unterminated rest for the next read.
        self.check_line_length(self.line.len() + bytes.len())?;
        self.line.extend_from_slice(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Fails when the current line would be longer than the limit.
    fn check_line_length(&self, length: usize) -> Result<(), NdjsonError> {
        if length > self.limit {
            return Err(NdjsonError::LineTooLong {
                line: self.line_number,
                offset: self.line_start,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Decodes the current line, given without its newline. Returns `None`
    /// for a blank line.
    fn decode_line<'a>(&self, line: &'a [u8]) -> Result<Option<Line<'a>>, NdjsonError> {
        let (line, line_start) = match line.strip_prefix(BYTE_ORDER_MARK) {
            Some(rest) if self.line_start == 0 => (rest, BYTE_ORDER_MARK.len() as u64),
            _ => (line, self.line_start),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|error| {
            let bad = error.valid_up_to();
            NdjsonError::InvalidUtf8 { line: self.line_number, offset: line_start + bad as u64, byte: line[bad] }
        })?;

        // JSON whitespace (RFC 8259, section 2) is space, tab, CR and LF.
        if text.bytes().all(|byte| matches!(byte, b' ' | b'\t' | b'\r')) {
            return Ok(None);
        }
        Ok(Some(Line { number: self.line_number, text }))
    }
}

/// Splits a streamed body into lines and decodes each one as a `T`.
///
/// A line that is not valid JSON for `T` yields an
/// [`NdjsonError::InvalidJson`] in its place and decoding goes on with the
/// next line; the framing errors end the stream as in [`NdjsonSplitter`].
pub struct NdjsonDecoder<T> {
    splitter: NdjsonSplitter,
    item: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for NdjsonDecoder<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NdjsonDecoder")
            .field("item", &std::any::type_name::<T>())
            .field("splitter", &self.splitter)
            .finish()
    }
}

impl<T: DeserializeOwned> Default for NdjsonDecoder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: DeserializeOwned> NdjsonDecoder<T> {
    /// Creates a decoder with the default limit, [`DEFAULT_MAX_LINE_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_LINE_BYTES)
    }

    /// Creates a decoder that rejects a line longer than `max_line_bytes`.
    pub fn with_limit(max_line_bytes: usize) -> Self {
        Self { splitter: NdjsonSplitter::with_limit(max_line_bytes), item: PhantomData }
    }

    /// Splits and decodes the next bytes of the stream, appending one result
    /// per complete, non-blank line to `items`.
    ///
    /// Returns an error only for the framing errors that end the stream.
    pub fn push(&mut self, bytes: &[u8], items: &mut Vec<Result<T, NdjsonError>>) -> Result<(), NdjsonError> {
        self.splitter.push_each(bytes, |line| items.push(decode(line)))
    }

    /// Ends the stream, appending the result for its last line to `items`
    /// when that line had no newline and is not blank.
    ///
    /// Returns the stored error when an earlier call failed. Either way the
    /// decoder is then ready for a new stream.
    pub fn finish(&mut self, items: &mut Vec<Result<T, NdjsonError>>) -> Result<(), NdjsonError> {
        self.splitter.finish_each(|line| items.push(decode(line)))
    }

    /// Returns the number of bytes buffered for the unfinished line.
    pub fn buffered_bytes(&self) -> usize {
        self.splitter.buffered_bytes()
    }
}

/// Decodes one line as a `T`.
fn decode<T: DeserializeOwned>(line: Line<'_>) -> Result<T, NdjsonError> {
    serde_json::from_str(line.text).map_err(|source| NdjsonError::InvalidJson {
        line: line.number,
        excerpt: excerpt(line.text, source.column()),
        source: Arc::new(source),
    })
}

/// Cuts at most [`EXCERPT_CHARS`] characters out of `text`, centred on the
/// 1-based byte `column` where serde_json stopped, marking each cut with `…`.
fn excerpt(text: &str, column: usize) -> String {
    let total = text.chars().count();
    if total <= EXCERPT_CHARS {
        return text.to_owned();
    }

    // Locate the error in characters; serde_json reports 0 when it has no
    // position, and may point one past the end.
    let mut error_byte = column.saturating_sub(1).min(text.len());
    while !text.is_char_boundary(error_byte) {
        error_byte -= 1;
    }
    let error_char = text[..error_byte].chars().count();

    // Two characters are kept for the ellipses.
    let window = EXCERPT_CHARS - 2;
    let start = error_char.saturating_sub(window / 2).min(total - window);
    let mut excerpt = String::new();
    if start > 0 {
        excerpt.push('…');
    }
    excerpt.extend(text.chars().skip(start).take(window));
    if start + window < total {
        excerpt.push('…');
    }
    excerpt
}

/// The body of the `ndjson` fuzz target in `fuzz/`. It lives here so that the
/// normal test run drives it with generated inputs as well.
pub mod fuzzing {
    use super::{NdjsonDecoder, NdjsonError, NdjsonSplitter};
    use crate::net::sse::fuzzing::{reads, split_input};

    /// The small limit that every input is also split with, in bytes, so the
    /// fuzzer reaches the limit error with short inputs.
    const SMALL_LIMIT: usize = 24;

    /// The lines and errors of one pass of the splitter over a stream.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Outcome {
        /// Every line returned, the one from `finish` included.
        pub lines: Vec<String>,
        /// The first error a `push` returned, as text.
        pub push_error: Option<String>,
        /// The error `finish` returned, as text.
        pub finish_error: Option<String>,
    }

    /// Splits a stream delivered as `reads` with the given limit, checking the
    /// invariants that hold after every call.
    pub fn split_reads<'a>(limit: usize, reads: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut splitter = NdjsonSplitter::with_limit(limit);
        let mut lines = Vec::new();
        let mut push_error = None;
        for read in reads {
            if let Err(error) = splitter.push(read, &mut lines) {
                push_error = Some(error);
                break;
            }
            assert!(splitter.buffered_bytes() <= limit, "buffered {} bytes", splitter.buffered_bytes());
        }
        if let Some(error) = &push_error {
            assert!(is_framing(error), "push returned a JSON error: {error}");
            let again = splitter.push(b"{}\n", &mut lines);
            assert_eq!(again.map_err(|error| error.to_string()), Err(error.to_string()), "error not repeated");
        }
        let finish_error = match splitter.finish() {
            Ok(last) => {
                lines.extend(last);
                None
            }
            Err(error) => Some(error.to_string()),
        };
        for line in &lines {
            assert!(!line.contains('\n'), "newline in line {line:?}");
            assert!(line.len() <= limit, "line of {} bytes over the limit", line.len());
            assert!(!line.bytes().all(|byte| matches!(byte, b' ' | b'\t' | b'\r')), "blank line {line:?}");
        }
        Outcome { lines, push_error: push_error.map(|error| error.to_string()), finish_error }
    }

    /// Decodes a stream delivered as `reads` into JSON values, rendering each
    /// result as text for comparison.
    pub fn decode_reads<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
        let mut decoder = NdjsonDecoder::<serde_json::Value>::with_limit(SMALL_LIMIT * 4);
        let mut items = Vec::new();
        let mut rendered = Vec::new();
        for read in reads {
            if let Err(error) = decoder.push(read, &mut items) {
                rendered.push(format!("push failed: {error}"));
                break;
            }
        }
        if let Err(error) = decoder.finish(&mut items) {
            rendered.push(format!("finish failed: {error}"));
        }
        for item in items {
            match item {
                Ok(value) => rendered.push(value.to_string()),
                Err(error) => {
                    if let NdjsonError::InvalidJson { excerpt, .. } = &error {
                        assert!(excerpt.chars().count() <= super::EXCERPT_CHARS, "excerpt {excerpt:?}");
                    }
                    rendered.push(error.to_string());
                }
            }
        }
        rendered
    }

    fn is_framing(error: &NdjsonError) -> bool {
        matches!(error, NdjsonError::InvalidUtf8 { .. } | NdjsonError::LineTooLong { .. })
    }

    /// Splits and decodes the stream in a fuzz input whole, in the reads the
    /// input chooses, and one byte at a time, and panics when the results
    /// differ or an invariant breaks. The input layout is the one of
    /// [`split_input`].
    pub fn ndjson_splitter(data: &[u8]) {
        let (lengths, stream) = split_input(data);
        for limit in [super::DEFAULT_MAX_LINE_BYTES, SMALL_LIMIT] {
            let whole = split_reads(limit, [stream]);
            let chosen = split_reads(limit, reads(stream, lengths));
            assert_eq!(chosen, whole, "chosen reads {lengths:?} differ from one read, limit {limit}");
            let bytewise = split_reads(limit, stream.chunks(1));
            assert_eq!(bytewise, whole, "one-byte reads differ from one read, limit {limit}");
        }

        let whole = decode_reads([stream]);
        assert_eq!(decode_reads(reads(stream, lengths)), whole, "decoded items differ for reads {lengths:?}");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::fuzzing::{Outcome, split_reads};
    use super::*;

    /// The shape of one object of an Ollama `/api/chat` stream, as far as the
    /// tests read it.
    #[derive(Debug, Deserialize, PartialEq)]
    struct ChatChunk {
        message: ChatMessage,
        done: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct ChatMessage {
        role: String,
        content: String,
    }

    /// A chat stream in the shape Ollama sends: multi-byte characters, and a
    /// last line without a newline.
    const OLLAMA_STREAM: &str = concat!(
        "{\"model\":\"llama3.2\",\"created_at\":\"2025-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Grüß\"},\"done\":false}\n",
        "{\"model\":\"llama3.2\",\"created_at\":\"2025-01-01T00:00:01Z\",\"message\":{\"role\":\"assistant\",\"content\":\" 世界 👋\"},\"done\":false}\r\n",
        "\n",
        "{\"model\":\"llama3.2\",\"created_at\":\"2025-01-01T00:00:02Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"eval_count\":3}",
    );

    /// Splits `stream` cut at each offset in `cuts`, which must be sorted.
    fn split_cut(limit: usize, stream: &[u8], cuts: &[usize]) -> Outcome {
        let mut reads = Vec::with_capacity(cuts.len() + 1);
        let mut start = 0;
        for &cut in cuts {
            reads.push(&stream[start..cut]);
            start = cut;
        }
        reads.push(&stream[start..]);
        split_reads(limit, reads)
    }

    /// Splits `stream` in one read, asserting that it ends cleanly.
    fn split(stream: &[u8]) -> Vec<String> {
        let outcome = split_reads(DEFAULT_MAX_LINE_BYTES, [stream]);
        assert_eq!(outcome.push_error, None, "push failed on {:?}", String::from_utf8_lossy(stream));
        assert_eq!(outcome.finish_error, None, "finish failed on {:?}", String::from_utf8_lossy(stream));
        outcome.lines
    }

    #[test]
    fn line_endings_and_blank_lines() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("LF", "{\"a\":1}\n{\"b\":2}\n", &["{\"a\":1}", "{\"b\":2}"]),
            ("CRLF", "{\"a\":1}\r\n{\"b\":2}\r\n", &["{\"a\":1}", "{\"b\":2}"]),
            ("only one CR dropped", "1\r\r\n", &["1\r"]),
            ("CR alone is not a line ending", "1\r2\n", &["1\r2"]),
            ("blank lines skipped", "\n\r\n \t\r\n1\n\n", &["1"]),
            ("no final newline", "1\n2", &["1", "2"]),
            ("blank unterminated rest", "1\n  ", &["1"]),
            ("leading BOM dropped", "\u{FEFF}1\n", &["1"]),
            ("later BOM kept", "1\n\u{FEFF}2\n", &["1", "\u{FEFF}2"]),
            ("empty stream", "", &[]),
            ("whitespace kept inside a line", " {} \n", &[" {} "]),
        ];
        for (name, stream, expected) in cases {
            assert_eq!(split(stream.as_bytes()), *expected, "{name}: {stream:?}");
        }
    }

    #[test]
    fn two_lines_in_one_read() {
        let mut splitter = NdjsonSplitter::new();
        let mut lines = Vec::new();
        splitter.push(b"{\"n\":1}\n{\"n\":2}\n", &mut lines).expect("valid stream");
        assert_eq!(lines, ["{\"n\":1}", "{\"n\":2}"]);
        assert_eq!(splitter.finish().expect("clean end"), None);
    }

    #[test]
    fn one_line_over_three_reads() {
        let mut splitter = NdjsonSplitter::new();
        let mut lines = Vec::new();
        splitter.push(b"{\"text\":", &mut lines).expect("valid stream");
        splitter.push(b"\"Gr\xC3", &mut lines).expect("valid stream");
        assert!(lines.is_empty(), "a partial line was returned: {lines:?}");
        assert_eq!(splitter.buffered_bytes(), 12);
        splitter.push(b"\xBC\xC3\x9F\"}\r\n", &mut lines).expect("valid stream");
        assert_eq!(lines, ["{\"text\":\"Grüß\"}"]);
        assert_eq!(splitter.buffered_bytes(), 0);
    }

    #[test]
    fn utf8_split_inside_characters() {
        for text in ["é", "€", "😀"] {
            let stream = format!("\"{text}\"\n");
            let bytes = stream.as_bytes();
            let expected = vec![format!("\"{text}\"")];
            for cut in 2..1 + text.len() {
                let outcome = split_cut(DEFAULT_MAX_LINE_BYTES, bytes, &[cut]);
                assert_eq!(outcome.lines, expected, "{text} cut at {cut}");
            }
            assert_eq!(split_reads(DEFAULT_MAX_LINE_BYTES, bytes.chunks(1)).lines, expected, "{text} bytewise");
        }
    }

    #[test]
    fn invalid_utf8_names_line_and_offset() {
        let mut splitter = NdjsonSplitter::new();
        let mut lines = Vec::new();
        let error = splitter.push(b"1\n\n\"a\xFFb\"\n", &mut lines).expect_err("invalid UTF-8");
        assert!(matches!(error, NdjsonError::InvalidUtf8 { line: 3, offset: 5, byte: 0xFF }), "{error:?}");
        assert_eq!(lines, ["1"], "the line before the bad one is kept");
        let again = splitter.push(b"2\n", &mut lines).expect_err("the stream stays failed");
        assert!(matches!(again, NdjsonError::InvalidUtf8 { line: 3, .. }), "{again:?}");
        assert!(splitter.finish().is_err(), "finish returns the stored error");

        // An unterminated last line is checked too, and the stream starts over.
        splitter.push(b"1\n\xE2\x82", &mut lines).expect("bytes held until the line ends");
        let error = splitter.finish().expect_err("a cut character at the end");
        assert!(matches!(error, NdjsonError::InvalidUtf8 { line: 2, offset: 2, byte: 0xE2 }), "{error:?}");
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn long_line_rejected_before_its_end() {
        let mut splitter = NdjsonSplitter::with_limit(8);
        let mut lines = Vec::new();
        splitter.push(b"12345678\n", &mut lines).expect("a line of exactly the limit");
        splitter.push(b"1234", &mut lines).expect("within the limit");
        let error = splitter.push(b"56789", &mut lines).expect_err("over the limit without a newline");
        assert!(matches!(error, NdjsonError::LineTooLong { line: 2, offset: 9, limit: 8 }), "{error:?}");
        assert!(splitter.buffered_bytes() <= 8);
    }

    #[test]
    fn decoder_yields_typed_items() {
        let mut decoder = NdjsonDecoder::<ChatChunk>::new();
        let mut items = Vec::new();
        decoder.push(OLLAMA_STREAM.as_bytes(), &mut items).expect("valid stream");
        assert_eq!(items.len(), 2, "the last line has no newline yet");
        decoder.finish(&mut items).expect("clean end");
        let chunks: Vec<ChatChunk> = items.into_iter().map(|item| item.expect("valid chunk")).collect();
        let text: String = chunks.iter().map(|chunk| chunk.message.content.as_str()).collect();
        assert_eq!(text, "Grüß 世界 👋");
        assert!(chunks.iter().all(|chunk| chunk.message.role == "assistant"));
        let done: Vec<bool> = chunks.iter().map(|chunk| chunk.done).collect();
        assert_eq!(done, [false, false, true]);
    }

    #[test]
    fn decoder_bad_line_named_and_skipped() {
        let mut decoder = NdjsonDecoder::<serde_json::Value>::new();
        let mut items = Vec::new();
        decoder.push(b"{\"n\":1}\n\n{\"n\":oops}\n{\"n\":3}\n", &mut items).expect("framing is fine");
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok());
        assert!(items[2].is_ok(), "decoding goes on after a bad line");
        let Err(error) = &items[1] else {
            panic!("line 3 decoded: {:?}", items[1]);
        };
        let NdjsonError::InvalidJson { line, excerpt, source } = error else {
            panic!("not a JSON error: {error:?}");
        };
        assert_eq!(*line, 3, "blank line 2 counts");
        assert_eq!(excerpt, "{\"n\":oops}");
        assert_eq!(source.column(), 6);
        let message = error.to_string();
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("oops"), "{message}");

        // A value of the wrong type for the target is a JSON error too.
        let mut decoder = NdjsonDecoder::<ChatChunk>::new();
        let mut items = Vec::new();
        decoder.push(b"{\"done\":true}\n", &mut items).expect("framing is fine");
        assert!(matches!(items.as_slice(), [Err(NdjsonError::InvalidJson { line: 1, .. })]), "{items:?}");
    }

    #[test]
    fn excerpt_short_and_centred() {
        assert_eq!(excerpt("short", 3), "short");

        let long = format!("{}X{}", "a".repeat(300), "b".repeat(300));
        let cut = excerpt(&long, 301);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS);
        assert!(cut.starts_with('…'), "{cut}");
        assert!(cut.ends_with('…'), "{cut}");
        assert!(cut.contains('X'), "the error position is in the excerpt: {cut}");

        let at_start = excerpt(&long, 1);
        assert_eq!(at_start.chars().count(), EXCERPT_CHARS - 1);
        assert!(at_start.starts_with('a'), "{at_start}");
        assert!(at_start.ends_with('…'), "{at_start}");

        let at_end = excerpt(&long, long.len() + 1);
        assert_eq!(at_end.chars().count(), EXCERPT_CHARS - 1);
        assert!(at_end.starts_with('…'), "{at_end}");
        assert!(at_end.ends_with('b'), "{at_end}");

        // A column inside a multi-byte character, in characters not bytes.
        let wide = "é".repeat(200);
        let cut = excerpt(&wide, 202);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS);
        assert!(cut.trim_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn decoder_long_line_excerpt_bounded() {
        let line = format!("{{\"text\":\"{}\",\"n\":tru}}\n", "x".repeat(1000));
        let mut decoder = NdjsonDecoder::<serde_json::Value>::new();
        let mut items = Vec::new();
        decoder.push(line.as_bytes(), &mut items).expect("framing is fine");
        let [Err(NdjsonError::InvalidJson { excerpt, .. })] = items.as_slice() else {
            panic!("expected one JSON error: {items:?}");
        };
        assert!(excerpt.chars().count() <= EXCERPT_CHARS, "{excerpt}");
        assert!(excerpt.contains("tru"), "the excerpt shows the error: {excerpt}");
    }

    #[test]
    fn known_stream_split_at_every_offset() {
        let bytes = OLLAMA_STREAM.as_bytes();
        let whole = split_reads(DEFAULT_MAX_LINE_BYTES, [bytes]);
        assert_eq!(whole.lines.len(), 3);
        for cut in 0..=bytes.len() {
            assert_eq!(split_cut(DEFAULT_MAX_LINE_BYTES, bytes, &[cut]), whole, "cut at {cut}");
        }
        assert_eq!(split_reads(DEFAULT_MAX_LINE_BYTES, bytes.chunks(1)), whole, "one byte at a time");
    }

    #[test]
    fn fuzz_seeds_pass() {
        // The seed corpus of the ndjson fuzz target must exist and pass.
        for path in crate::net::sse::fuzzing::seed_files("ndjson", 3) {
            let data = std::fs::read(&path).expect("seed bytes");
            fuzzing::ndjson_splitter(&data);
            let (_, stream) = crate::net::sse::fuzzing::split_input(&data);
            assert!(!split_reads(DEFAULT_MAX_LINE_BYTES, [stream]).lines.is_empty(), "{}: no lines", path.display());
        }
    }

    /// Bytes drawn mostly from NDJSON syntax.
    fn stream_pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"{\"a\":".to_vec()),
            Just(b"[1,2]".to_vec()),
            Just(b"\"x\"".to_vec()),
            Just(b"}".to_vec()),
            Just(b" ".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just("é€😀".as_bytes().to_vec()),
            any::<u8>().prop_map(|byte| vec![byte]),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The Ollama stream cut at several random offsets splits as in one read.
        #[test]
        fn known_stream_random_multi_splits(fractions in proptest::collection::vec(0.0..=1.0_f64, 1..8)) {
            let bytes = OLLAMA_STREAM.as_bytes();
            let mut cuts: Vec<usize> = fractions.iter().map(|fraction| (fraction * bytes.len() as f64) as usize).collect();
            cuts.sort_unstable();
            let whole = split_reads(DEFAULT_MAX_LINE_BYTES, [bytes]);
            prop_assert_eq!(split_cut(DEFAULT_MAX_LINE_BYTES, bytes, &cuts), whole, "cuts {:?}", cuts);
        }

        /// The fuzz target's body holds on syntax-shaped random streams.
        #[test]
        fn fuzz_body_syntax_pieces(lengths in proptest::collection::vec(any::<u8>(), 0..8), stream in stream_pieces()) {
            fuzzing::ndjson_splitter(&crate::net::sse::fuzzing::join_input(&lengths, &stream));
        }

        /// The fuzz target's body holds on arbitrary bytes.
        #[test]
        fn fuzz_body_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            fuzzing::ndjson_splitter(&data);
        }
    }
}
