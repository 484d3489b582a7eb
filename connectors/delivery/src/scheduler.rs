//! Workers per channel. Each channel has its own lanes and workers, so a
//! stalled provider of one channel never holds up another channel. A worker
//! takes its provider's turn (rate limit, concurrency slot) *before* it picks
//! the message, so the turn goes to the highest-priority message queued when
//! it comes up, not to one picked while waiting.
//!
//! A tenant with its own provider account on a channel has its own queue
//! and workers for that account: its messages go through that account only,
//! and the channel's shared providers serve everyone else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use notiflow_connector::Hold;

use crate::{Delivery, Final, Lane, LaneQueue, ProviderGroup, RetryPolicy, Route, SendResult, deliver};

/// A delivery to make; `token` comes back in [`Done`] (source offsets).
pub struct Job<T> {
    pub delivery: Delivery,
    pub lane: Lane,
    pub token: T,
    pub enqueued: Instant,
    /// The provider (by name) that must send it: the tenant's own account.
    /// None: the channel's shared providers.
    pub account: Option<String>,
    /// The reader's hold on the partition it came from: once released (a
    /// rebalance moved the partition), the job is dropped unsent.
    pub hold: Hold,
}

/// A delivery that ended, with every attempt.
pub struct Done<T> {
    pub job: Job<T>,
    pub outcome: Final,
    pub results: Vec<SendResult>,
    /// From queued to handed to a provider.
    pub handoff: Duration,
}

/// Why [`Scheduler::try_submit`] handed a job back.
pub enum Refused<T> {
    /// The channel's lane is full (or the scheduler stopped).
    Full(Job<T>),
    NoProvider(Job<T>),
}

pub struct Scheduler<T> {
    channels: HashMap<String, ChannelQueues<T>>,
    workers: JoinSet<()>,
}

/// One channel's providers and queues: the shared one, and one per provider
/// for the tenants whose own account it is.
struct ChannelQueues<T> {
    group: Arc<ProviderGroup>,
    shared: Arc<LaneQueue<Job<T>>>,
    accounts: HashMap<String, Arc<LaneQueue<Job<T>>>>,
}

impl<T> ChannelQueues<T> {
    fn all(&self) -> impl Iterator<Item = &Arc<LaneQueue<Job<T>>>> {
        std::iter::once(&self.shared).chain(self.accounts.values())
    }
}

impl<T: Send + 'static> Scheduler<T> {
    /// `workers`: sends in progress at once per channel (providers' own
    /// `max_in_flight` limits apply within that).
    pub fn start(groups: Vec<Arc<ProviderGroup>>, policy: RetryPolicy, workers: usize, lane_capacity: usize, done: mpsc::Sender<Done<T>>) -> Self {
        let mut channels = HashMap::new();
        let mut set = JoinSet::new();
        for group in groups {
            let mut spawn_route = |route: Route| {
                let queue = Arc::new(LaneQueue::new(lane_capacity));
                for _ in 0..workers.max(1) {
                    set.spawn(work(group.clone(), route, queue.clone(), policy.clone(), done.clone(), Role::Regular));
                }
                set.spawn(work(group.clone(), route, queue.clone(), policy.clone(), done.clone(), Role::Newcomers));
                queue
            };
            let shared = spawn_route(Route::Shared);
            let accounts = group.accounts().map(|(index, name)| (name.to_string(), spawn_route(Route::Account(index)))).collect();
            channels.insert(group.channel().to_string(), ChannelQueues { group, shared, accounts });
        }
        Scheduler { channels, workers: set }
    }

    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    /// Marks the providers (by name) that are tenants' own accounts, on every
    /// channel: the shared rotation leaves them out from the next turn.
    pub fn dedicate(&self, accounts: &std::collections::HashSet<String>) {
        self.channels.values().for_each(|c| c.group.dedicate(accounts));
    }

    /// The queue of the job's route; None: nothing can send it (no provider
    /// for the channel, no such account, or every provider is some tenant's own).
    fn queue_for(&self, job: &Job<T>) -> Option<&Arc<LaneQueue<Job<T>>>> {
        let channel = self.channels.get(job.delivery.channel.as_deref().unwrap_or_default())?;
        match &job.account {
            None => channel.group.serves_shared().then_some(&channel.shared),
            Some(account) => channel.accounts.get(account),
        }
    }

    /// Queues a job if its route's lane has room, else hands it back at once
    /// (the caller parks it, so one full channel never blocks a reader that
    /// also feeds other channels).
    pub fn try_submit(&self, job: Job<T>) -> Result<(), Refused<T>> {
        match self.queue_for(&job) {
            Some(queue) => queue.try_push(job.lane, &job.delivery.tenant.clone(), job).map_err(Refused::Full),
            None => Err(Refused::NoProvider(job)),
        }
    }

    /// Queues a job on its route (waiting while that lane is full). Err: nothing
    /// can send it (see [`try_submit`](Self::try_submit)), or the scheduler stopped.
    pub async fn submit(&self, job: Job<T>) -> Result<(), Job<T>> {
        match self.queue_for(&job) {
            Some(queue) => queue.push(job.lane, &job.delivery.tenant.clone(), job).await,
            None => Err(job),
        }
    }

    /// Finishes what is queued, then stops the workers.
    pub async fn drain(mut self) {
        self.channels.values().flat_map(ChannelQueues::all).for_each(|q| q.close());
        while self.workers.join_next().await.is_some() {}
    }
}

