//! Model checks of the wait-free ring under every interleaving loom explores.
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p mentis-pipeline --test loom_ring --release`.

#![cfg(loom)]

use loom::thread;
use mentis_pipeline::ring::ring;

#[test]
fn producer_and_consumer_agree() {
    loom::model(|| {
        let (mut producer, mut consumer) = ring::<u32>(2);
        let writer = thread::spawn(move || {
            let mut written = 0_u32;
            for value in 1..=3 {
                written += producer.push(&[value]) as u32;
            }
            (written, producer.overrun())
        });

        let mut received = Vec::new();
        let mut out = [0_u32; 2];
        for _ in 0..3 {
            let count = consumer.pop(&mut out);
            received.extend_from_slice(&out[..count]);
        }
        let (written, overrun) = writer.join().expect("writer");
        let count = consumer.pop(&mut out);
        received.extend_from_slice(&out[..count]);

        assert_eq!(written as u64 + overrun, 3, "every push is written or counted");
        assert_eq!(received.len() as u32, written, "everything written is read");
        assert!(received.windows(2).all(|pair| pair[0] < pair[1]), "in order: {received:?}");
    });
}

#[test]
fn wrap_around_keeps_values() {
    loom::model(|| {
        let (mut producer, mut consumer) = ring::<u8>(2);
        let writer = thread::spawn(move || {
            let mut next = 0_u8;
            while next < 4 {
                if producer.push(&[next]) == 1 {
                    next += 1;
                }
                thread::yield_now();
            }
        });
        let mut expected = 0_u8;
        let mut out = [0_u8; 1];
        while expected < 4 {
            if consumer.pop(&mut out) == 1 {
                assert_eq!(out[0], expected);
                expected += 1;
            }
            thread::yield_now();
        }
        writer.join().expect("writer");
    });
}
