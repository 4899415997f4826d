//! Server-sent events: an incremental parser for `text/event-stream` bodies,
//! as OpenAI's and Anthropic's streaming APIs send them.
//!
//! The parser follows the event stream interpretation rules of the WHATWG HTML
//! Living Standard, section 9.2.6 "Interpreting an event stream"
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html>):
//! - a line ends in CRLF, LF or CR, and an empty line dispatches the event;
//! - a line starting with `:` is a comment (servers send them as keep-alives);
//! - `field: value` lines set a field, with one space after the colon dropped,
//!   and a line without a colon is a field with an empty value;
//! - `data` lines are joined with `\n`, and `event` sets the event type, which
//!   is `message` when unset;
//! - `id` sets the last event ID unless the value contains U+0000, and the ID
//!   persists across events;
//! - `retry` is taken only when the value is all ASCII digits, and other
//!   fields are ignored;
//! - an event whose data buffer is empty is not dispatched;
//! - one byte order mark at the start of the stream is dropped.
//!
//! Three departures from the standard, so that a damaged or runaway stream
//! fails visibly instead of being altered or growing without bound:
//! - bytes that are not UTF-8 fail with [`SseError::InvalidUtf8`], where a
//!   browser would replace them with U+FFFD;
//! - a line or an event larger than the limit fails with
//!   [`SseError::LineTooLong`] or [`SseError::EventTooLarge`], because the
//!   standard sets no limit;
//! - [`SseParser::finish`] reports a stream that ends inside an event as
//!   [`SseError::Truncated`]. The unfinished event is discarded, as the
//!   standard says.
//!
//! The result does not depend on how the bytes are split across
//! [`SseParser::push`] calls. A line is decoded only once it is complete, so a
//! UTF-8 character or a CRLF split between two reads gives the same events as
//! one that arrived whole.

use thiserror::Error;

/// The default limit on one line and on one event's data, in bytes: 1 MiB.
///
/// Streaming LLM APIs send events of a few hundred bytes to a few kilobytes
/// (one token delta, or the message envelope at the start), so this is an
/// estimate with a wide margin. Its job is to stop a server that never sends a
/// line ending from growing the buffer without bound.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The UTF-8 encoding of U+FEFF, dropped when it starts the stream.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Event type: the value of the block's last `event` field, or `message`
    /// when the block had none or an empty one.
    pub event: String,
    /// Event data: the values of the block's `data` lines joined with `\n`.
    pub data: String,
    /// The last event ID when the event was dispatched. It comes from the most
    /// recent `id` field, which may be in an earlier block. `None` until the
    /// stream sends a non-empty ID, and again after an empty `id` field.
    pub id: Option<String>,
    /// The reconnection time in milliseconds from the most recent valid
    /// `retry` field on the stream, which may be in an earlier block
    /// (including one without data, which is never dispatched).
    pub retry: Option<u64>,
}

/// A failure to parse an event stream. Every variant ends the stream: after
/// one, [`SseParser::push`] and [`SseParser::finish`] return it again.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SseError {
    /// A complete line is not valid UTF-8.
    #[error(
        "event stream byte {offset} (0x{byte:02x}) is not valid UTF-8; the body is not a text/event-stream \
         or was corrupted in transit"
    )]
    InvalidUtf8 {
        /// Stream offset of the first byte that is not part of a valid UTF-8
        /// character, counted from the first byte of the body.
        offset: u64,
        /// The byte at `offset`.
        byte: u8,
    },
    /// A line grew past the limit before its line ending arrived.
    #[error(
        "event stream line starting at byte {offset} is longer than the limit of {limit} bytes; \
         raise the limit with SseParser::with_limit if the server really sends lines this long"
    )]
    LineTooLong {
        /// Stream offset of the line's first byte.
        offset: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// The data of one event grew past the limit.
    #[error(
        "event stream data line starting at byte {offset} makes its event larger than the limit of {limit} \
         bytes; raise the limit with SseParser::with_limit if the server really sends events this large"
    )]
    EventTooLarge {
        /// Stream offset of the `data` line that crossed the limit.
        offset: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// The stream ended before the empty line that completes the last event.
    #[error(
        "event stream ended at byte {offset} in the middle of an event ({unterminated_line_bytes} bytes of \
         an unterminated line dropped); the connection was probably cut, so treat the reply as incomplete"
    )]
    Truncated {
        /// Stream length in bytes.
        offset: u64,
        /// Bytes of the last line that arrived without a line ending.
        unterminated_line_bytes: usize,
    },
}

