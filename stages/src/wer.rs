//! Word error rate (WER) for judging speech-to-text output against a reference.
//!
//! Both texts are normalized first ([`normalize`]) so that differences in
//! writing style do not count as recognition errors: case, punctuation, a few
//! spoken abbreviations (`Mr.` is "mister") and numbers written as digits
//! ("10" is "ten", "1984" is "nineteen eighty four"). The normalized word
//! sequences are then aligned by word-level Levenshtein distance, where a
//! substitution, a deletion (a reference word missing from the hypothesis) and
//! an insertion (an extra hypothesis word) each cost 1.
//!
//! WER = (substitutions + deletions + insertions) / reference words. It can
//! exceed 1.0 when the hypothesis has many extra words.

use std::fmt;
use std::ops::{Add, AddAssign};

/// The error counts of one or more aligned transcripts. Counts of several
/// transcripts add up, so the WER of a corpus is the sum of its counts, not
/// the mean of per-file rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WordErrors {
    /// Reference words replaced by another word.
    pub substitutions: usize,
    /// Reference words missing from the hypothesis.
    pub deletions: usize,
    /// Hypothesis words with no reference word.
    pub insertions: usize,
    /// Words in the reference.
    pub reference_words: usize,
}

impl WordErrors {
    /// Returns the total edit distance: substitutions, deletions and insertions.
    pub fn errors(&self) -> usize {
        self.substitutions + self.deletions + self.insertions
    }

    /// Returns the word error rate, or `None` for an empty reference, where
    /// the rate is undefined.
    pub fn rate(&self) -> Option<f64> {
        if self.reference_words == 0 {
            return None;
        }
        Some(self.errors() as f64 / self.reference_words as f64)
    }
}

impl Add for WordErrors {
    type Output = WordErrors;

    fn add(self, other: WordErrors) -> WordErrors {
        WordErrors {
            substitutions: self.substitutions + other.substitutions,
            deletions: self.deletions + other.deletions,
            insertions: self.insertions + other.insertions,
            reference_words: self.reference_words + other.reference_words,
        }
    }
}

impl AddAssign for WordErrors {
    fn add_assign(&mut self, other: WordErrors) {
        *self = *self + other;
    }
}

impl std::iter::Sum for WordErrors {
    fn sum<I: Iterator<Item = WordErrors>>(iter: I) -> WordErrors {
        iter.fold(WordErrors::default(), Add::add)
    }
}

impl fmt::Display for WordErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rate() {
            Some(rate) => write!(f, "WER {:.1}%", rate * 100.0)?,
            None => write!(f, "WER undefined")?,
        }
        write!(
            f,
            " ({} substitutions, {} deletions, {} insertions over {} reference words)",
            self.substitutions, self.deletions, self.insertions, self.reference_words
        )
    }
}

/// Normalizes both texts and counts the word errors of `hypothesis` against `reference`.
pub fn word_errors(reference: &str, hypothesis: &str) -> WordErrors {
    align(&normalize(reference), &normalize(hypothesis))
}

