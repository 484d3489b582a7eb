//! The providers of one channel: weighted rotation, a circuit breaker, a
//! token bucket and a concurrency limit per provider.

use std::num::NonZeroU32;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::breaker::{Admission, Breaker, BreakerConfig};
use crate::Channel;

/// Limits of one provider account (rates for the whole cluster: see `ProviderGroup::set_share`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderLimits {
    /// Relative share of the channel's traffic while every provider is healthy.
    pub weight: u32,
    /// Sends per second (token bucket) for the account, shared by the
    /// instances in proportion to the partitions they own; None: unlimited.
    pub rate_per_s: Option<f64>,
    /// Sends the bucket lets through at once after a quiet spell.
    pub burst: u32,
    /// Sends in flight at once.
    pub max_in_flight: usize,
    pub breaker: BreakerConfig,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        ProviderLimits { weight: 1, rate_per_s: None, burst: 1, max_in_flight: 64, breaker: BreakerConfig::default() }
    }
}

/// Which providers of a channel may send a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The channel's shared providers: every one that is no tenant's own account.
    Shared,
    /// One provider only, a tenant's own account: its messages never fail
    /// over to another account (billing, registered senders), they wait.
    Account(usize),
}

pub(crate) struct Provider {
    pub(crate) channel: Arc<dyn Channel>,
    /// A tenant's own account: kept out of the shared rotation.
    dedicated: AtomicBool,
    weight: i64,
    turns: Option<Turns>,
    in_flight: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

/// A rate-limited provider's tokens, taken by one task and handed to waiting
/// workers one at a time, first come first served. Workers waiting on the
/// bucket themselves would all wake on every token (a herd that, with 16
/// workers at 5,000/s on 2 cores, cost half the provider's rate and added
/// milliseconds of jitter to every hand-off).
///
/// One token is kept in reserve for a tenant that was idle: while another
/// tenant saturates the provider, every token is spoken for before it
/// exists, and the quiet tenant's message would wait for the next one (plus
/// the wake-ups in between). The reserve is refilled by the next token, so
/// the provider's rate is unchanged. The task runs at most three tokens
/// ahead (the reserve, one handed over, one in hand): after a quiet spell the
/// provider may see `burst` + 3 sends at once.
struct Turns {
    /// The account's limit and burst, for the whole cluster.
    rate_per_s: f64,
    burst: u32,
    /// This instance's bucket: the account's rate times its share. Replaced when the share changes.
    limiter: Arc<Mutex<Arc<DefaultDirectRateLimiter>>>,
    /// Wakes the taker when the bucket is replaced: it may be waiting on the old one's next token,
    /// which after a near-zero share (a rebalance revoking everything) is minutes away.
    replaced: Arc<Notify>,
    handed: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>,
    reserve: Arc<Reserve>,
    /// The taker starts with the first turn wanted (inside the runtime).
    sender: Mutex<Option<tokio::sync::mpsc::Sender<()>>>,
}

#[derive(Default)]
struct Reserve {
    full: AtomicBool,
    refilled: Notify,
}

impl Turns {
    fn new(rate_per_s: f64, burst: u32) -> Result<Self, String> {
        let (sender, handed) = tokio::sync::mpsc::channel(1);
        Ok(Turns {
            rate_per_s,
            burst,
            limiter: Arc::new(Mutex::new(Arc::new(bucket(rate_per_s, burst)?))),
            replaced: Arc::default(),
            handed: tokio::sync::Mutex::new(handed),
            reserve: Arc::default(),
            sender: Mutex::new(Some(sender)),
        })
    }

    /// This instance takes `share` (0..=1) of the account's rate from now on.
    fn set_share(&self, share: f64) {
        // Never quite zero: a delivery already in hand (a retry) still goes out, slowly.
        let rate = self.rate_per_s * share.clamp(MIN_SHARE, 1.0);
        let burst = ((f64::from(self.burst) * share).round() as u32).max(1);
        if let Ok(fresh) = bucket(rate, burst) {
            *self.limiter.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
            self.replaced.notify_waiters();
        }
    }

