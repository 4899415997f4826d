//! Clock drift correction from the fill of a downstream buffer.

use std::time::Duration;

use super::MAX_DRIFT_PPM;

/// Time constant τ of the correction loop, in seconds. The loop is critically
/// damped, so a step in clock offset settles in a few multiples of τ.
const LOOP_TIME_CONSTANT_SECS: f64 = 5.0;

/// Time constant of the low-pass filter on the measured fill, in seconds. The
/// fill jumps by a whole block each time one is written or read, and the
/// filter averages those steps out so that they do not reach the ratio.
const FILL_SMOOTHING_SECS: f64 = 0.5;

/// A proportional-integral controller that keeps a downstream buffer at a
/// target fill by correcting a resampler's ratio.
///
/// When the producer's clock runs fast relative to the consumer's, the buffer
/// between them fills up. Each [`update`](Self::update) takes the current
/// fill (the buffer's frames plus
/// [`StreamResampler::pending_output_frames`](super::StreamResampler::pending_output_frames)),
/// and returns the relative ratio to pass to
/// [`StreamResampler::set_relative_ratio`](super::StreamResampler::set_relative_ratio):
/// below 1.0 while the buffer is too full, above 1.0 while it runs low. The
/// integral term settles on the clock offset itself, so the fill returns to
/// the target instead of staying off by an amount proportional to the offset.
#[derive(Debug, Clone)]
pub struct DriftController {
    target_fill: f64,
    /// Ratio correction per frame of fill error.
    proportional_gain: f64,
    /// Ratio correction per frame of fill error per second.
    integral_gain: f64,
    integral: f64,
    smoothed_fill: Option<f64>,
    relative_ratio: f64,
}

impl DriftController {
    /// Builds a controller that keeps the buffer at `target_fill` frames of
    /// audio at `output_rate` Hz (the rate the buffer is filled at).
    pub fn new(target_fill: usize, output_rate: u32) -> Self {
        // The fill error e (in frames) grows at rate × (ratio offset + clock
        // offset). A correction of -(Kp·e + Ki·∫e dt) makes that a second-order
        // loop with natural frequency ω = √(rate·Ki) and damping rate·Kp / 2ω.
        // The gains below give ω = 1/τ and a damping of 1.
        let rate = f64::from(output_rate.max(1));
        let natural_frequency = 1.0 / LOOP_TIME_CONSTANT_SECS;
        DriftController {
            target_fill: target_fill as f64,
            proportional_gain: 2.0 * natural_frequency / rate,
            integral_gain: natural_frequency * natural_frequency / rate,
            integral: 0.0,
            smoothed_fill: None,
            relative_ratio: 1.0,
        }
    }

    /// Takes the buffer fill in frames, measured `elapsed` after the previous
    /// update, and returns the new relative ratio, within 1 ± [`MAX_DRIFT_PPM`] × 10⁻⁶.
    pub fn update(&mut self, fill: usize, elapsed: Duration) -> f64 {
        let seconds = elapsed.as_secs_f64();
        let fill = fill as f64;

        // Average out the block-sized steps of the fill.
        let smoothing = seconds / (FILL_SMOOTHING_SECS + seconds);
        let smoothed = match self.smoothed_fill {
            Some(previous) => previous + smoothing * (fill - previous),
            None => fill,
        };
        self.smoothed_fill = Some(smoothed);

        // The integral is clamped to the correction range, so that a long
        // stretch at the limit does not wind it up beyond what it can apply.
        let limit = MAX_DRIFT_PPM * 1e-6;
        let error = smoothed - self.target_fill;
        self.integral = (self.integral + self.integral_gain * error * seconds).clamp(-limit, limit);

        let correction = (self.proportional_gain * error + self.integral).clamp(-limit, limit);
        self.relative_ratio = 1.0 - correction;
        self.relative_ratio
    }

    /// Returns the relative ratio of the last update (1.0 before the first).
    pub fn relative_ratio(&self) -> f64 {
        self.relative_ratio
    }

    /// Returns the ratio correction of the last update, in parts per million.
    pub fn correction_ppm(&self) -> f64 {
        (self.relative_ratio - 1.0) * 1e6
    }

    /// Forgets the loop's history, for a new stream.
    pub fn reset(&mut self) {
        self.integral = 0.0;
        self.smoothed_fill = None;
        self.relative_ratio = 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_buffer_lowers_ratio() {
        let mut controller = DriftController::new(960, 16_000);
        let ratio = controller.update(2_000, Duration::from_millis(10));
        assert!(ratio < 1.0, "ratio {ratio}");
    }

    #[test]
    fn empty_buffer_raises_ratio() {
        let mut controller = DriftController::new(960, 16_000);
        let ratio = controller.update(0, Duration::from_millis(10));
        assert!(ratio > 1.0, "ratio {ratio}");
    }

    #[test]
    fn correction_stays_within_limit() {
        let mut controller = DriftController::new(960, 16_000);
        for _ in 0..10_000 {
            controller.update(1_000_000, Duration::from_millis(10));
        }
        assert!((controller.correction_ppm() + MAX_DRIFT_PPM).abs() < 1e-6, "{}", controller.correction_ppm());
    }
}
