use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use notiflow_connector::Hold;
use serde::Serialize;

use crate::group::{Lease, ProviderGroup, Route};
use crate::{Accepted, Channel, Delivery, FailureReason, SendError};

/// How often and how far apart a delivery is tried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time, with full jitter.
    pub min_delay: Duration,
    /// Longest delay between attempts, also the cap on a provider's Retry-After.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, min_delay: Duration::from_millis(200), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// One attempt, as written to `notify.sends`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendResult {
    pub message_id: String,
    pub delivery_id: Option<String>,
    pub tenant: String,
    pub request_id: String,
    pub priority: Option<String>,
    pub category: Option<String>,
    /// The request's acceptance time (from the dispatch record), for enqueue -> accepted latency.
    pub requested_at: Option<String>,
    pub channel: String,
    pub provider: String,
    pub attempt: u32,
    /// `accepted`, `retrying` (this attempt failed, another follows) or `failed`.
    pub status: &'static str,
    pub provider_message_id: Option<String>,
    pub failure_reason: Option<&'static str>,
    /// The provider's own code (HTTP status, vendor error code).
    pub provider_code: Option<String>,
    pub latency_ms: f64,
    /// RFC 3339 UTC, milliseconds.
    pub at: String,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    Accepted(Accepted),
    /// Failed for good: dead-letter it with this reason.
    Failed(FailureReason),
    /// Its partition moved to another instance before it was sent (dropped
    /// from its queue) or between attempts: not ended here (the new owner
    /// reads it again and sends it).
    Released,
}

/// Does this failure say something about the provider (try another one)
/// rather than the message (fail it)?
fn provider_fault(error: &SendError) -> bool {
    matches!(error, SendError::Retryable { .. } | SendError::Permanent { reason: FailureReason::Auth, .. })
}

/// Tries `delivery` on the providers of `group` until one accepts it, it is
/// refused for good, it expires, or the attempts run out; `report` gets every
/// attempt. A provider-level failure moves the next attempt to another
/// provider at once (failover); only when every provider has failed this
/// round does it back off. `first`: a lease already taken (the scheduler
/// takes it before picking the message, so priority decides who gets it).
pub async fn deliver(
    group: &ProviderGroup,
    delivery: &Delivery,
    policy: &RetryPolicy,
    mut first: Option<Lease>,
    hold: &Hold,
    mut report: impl FnMut(SendResult),
) -> Final {
    let mut delays = policy.delays();
    // Retries stay on the route of the first turn (a tenant's own account stays its own).
    let route = first.as_ref().map_or(Route::Shared, |lease| lease.route);
    let mut failed_this_round: Vec<usize> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if attempt > 1 && !hold.held() {
            return Final::Released;
        }
        if delivery.expires_at_ms().is_some_and(|at| at <= chrono::Utc::now().timestamp_millis()) {
            let provider = first.as_ref().map_or(0, Lease::provider);
            let channel = &group.provider(provider).channel;
            report(SendResult { failure_reason: Some(FailureReason::Expired.as_str()), ..result(delivery, &**channel, attempt, "failed", Duration::ZERO) });
            return Final::Failed(FailureReason::Expired);
        }
        let lease = match first.take() {
            Some(lease) => lease,
            None => group.acquire(route, &failed_this_round).await,
        };
        let channel = group.provider(lease.index).channel.clone();
        let started = Instant::now();
        let outcome = channel.send(delivery, attempt).await;
        let latency = started.elapsed();
        let error = match outcome {
            Ok(accepted) => {
                group.record(&lease, Some(true));
                let provider_message_id = accepted.provider_message_id.clone();
                report(SendResult { provider_message_id, ..result(delivery, &*channel, attempt, "accepted", latency) });
                return Final::Accepted(accepted);
            }
            Err(error) => error,
        };
        let blame_provider = provider_fault(&error);
        group.record(&lease, if blame_provider { Some(false) } else { None });
        if blame_provider && !failed_this_round.contains(&lease.index) {
            failed_this_round.push(lease.index);
        }
        drop(lease);
        let failover = blame_provider && group.has_other(route, &failed_this_round);
        let last = attempt >= policy.max_attempts;
        let again = !last && (failover || matches!(error, SendError::Retryable { .. }));
        report(SendResult {
            failure_reason: Some(error.reason().as_str()),
            provider_code: Some(error.provider_code().to_string()),
            ..result(delivery, &*channel, attempt, if again { "retrying" } else { "failed" }, latency)
        });
        if !again {
            return Final::Failed(match error {
                SendError::Retryable { .. } => FailureReason::AttemptsExhausted,
                SendError::Permanent { reason, .. } => reason,
            });
        }
        if failover {
            continue;
        }
        // Every provider failed this round: wait, then start a new round.
        failed_this_round.clear();
        let backoff = delays.next().unwrap_or(policy.max_delay);
        let wait = match error {
            SendError::Retryable { retry_after: Some(asked), .. } => asked.min(policy.max_delay).max(backoff),
            _ => backoff,
        };
        tokio::time::sleep(wait).await;
    }
}

