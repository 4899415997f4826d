//! Sentence aggregation between an LLM and speech synthesis.
//!
//! An LLM streams its reply as small text deltas, but a TTS engine speaks
//! whole sentences best: it needs the full sentence for intonation, and a
//! sentence is the natural point to check for an interruption. The
//! [`SentenceSplitter`] finds sentence ends in a growing text, and the
//! [`SentenceAggregator`] stage uses it to turn deltas into one text frame
//! per sentence.
//!
//! A sentence ends at `.`, `!` or `?` (or a run of them, such as `?!`),
//! followed by any closing quotes or brackets, followed by whitespace. The
//! splitter needs one character of look-ahead after the closing marks, so
//! "It is 3." waits for the next character to rule out "3.14". These do not
//! end a sentence:
//!
//! - a period or comma inside a number, URL or e-mail address ("3.14",
//!   "2,5", "$3.5", "example.com/path"), because no whitespace follows it;
//! - the period of a title or common abbreviation ("Dr.", "Mr.", "Mrs.",
//!   "Ms.", "St.", "Jr.", "Sr.", "Prof.", "vs.");
//! - the period of a dotted abbreviation or an initial: a word made of
//!   single letters each followed by a period ("e.g.", "i.e.", "a.m.",
//!   "p.m.", "U.S.", "J."), except the pronoun "I";
//! - an ellipsis ("..." or "…").
//!
//! NOTE: these rules cannot tell an abbreviation or ellipsis that does end
//! a sentence ("We landed in the U.S. Then we slept.") from one inside a
//! sentence, so such a sentence is spoken together with the next one.

use mentis_pipeline::{
    Control, Emitter, Frame, FrameMeta, MediaTime, Payload, PortFormat, Processor, StageError, StageName, StageSpec,
    TextDelta, TurnId,
};

/// Titles and abbreviations whose period does not end a sentence, in lower
/// case and without the period. Dotted abbreviations ("e.g.") and initials
/// are recognized by their shape instead.
const ABBREVIATIONS: &[&str] = &["dr", "mr", "mrs", "ms", "st", "jr", "sr", "prof", "vs"];

/// Marks that may follow a sentence's final punctuation and still belong to it.
const CLOSERS: &[char] = &['"', '\'', '\u{201D}', '\u{2019}', ')', ']', '}', '\u{BB}'];

/// Marks that may open a word, skipped when the word is compared with the
/// abbreviations.
const OPENERS: &[char] = &['"', '\'', '\u{201C}', '\u{2018}', '(', '[', '{', '\u{AB}'];

/// Splits a growing text into sentences.
///
/// Feed text with [`push`](Self::push) in pieces of any size: the sentences
/// found depend only on the concatenated text, never on where it was split.
#[derive(Debug, Default, Clone)]
pub struct SentenceSplitter {
    /// Text received and not yet returned as a sentence.
    buffer: String,
    /// Byte offset in `buffer` before which no sentence end can be found.
    scan_from: usize,
}

impl SentenceSplitter {
    /// Creates an empty splitter.
    pub fn new() -> Self {
        SentenceSplitter::default()
    }

    /// Appends `text` and moves every sentence it completes to `sentences`,
    /// trimmed of surrounding whitespace. Sentences with no letter or digit
    /// (only whitespace or punctuation) are dropped.
    pub fn push(&mut self, text: &str, sentences: &mut Vec<String>) {
        self.buffer.push_str(text);
        while let Some(end) = self.next_sentence_end() {
            let sentence: String = self.buffer.drain(..end).collect();
            self.scan_from = 0;
            if let Some(sentence) = speakable(&sentence) {
                sentences.push(sentence.to_owned());
            }
        }
    }

    /// Returns the text that has not yet formed a sentence, trimmed, and
    /// empties the splitter. Returns `None` when that text has no letter or
    /// digit.
    pub fn finish(&mut self) -> Option<String> {
        let rest = speakable(&self.buffer).map(str::to_owned);
        self.clear();
        rest
    }

