//! Raw PCM16 bodies: little-endian signed 16-bit samples, as OpenAI-compatible
//! speech endpoints stream them with `response_format: "pcm"`.
//!
//! A read may end in the middle of a sample. [`Pcm16Decoder`] keeps that odd
//! byte and pairs it with the first byte of the next read, so samples never
//! shift by a byte however the body is split.

use thiserror::Error;

/// A failure at the end of a PCM16 body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PcmError {
    /// The body has an odd number of bytes, so its last sample is incomplete.
    #[error(
        "PCM16 body ended with one stray byte 0x{byte:02x} at offset {offset}; a sample needs two bytes, so the \
         body was cut short or is not 16-bit PCM"
    )]
    OddTrailingByte {
        /// The stray byte.
        byte: u8,
        /// Its offset in the body.
        offset: u64,
    },
}

/// Decodes a streamed PCM16 body into samples, one body at a time.
#[derive(Debug, Default)]
pub struct Pcm16Decoder {
    /// The first byte of a sample whose second byte has not arrived yet.
    pending: Option<u8>,
    /// Bytes received in the current body.
    received: u64,
}

impl Pcm16Decoder {
    /// Creates a decoder at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the next bytes of the body, appends the completed samples to
    /// `samples` and returns how many it appended.
    pub fn push(&mut self, bytes: &[u8], samples: &mut Vec<i16>) -> usize {
        samples.reserve(self.samples_in(bytes));
        let before = samples.len();
        self.decode(bytes, |sample| samples.push(sample));
        samples.len() - before
    }

    /// Decodes the next bytes of the body like [`push`](Self::push), scaling
    /// each sample by 1/32768 into [-1.0, 1.0).
    pub fn push_f32(&mut self, bytes: &[u8], samples: &mut Vec<f32>) -> usize {
        samples.reserve(self.samples_in(bytes));
        let before = samples.len();
        self.decode(bytes, |sample| samples.push(f32::from(sample) / 32_768.0));
        samples.len() - before
    }

    /// Returns the number of bytes held for an incomplete sample: 0 or 1.
    pub fn pending_bytes(&self) -> usize {
        usize::from(self.pending.is_some())
    }

    /// Returns the number of bytes received in the current body.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Ends the body. Fails when one byte of an incomplete sample is left
    /// over. Either way the decoder is then ready for a new body.
    pub fn finish(&mut self) -> Result<(), PcmError> {
        let result = match self.pending.take() {
            Some(byte) => Err(PcmError::OddTrailingByte { byte, offset: self.received - 1 }),
            None => Ok(()),
        };
        self.received = 0;
        result
    }

    /// Returns how many samples `bytes` completes.
    fn samples_in(&self, bytes: &[u8]) -> usize {
        (self.pending_bytes() + bytes.len()) / 2
    }

