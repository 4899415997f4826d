//! Tests of the sentence splitter and the [`SentenceAggregator`] stage.

use mentis_pipeline::frame::Payload;
use mentis_pipeline::{
    AudioData, Control, Emitter, Frame, FrameMeta, MediaTime, SessionId, StageName, TextDelta, TurnId,
};
use proptest::prelude::*;

use super::*;

const SESSION: SessionId = SessionId(3);

/// Inputs and the sentences they must split into. The last sentence of each
/// row is the one emitted with `last: true`; an empty string there means the
/// turn ended with no text left.
const CASES: &[(&str, &[&str])] = &[
    ("Hello there. How are you today?", &["Hello there.", "How are you today?"]),
    ("Pi is about 3.14 today. It never changes.", &["Pi is about 3.14 today.", "It never changes."]),
    ("Add 2,5 litres. Stir well!", &["Add 2,5 litres.", "Stir well!"]),
    (
        "Dr. Smith is here. Mr. and Mrs. Jones too. Ms. Lee lives on Main St. near us.",
        &["Dr. Smith is here.", "Mr. and Mrs. Jones too.", "Ms. Lee lives on Main St. near us."],
    ),
    ("Bring fruit, e.g. apples. Or i.e. pears. Fine.", &["Bring fruit, e.g. apples.", "Or i.e. pears.", "Fine."]),
    (
        "Open from 9 a.m. to 5 p.m. daily. Closed on Sundays.",
        &["Open from 9 a.m. to 5 p.m. daily.", "Closed on Sundays."],
    ),
    ("She moved to the U.S. last year. Now she is happy.", &["She moved to the U.S. last year.", "Now she is happy."]),
    ("It costs $3.5 million. That is a lot.", &["It costs $3.5 million.", "That is a lot."]),
    ("J. R. R. Tolkien wrote it. Read it.", &["J. R. R. Tolkien wrote it.", "Read it."]),
    ("Well... I am not sure. Maybe.", &["Well... I am not sure.", "Maybe."]),
    ("Wait\u{2026} what? Yes.", &["Wait\u{2026} what?", "Yes."]),
    (
        "See example.com/path for details. Or mail help@example.com today. Thanks.",
        &["See example.com/path for details.", "Or mail help@example.com today.", "Thanks."],
    ),
    (
        "She said \"Go home.\" Then she left. (It was late.) Right?",
        &["She said \"Go home.\"", "Then she left.", "(It was late.)", "Right?"],
    ),
    ("He said \u{201C}Stop.\u{201D} We stopped.", &["He said \u{201C}Stop.\u{201D}", "We stopped."]),
    ("Really?! Yes.", &["Really?!", "Yes."]),
    ("Hello. ... !! Bye.", &["Hello.", "Bye."]),
    ("So do I. Then we left.", &["So do I.", "Then we left."]),
    ("Count to 3. Then stop.", &["Count to 3.", "Then stop."]),
    ("Version 2.0 is out. Get it.", &["Version 2.0 is out.", "Get it."]),
    ("Line one.\nLine two.", &["Line one.", "Line two."]),
    ("Trailing space. ", &["Trailing space.", ""]),
    ("no punctuation at all", &["no punctuation at all"]),
    ("   ", &[""]),
    ("", &[""]),
    ("?! ...", &[""]),
];

fn name() -> StageName {
    StageName::new("sentences").expect("valid stage name")
}

fn meta(turn: u64) -> FrameMeta {
    FrameMeta { session: SESSION, turn: TurnId(turn), seq: 0, timestamp: MediaTime::ZERO }
}

fn delta(turn: u64, text: &str, last: bool) -> Frame {
    Frame::new(meta(turn), Payload::Text(TextDelta { text: text.to_owned(), last }))
}

/// A text frame as (turn, text, last), for comparison.
type Chunk = (u64, String, bool);

fn chunks(frames: &[Frame]) -> Vec<Chunk> {
    frames
        .iter()
        .filter_map(|frame| match &frame.payload {
            Payload::Text(delta) => Some((frame.meta.turn.0, delta.text.clone(), delta.last)),
            _ => None,
        })
        .collect()
}

