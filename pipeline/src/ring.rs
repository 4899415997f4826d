//! A wait-free single-producer, single-consumer ring of samples.
//!
//! For producers that must never block or allocate, such as an audio device
//! callback: [`RingProducer::push`] writes what fits and counts the rest as
//! overrun, and [`RingConsumer::pop`] reads what is there. Each side does a
//! bounded amount of work with no locks and no retries.
//!
//! The head (next read) and tail (next write) are free-running counters; the
//! capacity is a power of two, so `index & mask` is the slot. The producer
//! publishes samples with a release store of the tail after writing them; the
//! consumer acquires the tail before reading, and releases the head after
//! reading so the producer knows those slots are free.

use crate::sync::{AtomicU64, AtomicUsize, Ordering, UnsafeCell};
use std::mem::MaybeUninit;
use std::sync::Arc;

struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    head: AtomicUsize,
    tail: AtomicUsize,
    overrun: AtomicU64,
}

// SAFETY: slots are written only by the single producer in [tail, head + capacity)
// and read only by the single consumer in [head, tail); the acquire/release
// pairs on `head` and `tail` order those accesses, so no slot is accessed by
// both sides at once.
unsafe impl<T: Send> Sync for Ring<T> {}
// SAFETY: the ring owns plain values of T, which are Send.
unsafe impl<T: Send> Send for Ring<T> {}

/// The writing half. Not `Clone`: there is exactly one producer.
pub struct RingProducer<T> {
    ring: Arc<Ring<T>>,
}

/// The reading half. Not `Clone`: there is exactly one consumer.
pub struct RingConsumer<T> {
    ring: Arc<Ring<T>>,
}

impl<T> std::fmt::Debug for RingProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingProducer").field("capacity", &(self.ring.mask + 1)).finish()
    }
}

impl<T> std::fmt::Debug for RingConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingConsumer").field("capacity", &(self.ring.mask + 1)).finish()
    }
}

/// Creates a ring holding at least `min_capacity` samples (rounded up to a
/// power of two, at least 2).
pub fn ring<T: Copy + Send>(min_capacity: usize) -> (RingProducer<T>, RingConsumer<T>) {
    let capacity = min_capacity.max(2).next_power_of_two();
    let slots = (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let ring = Arc::new(Ring {
        slots,
        mask: capacity - 1,
        head: AtomicUsize::new(0),
        tail: AtomicUsize::new(0),
        overrun: AtomicU64::new(0),
    });
    (RingProducer { ring: Arc::clone(&ring) }, RingConsumer { ring })
}

impl<T: Copy + Send> RingProducer<T> {
    /// Writes as many samples of `samples` as fit, in order, and returns how
    /// many were written. The rest are counted as overrun and discarded.
    pub fn push(&mut self, samples: &[T]) -> usize {
        let ring = &*self.ring;
        let tail = ring.tail.load(Ordering::Relaxed);
        let head = ring.head.load(Ordering::Acquire);
        let free = ring.mask + 1 - tail.wrapping_sub(head);
        let count = samples.len().min(free);

        for (offset, &sample) in samples[..count].iter().enumerate() {
            let slot = &ring.slots[tail.wrapping_add(offset) & ring.mask];
            // SAFETY: this slot lies in the free region, which the consumer
            // does not read until the tail store below publishes it.
            slot.with_mut(|pointer| unsafe { (*pointer).write(sample) });
        }
        ring.tail.store(tail.wrapping_add(count), Ordering::Release);

        let lost = samples.len() - count;
        if lost > 0 {
            ring.overrun.fetch_add(lost as u64, Ordering::Relaxed);
        }
        count
    }

    /// Returns the number of samples discarded because the ring was full.
    pub fn overrun(&self) -> u64 {
        self.ring.overrun.load(Ordering::Relaxed)
    }

    /// Returns the number of samples that fit now. The consumer may free more
    /// at any moment, never less.
    pub fn free(&self) -> usize {
        let ring = &*self.ring;
        ring.mask + 1 - ring.tail.load(Ordering::Relaxed).wrapping_sub(ring.head.load(Ordering::Acquire))
    }
}

impl<T: Copy + Send> RingConsumer<T> {
    /// Reads up to `out.len()` samples into `out`, oldest first, and returns
    /// how many were read.
    pub fn pop(&mut self, out: &mut [T]) -> usize {
        let ring = &*self.ring;
        let head = ring.head.load(Ordering::Relaxed);
        let tail = ring.tail.load(Ordering::Acquire);
        let available = tail.wrapping_sub(head);
        let count = out.len().min(available);

        for (offset, target) in out[..count].iter_mut().enumerate() {
            let slot = &ring.slots[head.wrapping_add(offset) & ring.mask];
            // SAFETY: the slot lies in [head, tail), written by the producer
            // before its release store of the tail, which the acquire load
            // above observed.
            *target = slot.with(|pointer| unsafe { (*pointer).assume_init() });
        }
        ring.head.store(head.wrapping_add(count), Ordering::Release);
        count
    }

    /// Returns the number of samples ready to read.
    pub fn available(&self) -> usize {
        let ring = &*self.ring;
        ring.tail.load(Ordering::Acquire).wrapping_sub(ring.head.load(Ordering::Relaxed))
    }

    /// Returns the number of samples discarded because the ring was full.
    pub fn overrun(&self) -> u64 {
        self.ring.overrun.load(Ordering::Relaxed)
    }

    /// Returns the capacity in samples.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn push_pop_in_order() {
        let (mut producer, mut consumer) = ring::<i16>(8);
        assert_eq!(producer.push(&[1, 2, 3]), 3);
        let mut out = [0_i16; 8];
        assert_eq!(consumer.pop(&mut out), 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(consumer.pop(&mut out), 0);
    }

    #[test]
    fn overrun_counts_what_did_not_fit() {
        let (mut producer, consumer) = ring::<f32>(4);
        assert_eq!(producer.push(&[1.0; 6]), 4);
        assert_eq!(producer.overrun(), 2);
        assert_eq!(consumer.overrun(), 2);
        assert_eq!(consumer.available(), 4);
    }

    #[test]
    fn wraps_around_many_times() {
        let (mut producer, mut consumer) = ring::<u32>(16);
        let mut next_in = 0_u32;
        let mut next_out = 0_u32;
        let mut out = [0_u32; 5];
        for round in 0..10_000 {
            let block: Vec<u32> = (0..(round % 7)).map(|i| next_in + i).collect();
            next_in += producer.push(&block) as u32;
            let read = consumer.pop(&mut out);
            for &value in &out[..read] {
                assert_eq!(value, next_out);
                next_out += 1;
            }
        }
        assert_eq!(producer.overrun(), 0);
    }

    #[test]
    fn threads_transfer_every_sample_in_order() {
        let (mut producer, mut consumer) = ring::<u64>(64);
        const TOTAL: u64 = 200_000;
        let writer = std::thread::spawn(move || {
            let mut next = 0;
            while next < TOTAL {
                let room = producer.free().min(13) as u64;
                let block: Vec<u64> = (next..(next + room).min(TOTAL)).collect();
                next += producer.push(&block) as u64;
                std::hint::spin_loop();
            }
            producer
        });
        let mut expected = 0;
        let mut out = [0_u64; 17];
        while expected < TOTAL {
            let read = consumer.pop(&mut out);
            for &value in &out[..read] {
                assert_eq!(value, expected);
                expected += 1;
            }
        }
        let producer = writer.join().expect("writer thread");
        assert_eq!(producer.overrun(), 0, "the writer pushes only what fits, so nothing overruns");
    }
}
