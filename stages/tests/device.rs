//! The device callbacks move samples without allocating, and opening a
//! device that the machine lacks is a typed error, not a panic.

#![cfg(feature = "device")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use mentis_pipeline::StageName;
use mentis_pipeline::ring::ring;
use mentis_stages::device::{Microphone, Speaker, capture_callback, playback_callback};

struct Counting;

thread_local! {
    /// Allocations made by this thread; the other tests run on other threads.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn callbacks_allocate_nothing() {
    let (mut producer, mut consumer) = ring::<f32>(4_096);
    let captured = vec![0.25_f32; 480];
    let mut played = vec![1.0_f32; 512];
    let underrun = AtomicU64::new(0);

    let before = allocations();
    for _ in 0..1_000 {
        capture_callback(&mut producer, &captured);
        playback_callback(&mut consumer, &mut played, &underrun);
    }
    let made = allocations() - before;
    assert_eq!(made, 0, "the device callbacks allocated {made} times");
}

#[test]
fn playback_underrun_plays_silence() {
    let (mut producer, mut consumer) = ring::<f32>(64);
    producer.push(&[0.5; 10]);
    let mut out = [1.0_f32; 16];
    let underrun = AtomicU64::new(0);
    playback_callback(&mut consumer, &mut out, &underrun);
    assert_eq!(&out[..10], &[0.5; 10]);
    assert_eq!(&out[10..], &[0.0; 6]);
    assert_eq!(underrun.load(Ordering::Relaxed), 6);
}

#[test]
fn capture_overrun_counted() {
    let (mut producer, consumer) = ring::<f32>(8);
    capture_callback(&mut producer, &[0.1; 12]);
    assert_eq!(consumer.available(), 8);
    assert_eq!(consumer.overrun(), 4);
}

/// The test machines have no sound card. Opening the default devices either
/// fails with a typed error that names what to check, or (where a sound
/// server provides a default device) succeeds; it never panics.
#[test]
fn missing_device_is_typed_error() {
    let name = StageName::new("mic").expect("valid name");
    match Microphone::open(name, std::time::Duration::from_millis(20)) {
        Ok(microphone) => assert!(microphone.format().sample_rate > 0),
        Err(error) => assert!(error.to_string().contains("input"), "{error}"),
    }
    let name = StageName::new("speaker").expect("valid name");
    match Speaker::open(name, mentis_pipeline::AudioFormat::mono_f32(16_000)) {
        Ok(_) => {}
        Err(error) => assert!(error.to_string().contains("output"), "{error}"),
    }
}