/// Feeds `deltas` of turn 1 to a new aggregator and returns what it emits.
fn aggregate(deltas: &[(&str, bool)]) -> Vec<Chunk> {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    for &(text, last) in deltas {
        aggregator.process(delta(1, text, last), &mut out).expect("aggregation does not fail");
    }
    aggregator.finish(&mut out).expect("finish does not fail");
    chunks(out.frames())
}

fn expected(sentences: &[&str]) -> Vec<Chunk> {
    let count = sentences.len();
    sentences.iter().enumerate().map(|(index, text)| (1, (*text).to_owned(), index + 1 == count)).collect()
}

/// Splits `text` into one delta per character; the last one carries `last`.
fn per_character(text: &str) -> Vec<(&str, bool)> {
    let mut deltas: Vec<(&str, bool)> =
        text.char_indices().map(|(index, c)| (&text[index..index + c.len_utf8()], false)).collect();
    match deltas.last_mut() {
        Some(last) => last.1 = true,
        None => deltas.push(("", true)),
    }
    deltas
}

#[test]
fn table_whole_input() {
    for (input, sentences) in CASES {
        assert_eq!(aggregate(&[(input, true)]), expected(sentences), "input {input:?} fed whole");
    }
}

#[test]
fn table_one_character_at_a_time() {
    for (input, sentences) in CASES {
        assert_eq!(aggregate(&per_character(input)), expected(sentences), "input {input:?} fed per character");
    }
}

#[test]
fn split_sentences_matches_table() {
    for (input, sentences) in CASES {
        let speakable: Vec<&str> = sentences.iter().copied().filter(|sentence| !sentence.is_empty()).collect();
        assert_eq!(split_sentences(input), speakable, "input {input:?}");
    }
}

#[test]
fn sentence_waits_for_look_ahead() {
    let mut splitter = SentenceSplitter::new();
    let mut sentences = Vec::new();
    splitter.push("It is 3.", &mut sentences);
    assert!(sentences.is_empty(), "\"3.\" may still become \"3.14\"");
    splitter.push("14 now. Next", &mut sentences);
    assert_eq!(sentences, ["It is 3.14 now."]);
    assert_eq!(splitter.pending(), " Next");
}

#[test]
fn sentence_emitted_before_turn_ends() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(1, "Hello there. How", false), &mut out).expect("aggregates");
    assert_eq!(chunks(out.frames()), vec![(1, "Hello there.".to_owned(), false)]);
}

#[test]
fn end_of_turn_flushes_rest() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(1, "Hello there. How are", false), &mut out).expect("aggregates");
    aggregator.control(&Control::EndOfTurn, &meta(1), &mut out).expect("end of turn");
    assert_eq!(chunks(out.frames()), vec![(1, "Hello there.".to_owned(), false), (1, "How are".to_owned(), true)]);
}

#[test]
fn end_of_turn_without_text_emits_nothing() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.control(&Control::EndOfTurn, &meta(1), &mut out).expect("end of turn");
    assert!(out.frames().is_empty());
}

#[test]
fn end_of_turn_emits_empty_last() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(1, "Done. ", false), &mut out).expect("aggregates");
    aggregator.control(&Control::EndOfTurn, &meta(1), &mut out).expect("end of turn");
    assert_eq!(chunks(out.frames()), vec![(1, "Done.".to_owned(), false), (1, String::new(), true)]);
}

#[test]
fn interrupt_discards_buffer_and_turn() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(1, "Hello there. How are", false), &mut out).expect("aggregates");
    aggregator.control(&Control::Interrupt, &meta(1), &mut out).expect("interrupt");
    aggregator.process(delta(1, " you? Fine.", true), &mut out).expect("late text is ignored");
    aggregator.process(delta(2, "New turn.", true), &mut out).expect("aggregates");
    aggregator.finish(&mut out).expect("finish");
    assert_eq!(chunks(out.frames()), vec![(1, "Hello there.".to_owned(), false), (2, "New turn.".to_owned(), true)]);
}

#[test]
fn interrupt_of_older_turn_keeps_buffer() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(2, "Still talking", false), &mut out).expect("aggregates");
    aggregator.control(&Control::Interrupt, &meta(1), &mut out).expect("interrupt");
    aggregator.process(delta(2, " here.", true), &mut out).expect("aggregates");
    assert_eq!(chunks(out.frames()), vec![(2, "Still talking here.".to_owned(), true)]);
}