    fn start_taker(&self) {
        let Some(sender) = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let (limiter, reserve, replaced) = (self.limiter.clone(), self.reserve.clone(), self.replaced.clone());
        // Ends when the group (and with it the receiver) is dropped.
        tokio::spawn(async move {
            loop {
                let replacement = replaced.notified();
                tokio::pin!(replacement);
                replacement.as_mut().enable();
                let current = limiter.lock().unwrap_or_else(|e| e.into_inner()).clone();
                tokio::select! {
                    _ = current.until_ready() => {}
                    _ = replacement => continue,
                }
                if !reserve.full.swap(true, Ordering::AcqRel) {
                    reserve.refilled.notify_one();
                } else if sender.send(()).await.is_err() {
                    return;
                }
            }
        });
    }

    async fn next(&self) {
        self.start_taker();
        let mut handed = self.handed.lock().await;
        handed.recv().await.expect("the taker runs while the group exists");
    }

    /// The reserve if it is full; else whichever comes first, the reserve
    /// refilled or a turn in line (never only the line: it may be long).
    async fn next_for_newcomer(&self) {
        self.start_taker();
        loop {
            let refilled = self.reserve.refilled.notified();
            tokio::pin!(refilled);
            refilled.as_mut().enable();
            if self.reserve.full.swap(false, Ordering::AcqRel) {
                return;
            }
            tokio::select! {
                _ = &mut refilled => continue,
                _ = self.next() => return,
            }
        }
    }
}

/// The smallest share of a rate an instance keeps (one that owns no partition).
const MIN_SHARE: f64 = 0.001;

/// A token bucket of `rate_per_s` that lets `burst` through at once.
fn bucket(rate_per_s: f64, burst: u32) -> Result<DefaultDirectRateLimiter, String> {
    let burst = NonZeroU32::new(burst.max(1)).expect("max(1)");
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate_per_s)).ok_or("rate too high")?.allow_burst(burst);
    Ok(RateLimiter::direct(quota))
}

/// A provider's turn: held while one send is in flight.
pub struct Lease {
    pub(crate) index: usize,
    /// Retries of the delivery stay on it.
    pub(crate) route: Route,
    probe: bool,
    _slot: OwnedSemaphorePermit,
}

impl Lease {
    pub fn provider(&self) -> usize {
        self.index
    }
}

pub struct ProviderGroup {
    channel: String,
    providers: Vec<Provider>,
    /// Smooth weighted round-robin (as nginx): each provider's current score.
    scores: Mutex<Vec<i64>>,
}

impl ProviderGroup {
    /// All providers must serve the same channel.
    pub fn new(providers: Vec<(Arc<dyn Channel>, ProviderLimits)>) -> Result<Self, String> {
        let channel = providers.first().map(|(c, _)| c.channel().to_string()).ok_or("a provider group needs at least one provider")?;
        let mut built = Vec::with_capacity(providers.len());
        for (provider, limits) in providers {
            if provider.channel() != channel {
                return Err(format!("provider {} serves {}, not {channel}", provider.provider(), provider.channel()));
            }
            let turns = match limits.rate_per_s {
                None => None,
                Some(rate) if rate > 0.0 && rate.is_finite() => Some(Turns::new(rate, limits.burst)?),
                Some(rate) => return Err(format!("provider {}: rate_per_s must be > 0, got {rate}", provider.provider())),
            };
            built.push(Provider {
                channel: provider,
                dedicated: AtomicBool::new(false),
                weight: i64::from(limits.weight.max(1)),
                turns,
                in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
                breaker: Mutex::new(Breaker::new(limits.breaker)),
            });
        }
        let scores = Mutex::new(vec![0; built.len()]);
        Ok(ProviderGroup { channel, providers: built, scores })
    }

