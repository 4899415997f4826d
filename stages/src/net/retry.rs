//! Backoff between attempts of a request.

use std::time::Duration;

use mentis_pipeline::wrap::RetryPolicy;

use super::error::NetError;

/// Returns how long to wait before attempt `attempt + 1` after `error`:
/// exponential backoff with jitter from `policy`, or the server's
/// `Retry-After` when it requests longer, capped at the policy's maximum.
pub fn delay_after(policy: &RetryPolicy, attempt: u32, error: &NetError) -> Duration {
    let backoff = policy.backoff(attempt, fastrand::f64());
    match error.retry_after() {
        Some(asked) => asked.max(backoff).min(policy.max_backoff.max(asked.min(Duration::from_secs(60)))),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_over_a_shorter_backoff() {
        let policy = RetryPolicy { initial_backoff: Duration::from_millis(10), ..RetryPolicy::default() };
        let error = NetError::Status {
            endpoint: "https://api.example.test/".to_owned(),
            status: 429,
            body: String::new(),
            retry_after: Some(Duration::from_secs(2)),
            hint: "",
        };
        assert_eq!(delay_after(&policy, 1, &error), Duration::from_secs(2));
        let timeout = NetError::IdleTimeout { endpoint: String::new(), after: Duration::from_secs(1) };
        let delay = delay_after(&policy, 1, &timeout);
        assert!((Duration::from_millis(5)..=Duration::from_millis(10)).contains(&delay), "{delay:?}");
    }
}
