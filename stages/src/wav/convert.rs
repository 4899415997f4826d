//! Sample conversion between file encodings and pipeline samples, and channel modes.

use std::sync::Arc;

use mentis_pipeline::frame::f32_to_i16;
use mentis_pipeline::{AudioData, AudioFormat, Samples};

use super::{ChannelMode, PcmEncoding};

/// Appends `bytes` (whole samples of `encoding`) to `out` as floats in [-1.0, 1.0].
/// Integer samples are divided by 2^(bits - 1); float samples pass unchanged.
pub(super) fn decode_f32(encoding: PcmEncoding, bytes: &[u8], out: &mut Vec<f32>) {
    let size = encoding.bytes_per_sample();
    out.reserve(bytes.len() / size);
    let samples = bytes.chunks_exact(size);
    match encoding {
        PcmEncoding::U8 => out.extend(samples.map(|b| (f32::from(b[0]) - 128.0) / 128.0)),
        PcmEncoding::I16 => out.extend(samples.map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)),
        PcmEncoding::I24 => out.extend(samples.map(|b| i24_from_le(b) as f32 / 8_388_608.0)),
        PcmEncoding::I32 => {
            out.extend(
                samples.map(|b| (f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])) / 2_147_483_648.0) as f32),
            );
        }
        PcmEncoding::F32 => out.extend(samples.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        PcmEncoding::F64 => {
            out.extend(samples.map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32));
        }
    }
}

/// Appends `bytes` (whole samples of `encoding`) to `out` as 16-bit integers.
/// Wider integers keep their top 16 bits; floats are scaled and clamped.
pub(super) fn decode_i16(encoding: PcmEncoding, bytes: &[u8], out: &mut Vec<i16>) {
    let size = encoding.bytes_per_sample();
    out.reserve(bytes.len() / size);
    let samples = bytes.chunks_exact(size);
    match encoding {
        PcmEncoding::U8 => out.extend(samples.map(|b| (i16::from(b[0]) - 128) << 8)),
        PcmEncoding::I16 => out.extend(samples.map(|b| i16::from_le_bytes([b[0], b[1]]))),
        PcmEncoding::I24 => out.extend(samples.map(|b| i16::from_le_bytes([b[1], b[2]]))),
        PcmEncoding::I32 => out.extend(samples.map(|b| i16::from_le_bytes([b[2], b[3]]))),
        PcmEncoding::F32 => out.extend(samples.map(|b| f32_to_i16(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))),
        PcmEncoding::F64 => out.extend(
            samples.map(|b| f32_to_i16(f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)),
        ),
    }
}

/// Sign-extends a 3-byte little-endian integer.
fn i24_from_le(bytes: &[u8]) -> i32 {
    i32::from_le_bytes([0, bytes[0], bytes[1], bytes[2]]) >> 8
}

/// Appends samples to `out` as 16-bit little-endian PCM.
pub(super) fn encode_i16(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len() * 2);
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
}

/// Appends samples to `out` as 32-bit little-endian floats.
pub(super) fn encode_f32(samples: &[f32], out: &mut Vec<u8>) {
    out.reserve(samples.len() * 4);
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
}

/// Applies a channel mode to interleaved audio.
///
/// Returns one block for [`ChannelMode::Keep`] (sharing the samples) and
/// [`ChannelMode::Downmix`] (the mean of the channels), and one mono block per
/// channel for [`ChannelMode::Split`]. Mono audio comes back unchanged in
/// every mode.
pub fn apply_channel_mode(mode: ChannelMode, audio: &AudioData) -> Vec<AudioData> {
    let format = audio.format();
    let channels = usize::from(format.channels);
    if channels == 1 || mode == ChannelMode::Keep {
        return vec![audio.clone()];
    }
    let mono = AudioFormat { channels: 1, ..format };

    match (mode, audio.samples()) {
        (ChannelMode::Downmix, Samples::F32(samples)) => {
            let scale = 1.0 / channels as f32;
            let mixed: Arc<[f32]> =
                samples.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() * scale).collect();
            vec![mono_audio(mono, Samples::F32(mixed))]
        }
        (ChannelMode::Downmix, Samples::I16(samples)) => {
            let mixed: Arc<[i16]> = samples
                .chunks_exact(channels)
                .map(|frame| {
                    let sum: i64 = frame.iter().map(|&sample| i64::from(sample)).sum();
                    // The mean of i16 values always fits in i16.
                    (sum as f64 / channels as f64).round() as i16
                })
                .collect();
            vec![mono_audio(mono, Samples::I16(mixed))]
        }
        // What remains is Split, because Keep returned above.
        (_, Samples::F32(samples)) => (0..channels)
            .map(|channel| {
                let track: Arc<[f32]> = samples.iter().skip(channel).step_by(channels).copied().collect();
                mono_audio(mono, Samples::F32(track))
            })
            .collect(),
        (_, Samples::I16(samples)) => (0..channels)
            .map(|channel| {
                let track: Arc<[i16]> = samples.iter().skip(channel).step_by(channels).copied().collect();
                mono_audio(mono, Samples::I16(track))
            })
            .collect(),
    }
}

/// Wraps samples derived from valid audio, which keep its rate and have one
/// sample per frame, so the checks of [`AudioData::new`] cannot fail.
fn mono_audio(format: AudioFormat, samples: Samples) -> AudioData {
    match AudioData::new(format, samples) {
        Ok(audio) => audio,
        Err(error) => unreachable!("mono samples of valid audio were rejected: {error}"),
    }
}
