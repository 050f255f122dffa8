//! A client-side token bucket: requests per second with a burst of one second's
//! worth, shared fairly between lanes. A lane is the account a request acts as
//! (`Stripe-Account`, or none). Callers that must wait queue in their lane, in
//! arrival order, and the lanes take turns, one request each: a connected
//! account with many requests waiting (a huge account read by many fetchers)
//! gets the same share as one with a single request waiting, so it never starves
//! the others, and when it is the only one waiting it gets the whole budget.
//!
//! Only the caller at the head of the turn sleeps until the next token; it
//! takes it and wakes the next head. A caller that gives up (its future is
//! dropped) leaves the queue, and wakes the next head if it was the head.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
// tokio's clock: the std one, except in tests with paused time
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
    /// Lanes with callers waiting, in turn order; each with its callers in
    /// arrival order.
    turns: VecDeque<(Option<String>, VecDeque<Waiter>)>,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    wake: Arc<Notify>,
}

impl State {
    fn refill(&mut self, rate: f64) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate.max(1.0));
        self.last = now;
    }

    fn head(&self) -> Option<&Waiter> {
        self.turns.front().and_then(|(_, q)| q.front())
    }

    /// Removes a waiter; wakes the new head if it was the head.
    fn leave(&mut self, id: u64) {
        let was_head = self.head().is_some_and(|w| w.id == id);
        for (_, q) in self.turns.iter_mut() {
            q.retain(|w| w.id != id);
        }
        self.turns.retain(|(_, q)| !q.is_empty());
        if was_head && let Some(w) = self.head() {
            w.wake.notify_one();
        }
    }
}

/// Takes a waiter out of the queue if its caller gives up before its turn.
struct Leave<'a> {
    bucket: &'a TokenBucket,
    id: u64,
    served: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if !self.served {
            self.bucket.lock().leave(self.id);
        }
    }
}

impl TokenBucket {
    /// `rate` requests per second; 0 means unlimited.
    pub fn new(rate: f64) -> TokenBucket {
        let state = State { tokens: rate.max(1.0), last: Instant::now(), turns: VecDeque::new(), next_id: 0 };
        TokenBucket { rate, state: Mutex::new(state) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a token for a request in `lane` (the account it acts as).
    pub async fn acquire(&self, lane: Option<&str>) {
        if self.rate <= 0.0 {
            return;
        }
        let (id, wake) = {
            let mut s = self.lock();
            s.refill(self.rate);
            // nobody waiting and a token at hand: no queue
            if s.turns.is_empty() && s.tokens >= 1.0 {
                s.tokens -= 1.0;
                return;
            }
            let id = s.next_id;
            s.next_id += 1;
            let wake = Arc::new(Notify::new());
            let waiter = Waiter { id, wake: wake.clone() };
            match s.turns.iter_mut().find(|(l, _)| l.as_deref() == lane) {
                Some((_, q)) => q.push_back(waiter),
                None => s.turns.push_back((lane.map(str::to_string), VecDeque::from([waiter]))),
            }
            (id, wake)
        };
        let mut leave = Leave { bucket: self, id, served: false };
        loop {
            let wait = {
                let mut s = self.lock();
                if s.head().is_some_and(|w| w.id == id) {
                    s.refill(self.rate);
                    if s.tokens >= 1.0 {
                        s.tokens -= 1.0;
                        // served: this lane goes to the back of the turn if more wait in it
                        if let Some((lane, mut q)) = s.turns.pop_front() {
                            q.pop_front();
                            if !q.is_empty() {
                                s.turns.push_back((lane, q));
                            }
                        }
                        if let Some(w) = s.head() {
                            w.wake.notify_one();
                        }
                        leave.served = true;
                        return;
                    }
                    Some(Duration::from_secs_f64((1.0 - s.tokens) / self.rate))
                } else {
                    None
                }
            };
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => wake.notified().await,
            }
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
        let t = tokio::time::Instant::now();
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

    /// The order tokens are handed out in, for callers that all wait.
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

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_leaves_the_queue_and_the_next_is_served() {
        let b = Arc::new(TokenBucket::new(10.0));
        for _ in 0..10 {
            b.acquire(None).await;
        }
        let head = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Some("gone")).await })
        };
        tokio::task::yield_now().await;
        let next = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Some("next")).await })
        };
        tokio::task::yield_now().await;
        head.abort();
        let t = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(1), next).await.expect("served after the head left").unwrap();
        assert!(t.elapsed() <= Duration::from_millis(110), "{:?}", t.elapsed());
        assert!(b.lock().turns.is_empty());
    }
}
