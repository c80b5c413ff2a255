//! Retrying remote calls: exponential backoff with full jitter, bounded in attempts and in
//! total time. Only transient errors are retried; a missing object, a failed precondition
//! or a permission problem is an answer, not an outage.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

/// How a [`crate::Bucket`] retries a remote call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff; each later one doubles, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts once this much time has passed since the first one.
    pub total_budget: Duration,
    /// One attempt that takes longer than this is abandoned and counts as transient.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            total_budget: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries (useful in tests and for calls the caller retries itself).
    pub fn no_retries() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The sleep before attempt `attempt + 1` (attempt counts from 1): a random duration in
    /// `[0, min(max_backoff, initial_backoff * 2^(attempt-1))]` ("full jitter").
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let cap = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rng.gen_range(0..=nanos))
    }
}

/// Whether an object_store error is worth retrying.
pub fn is_transient(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    match err {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented
        | E::UnknownConfigurationKey { .. } => false,
        // object_store reports every other HTTP status as Generic; its status code is only
        // visible in the message. A 4xx other than 408/429 will not change on retry.
        E::Generic { source, .. } => !is_permanent_http_status(&source.to_string()),
        _ => true,
    }
}

fn is_permanent_http_status(message: &str) -> bool {
    const MARK: &str = "status code: ";
    let Some(at) = message.find(MARK) else {
        return false;
    };
    let code: String = message[at + MARK.len()..].chars().take(3).collect();
    match code.parse::<u16>() {
        Ok(408) | Ok(429) => false,
        Ok(c) => (400..500).contains(&c),
        Err(_) => false,
    }
}

/// The outcome of [`run`]: the last result and how many attempts it took.
pub(crate) struct Outcome<T> {
    pub result: Result<T, object_store::Error>,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// Runs `call` until it succeeds, fails permanently, or the policy's budget is spent.
/// `on_retry` is told about every retry (for metrics and logs).
pub(crate) async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    mut call: F,
    mut on_retry: impl FnMut(u32, &object_store::Error),
) -> Outcome<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let start = Instant::now();
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = match tokio::time::timeout(policy.attempt_timeout, call()).await {
            Ok(r) => r,
            Err(_) => Err(object_store::Error::Generic {
                store: "chronik",
                source: format!("attempt timed out after {:?}", policy.attempt_timeout).into(),
            }),
        };
        let err = match result {
            Ok(v) => {
                return Outcome {
                    result: Ok(v),
                    attempts: attempt,
                    elapsed: start.elapsed(),
                }
            }
            Err(e) => e,
        };
        let sleep = policy.backoff(attempt, &mut rand::thread_rng());
        let out_of_budget =
            attempt >= max_attempts || start.elapsed() + sleep >= policy.total_budget;
        if !is_transient(&err) || out_of_budget {
            return Outcome {
                result: Err(err),
                attempts: attempt,
                elapsed: start.elapsed(),
            };
        }
        on_retry(attempt, &err);
        tokio::time::sleep(sleep).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..RetryPolicy::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..40 {
            let cap = Duration::from_millis(10 * (1u64 << (attempt - 1).min(20)))
                .min(Duration::from_millis(100));
            for _ in 0..20 {
                assert!(policy.backoff(attempt, &mut rng) <= cap);
            }
        }
    }

    #[test]
    fn classifies_errors() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.to_string().into(),
        };
        assert!(is_transient(&generic("connection refused")));
        assert!(is_transient(&generic(
            "Server returned non-2xx status code: 503 Service Unavailable"
        )));
        assert!(is_transient(&generic(
            "Server returned non-2xx status code: 429 Too Many Requests"
        )));
        assert!(!is_transient(&generic(
            "Server returned non-2xx status code: 400 Bad Request"
        )));
        assert!(!is_transient(&object_store::Error::NotFound {
            path: "k".into(),
            source: "gone".into()
        }));
        assert!(!is_transient(&object_store::Error::Precondition {
            path: "k".into(),
            source: "etag".into()
        }));
    }
}
