//! The body of the `opus_decoder` fuzz target in `fuzz/`. It lives here so
//! that the normal test run can drive it with generated inputs as well.

use std::time::Duration;

use bytes::Bytes;
use mentis_pipeline::stage::{Emitter, Processor};
use mentis_pipeline::{
    AudioFormat, Codec, EncodedAudio, Frame, FrameMeta, MediaTime, Payload, SampleFormat, SessionId, StageName,
};

use super::{OPUS_RATES, OpusDecoder};

/// Maximum packet length the fuzz input format builds, in bytes. It is above
/// the 1,275 bytes of the largest single Opus frame.
const MAX_FUZZ_PACKET_LEN: usize = 1_500;

/// Declared durations a fuzz record can pick; zero means "none declared".
const DECLARED_DURATIONS_MICROS: [u64; 8] = [0, 2_500, 5_000, 10_000, 20_000, 40_000, 60_000, 120_000];

/// A packet with the timestamp it arrives with.
#[derive(Debug, Clone)]
pub struct TimedPacket {
    /// Media time of the packet's first sample.
    pub timestamp: MediaTime,
    /// The packet.
    pub packet: EncodedAudio,
}

/// Counts from one [`decode_and_check`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Audio frames emitted.
    pub frames: usize,
    /// Sample frames (per channel) emitted.
    pub sample_frames: u64,
    /// Packets libopus rejected.
    pub corrupt_packets: u64,
}

/// Splits `data` into packets and decodes them, panicking if an invariant of
/// the decoder breaks (see [`decode_and_check`]).
///
/// The first byte picks the sample rate and channel count. Each record after
/// it has three parts. A control byte comes first: its low 3 bits pick the
/// declared duration and its high 5 bits a gap before the packet, in 10 ms
/// steps up to 310 ms. A little-endian `u16` length follows, capped at 1,500,
/// and then the packet bytes.
pub fn opus_decoder(data: &[u8]) {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let rate = OPUS_RATES[usize::from(selector) % OPUS_RATES.len()];
    let channels = if selector & 0x80 == 0 { 1 } else { 2 };
    let format = AudioFormat { sample_rate: rate, channels, sample_format: SampleFormat::F32 };

    let mut packets = Vec::new();
    let mut timestamp = MediaTime::ZERO;
    while let [control, low, high, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*low, *high])).min(MAX_FUZZ_PACKET_LEN).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;

        let declared = Duration::from_micros(DECLARED_DURATIONS_MICROS[usize::from(control & 0x07)]);
        let gap = Duration::from_millis(u64::from(control >> 3) * 10);
        timestamp = timestamp.add(gap);
        packets.push(TimedPacket {
            timestamp,
            packet: EncodedAudio {
                codec: Codec::Opus,
                sample_rate: rate,
                channels,
                duration: declared,
                data: Bytes::copy_from_slice(bytes),
            },
        });
        let step = if declared.is_zero() { Duration::from_millis(20) } else { declared };
        timestamp = timestamp.add(step);
    }
    decode_and_check(format, &packets);
}

/// Decodes `packets` with a fresh [`OpusDecoder`] emitting `format`, and
/// panics if an invariant breaks. Gaps between packets must stay under one
/// second, the longest the decoder conceals.
///
/// Checked for every packet, whatever its bytes:
/// - `process` succeeds and emits at least one frame, all audio in `format`;
/// - each frame starts where the previous one ended, the first at the first
///   packet's timestamp;
/// - after each packet the output reaches that packet's timestamp, give or
///   take one 2.5 ms concealment step.
pub fn decode_and_check(format: AudioFormat, packets: &[TimedPacket]) -> DecodeSummary {
    let name = StageName::new("opus-decoder-check").unwrap_or_else(|error| panic!("{error}"));
    let mut decoder = OpusDecoder::new(name, format).unwrap_or_else(|error| panic!("decoder for {format}: {error}"));
    let session = SessionId(1);
    let mut emitter = Emitter::new(session);
    let step = Duration::from_micros(2_500);

    let mut frames = 0;
    let mut sample_frames = 0_u64;
    let origin = packets.first().map_or(MediaTime::ZERO, |first| first.timestamp);
    for (index, timed) in packets.iter().enumerate() {
        let meta = FrameMeta { timestamp: timed.timestamp, ..FrameMeta::new(session) };
        let input = Frame::new(meta, Payload::Encoded(timed.packet.clone()));
        if let Err(error) = decoder.process(input, &mut emitter) {
            panic!("packet {index} ({} bytes) failed: {error}", timed.packet.data.len());
        }

        let emitted: Vec<Frame> = emitter.drain().collect();
        assert!(!emitted.is_empty(), "packet {index} ({} bytes) produced no audio", timed.packet.data.len());
        for frame in emitted {
            let Payload::Audio(audio) = &frame.payload else {
                panic!("packet {index} produced a {} frame", frame.kind_name());
            };
            assert_eq!(audio.format(), format, "packet {index}: output format");
            assert!(audio.frames() > 0, "packet {index}: empty audio frame");
            let expected = origin.add(format.duration_of(usize::try_from(sample_frames).unwrap_or(usize::MAX)));
            assert_eq!(frame.meta.timestamp, expected, "packet {index}: output timeline has a jump");
            sample_frames += audio.frames() as u64;
            frames += 1;
        }

        let end = origin.add(format.duration_of(usize::try_from(sample_frames).unwrap_or(usize::MAX)));
        assert!(
            end.add(step) > timed.timestamp,
            "packet {index}: output ends at {end:?}, before the packet's timestamp {:?}",
            timed.timestamp
        );
    }

    DecodeSummary { frames, sample_frames, corrupt_packets: decoder.stats().corrupt_packets }
}
