//! A client-side token bucket: requests per second with a burst of one second's
//! worth, shared fairly between lanes. A lane is the account a request acts as
//! (`Stripe-Account`, or none).
//!
//! A request reserves the next free moment and sleeps until it, so the moments
//! are handed out in arrival order. Each lane holds at most one reservation at
//! a time: its other requests wait in the lane, in arrival order, until that
//! one's moment comes. So the lanes waiting take turns, one request each: a
//! connected account with 32 requests waiting (a huge account read by many
//! fetchers) gets the same share as one with a single request, and the whole
//! budget when it is alone.
//!
//! Nothing waits on another caller being polled: a reserved moment is kept by
//! the clock, not handed over. A caller that is not polled for a while (its task
//! is busy elsewhere) only holds back its own lane. An earlier design, where the
//! head of a queue took the next token itself and then woke the next, stalled
//! every lane when the head's task was waiting for its reader to catch up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
// tokio's clock: the std one, except in tests with paused time
use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
    /// One reservation at a time per lane.
    lanes: Mutex<HashMap<Option<String>, Arc<Semaphore>>>,
}

impl TokenBucket {
    /// `rate` requests per second; 0 means unlimited.
    pub fn new(rate: f64) -> TokenBucket {
        TokenBucket { rate, state: Mutex::new((rate.max(1.0), Instant::now())), lanes: Mutex::new(HashMap::new()) }
    }

    /// How long the caller must wait before its request; the moment is reserved.
    fn reserve(&self) -> Duration {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *guard;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate.max(1.0));
        *last = now;
        *tokens -= 1.0;
        if *tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-*tokens / self.rate) }
    }

    fn lane(&self, lane: Option<&str>) -> Arc<Semaphore> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.entry(lane.map(str::to_string)).or_insert_with(|| Arc::new(Semaphore::new(1))).clone()
    }

    /// Waits for a moment to send a request in `lane` (the account it acts as).
    pub async fn acquire(&self, lane: Option<&str>) {
        if self.rate <= 0.0 {
            return;
        }
        let sem = self.lane(lane);
        // the semaphore is never closed; the permit goes back when this returns
        // or its future is dropped
        let _turn = sem.acquire().await;
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[tokio::test(start_paused = true)]
    async fn burst_then_paced_at_the_rate() {
        let b = TokenBucket::new(10.0);
        let t = Instant::now();
        for _ in 0..10 {
            b.acquire(None).await;
        }
        assert!(t.elapsed() < Duration::from_millis(5), "the burst is free");
        b.acquire(None).await;
        b.acquire(None).await;
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(190) && e <= Duration::from_millis(230), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited() {
        let b = TokenBucket::new(0.0);
        for _ in 0..1000 {
            b.acquire(None).await;
        }
    }

    /// The order moments are handed out in, for callers that all wait.
    async fn grants(b: Arc<TokenBucket>, callers: Vec<&'static str>) -> Vec<&'static str> {
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for lane in callers {
            let (b, order) = (b.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                b.acquire(Some(lane)).await;
                order.lock().unwrap().push(lane);
            }));
            // arrival order is the spawn order
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(order).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn lanes_take_turns_so_a_lane_with_many_waiting_never_starves_one_with_few() {
        let b = Arc::new(TokenBucket::new(10.0));
        for _ in 0..10 {
            b.acquire(None).await; // the burst is spent: everyone below waits
        }
        // the huge account queues 8 requests first, then three small ones queue one each
        let mut callers = vec!["huge"; 8];
        callers.extend(["a", "b", "c"]);
        let order = grants(b, callers).await;
        assert_eq!(order, vec!["huge", "a", "b", "c", "huge", "huge", "huge", "huge", "huge", "huge", "huge"]);
    }

    /// A caller whose task stops polling it (busy waiting for its reader)
    /// holds back its own lane only; once dropped, its lane goes on.
    #[tokio::test(start_paused = true)]
    async fn a_caller_that_is_not_polled_holds_back_only_its_own_lane() {
        let b = Arc::new(TokenBucket::new(10.0));
        for _ in 0..10 {
            b.acquire(None).await;
        }
        // polled once (it reserves), then left alone
        let mut stuck = Box::pin(b.acquire(Some("stuck")));
        assert!(tokio::time::timeout(Duration::from_millis(1), &mut stuck).await.is_err());
        // its lane's next caller waits; another lane's is served
        let mut same = Box::pin(b.acquire(Some("stuck")));
        assert!(tokio::time::timeout(Duration::from_millis(1), &mut same).await.is_err());
        tokio::time::timeout(Duration::from_secs(1), b.acquire(Some("other"))).await.expect("another lane is served");
        drop(stuck);
        tokio::time::timeout(Duration::from_secs(1), same).await.expect("the lane goes on once its caller is gone");
    }
}