    /// One provider with default limits.
    pub fn one(provider: impl Channel + 'static) -> Self {
        Self::new(vec![(Arc::new(provider), ProviderLimits::default())]).expect("one provider")
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn provider(&self, index: usize) -> &Provider {
        &self.providers[index]
    }

    /// Providers by name (`[[delivery.providers]]` names), in order.
    pub fn accounts(&self) -> impl Iterator<Item = (usize, &str)> {
        self.providers.iter().enumerate().map(|(i, p)| (i, p.channel.provider()))
    }

    /// This instance's share of every provider's rate limit: the fraction of
    /// the dispatch partitions it owns (the shares of a consumer group's
    /// members add up to 1, and each one's traffic follows its partitions).
    pub fn set_share(&self, share: f64) {
        for provider in &self.providers {
            if let Some(turns) = &provider.turns {
                turns.set_share(share);
            }
        }
    }

    /// Marks which providers are tenants' own accounts (by name); the
    /// others make up the shared rotation. Takes effect from the next turn.
    pub fn dedicate(&self, accounts: &HashSet<String>) {
        for provider in &self.providers {
            provider.dedicated.store(accounts.contains(provider.channel.provider()), Ordering::Relaxed);
        }
    }

    /// Does some provider serve tenants without an account of their own?
    pub fn serves_shared(&self) -> bool {
        self.providers.iter().any(|p| !p.dedicated.load(Ordering::Relaxed))
    }

    fn on_route(&self, route: Route, index: usize) -> bool {
        match route {
            Route::Shared => !self.providers[index].dedicated.load(Ordering::Relaxed),
            Route::Account(account) => account == index,
        }
    }

    /// Waits for a provider on `route` that takes a send now (not in `avoid`
    /// unless nothing else is), then for its token bucket and a free slot.
    pub async fn acquire(&self, route: Route, avoid: &[usize]) -> Lease {
        self.take_turn(route, avoid, false).await
    }

    /// A turn for a tenant that was idle: the provider's reserved token when
    /// it has one (see [`Turns`]).
    pub async fn acquire_for_newcomer(&self, route: Route) -> Lease {
        self.take_turn(route, &[], true).await
    }

    async fn take_turn(&self, route: Route, avoid: &[usize], newcomer: bool) -> Lease {
        loop {
            let (index, probe) = match self.pick(route, avoid, Instant::now()) {
                Ok(picked) => picked,
                Err(until) => {
                    tokio::time::sleep_until(until.into()).await;
                    continue;
                }
            };
            let provider = &self.providers[index];
            let slot = provider.in_flight.clone().acquire_owned().await.expect("never closed");
            match &provider.turns {
                Some(turns) if newcomer => turns.next_for_newcomer().await,
                Some(turns) => turns.next().await,
                None => {}
            }
            return Lease { index, route, probe, _slot: slot };
        }
    }

    /// Is a provider on `route` outside `avoid` taking sends now (a failover target)?
    pub fn has_other(&self, route: Route, avoid: &[usize]) -> bool {
        let now = Instant::now();
        (0..self.providers.len()).any(|i| !avoid.contains(&i) && self.on_route(route, i) && self.admission(i, now).is_some())
    }

    fn admission(&self, index: usize, now: Instant) -> Option<Admission> {
        match self.providers[index].breaker.lock().unwrap_or_else(|e| e.into_inner()).peek(now) {
            Admission::NotUntil(_) => None,
            admission => Some(admission),
        }
    }

    /// The next provider on `route` by weight among those admitting sends;
    /// or when to look again (the earliest reopening; soon when the route
    /// has no provider now, as accounts may change hands).
    fn pick(&self, route: Route, avoid: &[usize], now: Instant) -> Result<(usize, bool), Instant> {
        let mut earliest = now + Duration::from_secs(1);
        let mut open = Vec::with_capacity(self.providers.len());
        for (i, provider) in self.providers.iter().enumerate() {
            if !self.on_route(route, i) {
                continue;
            }
            match provider.breaker.lock().unwrap_or_else(|e| e.into_inner()).peek(now) {
                Admission::NotUntil(until) => earliest = earliest.min(until),
                _ => open.push(i),
            }
        }
        let preferred: Vec<usize> = open.iter().copied().filter(|i| !avoid.contains(i)).collect();
        let candidates = if preferred.is_empty() { open } else { preferred };
        if candidates.is_empty() {
            return Err(earliest);
        }
        let index = self.next_by_weight(&candidates);
        // Admit for real: a probe slot may have been taken meanwhile.
        match self.providers[index].breaker.lock().unwrap_or_else(|e| e.into_inner()).admit(now) {
            Admission::Yes => Ok((index, false)),
            Admission::Probe => Ok((index, true)),
            Admission::NotUntil(until) => Err(until.min(earliest)),
        }
    }

    fn next_by_weight(&self, candidates: &[usize]) -> usize {
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let total: i64 = candidates.iter().map(|&i| self.providers[i].weight).sum();
        let mut best = candidates[0];
        for &i in candidates {
            scores[i] += self.providers[i].weight;
            if scores[i] > scores[best] {
                best = i;
            }
        }
        scores[best] -= total;
        best
    }

    /// How the provider's send went, for its breaker. `provider_fault`:
    /// the failure says something about the provider, not the message.
    pub(crate) fn record(&self, lease: &Lease, outcome: Option<bool>) {
        let provider = &self.providers[lease.index];
        let mut breaker = provider.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Some(true) => breaker.on_success(),
            Some(false) => {
                if breaker.on_failure(Instant::now()) {
                    tracing::warn!(provider = provider.channel.provider(), channel = %self.channel, "circuit opened");
                }
            }
            // A message-level failure: the provider answered, so it is up.
            None if lease.probe => breaker.on_success(),
            None => {}
        }
        metrics::gauge!("notiflow_provider_circuit", "channel" => self.channel.clone(), "provider" => provider.channel.provider().to_string())
            .set(breaker.gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Accepted, Delivery, SendFuture};

    struct Named(&'static str);

    impl Channel for Named {
        fn channel(&self) -> &str {
            "sms"
        }
        fn provider(&self) -> &str {
            self.0
        }
        fn send<'a>(&'a self, _: &'a Delivery, _: u32) -> SendFuture<'a> {
            Box::pin(async { Ok(Accepted::default()) })
        }
    }

    fn group(weights: &[(&'static str, u32)], failures_to_open: u32) -> ProviderGroup {
        let breaker = BreakerConfig { failures_to_open, open_for: Duration::from_secs(30), max_open_for: Duration::from_secs(30) };
        ProviderGroup::new(
            weights
                .iter()
                .map(|&(name, weight)| (Arc::new(Named(name)) as Arc<dyn Channel>, ProviderLimits { weight, breaker: breaker.clone(), ..Default::default() }))
                .collect(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn traffic_follows_the_weights_exactly_and_skips_open_circuits() {
        let g = group(&[("a", 3), ("b", 1)], 1);
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[g.acquire(Route::Shared, &[]).await.index] += 1;
        }
        assert_eq!(counts, [300, 100]);
        let lease = g.acquire(Route::Shared, &[]).await;
        let opened = lease.index;
        g.record(&lease, Some(false));
        for _ in 0..10 {
            assert_ne!(g.acquire(Route::Shared, &[]).await.index, opened, "an open circuit gets no traffic");
        }
        assert!(!g.has_other(Route::Shared, &[1 - opened]));
    }

    #[tokio::test]
    async fn avoid_prefers_the_others_but_falls_back_when_alone() {
        let g = group(&[("a", 1), ("b", 1)], 5);
        for _ in 0..4 {
            assert_eq!(g.acquire(Route::Shared, &[0]).await.index, 1);
        }
        let single = group(&[("only", 1)], 5);
        assert_eq!(single.acquire(Route::Shared, &[0]).await.index, 0);
    }

    #[tokio::test]
    async fn the_token_bucket_spaces_sends() {
        let g = ProviderGroup::new(vec![(
            Arc::new(Named("slow")) as Arc<dyn Channel>,
            ProviderLimits { rate_per_s: Some(100.0), burst: 1, ..Default::default() },
        )])
        .unwrap();
        let started = Instant::now();
        for _ in 0..11 {
            drop(g.acquire(Route::Shared, &[]).await);
        }
        // 10 intervals of 10 ms after the first token.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(95), "{took:?}");
    }

    #[tokio::test]
    async fn a_share_scales_the_rate_and_a_new_share_applies_at_once() {
        let g = Arc::new(
            ProviderGroup::new(vec![(
                Arc::new(Named("shared")) as Arc<dyn Channel>,
                ProviderLimits { rate_per_s: Some(100.0), burst: 1, ..Default::default() },
            )])
            .unwrap(),
        );
        // A quarter of 100/s: 10 intervals of 40 ms.
        g.set_share(0.25);
        let started = Instant::now();
        for _ in 0..11 {
            drop(g.acquire(Route::Shared, &[]).await);
        }
        assert!(started.elapsed() >= Duration::from_millis(380), "{:?}", started.elapsed());
        // A rebalance revokes everything (share ~0: the next token 10 s away), then gives the share
        // back: the waiting turn comes from the new bucket instead of the old one's distant token.
        g.set_share(0.0);
        let waiting = tokio::spawn({
            let g = g.clone();
            // The taker holds up to three turns taken before: the fourth and fifth wait on the new bucket.
            async move {
                for _ in 0..5 {
                    drop(g.acquire(Route::Shared, &[]).await);
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a share of ~0 stops the turns");
        let back = Instant::now();
        g.set_share(1.0);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the turn waited for the old bucket's token").unwrap();
        assert!(back.elapsed() < Duration::from_secs(1), "{:?}", back.elapsed());
    }
}