/// An incremental parser for one event stream at a time.
///
/// Feed the body's bytes to [`push`](Self::push) as they arrive and call
/// [`finish`](Self::finish) at the end of the body. Memory stays bounded by
/// the limit: at most one line, one event's data and one event type are
/// buffered, each no larger than the limit.
#[derive(Debug)]
pub struct SseParser {
    /// Maximum length of one line and of one event's data, in bytes.
    limit: usize,
    /// The start of the current line, received in earlier reads, without its
    /// line ending.
    line: Vec<u8>,
    /// Stream offset of the current line's first byte.
    line_start: u64,
    /// Stream offset of the next byte to arrive.
    offset: u64,
    /// The previous read ended in CR, so an LF starting the next read belongs
    /// to the same line ending.
    skip_lf: bool,
    /// Field lines have arrived since the last empty line.
    block_open: bool,
    /// The event type buffer of the standard.
    event_type: String,
    /// The data buffer of the standard: each `data` value followed by `\n`.
    data: String,
    /// The last event ID buffer of the standard, `None` when empty.
    id_buffer: Option<String>,
    /// The last event ID as of the last dispatch, `None` when empty.
    last_event_id: Option<String>,
    /// The reconnection time in milliseconds from the last valid `retry` field.
    retry: Option<u64>,
    /// Comment lines seen over the parser's lifetime.
    comments: u64,
    /// The error that ended the stream, returned again by later calls.
    failed: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// Creates a parser with the default limit, [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// Creates a parser that rejects a line, or an event's data, longer than
    /// `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        Self {
            limit: max_event_bytes,
            line: Vec::new(),
            line_start: 0,
            offset: 0,
            skip_lf: false,
            block_open: false,
            event_type: String::new(),
            data: String::new(),
            id_buffer: None,
            last_event_id: None,
            retry: None,
            comments: 0,
            failed: None,
        }
    }

    /// Parses the next bytes of the stream and appends every event they
    /// complete to `events`.
    ///
    /// On error, the events completed before the offending line are already in
    /// `events`, and the stream is over: later calls return the same error
    /// until [`finish`](Self::finish).
    pub fn push(&mut self, bytes: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.push_lines(bytes, events);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    /// Ends the stream.
    ///
    /// Returns [`SseError::Truncated`] when the stream stopped inside an event,
    /// that is after a field line or part of a line but before the empty line
    /// that dispatches the event, and returns the stored error when an earlier
    /// call failed. Either way the parser is then ready for a new stream, such
    /// as the body of a reconnection. It keeps the last event ID and the
    /// reconnection time, which a client sends back as `Last-Event-ID` and
    /// waits before reconnecting.
    pub fn finish(&mut self) -> Result<(), SseError> {
        let result = match self.failed.take() {
            Some(error) => Err(error),
            None if !self.line.is_empty() || self.block_open => {
                Err(SseError::Truncated { offset: self.offset, unterminated_line_bytes: self.line.len() })
            }
            None => Ok(()),
        };

        // The next stream starts from byte 0 with empty buffers.
        self.line.clear();
        self.line_start = 0;
        self.offset = 0;
        self.skip_lf = false;
        self.block_open = false;
        self.event_type.clear();
        self.data.clear();
        // NOTE: the standard gives each stream an empty last event ID buffer,
        // which would forget the ID at the first dispatch of a reconnection
        // that sends no `id`. Starting from the last dispatched ID keeps it.
        self.id_buffer = self.last_event_id.clone();
        result
    }

    /// Returns the last event ID as of the last dispatch, which a client sends
    /// in the `Last-Event-ID` header when it reconnects.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Returns the reconnection time in milliseconds from the last valid
    /// `retry` field, if the stream sent one.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Returns how many comment lines the parser has seen over its lifetime.
    /// Servers send comments as keep-alives, so a rising count shows that a
    /// quiet connection is still alive.
    pub fn comments(&self) -> u64 {
        self.comments
    }

    /// Returns the number of bytes buffered for the unfinished line and event,
    /// which is at most three times the limit plus one.
    pub fn buffered_bytes(&self) -> usize {
        self.line.len() + self.data.len() + self.event_type.len()
    }

    /// Returns the limit on one line and on one event's data, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Splits `bytes` into lines, processing each complete one and buffering
    /// the unterminated rest.
    fn push_lines(&mut self, mut bytes: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        // A CRLF split between two reads is one line ending, not two.
        if self.skip_lf
            && let Some((&first, rest)) = bytes.split_first()
        {
            self.skip_lf = false;
            if first == b'\n' {
                bytes = rest;
                self.offset += 1;
                self.line_start = self.offset;
            }
        }

        while let Some(end) = bytes.iter().position(|&byte| byte == b'\r' || byte == b'\n') {
            // Process the completed line, joined with its start from earlier
            // reads when there is one.
            self.check_line_length(self.line.len() + end)?;
            if self.line.is_empty() {
                self.process_line(&bytes[..end], events)?;
            } else {
                self.line.extend_from_slice(&bytes[..end]);
                let line = std::mem::take(&mut self.line);
                let result = self.process_line(&line, events);
                // Keep the allocation for the next partial line.
                self.line = line;
                self.line.clear();
                result?;
            }

            // Consume the line ending. A CR that ends the read may be the
            // first half of a CRLF.
            let mut consumed = end + 1;
            if bytes[end] == b'\r' {
                match bytes.get(end + 1) {
                    Some(b'\n') => consumed += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            bytes = &bytes[consumed..];
            self.offset += consumed as u64;
            self.line_start = self.offset;
        }

        // Keep the unterminated rest for the next read.
        self.check_line_length(self.line.len() + bytes.len())?;
        self.line.extend_from_slice(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Fails when the current line would be longer than the limit.
    fn check_line_length(&self, length: usize) -> Result<(), SseError> {
        if length > self.limit {
            return Err(SseError::LineTooLong { offset: self.line_start, limit: self.limit });
        }
        Ok(())
    }

    /// Applies one complete line, given without its line ending.
    fn process_line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let (line, line_start) = match line.strip_prefix(BYTE_ORDER_MARK) {
            Some(rest) if self.line_start == 0 => (rest, BYTE_ORDER_MARK.len() as u64),
            _ => (line, self.line_start),
        };
        let text = std::str::from_utf8(line).map_err(|error| {
            let bad = error.valid_up_to();
            SseError::InvalidUtf8 { offset: line_start + bad as u64, byte: line[bad] }
        })?;

        if text.is_empty() {
            self.dispatch(events);
            return Ok(());
        }
        if text.starts_with(':') {
            self.comments += 1;
            return Ok(());
        }
        self.block_open = true;

        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text, ""),
        };
        match field {
            "event" => {
                self.event_type.clear();
                self.event_type.push_str(value);
            }
            "data" => {
                // `data` contains a `\n` after each earlier value. Those become
                // the separators, so this sum is the size the event would have.
                if self.data.len() + value.len() > self.limit {
                    return Err(SseError::EventTooLarge { offset: line_start, limit: self.limit });
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.id_buffer = (!value.is_empty()).then(|| value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) => {
                // A value too large for u64 saturates instead of being dropped.
                let millis = value
                    .bytes()
                    .fold(0_u64, |total, digit| total.saturating_mul(10).saturating_add(u64::from(digit - b'0')));
                self.retry = Some(millis);
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends the current block at an empty line, emitting its event when it
    /// has data.
    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        self.block_open = false;
        self.last_event_id.clone_from(&self.id_buffer);
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }

        // Every value was pushed with a trailing `\n`; the last one goes.
        self.data.pop();
        let event =
            if self.event_type.is_empty() { "message".to_owned() } else { std::mem::take(&mut self.event_type) };
        events.push(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: self.last_event_id.clone(),
            retry: self.retry,
        });
    }
}

/// The body of the `sse` fuzz target in `fuzz/`. It lives here so that the
/// normal test run drives it with generated inputs as well.
pub mod fuzzing {
    use super::{SseError, SseEvent, SseParser};

    /// The small limit that every input is also parsed with, in bytes, so the
    /// fuzzer reaches the limit errors with short inputs.
    const SMALL_LIMIT: usize = 24;

    /// Splits a fuzz input into the lengths of the reads to cut it into and
    /// the stream itself.
    ///
    /// Byte 0 modulo 8 is the number `n` of read lengths, which are bytes 1 to
    /// `n`; the rest of the input is the stream. A length of 0 is an empty
    /// read, and the bytes left after the last length form one more read.
    pub fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
        let Some((&first, rest)) = data.split_first() else {
            return (&[], &[]);
        };
        let count = usize::from(first % 8).min(rest.len());
        rest.split_at(count)
    }

    /// Cuts `stream` into reads of the given lengths, then one read with the
    /// bytes that remain.
    pub fn reads<'a>(stream: &'a [u8], lengths: &[u8]) -> Vec<&'a [u8]> {
        let mut reads = Vec::with_capacity(lengths.len() + 1);
        let mut rest = stream;
        for &length in lengths {
            let (read, tail) = rest.split_at(usize::from(length).min(rest.len()));
            reads.push(read);
            rest = tail;
        }
        reads.push(rest);
        reads
    }

    /// Builds a fuzz input from read lengths and a stream, the way
    /// [`split_input`] takes it apart when there are fewer than 8 lengths.
    #[cfg(test)]
    pub(crate) fn join_input(lengths: &[u8], stream: &[u8]) -> Vec<u8> {
        let mut data = vec![lengths.len() as u8];
        data.extend_from_slice(lengths);
        data.extend_from_slice(stream);
        data
    }

    /// Returns the paths of the seed corpus of the fuzz target `target`
    /// (`fuzz/seeds/{target}`), sorted, after checking that it contains at
    /// least `min` files.
    #[cfg(test)]
    pub(crate) fn seed_files(target: &str, min: usize) -> Vec<std::path::PathBuf> {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
        let mut paths: Vec<_> =
            std::fs::read_dir(&folder).expect("seed folder").map(|entry| entry.expect("folder entry").path()).collect();
        paths.sort();
        assert!(paths.len() >= min, "expected the seed files in {}", folder.display());
        paths
    }

    /// The events and errors of one pass over a stream.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Outcome {
        /// Every event emitted, in order.
        pub events: Vec<SseEvent>,
        /// The first error a `push` returned.
        pub push_error: Option<SseError>,
        /// The result of `finish`.
        pub finish: Result<(), SseError>,
        /// Comment lines counted.
        pub comments: u64,
    }

    /// Parses a stream delivered as `reads` with the given limit, checking the
    /// invariants that hold after every call.
    pub fn parse_reads<'a>(limit: usize, reads: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let mut parser = SseParser::with_limit(limit);
        let mut events = Vec::new();
        let mut push_error = None;
        for read in reads {
            if let Err(error) = parser.push(read, &mut events) {
                push_error = Some(error);
                break;
            }
            assert!(parser.buffered_bytes() <= 3 * limit + 1, "buffered {} bytes", parser.buffered_bytes());
        }
        if let Some(error) = &push_error {
            assert_eq!(parser.push(b"data: more\n\n", &mut events).as_ref(), Err(error), "error not repeated");
        }
        let finish = parser.finish();
        for event in &events {
            assert!(!event.event.is_empty(), "empty event type");
            assert!(!event.event.contains(['\r', '\n']), "line ending in event type {:?}", event.event);
            assert!(!event.data.contains('\r'), "CR in data {:?}", event.data);
            assert!(event.data.len() <= limit, "data of {} bytes over the limit", event.data.len());
            if let Some(id) = &event.id {
                assert!(!id.is_empty(), "empty id instead of None");
                assert!(!id.contains(['\0', '\r', '\n']), "invalid id {id:?}");
            }
        }
        Outcome { events, push_error, finish, comments: parser.comments() }
    }

    /// Parses the stream in a fuzz input whole, in the reads the input
    /// chooses, and one byte at a time, with the default and with a small
    /// limit, and panics when the three results differ or an invariant breaks.
    pub fn sse_parser(data: &[u8]) {
        let (lengths, stream) = split_input(data);
        for limit in [super::DEFAULT_MAX_EVENT_BYTES, SMALL_LIMIT] {
            let whole = parse_reads(limit, [stream]);
            let chosen = parse_reads(limit, reads(stream, lengths));
            assert_eq!(chosen, whole, "chosen reads {lengths:?} differ from one read, limit {limit}");
            let bytewise = parse_reads(limit, stream.chunks(1));
            assert_eq!(bytewise, whole, "one-byte reads differ from one read, limit {limit}");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::fuzzing::{Outcome, parse_reads};
    use super::*;

    /// Builds an event of type `message` with no ID and no reconnection time.
    fn message(data: &str) -> SseEvent {
        SseEvent { event: "message".to_owned(), data: data.to_owned(), id: None, retry: None }
    }

    /// Parses `stream` in one read, asserting that it ends cleanly.
    fn parse(stream: &[u8]) -> Vec<SseEvent> {
        let outcome = parse_reads(DEFAULT_MAX_EVENT_BYTES, [stream]);
        assert_eq!(outcome.push_error, None, "push failed on {:?}", String::from_utf8_lossy(stream));
        assert_eq!(outcome.finish, Ok(()), "finish failed on {:?}", String::from_utf8_lossy(stream));
        outcome.events
    }

    /// Parses `stream` cut at each offset in `cuts`, which must be sorted.
    fn parse_cut(limit: usize, stream: &[u8], cuts: &[usize]) -> Outcome {
        let mut reads = Vec::with_capacity(cuts.len() + 1);
        let mut start = 0;
        for &cut in cuts {
            reads.push(&stream[start..cut]);
            start = cut;
        }
        reads.push(&stream[start..]);
        parse_reads(limit, reads)
    }

    /// A chat completion stream in the shape OpenAI's API sends, ending with
    /// its `[DONE]` marker, with multi-byte characters in the deltas.
    const OPENAI_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,",
        "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,",
        "\"delta\":{\"content\":\"Grüße, 世界 👋\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-7\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,",
        "\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    );

    /// A Messages stream in the shape Anthropic's API sends, with CRLF line
    /// endings, a ping and a `retry` field.
    const ANTHROPIC_STREAM: &str = concat!(
        "retry: 3000\r\n\r\n",
        "event: message_start\r\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"role\":\"assistant\",\"content\":[]}}\r\n\r\n",
        "event: content_block_start\r\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
        "event: ping\r\n",
        "data: {\"type\": \"ping\"}\r\n\r\n",
        "event: content_block_delta\r\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Ça va ✓\"}}\r\n\r\n",
        "event: content_block_stop\r\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
        "event: message_stop\r\n",
        "data: {\"type\":\"message_stop\"}\r\n\r\n",
    );

    /// Every line ending, a BOM, IDs, multi-line data and a 4-byte character
    /// right before a CR.
    const MIXED_STREAM: &str = concat!(
        "\u{FEFF}id: 1\rdata: first\rdata:second 😀\r\r",
        ":comment\r\n",
        "event: add\ndata\ndata: x\n\n",
        "id\r\nretry: 15\r\ndata: é\r\n\r\n",
        "event: empty\n\n",
        "data: last\n\n",
    );

    const KNOWN_STREAMS: [&str; 3] = [OPENAI_STREAM, ANTHROPIC_STREAM, MIXED_STREAM];

    #[test]
    fn line_endings_lf_cr_crlf() {
        let expected = vec![message("a"), message("b")];
        for stream in ["data: a\n\ndata: b\n\n", "data: a\r\rdata: b\r\r", "data: a\r\n\r\ndata: b\r\n\r\n"] {
            assert_eq!(parse(stream.as_bytes()), expected, "{stream:?}");
        }
        // Mixed in one stream, including LF CR, which is two line endings.
        assert_eq!(parse(b"data: a\n\rdata: b\r\n\n"), expected);
    }

    #[test]
    fn crlf_split_between_reads_is_one_ending() {
        // Were the LF taken as a second line ending, "a" would be dispatched
        // alone and "b" would follow as its own event.
        let outcome = parse_cut(DEFAULT_MAX_EVENT_BYTES, b"data: a\r\ndata: b\r\n\r\n", &[8]);
        assert_eq!(outcome.events, vec![message("a\nb")]);
        assert_eq!(outcome.finish, Ok(()));

        // Empty reads between the CR and the LF do not forget the CR.
        let outcome = parse_reads(DEFAULT_MAX_EVENT_BYTES, [&b"data: a\r"[..], b"", b"", b"\n\r", b"\n"]);
        assert_eq!(outcome.events, vec![message("a")]);
        assert_eq!(outcome.finish, Ok(()));
    }

    #[test]
    fn comments_ignored_and_counted() {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        parser.push(b": keep-alive\n\n:\n", &mut events).expect("valid stream");
        assert!(events.is_empty(), "a comment dispatched {events:?}");
        assert_eq!(parser.comments(), 2);
        parser.push(b"data: a\n: inside an event\ndata: b\n\n", &mut events).expect("valid stream");
        assert_eq!(events, vec![message("a\nb")]);
        assert_eq!(parser.comments(), 3);
        assert_eq!(parser.finish(), Ok(()), "a trailing comment is not a cut event");
    }

    #[test]
    fn byte_order_mark_dropped_at_start_only() {
        assert_eq!(parse(b"\xEF\xBB\xBFdata: a\n\n"), vec![message("a")]);
        let outcome = parse_cut(DEFAULT_MAX_EVENT_BYTES, b"\xEF\xBB\xBFdata: a\n\n", &[1, 2]);
        assert_eq!(outcome.events, vec![message("a")], "BOM split across reads");
        // Later in the stream it is part of the field name, which matches no field.
        assert_eq!(parse("data: a\n\n\u{FEFF}data: b\n\n".as_bytes()), vec![message("a")]);
        // Only one is dropped.
        assert_eq!(parse("\u{FEFF}\u{FEFF}data: b\n\n".as_bytes()), vec![]);
    }

    #[test]
    fn field_syntax_cases() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("no space after colon", "data:a\n\n", &["a"]),
            ("only one space dropped", "data:  a\n\n", &[" a"]),
            ("colon in the value kept", "data: a: b\n\n", &["a: b"]),
            ("no colon is an empty value", "data\n\n", &[""]),
            ("empty data lines", "data\ndata\n\n", &["\n"]),
            ("empty value after colon", "data:\n\n", &[""]),
            ("trailing empty data line", "data: a\ndata:\n\n", &["a\n"]),
            ("space before colon is another field", "data : a\n\n", &[]),
            ("field names are case-sensitive", "Data: a\n\n", &[]),
            ("unknown field ignored", "foo: bar\ndata: a\n\n", &["a"]),
            ("DONE marker passed through", "data: [DONE]\n\n", &["[DONE]"]),
            ("no data is not dispatched", "event: ping\n\n", &[]),
            ("id alone is not dispatched", "id: 4\n\n", &[]),
            ("tab is not a space", "data:\ta\n\n", &["\ta"]),
        ];
        for (name, stream, expected) in cases {
            let data: Vec<String> = parse(stream.as_bytes()).into_iter().map(|event| event.data).collect();
            assert_eq!(data, *expected, "{name}: {stream:?}");
        }
    }

    #[test]
    fn event_type_set_and_reset() {
        let events = parse(b"event: add\ndata: 1\n\nevent: ping\n\ndata: 2\n\nevent\ndata: 3\n\n");
        let types: Vec<&str> = events.iter().map(|event| event.event.as_str()).collect();
        // The type of the undispatched ping block does not leak into the next one.
        assert_eq!(types, ["add", "message", "message"]);
    }

    #[test]
    fn id_persists_until_reset() {
        let events = parse(b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 8\0x\ndata: d\n\n");
        let ids: Vec<Option<&str>> = events.iter().map(|event| event.id.as_deref()).collect();
        // An ID containing U+0000 is ignored, so the reset to empty stays.
        assert_eq!(ids, [Some("7"), Some("7"), None, None]);

        // An ID in a block without data still becomes the last event ID.
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        parser.push(b"id: 9\n\n", &mut events).expect("valid stream");
        assert!(events.is_empty());
        assert_eq!(parser.last_event_id(), Some("9"));
    }

    #[test]
    fn retry_digits_only() {
        let cases: &[(&str, Option<u64>)] = &[
            ("retry: 3000\n", Some(3000)),
            ("retry:0\n", Some(0)),
            ("retry: 12a\n", None),
            ("retry: -1\n", None),
            ("retry: 1.5\n", None),
            ("retry:  5\n", None),
            ("retry: ٣\n", None),
            ("retry:\n", None),
            ("retry: 99999999999999999999999\n", Some(u64::MAX)),
        ];
        for (line, expected) in cases {
            let stream = format!("{line}data: x\n\n");
            let events = parse(stream.as_bytes());
            assert_eq!(events.len(), 1, "{line:?}");
            assert_eq!(events[0].retry, *expected, "{line:?}");
        }

        // An invalid value leaves the previous one in place.
        let events = parse(b"retry: 100\n\nretry: x\ndata: a\n\n");
        assert_eq!(events[0].retry, Some(100));
    }

    #[test]
    fn utf8_split_inside_characters() {
        // 2-, 3- and 4-byte characters, cut at every offset inside each.
        for text in ["é", "€", "😀"] {
            let stream = format!("data: {text}\n\n");
            let bytes = stream.as_bytes();
            for cut in 7..6 + text.len() {
                let outcome = parse_cut(DEFAULT_MAX_EVENT_BYTES, bytes, &[cut]);
                assert_eq!(outcome.events, vec![message(text)], "{text} cut at {cut}");
                assert_eq!(outcome.finish, Ok(()), "{text} cut at {cut}");
            }
            let outcome = parse_reads(DEFAULT_MAX_EVENT_BYTES, bytes.chunks(1));
            assert_eq!(outcome.events, vec![message(text)], "{text} one byte at a time");
        }
    }

    #[test]
    fn invalid_utf8_names_offset() {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let error = parser.push(b"data: a\n\ndata: b\xFF\n\n", &mut events).expect_err("invalid UTF-8");
        assert_eq!(error, SseError::InvalidUtf8 { offset: 16, byte: 0xFF });
        assert_eq!(events, vec![message("a")], "the event before the bad line is kept");
        assert_eq!(parser.push(b"data: c\n\n", &mut events), Err(error.clone()), "stream stays failed");
        assert_eq!(parser.finish(), Err(error));

        // A character cut short by the line ending, after a BOM.
        let outcome = parse_reads(DEFAULT_MAX_EVENT_BYTES, [&b"\xEF\xBB\xBFdata: \xE2\x82\n\n"[..]]);
        assert_eq!(outcome.push_error, Some(SseError::InvalidUtf8 { offset: 9, byte: 0xE2 }));
        // A surrogate encoded in UTF-8 is not valid UTF-8 either.
        let outcome = parse_reads(DEFAULT_MAX_EVENT_BYTES, [&b"data: \xED\xA0\x80\n\n"[..]]);
        assert_eq!(outcome.push_error, Some(SseError::InvalidUtf8 { offset: 6, byte: 0xED }));
    }

    #[test]
    fn long_line_rejected_before_its_end() {
        let mut parser = SseParser::with_limit(16);
        let mut events = Vec::new();
        parser.push(b"data: 0123456789\n\n", &mut events).expect("a line of exactly the limit");
        assert_eq!(events, vec![message("0123456789")]);

        // The line never ends, so the error comes while it is buffered.
        parser.push(b": 0123456789", &mut events).expect("still within the limit");
        let error = parser.push(b"abcdef", &mut events).expect_err("over the limit");
        assert_eq!(error, SseError::LineTooLong { offset: 18, limit: 16 });
        assert!(parser.buffered_bytes() <= 16, "buffered {} bytes", parser.buffered_bytes());
    }

    #[test]
    fn large_event_rejected() {
        let mut parser = SseParser::with_limit(16);
        let mut events = Vec::new();
        // 8 + 1 + 7 = 16 bytes of data is exactly the limit.
        parser.push(b"data: 01234567\ndata: 0123456\n\n", &mut events).expect("event of exactly the limit");
        assert_eq!(events.len(), 1);
        let error = parser.push(b"data: 01234567\ndata: 01234567\n\n", &mut events).expect_err("over");
        assert_eq!(error, SseError::EventTooLarge { offset: 45, limit: 16 });
        assert_eq!(events.len(), 1, "the oversized event is not dispatched");
    }

    #[test]
    fn finish_reports_cut_stream() {
        let cases: &[(&str, &[u8], Result<(), SseError>)] = &[
            ("clean end", b"data: a\n\n", Ok(())),
            ("empty stream", b"", Ok(())),
            ("comment without empty line", b"data: a\n\n: ping\n", Ok(())),
            ("CR as last byte", b"data: a\n\r", Ok(())),
            (
                "inside a line",
                b"data: a\n\ndata: b",
                Err(SseError::Truncated { offset: 16, unterminated_line_bytes: 7 }),
            ),
            ("before the empty line", b"data: b\n", Err(SseError::Truncated { offset: 8, unterminated_line_bytes: 0 })),
            (
                "after an event field",
                b"event: stop\r\n",
                Err(SseError::Truncated { offset: 13, unterminated_line_bytes: 0 }),
            ),
            ("inside a comment", b": pi", Err(SseError::Truncated { offset: 4, unterminated_line_bytes: 4 })),
        ];
        for (name, stream, expected) in cases {
            let outcome = parse_reads(DEFAULT_MAX_EVENT_BYTES, [*stream]);
            assert_eq!(outcome.push_error, None, "{name}");
            assert_eq!(&outcome.finish, expected, "{name}");
        }
    }

    #[test]
    fn finish_readies_next_stream() {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        parser.push(b"retry: 500\nid: 3\ndata: a\n\ndata: cut", &mut events).expect("valid stream");
        assert!(matches!(parser.finish(), Err(SseError::Truncated { .. })));

        // The reconnection's body starts over: a BOM is dropped again and
        // offsets count from 0, while the ID and retry time carry over.
        parser.push(b"\xEF\xBB\xBFdata: b\n\n", &mut events).expect("new stream");
        let expected_b =
            SseEvent { event: "message".to_owned(), data: "b".to_owned(), id: Some("3".to_owned()), retry: Some(500) };
        assert_eq!(events.last(), Some(&expected_b));
        let error = parser.push(b"\xC0\n", &mut events).expect_err("invalid UTF-8");
        assert_eq!(error, SseError::InvalidUtf8 { offset: 12, byte: 0xC0 });

        // After a failed stream, finish returns the error once and clears it.
        assert_eq!(parser.finish(), Err(error));
        parser.push(b"data: c\n\n", &mut events).expect("a fresh stream after the failure");
        assert_eq!(parser.finish(), Ok(()));
    }

    #[test]
    fn known_streams_parse() {
        let openai = parse(OPENAI_STREAM.as_bytes());
        assert_eq!(openai.len(), 4);
        assert!(openai[1].data.contains("Grüße, 世界 👋"), "{:?}", openai[1].data);
        assert_eq!(openai[3], message("[DONE]"));

        let anthropic = parse(ANTHROPIC_STREAM.as_bytes());
        let types: Vec<&str> = anthropic.iter().map(|event| event.event.as_str()).collect();
        let expected = [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_stop",
        ];
        assert_eq!(types, expected);
        assert!(anthropic.iter().all(|event| event.retry == Some(3000)), "retry from the data-less first block");
        assert!(anthropic[3].data.contains("Ça va ✓"));

        let mixed = parse(MIXED_STREAM.as_bytes());
        let summary: Vec<(&str, &str, Option<&str>, Option<u64>)> = mixed
            .iter()
            .map(|event| (event.event.as_str(), event.data.as_str(), event.id.as_deref(), event.retry))
            .collect();
        assert_eq!(
            summary,
            [
                ("message", "first\nsecond 😀", Some("1"), None),
                ("add", "\nx", Some("1"), None),
                ("message", "é", None, Some(15)),
                ("message", "last", None, Some(15)),
            ]
        );
    }

    #[test]
    fn known_streams_split_at_every_offset() {
        for stream in KNOWN_STREAMS {
            let bytes = stream.as_bytes();
            let whole = parse_reads(DEFAULT_MAX_EVENT_BYTES, [bytes]);
            for cut in 0..=bytes.len() {
                let split = parse_cut(DEFAULT_MAX_EVENT_BYTES, bytes, &[cut]);
                assert_eq!(split, whole, "cut at {cut} of {stream:?}");
            }
            assert_eq!(parse_reads(DEFAULT_MAX_EVENT_BYTES, bytes.chunks(1)), whole, "one byte at a time");
        }
    }

    #[test]
    fn fuzz_seeds_pass() {
        // The seed corpus of the sse fuzz target must exist and pass.
        for path in fuzzing::seed_files("sse", 4) {
            let data = std::fs::read(&path).expect("seed bytes");
            fuzzing::sse_parser(&data);
            let (_, stream) = fuzzing::split_input(&data);
            let outcome = parse_reads(DEFAULT_MAX_EVENT_BYTES, [stream]);
            assert!(!outcome.events.is_empty(), "{}: no events", path.display());
        }
    }

    /// Bytes drawn mostly from event stream syntax, so random inputs form
    /// fields, line endings and split characters rather than noise.
    fn stream_pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"data".to_vec()),
            Just(b"event".to_vec()),
            Just(b"id".to_vec()),
            Just(b"retry".to_vec()),
            Just(b":".to_vec()),
            Just(b" ".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just("é€😀".as_bytes().to_vec()),
            Just(b"\0".to_vec()),
            Just(b"42".to_vec()),
            any::<u8>().prop_map(|byte| vec![byte]),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Known streams cut at several random offsets parse as in one read.
        #[test]
        fn known_streams_random_multi_splits(
            index in 0..KNOWN_STREAMS.len(),
            fractions in proptest::collection::vec(0.0..=1.0_f64, 1..8),
        ) {
            let bytes = KNOWN_STREAMS[index].as_bytes();
            let mut cuts: Vec<usize> = fractions.iter().map(|fraction| (fraction * bytes.len() as f64) as usize).collect();
            cuts.sort_unstable();
            let whole = parse_reads(DEFAULT_MAX_EVENT_BYTES, [bytes]);
            prop_assert_eq!(parse_cut(DEFAULT_MAX_EVENT_BYTES, bytes, &cuts), whole, "cuts {:?}", cuts);
        }

        /// The fuzz target's body holds on syntax-shaped random streams.
        #[test]
        fn fuzz_body_syntax_pieces(lengths in proptest::collection::vec(any::<u8>(), 0..8), stream in stream_pieces()) {
            fuzzing::sse_parser(&fuzzing::join_input(&lengths, &stream));
        }

        /// The fuzz target's body holds on arbitrary bytes.
        #[test]
        fn fuzz_body_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            fuzzing::sse_parser(&data);
        }
    }
}
