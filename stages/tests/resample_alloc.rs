//! Proves that the stream resampler allocates nothing per frame once built:
//! a global allocator counts the allocations made by the test's own thread
//! while frames are resampled, flushed and reset.
//!
//! It is a test binary of its own because the counting allocator replaces
//! the global allocator for everything in the binary.
//!
//! ```text
//! cargo test -p mentis-stages --no-default-features --test resample_alloc
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mentis_stages::resample::{ResamplerKind, StreamResampler};

/// The system allocator, counting the allocations of threads that ask for it.
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn record_allocation() {
    // `try_with` because the allocator also serves threads being torn down.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            ALLOCATIONS.with(|allocations| allocations.set(allocations.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only reads and writes const-initialized thread locals, which
// allocate nothing.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `work` and returns the allocations this thread made during it.
fn count_allocations(work: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|allocations| allocations.set(0));
    COUNTING.with(|counting| counting.set(true));
    work();
    COUNTING.with(|counting| counting.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn resampler_allocates_nothing_per_frame() {
    // The counter itself works: a vector allocates.
    let allocations = count_allocations(|| drop(std::hint::black_box(vec![0_u8; 64])));
    assert_eq!(allocations, 1, "allocations counted for one vector");

    let cases = [
        (48_000, 16_000, 1, ResamplerKind::Fft),
        (48_000, 16_000, 1, ResamplerKind::Sinc),
        (44_100, 48_000, 2, ResamplerKind::Fft),
        (16_000, 22_050, 2, ResamplerKind::Sinc),
    ];
    for (input_rate, output_rate, channels, kind) in cases {
        let label = format!("{kind:?} {input_rate} -> {output_rate} Hz, {channels} ch");
        let mut resampler = StreamResampler::new(input_rate, output_rate, channels, kind)
            .unwrap_or_else(|error| panic!("{label}: {error}"));

        // 20 ms frames plus an odd block, and buffers sized for the worst case.
        let frame: Vec<f32> = (0..input_rate as usize / 50 * usize::from(channels))
            .map(|index| (index as f32 * 0.01).sin() * 0.5)
            .collect();
        let odd = &frame[..37 * usize::from(channels)];
        let mut output = vec![0.0_f32; resampler.output_len_max(frame.len()) * 2 + resampler.flush_len() + 8_192];

        // Warm-up: one stream through, flushed.
        for _ in 0..5 {
            resampler.process_into(&frame, &mut output).unwrap_or_else(|error| panic!("{label}: {error}"));
        }
        resampler.flush_into(&mut output).unwrap_or_else(|error| panic!("{label}: {error}"));

        let mut produced = 0;
        let allocations = count_allocations(|| {
            // A failure panics, and the panic message is the only allocation then.
            for _ in 0..500 {
                produced += resampler.process_into(&frame, &mut output).unwrap_or_else(|error| panic!("{error}"));
                produced += resampler.process_into(odd, &mut output).unwrap_or_else(|error| panic!("{error}"));
            }
            if kind == ResamplerKind::Sinc {
                resampler.set_relative_ratio(1.0003).unwrap_or_else(|error| panic!("{error}"));
            }
            produced += resampler.flush_into(&mut output).unwrap_or_else(|error| panic!("{error}"));
            resampler.reset();
        });

        assert!(produced > 0, "{label}: the resampler produced nothing, so the count proves nothing");
        assert_eq!(allocations, 0, "{label}: allocations while resampling 1,000 blocks");
    }
}
