//! Incremental UTF-8 decoding of token byte pieces.
//!
//! A token of a byte-level tokenizer can end in the middle of a multi-byte
//! character, so decoding each piece on its own would turn both halves into
//! U+FFFD. [`Utf8Decoder`] keeps the incomplete tail of a piece until the
//! next piece completes it.

/// Turns a stream of byte pieces into text, holding back bytes of a
/// character that the next piece completes.
///
/// Bytes that can never start or continue a valid character are dropped and
/// counted instead of becoming U+FFFD, so that speech synthesis never reads a
/// replacement character.
#[derive(Debug, Default, Clone)]
pub struct Utf8Decoder {
    /// The start of a character that is still missing bytes, at most 3 bytes.
    pending: Vec<u8>,
    invalid_bytes: usize,
}

impl Utf8Decoder {
    /// Creates a decoder with nothing pending.
    pub fn new() -> Self {
        Utf8Decoder::default()
    }

    /// Appends `piece` and returns every character that is now complete, in order.
    pub fn push(&mut self, piece: &[u8]) -> String {
        self.pending.extend_from_slice(piece);
        let mut text = String::with_capacity(self.pending.len());
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    start = self.pending.len();
                }
                Err(error) => {
                    let valid_end = start + error.valid_up_to();
                    if let Ok(valid) = std::str::from_utf8(&self.pending[start..valid_end]) {
                        text.push_str(valid);
                    }
                    match error.error_len() {
                        // Bytes that no continuation can make valid.
                        Some(invalid) => {
                            self.invalid_bytes += invalid;
                            start = valid_end + invalid;
                        }
                        // The start of a character whose remaining bytes have not arrived.
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        text
    }

    /// Ends the stream: drops an incomplete character still pending (it
    /// counts as invalid) and returns how many bytes were dropped.
    pub fn finish(&mut self) -> usize {
        let dropped = self.pending.len();
        self.invalid_bytes += dropped;
        self.pending.clear();
        dropped
    }

    /// Returns whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Returns how many bytes were dropped as invalid since construction.
    pub fn invalid_bytes(&self) -> usize {
        self.invalid_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one by one and returns the texts produced and their concatenation.
    fn decode(pieces: &[&[u8]]) -> (Vec<String>, String) {
        let mut decoder = Utf8Decoder::new();
        let outputs: Vec<String> = pieces.iter().map(|piece| decoder.push(piece)).collect();
        let text = outputs.concat();
        (outputs, text)
    }

    #[test]
    fn ascii_passes_through() {
        let (outputs, text) = decode(&[b"Hello", b", world"]);
        assert_eq!(outputs, vec!["Hello", ", world"]);
        assert_eq!(text, "Hello, world");
    }

    #[test]
    fn split_two_byte_character() {
        // "é" is C3 A9.
        let (outputs, text) = decode(&[b"caf\xC3", b"\xA9 ok"]);
        assert_eq!(outputs, vec!["caf", "é ok"]);
        assert_eq!(text, "café ok");
    }

    #[test]
    fn split_four_byte_character_in_every_place() {
        let word = "a🎉b".as_bytes();
        for first in 1..word.len() {
            for second in first..word.len() {
                let pieces = [&word[..first], &word[first..second], &word[second..]];
                let (_, text) = decode(&pieces);
                assert_eq!(text, "a🎉b", "split at {first} and {second}");
                assert!(!text.contains('\u{FFFD}'), "split at {first} and {second}");
            }
        }
    }

    #[test]
    fn one_byte_per_piece() {
        let source = "Grüße, 日本語 and 👋🏽!";
        let pieces: Vec<&[u8]> = source.as_bytes().chunks(1).collect();
        let (outputs, text) = decode(&pieces);
        assert_eq!(text, source);
        assert!(outputs.iter().all(|output| !output.contains('\u{FFFD}')));
    }

    #[test]
    fn invalid_bytes_are_dropped_and_counted() {
        let mut decoder = Utf8Decoder::new();
        let text = decoder.push(b"ok\xFF\xFEfine");
        assert_eq!(text, "okfine");
        assert_eq!(decoder.invalid_bytes(), 2);
    }

    #[test]
    fn finish_drops_incomplete_tail() {
        let mut decoder = Utf8Decoder::new();
        assert_eq!(decoder.push(b"end \xE6\x97"), "end ");
        assert!(decoder.has_pending());
        assert_eq!(decoder.finish(), 2);
        assert!(!decoder.has_pending());
        assert_eq!(decoder.push(b"next"), "next", "nothing of the dropped tail leaks into the next text");
    }

    #[test]
    fn invalid_continuation_after_pending_start() {
        // E6 starts a 3-byte character, but "x" cannot continue it.
        let mut decoder = Utf8Decoder::new();
        assert_eq!(decoder.push(b"\xE6"), "");
        assert_eq!(decoder.push(b"x"), "x");
        assert_eq!(decoder.invalid_bytes(), 1);
    }
}
