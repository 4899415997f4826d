//! Checks that the Opus decoder logs a run of corrupt packets once, at
//! `error`. It is a test binary of its own with a single test: tracing caches
//! per call site whether anyone listens, and a test on another thread meeting
//! the same call site with no subscriber can leave that cache saying no.
//!
//! ```text
//! cargo test -p mentis-stages --no-default-features --test opus_logging
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mentis_pipeline::stage::{Emitter, Processor};
use mentis_pipeline::{AudioFormat, Codec, EncodedAudio, Frame, FrameMeta, MediaTime, Payload, SessionId, StageName};
use mentis_stages::opus::OpusDecoder;

/// A tracing subscriber that counts events at `error` level.
struct ErrorCounter {
    errors: Arc<AtomicUsize>,
}

impl tracing::Subscriber for ErrorCounter {
    fn enabled(&self, _metadata: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _span: &tracing::span::Id, _values: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _span: &tracing::span::Id, _follows: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn enter(&self, _span: &tracing::span::Id) {}

    fn exit(&self, _span: &tracing::span::Id) {}
}

#[test]
fn corrupt_packets_are_logged_once() {
    let errors = Arc::new(AtomicUsize::new(0));
    let subscriber = ErrorCounter { errors: Arc::clone(&errors) };
    let name = StageName::new("opus-decoder").unwrap_or_else(|error| panic!("{error}"));
    let mut decoder = OpusDecoder::new(name, AudioFormat::mono_f32(48_000)).unwrap_or_else(|error| panic!("{error}"));
    let mut emitter = Emitter::new(SessionId(1));

    tracing::subscriber::with_default(subscriber, || {
        // TOC byte 0xF9: configuration 31 (CELT fullband, 20 ms), mono, code 1
        // (two frames of equal size), which needs an even number of bytes
        // after the TOC byte; 3 makes the packet invalid.
        let corrupt = Bytes::from_static(&[0xF9, 1, 2, 3]);
        for index in 0..50_u64 {
            let packet = EncodedAudio {
                codec: Codec::Opus,
                sample_rate: 48_000,
                channels: 1,
                duration: Duration::from_millis(20),
                data: corrupt.clone(),
            };
            let meta =
                FrameMeta { timestamp: MediaTime::from_samples(index * 960, 48_000), ..FrameMeta::new(SessionId(1)) };
            if let Err(error) = decoder.process(Frame::new(meta, Payload::Encoded(packet)), &mut emitter) {
                panic!("packet {index}: {error}");
            }
        }
    });

    assert_eq!(decoder.stats().corrupt_packets, 50);
    assert_eq!(errors.load(Ordering::Relaxed), 1, "error events logged for 50 corrupt packets");
}