fn result(delivery: &Delivery, channel: &dyn Channel, attempt: u32, status: &'static str, latency: Duration) -> SendResult {
    SendResult {
        message_id: delivery.message_id.clone(),
        delivery_id: delivery.delivery_id.clone(),
        tenant: delivery.tenant.clone(),
        request_id: delivery.request_id.clone(),
        priority: delivery.priority.clone(),
        category: delivery.category.clone(),
        requested_at: delivery.requested_at.clone(),
        channel: channel.channel().to_string(),
        provider: channel.provider().to_string(),
        attempt,
        status,
        provider_message_id: None,
        failure_reason: None,
        provider_code: None,
        latency_ms: latency.as_secs_f64() * 1e3,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Answers each attempt from a script.
    struct Scripted(&'static str, Mutex<Vec<Result<Accepted, SendError>>>);

    impl Channel for Scripted {
        fn channel(&self) -> &str {
            "webhook"
        }
        fn provider(&self) -> &str {
            self.0
        }
        fn send<'a>(&'a self, _: &'a Delivery, _: u32) -> crate::SendFuture<'a> {
            let answer = self.1.lock().unwrap().remove(0);
            Box::pin(async move { answer })
        }
    }

    fn group(providers: Vec<(&'static str, Vec<Result<Accepted, SendError>>)>) -> ProviderGroup {
        let providers = providers
            .into_iter()
            .map(|(name, script)| (Arc::new(Scripted(name, Mutex::new(script))) as Arc<dyn Channel>, crate::ProviderLimits::default()))
            .collect();
        ProviderGroup::new(providers).unwrap()
    }

    fn delivery(expires_at: Option<&str>) -> Delivery {
        serde_json::from_value(serde_json::json!({"type": "send", "delivery_id": "d_1", "message_id": "m_1", "request_id": "r",
            "tenant": "acme", "channel": "webhook", "address": "https://example.com/hook", "expires_at": expires_at}))
        .unwrap()
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy { max_attempts, min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) }
    }

    async fn run(script: Vec<Result<Accepted, SendError>>, max_attempts: u32, expires_at: Option<&str>) -> (Final, Vec<SendResult>) {
        run_on(group(vec![("scripted", script)]), max_attempts, expires_at).await
    }

    async fn run_on(group: ProviderGroup, max_attempts: u32, expires_at: Option<&str>) -> (Final, Vec<SendResult>) {
        let mut results = Vec::new();
        let end = deliver(&group, &delivery(expires_at), &policy(max_attempts), None, &Hold::always(), |r| results.push(r)).await;
        (end, results)
    }

    fn busy() -> Result<Accepted, SendError> {
        Err(SendError::Retryable { reason: FailureReason::RateLimited, provider_code: "429".into(), detail: "slow down".into(), retry_after: Some(Duration::from_millis(2)) })
    }

    #[tokio::test]
    async fn retryable_failures_are_retried_until_accepted_each_attempt_reported() {
        let accepted = Ok(Accepted { provider_message_id: Some("p-9".into()) });
        let (end, results) = run(vec![busy(), Err(SendError::retryable(FailureReason::Timeout, "timeout", "no answer")), accepted], 5, None).await;
        assert_eq!(end, Final::Accepted(Accepted { provider_message_id: Some("p-9".into()) }));
        let seen: Vec<_> = results.iter().map(|r| (r.attempt, r.status, r.failure_reason, r.provider_code.as_deref())).collect();
        assert_eq!(seen, [(1, "retrying", Some("rate_limited"), Some("429")), (2, "retrying", Some("timeout"), Some("timeout")), (3, "accepted", None, None)]);
        assert_eq!(results[2].provider_message_id.as_deref(), Some("p-9"));
    }

    #[tokio::test]
    async fn a_permanent_failure_ends_at_once_and_attempts_run_out() {
        let (end, results) = run(vec![Err(SendError::permanent(FailureReason::InvalidRecipient, "410", "gone")), busy()], 5, None).await;
        assert_eq!((end, results.len(), results[0].status), (Final::Failed(FailureReason::InvalidRecipient), 1, "failed"));
        let (end, results) = run(vec![busy(), busy()], 2, None).await;
        assert_eq!(end, Final::Failed(FailureReason::AttemptsExhausted));
        assert_eq!(results.iter().map(|r| r.status).collect::<Vec<_>>(), ["retrying", "failed"]);
    }

    #[tokio::test]
    async fn an_expired_delivery_is_not_sent() {
        let (end, results) = run(vec![], 5, Some("2020-01-01T00:00:00")).await;
        assert_eq!(end, Final::Failed(FailureReason::Expired));
        assert_eq!((results.len(), results[0].failure_reason), (1, Some("expired")));
    }

    fn down() -> Result<Accepted, SendError> {
        Err(SendError::retryable(FailureReason::ProviderError, "503", "unavailable"))
    }

    #[tokio::test]
    async fn a_provider_fault_fails_over_at_once_and_a_message_fault_does_not() {
        let accepted = Ok(Accepted { provider_message_id: Some("b-1".into()) });
        // Weights are equal, so rotation starts at the first provider.
        let (end, results) = run_on(group(vec![("a", vec![down()]), ("b", vec![accepted])]), 5, None).await;
        assert!(matches!(end, Final::Accepted(_)));
        let seen: Vec<_> = results.iter().map(|r| (r.provider.as_str(), r.status)).collect();
        assert_eq!(seen, [("a", "retrying"), ("b", "accepted")]);
        // Refused credentials: another provider is tried, then it fails for good (no backoff loop).
        let auth = || Err(SendError::permanent(FailureReason::Auth, "401", "bad key"));
        let (end, results) = run_on(group(vec![("a", vec![auth()]), ("b", vec![auth()])]), 5, None).await;
        assert_eq!((end, results.len()), (Final::Failed(FailureReason::Auth), 2));
        // An invalid number is the message's fault: no failover.
        let invalid = Err(SendError::permanent(FailureReason::InvalidRecipient, "21211", "not a number"));
        let (end, results) = run_on(group(vec![("a", vec![invalid]), ("b", vec![])]), 5, None).await;
        assert_eq!((end, results.len()), (Final::Failed(FailureReason::InvalidRecipient), 1));
    }

    #[tokio::test]
    async fn a_tenants_own_account_retries_on_itself_and_never_fails_over_to_the_shared_ones() {
        let accepted = Ok(Accepted { provider_message_id: Some("own-2".into()) });
        let group = group(vec![("shared", vec![]), ("own", vec![down(), accepted])]);
        group.dedicate(&["own".to_string()].into());
        let lease = group.acquire(Route::Account(1), &[]).await;
        let mut results = Vec::new();
        let end = deliver(&group, &delivery(None), &policy(5), Some(lease), &Hold::always(), |r| results.push(r)).await;
        assert!(matches!(end, Final::Accepted(_)));
        let seen: Vec<_> = results.iter().map(|r| (r.provider.as_str(), r.status)).collect();
        assert_eq!(seen, [("own", "retrying"), ("own", "accepted")], "the shared provider (no script) was never asked");
    }
}