    fn decode(&mut self, bytes: &[u8], mut emit: impl FnMut(i16)) {
        self.received += bytes.len() as u64;
        let mut rest = bytes;

        // Complete the sample whose first byte ended the previous read.
        if let Some(low) = self.pending
            && let Some((&high, tail)) = rest.split_first()
        {
            emit(i16::from_le_bytes([low, high]));
            self.pending = None;
            rest = tail;
        }

        let (pairs, remainder) = rest.as_chunks::<2>();
        for &pair in pairs {
            emit(i16::from_le_bytes(pair));
        }
        if let [odd] = remainder {
            self.pending = Some(*odd);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Samples covering both extremes, zero, and bytes that differ between
    /// the low and the high half.
    const SAMPLES: [i16; 8] = [0, 1, -1, i16::MAX, i16::MIN, 0x1234, -0x1234, 0x00FF];

    fn body() -> Vec<u8> {
        SAMPLES.iter().flat_map(|sample| sample.to_le_bytes()).collect()
    }

    /// Decodes `body` cut at each offset in `cuts`, which must be sorted.
    fn decode_cut(body: &[u8], cuts: &[usize]) -> (Vec<i16>, Result<(), PcmError>) {
        let mut decoder = Pcm16Decoder::new();
        let mut samples = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain([&body.len()]) {
            let appended = decoder.push(&body[start..cut], &mut samples);
            assert!(appended <= (cut - start).div_ceil(2), "{appended} samples from {} bytes", cut - start);
            assert_eq!(decoder.pending_bytes(), cut % 2, "pending after byte {cut}");
            start = cut;
        }
        (samples, decoder.finish())
    }

    #[test]
    fn little_endian_order() {
        let mut decoder = Pcm16Decoder::new();
        let mut samples = Vec::new();
        assert_eq!(decoder.push(&[0x34, 0x12, 0xFF, 0x7F, 0x00, 0x80], &mut samples), 3);
        assert_eq!(samples, [0x1234, i16::MAX, i16::MIN]);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn split_at_every_odd_offset() {
        let body = body();
        for cut in (1..body.len()).step_by(2) {
            let (samples, finished) = decode_cut(&body, &[cut]);
            assert_eq!(samples, SAMPLES, "cut at {cut}");
            assert_eq!(finished, Ok(()), "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let body = body();
        let cuts: Vec<usize> = (1..body.len()).collect();
        let (samples, finished) = decode_cut(&body, &cuts);
        assert_eq!(samples, SAMPLES);
        assert_eq!(finished, Ok(()));
    }

    #[test]
    fn empty_reads_keep_pending_byte() {
        let mut decoder = Pcm16Decoder::new();
        let mut samples = Vec::new();
        assert_eq!(decoder.push(&[0x34], &mut samples), 0);
        assert_eq!(decoder.push(&[], &mut samples), 0);
        assert_eq!(decoder.pending_bytes(), 1);
        assert_eq!(decoder.push(&[0x12], &mut samples), 1);
        assert_eq!(samples, [0x1234]);
        assert_eq!(decoder.pending_bytes(), 0);
    }

    #[test]
    fn odd_trailing_byte_named() {
        let mut decoder = Pcm16Decoder::new();
        let mut samples = Vec::new();
        decoder.push(&[1, 0, 2, 0], &mut samples);
        decoder.push(&[0xAB], &mut samples);
        assert_eq!(samples, [1, 2]);
        let error = decoder.finish().expect_err("one byte left over");
        assert_eq!(error, PcmError::OddTrailingByte { byte: 0xAB, offset: 4 });
        assert!(error.to_string().contains("0xab"), "{error}");

        // The next body starts clean.
        assert_eq!(decoder.pending_bytes(), 0);
        assert_eq!(decoder.bytes_received(), 0);
        decoder.push(&[3, 0], &mut samples);
        assert_eq!(samples, [1, 2, 3]);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn f32_scaled_into_unit_range() {
        let mut decoder = Pcm16Decoder::new();
        let mut samples = Vec::new();
        let body = body();
        let (first, second) = body.split_at(5);
        decoder.push_f32(first, &mut samples);
        decoder.push_f32(second, &mut samples);
        let expected: Vec<f32> = SAMPLES.iter().map(|&sample| f32::from(sample) / 32_768.0).collect();
        assert_eq!(samples, expected);
        assert_eq!(samples[4], -1.0, "i16::MIN maps to -1");
        assert!(samples.iter().all(|sample| (-1.0..1.0).contains(sample)), "{samples:?}");
    }

    #[test]
    fn i16_and_f32_calls_share_the_pending_byte() {
        let mut decoder = Pcm16Decoder::new();
        let mut integers = Vec::new();
        let mut floats = Vec::new();
        decoder.push(&[0, 0, 0x00], &mut integers);
        decoder.push_f32(&[0x40], &mut floats);
        assert_eq!(integers, [0]);
        assert_eq!(floats, [0.5]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any body cut at several random offsets decodes as in one read.
        #[test]
        fn random_multi_splits_match_one_read(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.drain(..).map(|index| index.index(body.len() + 1)).collect();
            cuts.sort_unstable();
            let (whole, whole_end) = decode_cut(&body, &[]);
            let (split, split_end) = decode_cut(&body, &cuts);
            prop_assert_eq!(&split, &whole, "cuts {:?}", cuts);
            prop_assert_eq!(split_end, whole_end);
            prop_assert_eq!(whole.len(), body.len() / 2);
        }
    }
}