    /// Discards the text that has not yet formed a sentence.
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.scan_from = 0;
    }

    /// Returns whether no text is waiting.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Returns the text waiting for its sentence to end.
    pub fn pending(&self) -> &str {
        &self.buffer
    }

    /// Returns the byte offset just past the first complete sentence, or
    /// `None` when the buffer contains none yet. Updates `scan_from` so that
    /// text already ruled out is not scanned again.
    fn next_sentence_end(&mut self) -> Option<usize> {
        let buffer = self.buffer.as_str();
        let mut position = self.scan_from;
        while let Some(offset) = buffer[position..].find(is_terminator) {
            let run_start = position + offset;

            // The terminator run ("." or "?!" or "..."), then its closing marks.
            let run_end = skip_while(buffer, run_start, is_terminator);
            let marks_end = skip_while(buffer, run_end, |c| CLOSERS.contains(&c));

            // One character of look-ahead decides; without it, wait for more text.
            let Some(next) = buffer[marks_end..].chars().next() else {
                self.scan_from = run_start;
                return None;
            };
            if next.is_whitespace() && ends_sentence(&buffer[..run_start], &buffer[run_start..run_end]) {
                return Some(marks_end);
            }
            position = marks_end;
        }
        self.scan_from = buffer.len();
        None
    }
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '\u{2026}')
}

/// Returns the byte offset of the first character at or after `from` that
/// does not match `predicate`.
fn skip_while(text: &str, from: usize, predicate: impl Fn(char) -> bool) -> usize {
    text[from..].find(|c: char| !predicate(c)).map_or(text.len(), |offset| from + offset)
}

/// Decides whether the terminator run `run`, which follows `before` and is
/// followed by whitespace, ends a sentence.
fn ends_sentence(before: &str, run: &str) -> bool {
    if run.contains(['!', '?']) {
        return true;
    }
    // Only periods and ellipsis characters remain: two or more, or "…", is an ellipsis.
    if run != "." {
        return false;
    }

    let word_start = before.rfind(char::is_whitespace).map_or(0, |index| index + 1);
    let word = before[word_start..].trim_start_matches(OPENERS);
    !is_abbreviation(word)
}

/// Returns whether `word`, the text before a period, is an abbreviation or an
/// initial whose period does not end a sentence.
fn is_abbreviation(word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    if ABBREVIATIONS.iter().any(|abbreviation| word.eq_ignore_ascii_case(abbreviation)) {
        return true;
    }
    // The pronoun "I" ends sentences ("So do I.") far more often than it is an initial.
    if word == "I" {
        return false;
    }
    // Single letters joined by periods: "J", "e.g", "U.S", "a.m".
    word.split('.').all(|part| {
        let mut chars = part.chars();
        matches!((chars.next(), chars.next()), (Some(letter), None) if letter.is_alphabetic())
    })
}

/// Returns `text` trimmed, or `None` when it contains no letter or digit.
fn speakable(text: &str) -> Option<&str> {
    let trimmed = text.trim();
    trimmed.chars().any(char::is_alphanumeric).then_some(trimmed)
}

/// A stage that turns a stream of LLM text deltas into one text frame per
/// sentence, for speech synthesis.
///
/// Each sentence goes out as soon as it is complete, as a [`TextDelta`] with
/// `last: false`. The turn ends at a delta with `last: true`, at
/// [`Control::EndOfTurn`], when text of a newer turn arrives, or at end of
/// stream. The stage then emits the rest of the turn's text with `last: true`,
/// or an empty delta with `last: true` when no text remains, so that every
/// turn that sent text and was not interrupted ends with exactly one
/// `last: true` delta.
///
/// [`Control::Interrupt`] discards the buffered text of the interrupted turn
/// (and of earlier turns) and ignores that turn's later text, with no
/// `last: true` delta: the interrupt itself ends the turn downstream.
/// [`Control::Flush`] discards the buffered text but keeps the turn open.
#[derive(Debug)]
pub struct SentenceAggregator {
    name: StageName,
    splitter: SentenceSplitter,
    /// The turn whose text is being aggregated and has not ended yet.
    open_turn: Option<TurnId>,
    /// The highest turn ended by an interrupt; its later text is ignored.
    interrupted_through: TurnId,
    /// Media time of the latest frame received, given to the frames emitted.
    timestamp: MediaTime,
    sentences: Vec<String>,
}