/// Counts the word errors of an already normalized hypothesis against an
/// already normalized reference, by word-level Levenshtein alignment.
///
/// Among alignments of equal cost, the one with the most substitutions is
/// reported, which is the usual convention of scoring tools such as NIST sclite.
pub fn align<R: AsRef<str>, H: AsRef<str>>(reference: &[R], hypothesis: &[H]) -> WordErrors {
    let rows = reference.len() + 1;
    let columns = hypothesis.len() + 1;

    // cost[i][j] aligns the first i reference words with the first j
    // hypothesis words. A full table (not two rows) is kept for the backtrace.
    let mut cost = vec![0_usize; rows * columns];
    let at = |i: usize, j: usize| i * columns + j;
    for i in 0..rows {
        cost[at(i, 0)] = i;
    }
    for j in 0..columns {
        cost[at(0, j)] = j;
    }
    for i in 1..rows {
        for j in 1..columns {
            let same = reference[i - 1].as_ref() == hypothesis[j - 1].as_ref();
            let diagonal = cost[at(i - 1, j - 1)] + usize::from(!same);
            let deletion = cost[at(i - 1, j)] + 1;
            let insertion = cost[at(i, j - 1)] + 1;
            cost[at(i, j)] = diagonal.min(deletion).min(insertion);
        }
    }

    // Walk back from the end, preferring the diagonal step on ties.
    let mut errors = WordErrors { reference_words: reference.len(), ..WordErrors::default() };
    let (mut i, mut j) = (reference.len(), hypothesis.len());
    while i > 0 || j > 0 {
        if i > 0 && j > 0 {
            let same = reference[i - 1].as_ref() == hypothesis[j - 1].as_ref();
            if cost[at(i, j)] == cost[at(i - 1, j - 1)] + usize::from(!same) {
                errors.substitutions += usize::from(!same);
                i -= 1;
                j -= 1;
                continue;
            }
        }
        if i > 0 && cost[at(i, j)] == cost[at(i - 1, j)] + 1 {
            errors.deletions += 1;
            i -= 1;
        } else {
            errors.insertions += 1;
            j -= 1;
        }
    }
    errors
}

/// Spoken forms of abbreviations that transcripts write either way. Matched
/// after lower-casing and with the trailing period removed.
const ABBREVIATIONS: [(&str, &str); 5] =
    [("mr", "mister"), ("mrs", "missus"), ("dr", "doctor"), ("vs", "versus"), ("etc", "et cetera")];

/// Lower-cases `text`, removes punctuation, spells out abbreviations and
/// numbers, and splits it into words.
///
/// - Letters are lower-cased; apostrophes inside words are removed ("don't"
///   becomes "dont"), so both spellings of a contraction compare equal.
/// - Hyphens, dashes and all other punctuation separate words ("ill-disposed"
///   becomes "ill disposed").
/// - Digit groups become words. Cardinals go up to 999,999,999 ("1,250" is
///   "one thousand two hundred fifty"). Years from 1100 to 1999 and 2010 to
///   2099 are read in pairs ("1984" is "nineteen eighty four", "1905" is
///   "nineteen oh five"). Ordinals ("21st" is "twenty first") and decimals
///   ("2.5" is "two point five") are spelled out, and "%" is "percent".
///   Longer digit strings are read digit by digit.
/// - `&` becomes "and".
pub fn normalize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for token in tokenize(text) {
        match token {
            Token::Word(word) => match ABBREVIATIONS.iter().find(|(short, _)| *short == word) {
                Some((_, spoken)) => words.extend(spoken.split(' ').map(str::to_owned)),
                None => words.push(word),
            },
            Token::Number { digits, grouped, fraction, suffix } => {
                push_number(&digits, grouped, fraction.as_deref(), suffix.as_deref(), &mut words);
            }
            Token::Symbol(spoken) => words.push(spoken.to_owned()),
        }
    }
    words
}

/// One unit of text found by [`tokenize`].
#[derive(Debug, PartialEq)]
enum Token {
    /// A lower-cased word without punctuation.
    Word(String),
    /// A number: its integer digits (group commas removed), whether it had
    /// group commas, the digits after a decimal point, and a letter suffix
    /// such as "st" or "th".
    Number { digits: String, grouped: bool, fraction: Option<String>, suffix: Option<String> },
    /// A symbol read as a word, such as "percent" for `%`.
    Symbol(&'static str),
}

/// Splits text into words, numbers and spoken symbols, dropping punctuation.
fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c.is_ascii_digit() {
            index = read_number(&chars, index, &mut tokens);
        } else if c.is_alphabetic() {
            let mut word = String::new();
            while index < chars.len() {
                let c = chars[index];
                if c.is_alphanumeric() && !c.is_ascii_digit() {
                    word.extend(c.to_lowercase());
                } else if is_apostrophe(c) && chars.get(index + 1).is_some_and(|next| next.is_alphabetic()) {
                    // An apostrophe inside a word joins its two halves.
                } else {
                    break;
                }
                index += 1;
            }
            tokens.push(Token::Word(word));
        } else {
            match c {
                '%' => tokens.push(Token::Symbol("percent")),
                '&' => tokens.push(Token::Symbol("and")),
                _ => {}
            }
            index += 1;
        }
    }
    tokens
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}')
}

