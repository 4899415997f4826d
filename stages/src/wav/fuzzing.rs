//! The body of the `wav_reader` fuzz target in `fuzz/`. It lives here so that
//! the normal test run can drive it with generated inputs as well.

use std::io::Cursor;

use mentis_pipeline::SampleFormat;

use super::{ChannelMode, PcmReader, ReadOptions, Truncation, read_wav};

/// Reads `data` as a WAV file in every mode and panics if an invariant breaks.
/// Errors are expected for most inputs; only a panic is a finding.
///
/// Checked for every input that parses:
/// - every block holds whole sample frames, and `Split` gives one track per channel;
/// - the `f32` and `i16` reads return the same number of frames;
/// - integer encodings decode into [-1.0, 1.0];
/// - reading in blocks of 7 frames returns the same samples as one whole read.
pub fn wav_reader(data: &[u8]) {
    let whole = ReadOptions {
        sample_format: SampleFormat::F32,
        channel_mode: ChannelMode::Keep,
        truncation: Truncation::KeepWholeFrames,
    };
    let Ok(decoded) = read_wav(data, "fuzz input", &whole) else {
        return;
    };
    let [track] = decoded.tracks.as_slice() else {
        panic!("Keep returned {} tracks", decoded.tracks.len());
    };
    let channels = usize::from(decoded.spec.channels);
    let samples = track.to_f32();
    assert_eq!(samples.len() % channels, 0, "partial sample frame delivered");
    if !decoded.spec.encoding.is_float() {
        assert!(samples.iter().all(|sample| (-1.0..=1.0).contains(sample)), "integer sample outside [-1, 1]");
    }

    // The other modes and the other sample format see the same frames.
    for channel_mode in [ChannelMode::Downmix, ChannelMode::Split] {
        for sample_format in [SampleFormat::F32, SampleFormat::I16] {
            for truncation in [Truncation::KeepWholeFrames, Truncation::Error] {
                let options = ReadOptions { sample_format, channel_mode, truncation };
                match read_wav(data, "fuzz input", &options) {
                    Ok(other) => {
                        let expected_tracks = if channel_mode == ChannelMode::Split { channels } else { 1 };
                        assert_eq!(other.tracks.len(), expected_tracks, "track count for {channel_mode:?}");
                        for other_track in &other.tracks {
                            assert_eq!(other_track.frames(), track.frames(), "frame count for {options:?}");
                        }
                    }
                    Err(error) => {
                        assert_eq!(truncation, Truncation::Error, "only the strict policy may fail here: {error}");
                        assert!(decoded.shortfall.is_some(), "strict read failed without a shortfall: {error}");
                    }
                }
            }
        }
    }

    // Streaming in small blocks matches the whole read.
    let Ok(mut reader) = PcmReader::wav(Cursor::new(data), "fuzz input") else {
        panic!("the header parsed once but not twice");
    };
    let mut streamed = Vec::new();
    loop {
        match reader.read_f32(7, &mut streamed) {
            Ok(0) => break,
            Ok(frames) => assert!(frames <= 7, "read {frames} frames when 7 were requested"),
            Err(error) => panic!("a lenient streaming read failed: {error}"),
        }
    }
    assert_eq!(streamed.len(), samples.len(), "streamed sample count");
    let same = streamed.iter().zip(&samples).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
    assert!(same, "streamed samples differ from the whole read");
    assert_eq!(reader.shortfall(), decoded.shortfall, "shortfall differs between reads");
}
