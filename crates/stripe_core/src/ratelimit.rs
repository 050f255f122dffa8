//! A client-side token bucket: requests per second with a burst of one second's worth.
//! Reservations are taken in arrival order, so waiting callers are served fairly.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` requests per second; 0 means unlimited.
    pub fn new(rate: f64) -> TokenBucket {
        TokenBucket { rate, state: Mutex::new((rate.max(1.0), Instant::now())) }
    }

    /// How long the caller must wait before its request; the token is reserved.
    pub fn reserve(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *guard;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate.max(1.0));
        *last = now;
        *tokens -= 1.0;
        if *tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-*tokens / self.rate) }
    }

    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_paced_at_the_rate() {
        let b = TokenBucket::new(10.0);
        for _ in 0..10 {
            assert_eq!(b.reserve(), Duration::ZERO);
        }
        let w = b.reserve();
        assert!(w > Duration::from_millis(80) && w <= Duration::from_millis(101), "{w:?}");
        let w2 = b.reserve();
        assert!(w2 > Duration::from_millis(180) && w2 <= Duration::from_millis(201), "{w2:?}");
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let b = TokenBucket::new(0.0);
        for _ in 0..1000 {
            assert_eq!(b.reserve(), Duration::ZERO);
        }
    }
}