impl SentenceAggregator {
    /// Creates an aggregator stage with no text waiting.
    pub fn new(name: StageName) -> Self {
        SentenceAggregator {
            name,
            splitter: SentenceSplitter::new(),
            open_turn: None,
            interrupted_through: TurnId::NONE,
            timestamp: MediaTime::ZERO,
            sentences: Vec::new(),
        }
    }

    fn emit_sentences(&mut self, turn: TurnId, out: &mut Emitter<'_>) {
        for sentence in std::mem::take(&mut self.sentences) {
            self.emit_text(out, turn, sentence, false);
        }
    }

    /// Emits the rest of `turn`'s text with `last: true` and closes the turn.
    fn end_turn(&mut self, turn: TurnId, out: &mut Emitter<'_>) {
        let rest = self.splitter.finish().unwrap_or_default();
        self.emit_text(out, turn, rest, true);
        self.open_turn = None;
    }

    fn emit_text(&self, out: &mut Emitter<'_>, turn: TurnId, text: String, last: bool) {
        let meta = out.next_meta(turn, self.timestamp);
        out.emit(Frame::new(meta, Payload::Text(TextDelta { text, last })));
    }
}

impl Processor for SentenceAggregator {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Text, PortFormat::Text)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let turn = frame.meta.turn;
        let Payload::Text(delta) = frame.payload else {
            // Only text arrives on a text port; anything else passes unchanged.
            out.emit(frame);
            return Ok(());
        };
        if turn != TurnId::NONE && turn <= self.interrupted_through {
            tracing::trace!(stage = %self.name, turn = turn.0, "dropped text of an interrupted turn");
            return Ok(());
        }

        self.timestamp = frame.meta.timestamp;

        // Text of a newer turn ends the previous turn, even without its last delta.
        if let Some(open) = self.open_turn
            && open != turn
        {
            self.end_turn(open, out);
        }
        self.open_turn = Some(turn);

        self.splitter.push(&delta.text, &mut self.sentences);
        self.emit_sentences(turn, out);
        if delta.last {
            self.end_turn(turn, out);
        }
        Ok(())
    }

    fn control(&mut self, control: &Control, meta: &FrameMeta, out: &mut Emitter<'_>) -> Result<(), StageError> {
        match control {
            Control::EndOfTurn => {
                if let Some(open) = self.open_turn {
                    self.timestamp = meta.timestamp;
                    self.end_turn(open, out);
                }
            }
            Control::Interrupt => {
                self.interrupted_through = self.interrupted_through.max(meta.turn);
                if self.open_turn.is_some_and(|open| open <= meta.turn) {
                    self.splitter.clear();
                    self.open_turn = None;
                }
            }
            Control::Flush => self.splitter.clear(),
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter<'_>) -> Result<(), StageError> {
        if let Some(open) = self.open_turn {
            self.end_turn(open, out);
        }
        Ok(())
    }
}

/// Splits a complete text into sentences with the rules of
/// [`SentenceSplitter`], treating the end of `text` as the end of the last
/// sentence.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut splitter = SentenceSplitter::new();
    let mut sentences = Vec::new();
    splitter.push(text, &mut sentences);
    sentences.extend(splitter.finish());
    sentences
}

#[cfg(test)]
mod tests;