/// Reads the number that starts at `start` and returns the index after it.
fn read_number(chars: &[char], start: usize, tokens: &mut Vec<Token>) -> usize {
    let mut index = start;
    let mut digits = String::new();
    let mut grouped = false;
    while index < chars.len() {
        let c = chars[index];
        let next_is_digit = chars.get(index + 1).is_some_and(char::is_ascii_digit);
        if c.is_ascii_digit() {
            digits.push(c);
        } else if c == ',' && next_is_digit {
            // A group separator as in "1,250".
            grouped = true;
        } else {
            break;
        }
        index += 1;
    }

    let mut fraction = None;
    if index + 1 < chars.len() && chars[index] == '.' && chars[index + 1].is_ascii_digit() {
        index += 1;
        let mut decimals = String::new();
        while index < chars.len() && chars[index].is_ascii_digit() {
            decimals.push(chars[index]);
            index += 1;
        }
        fraction = Some(decimals);
    }

    let mut suffix = None;
    let letters: String = chars[index..].iter().take_while(|c| c.is_alphabetic()).collect::<String>().to_lowercase();
    if fraction.is_none() && matches!(letters.as_str(), "st" | "nd" | "rd" | "th") {
        index += letters.chars().count();
        suffix = Some(letters);
    }

    tokens.push(Token::Number { digits, grouped, fraction, suffix });
    index
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];

const TENS: [&str; 10] = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

/// The largest number spelled as a cardinal; longer digit strings (phone
/// numbers, codes) are read digit by digit.
const MAX_CARDINAL: u64 = 999_999_999;

fn push_number(digits: &str, grouped: bool, fraction: Option<&str>, suffix: Option<&str>, words: &mut Vec<String>) {
    let first = words.len();
    let value = digits.parse::<u64>().ok().filter(|&value| value <= MAX_CARDINAL && !has_leading_zero(digits));
    let plain = !grouped && fraction.is_none() && suffix.is_none();

    match value {
        Some(year) if plain && digits.len() == 4 && is_spoken_as_year(year) => {
            push_year(year, words);
        }
        Some(value) => push_cardinal(value, words),
        None => push_digits(digits, words),
    }
    if let Some(fraction) = fraction {
        words.push("point".to_owned());
        push_digits(fraction, words);
    }
    if suffix.is_some() && words.len() > first {
        let last = words.len() - 1;
        words[last] = ordinal(&words[last]);
    }
}

/// Returns whether a digit string such as "007" starts with a zero that a
/// reader would speak.
fn has_leading_zero(digits: &str) -> bool {
    digits.len() > 1 && digits.starts_with('0')
}

fn is_spoken_as_year(value: u64) -> bool {
    (1100..=1999).contains(&value) || (2010..=2099).contains(&value)
}

/// Spells a year as two pairs: 1984 is "nineteen eighty four", 1900 is
/// "nineteen hundred" and 1905 is "nineteen oh five".
fn push_year(year: u64, words: &mut Vec<String>) {
    let (high, low) = (year / 100, year % 100);
    push_cardinal(high, words);
    match low {
        0 => words.push("hundred".to_owned()),
        1..=9 => {
            words.push("oh".to_owned());
            push_cardinal(low, words);
        }
        _ => push_cardinal(low, words),
    }
}

/// Spells a cardinal without "and": 1250 is "one thousand two hundred fifty".
fn push_cardinal(value: u64, words: &mut Vec<String>) {
    if value == 0 {
        words.push(ONES[0].to_owned());
        return;
    }
    let millions = value / 1_000_000;
    let thousands = value / 1_000 % 1_000;
    let rest = value % 1_000;
    if millions > 0 {
        push_below_thousand(millions, words);
        words.push("million".to_owned());
    }
    if thousands > 0 {
        push_below_thousand(thousands, words);
        words.push("thousand".to_owned());
    }
    if rest > 0 {
        push_below_thousand(rest, words);
    }
}