/// What a worker serves.
#[derive(Clone, Copy)]
enum Role {
    /// The next turn, whoever's it is.
    Regular,
    /// Only tenants that were idle, with the provider's reserved token: a
    /// quiet tenant's message skips the line of workers waiting for the
    /// tokens a blasting tenant keeps taking.
    Newcomers,
}

async fn work<T>(group: Arc<ProviderGroup>, route: Route, queue: Arc<LaneQueue<Job<T>>>, policy: RetryPolicy, done: mpsc::Sender<Done<T>>, role: Role) {
    loop {
        let lease = match role {
            Role::Regular if queue.ready().await => group.acquire(route, &[]).await,
            Role::Newcomers if queue.newcomer().await => group.acquire_for_newcomer(route).await,
            _ => return,
        };
        let mut dropped = Vec::new();
        let popped = next_held(group.channel(), &mut dropped, || match role {
            Role::Regular => queue.try_pop(),
            Role::Newcomers => queue.try_pop_newcomer(),
        });
        for job in dropped {
            if done.send(Done { job, outcome: Final::Released, results: Vec::new(), handoff: Duration::ZERO }).await.is_err() {
                return;
            }
        }
        // Another worker may have taken it meanwhile; the turn is given up.
        let Some((lane, job)) = popped else { continue };
        let handoff = job.enqueued.elapsed();
        metrics::histogram!("notiflow_handoff_seconds", "channel" => group.channel().to_string(), "lane" => lane.as_str()).record(handoff.as_secs_f64());
        let mut results = Vec::new();
        let outcome = deliver(&group, &job.delivery, &policy, Some(lease), &job.hold, |r| results.push(r)).await;
        if done.send(Done { job, outcome, results, handoff }).await.is_err() {
            return;
        }
    }
}