#[test]
fn flush_discards_buffer_keeps_turn() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(1, "Hello there. How are", false), &mut out).expect("aggregates");
    aggregator.control(&Control::Flush, &meta(1), &mut out).expect("flush");
    assert!(aggregator.splitter.is_empty());
    aggregator.process(delta(1, " you?", true), &mut out).expect("aggregates");
    assert_eq!(chunks(out.frames()), vec![(1, "Hello there.".to_owned(), false), (1, "you?".to_owned(), true)]);
}

#[test]
fn newer_turn_closes_open_turn() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(1, "Hi there", false), &mut out).expect("aggregates");
    aggregator.process(delta(2, "Bye.", true), &mut out).expect("aggregates");
    assert_eq!(chunks(out.frames()), vec![(1, "Hi there".to_owned(), true), (2, "Bye.".to_owned(), true)]);
}

#[test]
fn end_of_stream_flushes_open_turn() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(4, "Unfinished", false), &mut out).expect("aggregates");
    aggregator.finish(&mut out).expect("finish");
    assert_eq!(chunks(out.frames()), vec![(4, "Unfinished".to_owned(), true)]);
}

#[test]
fn emitted_frames_keep_session_and_order() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    aggregator.process(delta(1, "One. Two. Three.", true), &mut out).expect("aggregates");
    let seqs: Vec<u64> = out.frames().iter().map(|frame| frame.meta.seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert!(out.frames().iter().all(|frame| frame.meta.session == SESSION));
}

#[test]
fn non_text_frame_passes_through() {
    let mut aggregator = SentenceAggregator::new(name());
    let mut out = Emitter::new(SESSION);
    let audio = AudioData::from_f32(16_000, 1, vec![0.0_f32; 160]).expect("valid audio");
    let frame = Frame::audio(meta(1), audio);
    aggregator.process(frame.clone(), &mut out).expect("passes through");
    assert_eq!(out.frames(), [frame]);
}

/// Pieces that exercise every rule, joined at random into test inputs.
const PIECES: &[&str] = &[
    "Hello",
    "there",
    " ",
    " ",
    "\n",
    ".",
    ".",
    "!",
    "?",
    ",",
    "...",
    "\u{2026}",
    "\"",
    "\u{201D}",
    ")",
    "(",
    "Dr.",
    "Mrs.",
    "St.",
    "e.g.",
    "i.e.",
    "a.m.",
    "U.S.",
    "J.",
    "I",
    "3.14",
    "2,5",
    "$3.5",
    "example.com/path",
    "a@b.com",
    "3",
];

fn text_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(PIECES), 0..40).prop_map(|pieces| pieces.concat()),
        "[a-zA-Z0-9 .,!?\"')(\u{2026}$@/\n]{0,80}",
    ]
}

/// Cuts `text` at the given positions, moved back to character boundaries.
fn split_at(text: &str, cuts: &[prop::sample::Index]) -> Vec<String> {
    let mut positions: Vec<usize> = cuts
        .iter()
        .map(|cut| {
            let mut position = cut.index(text.len() + 1);
            while !text.is_char_boundary(position) {
                position -= 1;
            }
            position
        })
        .collect();
    positions.sort_unstable();
    positions.dedup();

    let mut pieces = Vec::new();
    let mut start = 0;
    for position in positions {
        pieces.push(text[start..position].to_owned());
        start = position;
    }
    pieces.push(text[start..].to_owned());
    pieces
}

proptest! {
    #[test]
    fn any_split_gives_same_sentences(text in text_strategy(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let whole = aggregate(&[(&text, true)]);
        let pieces = split_at(&text, &cuts);
        let mut deltas: Vec<(&str, bool)> = pieces.iter().map(|piece| (piece.as_str(), false)).collect();
        if let Some(last) = deltas.last_mut() {
            last.1 = true;
        }
        prop_assert_eq!(aggregate(&deltas), whole.clone());

        // Every turn ends with exactly one last delta, and no chunk is blank.
        prop_assert_eq!(whole.iter().filter(|chunk| chunk.2).count(), 1);
        prop_assert!(whole.last().is_some_and(|chunk| chunk.2));
        for (_, sentence, last) in &whole {
            prop_assert!(*last || sentence.chars().any(char::is_alphanumeric), "blank chunk {:?}", sentence);
        }
    }
}