fn push_below_thousand(value: u64, words: &mut Vec<String>) {
    let hundreds = value / 100;
    let rest = value % 100;
    if hundreds > 0 {
        words.push(ONES[hundreds as usize].to_owned());
        words.push("hundred".to_owned());
    }
    if rest >= 20 {
        words.push(TENS[(rest / 10) as usize].to_owned());
        if !rest.is_multiple_of(10) {
            words.push(ONES[(rest % 10) as usize].to_owned());
        }
    } else if rest > 0 {
        words.push(ONES[rest as usize].to_owned());
    }
}

fn push_digits(digits: &str, words: &mut Vec<String>) {
    for digit in digits.chars().filter_map(|c| c.to_digit(10)) {
        words.push(ONES[digit as usize].to_owned());
    }
}

/// Turns the last word of a cardinal into its ordinal: "one" into "first",
/// "twenty" into "twentieth", "hundred" into "hundredth".
fn ordinal(word: &str) -> String {
    let irregular = match word {
        "one" => Some("first"),
        "two" => Some("second"),
        "three" => Some("third"),
        "five" => Some("fifth"),
        "eight" => Some("eighth"),
        "nine" => Some("ninth"),
        "twelve" => Some("twelfth"),
        _ => None,
    };
    if let Some(irregular) = irregular {
        return irregular.to_owned();
    }
    match word.strip_suffix('y') {
        Some(stem) => format!("{stem}ieth"),
        None => format!("{word}th"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn normalize_case_and_punctuation() {
        assert_eq!(normalize("He was NOT an ill-disposed young man."), words("he was not an ill disposed young man"));
        assert_eq!(normalize("  \"Well,\" she said; (quietly)... "), words("well she said quietly"));
    }

    #[test]
    fn normalize_apostrophes_join_words() {
        assert_eq!(normalize("Don't stop, John's"), words("dont stop johns"));
        assert_eq!(normalize("don\u{2019}t"), words("dont"));
        assert_eq!(normalize("the boys' room"), words("the boys room"));
    }

    #[test]
    fn normalize_abbreviations() {
        assert_eq!(normalize("Mr. John Dashwood"), words("mister john dashwood"));
        assert_eq!(normalize("Mrs Dashwood and Dr. Smith"), words("missus dashwood and doctor smith"));
    }

    #[test]
    fn normalize_small_numbers() {
        assert_eq!(normalize("0"), words("zero"));
        assert_eq!(normalize("go forward 10 meters"), words("go forward ten meters"));
        assert_eq!(normalize("13"), words("thirteen"));
        assert_eq!(normalize("40"), words("forty"));
        assert_eq!(normalize("99"), words("ninety nine"));
        assert_eq!(normalize("100"), words("one hundred"));
        assert_eq!(normalize("305"), words("three hundred five"));
        assert_eq!(normalize("999"), words("nine hundred ninety nine"));
    }

    #[test]
    fn normalize_large_numbers() {
        assert_eq!(normalize("1,250"), words("one thousand two hundred fifty"));
        assert_eq!(normalize("2000"), words("two thousand"));
        assert_eq!(normalize("1,100"), words("one thousand one hundred"));
        assert_eq!(normalize("2005"), words("two thousand five"));
        assert_eq!(normalize("1000000"), words("one million"));
        assert_eq!(normalize("12,000,001"), words("twelve million one"));
    }

    #[test]
    fn normalize_years() {
        assert_eq!(normalize("in 1984"), words("in nineteen eighty four"));
        assert_eq!(normalize("1900"), words("nineteen hundred"));
        assert_eq!(normalize("1905"), words("nineteen oh five"));
        assert_eq!(normalize("2024"), words("twenty twenty four"));
    }

    #[test]
    fn normalize_ordinals_decimals_symbols() {
        assert_eq!(normalize("the 1st and 2nd"), words("the first and second"));
        assert_eq!(normalize("21st"), words("twenty first"));
        assert_eq!(normalize("20th"), words("twentieth"));
        assert_eq!(normalize("100th"), words("one hundredth"));
        assert_eq!(normalize("2.5"), words("two point five"));
        assert_eq!(normalize("50%"), words("fifty percent"));
        assert_eq!(normalize("salt & pepper"), words("salt and pepper"));
    }

    #[test]
    fn normalize_digit_strings() {
        assert_eq!(normalize("007"), words("zero zero seven"));
        assert_eq!(normalize("12345678901"), words("one two three four five six seven eight nine zero one"));
    }

    #[test]
    fn normalize_number_then_word() {
        assert_eq!(normalize("10am"), words("ten am"));
        assert_eq!(normalize("end. 5"), words("end five"));
    }

    #[test]
    fn normalize_empty_text() {
        assert!(normalize("").is_empty());
        assert!(normalize(" ... !? ").is_empty());
    }

    #[test]
    fn align_identical() {
        let errors = word_errors("he was not an ill disposed young man", "He was not an ill-disposed young man.");
        assert_eq!(errors, WordErrors { reference_words: 8, ..WordErrors::default() });
        assert_eq!(errors.rate(), Some(0.0));
    }

    #[test]
    fn align_counts_each_kind() {
        let substitution = word_errors("a b c", "a x c");
        assert_eq!(substitution.substitutions, 1);
        assert_eq!(substitution.errors(), 1);

        let deletion = word_errors("a b c", "a c");
        assert_eq!(deletion.deletions, 1);
        assert_eq!(deletion.errors(), 1);

        let insertion = word_errors("a b c", "a b x c");
        assert_eq!(insertion.insertions, 1);
        assert_eq!(insertion.errors(), 1);
    }

    #[test]
    fn align_empty_sides() {
        let nothing_heard = word_errors("one two three", "");
        assert_eq!(nothing_heard.deletions, 3);
        assert_eq!(nothing_heard.rate(), Some(1.0));

        let nothing_said = word_errors("", "hello there");
        assert_eq!(nothing_said.insertions, 2);
        assert_eq!(nothing_said.rate(), None);

        assert_eq!(word_errors("", "").errors(), 0);
    }

    #[test]
    fn align_rate_above_one() {
        let errors = word_errors("yes", "no no no");
        assert_eq!(errors.errors(), 3);
        assert_eq!(errors.rate(), Some(3.0));
    }

    #[test]
    fn align_minimal_distance() {
        // "kitten" to "sitting" has edit distance 3 as words too.
        let errors = align(&words("k i t t e n"), &words("s i t t i n g"));
        assert_eq!(errors.errors(), 3);
        assert_eq!(errors.substitutions, 2);
        assert_eq!(errors.insertions, 1);
    }

    #[test]
    fn align_prefers_substitution_on_ties() {
        // One substitution, rather than a deletion plus an insertion.
        let errors = align(&words("a b"), &words("a c"));
        assert_eq!(errors, WordErrors { substitutions: 1, reference_words: 2, ..WordErrors::default() });
    }

    #[test]
    fn word_errors_sum_over_files() {
        let total: WordErrors = [word_errors("a b c d", "a b c d"), word_errors("e f", "e")].into_iter().sum();
        assert_eq!(total.reference_words, 6);
        assert_eq!(total.deletions, 1);
        let rate = total.rate().expect("non-empty reference");
        assert!((rate - 1.0 / 6.0).abs() < 1e-12, "rate {rate}");
    }

    #[test]
    fn word_errors_display() {
        let errors = word_errors("a b c d", "a x c d e");
        assert_eq!(errors.to_string(), "WER 50.0% (1 substitutions, 0 deletions, 1 insertions over 4 reference words)");
    }
}