/// The next job whose partition this process still holds; jobs of released
/// partitions go to `dropped` on the way (unsent: their new owner sends
/// them), without using the provider's turn.
fn next_held<T>(channel: &str, dropped: &mut Vec<Job<T>>, mut pop: impl FnMut() -> Option<(Lane, Job<T>)>) -> Option<(Lane, Job<T>)> {
    loop {
        let (lane, job) = pop()?;
        if job.hold.held() {
            return Some((lane, job));
        }
        metrics::counter!("notiflow_deliver_dropped_revoked_total", "channel" => channel.to_string()).increment(1);
        dropped.push(job);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{Accepted, Channel, ProviderLimits, SendFuture};

    /// Messages sent, in order: (provider, message id).
    type Sent = Arc<Mutex<Vec<(String, String)>>>;

    /// An SMS provider that accepts everything, noting it in `Sent`.
    struct Recorder(Sent, &'static str);

    impl Channel for Recorder {
        fn channel(&self) -> &str {
            "sms"
        }
        fn provider(&self) -> &str {
            self.1
        }
        fn send<'a>(&'a self, delivery: &'a Delivery, _: u32) -> SendFuture<'a> {
            self.0.lock().unwrap().push((self.1.to_string(), delivery.message_id.clone()));
            Box::pin(async { Ok(Accepted::default()) })
        }
    }

    /// One SMS provider limited to `rate`/s (burst 1), four workers.
    fn rate_limited(rate: f64) -> (Sent, Scheduler<()>, mpsc::Receiver<Done<()>>) {
        let sent = Sent::default();
        let limits = ProviderLimits { rate_per_s: Some(rate), burst: 1, ..Default::default() };
        let group = Arc::new(ProviderGroup::new(vec![(Arc::new(Recorder(sent.clone(), "recorder")) as Arc<dyn Channel>, limits)]).unwrap());
        let (tx, rx) = mpsc::channel(1000);
        (sent, Scheduler::start(vec![group], RetryPolicy::default(), 4, 1000, tx), rx)
    }

    fn message_ids(sent: &Sent) -> Vec<String> {
        sent.lock().unwrap().iter().map(|(_, id)| id.clone()).collect()
    }

    fn job(channel: &str, id: &str, lane: Lane) -> Job<()> {
        tenant_job(channel, id, lane, "t")
    }

    fn tenant_job(channel: &str, id: &str, lane: Lane, tenant: &str) -> Job<()> {
        let delivery =
            serde_json::from_value(serde_json::json!({"type": "send", "message_id": id, "request_id": id, "tenant": tenant, "channel": channel})).unwrap();
        Job { delivery, lane, token: (), enqueued: Instant::now(), account: None, hold: Hold::always() }
    }

    #[tokio::test]
    async fn a_tenants_own_account_sends_only_its_messages_and_only_it_sends_them() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let providers = ["shared-1", "shared-2", "acme-own"].map(|name| (Arc::new(Recorder(sent.clone(), name)) as Arc<dyn Channel>, ProviderLimits::default()));
        let group = Arc::new(ProviderGroup::new(providers.into()).unwrap());
        let (tx, mut rx) = mpsc::channel(1000);
        let scheduler = Scheduler::start(vec![group], RetryPolicy::default(), 4, 1000, tx);
        scheduler.dedicate(&["acme-own".to_string()].into());
        for i in 0..30 {
            let (tenant, account) = if i % 3 == 0 { ("acme", Some("acme-own".to_string())) } else { ("globex", None) };
            let job = Job { account, ..tenant_job("sms", &format!("{tenant}{i}"), Lane::Normal, tenant) };
            scheduler.submit(job).await.ok().unwrap();
        }
        let unknown = Job { account: Some("nobody".into()), ..tenant_job("sms", "x", Lane::Normal, "acme") };
        assert!(scheduler.try_submit(unknown).is_err(), "an account no provider has");
        scheduler.drain().await;
        let mut ended = 0;
        while rx.try_recv().is_ok() {
            ended += 1;
        }
        assert_eq!(ended, 30);
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 30);
        for (provider, message) in &sent {
            assert_eq!(provider == "acme-own", message.starts_with("acme"), "{message} went through {provider}");
        }
        let shared: std::collections::HashSet<&str> = sent.iter().filter(|(p, _)| p != "acme-own").map(|(p, _)| p.as_str()).collect();
        assert_eq!(shared.len(), 2, "both shared providers serve the others: {shared:?}");
    }

    #[tokio::test]
    async fn when_every_provider_is_a_tenants_own_the_others_are_refused() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let group = Arc::new(ProviderGroup::new(vec![(Arc::new(Recorder(sent, "acme-own")) as Arc<dyn Channel>, ProviderLimits::default())]).unwrap());
        let (tx, _rx) = mpsc::channel(10);
        let scheduler = Scheduler::start(vec![group], RetryPolicy::default(), 1, 10, tx);
        assert!(scheduler.try_submit(tenant_job("sms", "g", Lane::Normal, "globex")).is_ok(), "shared while nobody owns it");
        scheduler.dedicate(&["acme-own".to_string()].into());
        assert!(matches!(scheduler.try_submit(tenant_job("sms", "g2", Lane::Normal, "globex")), Err(Refused::NoProvider(_))));
    }

    #[tokio::test]
    async fn a_quiet_tenant_takes_the_reserved_token_while_another_saturates_the_provider() {
        // One token every 250 ms: without the reserve, the quiet tenant's
        // message would wait for the next token (on average 125 ms).
        let (sent, scheduler, mut rx) = rate_limited(4.0);
        for i in 0..20 {
            scheduler.submit(tenant_job("sms", &format!("blast{i}"), Lane::Normal, "blaster")).await.ok().unwrap();
        }
        // The blaster's first message took the reserve, the next token refilled it.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let blasted_before = sent.lock().unwrap().len();
        scheduler.submit(tenant_job("sms", "quiet", Lane::Normal, "quiet")).await.ok().unwrap();
        let quiet = loop {
            let done = rx.recv().await.unwrap();
            if done.job.delivery.message_id == "quiet" {
                break done;
            }
        };
        assert!(quiet.handoff < Duration::from_millis(100), "waited {:?} for a turn", quiet.handoff);
        let order = message_ids(&sent);
        assert_eq!(order.iter().position(|id| id == "quiet"), Some(blasted_before));
        // The rate holds: the reserve is a token taken earlier, not an extra one
        // (1 at the start + one per 250 ms over ~1.1 s, with the reserve's refill).
        assert!((3..=6).contains(&order.len()), "{order:?}");
    }

    #[tokio::test]
    async fn jobs_of_a_released_partition_are_dropped_unsent_without_using_turns() {
        // One token per 250 ms: were the 8 released jobs given turns, the held one would wait ~2 s.
        let (sent, scheduler, mut rx) = rate_limited(4.0);
        let moved = Hold::new();
        for i in 0..8 {
            scheduler.submit(Job { hold: moved.clone(), ..job("sms", &format!("moved{i}"), Lane::Normal) }).await.ok().unwrap();
        }
        moved.release();
        let started = Instant::now();
        scheduler.submit(Job { hold: Hold::new(), ..job("sms", "kept", Lane::Normal) }).await.ok().unwrap();
        let mut released = 0;
        let done = loop {
            let done = rx.recv().await.unwrap();
            match done.outcome {
                Final::Released => released += 1,
                _ => break done,
            }
        };
        assert_eq!((done.job.delivery.message_id.as_str(), released), ("kept", 8), "each dropped job is handed back as released");
        assert!(started.elapsed() < Duration::from_millis(600), "waited {:?}", started.elapsed());
        assert_eq!(message_ids(&sent), ["kept"]);
    }

    #[tokio::test]
    async fn a_high_message_overtakes_queued_low_ones_behind_a_rate_limit() {
        let (sent, scheduler, mut rx) = rate_limited(200.0);
        for i in 0..50 {
            scheduler.submit(job("sms", &format!("low{i}"), Lane::Low)).await.ok().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sent_before = sent.lock().unwrap().len();
        scheduler.submit(job("sms", "high", Lane::High)).await.ok().unwrap();
        assert!(scheduler.submit(job("fax", "x", Lane::High)).await.is_err(), "no provider for fax");
        scheduler.drain().await;
        let mut ended = 0;
        while rx.try_recv().is_ok() {
            ended += 1;
        }
        assert_eq!(ended, 51);
        let order = message_ids(&sent);
        let high_at = order.iter().position(|id| id == "high").unwrap();
        // It takes the next turn; workers already holding a turn may each
        // have popped one low meanwhile.
        assert!(high_at <= sent_before + 4, "high sent {high_at}th, {sent_before} sent before it was queued");
    }
}
