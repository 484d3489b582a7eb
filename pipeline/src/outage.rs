//! Long-running commands outlive broker outages. Short ones cost nothing: the
//! Kafka clients reconnect by themselves and the source waits (see
//! `notiflow_kafka::Connection`). When an outage outlasts what a client can
//! hold (a produce times out, a commit fails), the job ends with a transient
//! error and is started again here, from its last checkpoint, as after a
//! kill -9: outputs and state stay exactly once (docs/exactly-once.md).
//! Errors a restart cannot fix end the command with what to do about them.

use std::future::Future;
use std::time::{Duration, Instant};

use notiflow_connector::ConnectorError;
use notiflow_kafka::{KafkaAdmin, KafkaConfig};
use tokio::sync::watch;

/// Whether a restart may fix `err`: the broker (or another service) was
/// unavailable, nothing was wrong with the settings or the data.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<ConnectorError>().is_some_and(ConnectorError::is_retryable))
}

/// Longest pause between two looks at the brokers during an outage, or between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// An attempt that ran this long was working: the next failure starts the backoff over.
const STEADY: Duration = Duration::from_secs(60);

/// Runs `attempt` again, once the brokers answer, each time it ends with a
/// transient error; returns its first success or its first other error (with
/// a hint of what to do). `what` names the job in logs and metrics.
pub async fn restart_after_outages<T, F, Fut>(what: &str, kafka: &KafkaConfig, shutdown: &watch::Receiver<bool>, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut restarts = 0u64;
    // Grows while attempts fail at once (a service other than the brokers may be the one down).
    let mut pause = Duration::ZERO;
    loop {
        let started = Instant::now();
        let err = match attempt().await {
            Ok(done) => return Ok(done),
            Err(err) if !is_transient(&err) => return Err(with_remedy(err)),
            Err(err) => err,
        };
        if *shutdown.borrow() {
            return Err(err.context("stopped during a broker outage: state and offsets are as of the last checkpoint; the next start resumes there"));
        }
        restarts += 1;
        crate::metrics_http::mark_unready();
        metrics::counter!("notiflow_restarts_total", "job" => what.to_string()).increment(1);
        tracing::warn!(job = what, restarts, err = format!("{err:#}"), "a service is unavailable: restarting from the last checkpoint once the brokers answer");
        pause = if started.elapsed() > STEADY { Duration::ZERO } else { (pause * 2).clamp(Duration::from_millis(500), MAX_BACKOFF) };
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        let waited = wait_for_brokers(kafka, shutdown.clone()).await;
        if *shutdown.borrow() {
            return Err(err.context("stopped during a broker outage: state and offsets are as of the last checkpoint; the next start resumes there"));
        }
        tracing::info!(job = what, waited_seconds = (pause + waited).as_secs(), "restarting");
    }
}

/// Waits until a metadata request succeeds (or shutdown); returns how long it took.
async fn wait_for_brokers(kafka: &KafkaConfig, mut shutdown: watch::Receiver<bool>) -> Duration {
    let started = Instant::now();
    let mut pause = Duration::from_millis(500);
    loop {
        let unreachable = match KafkaAdmin::new(kafka) {
            Ok(admin) => admin.unreachable().await,
            Err(err) => Some(err),
        };
        if unreachable.is_none() || *shutdown.borrow() {
            return started.elapsed();
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return started.elapsed(),
        }
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

/// A permanent error, with what the operator can do about it.
fn with_remedy(err: anyhow::Error) -> anyhow::Error {
    let kafka_settings = err.chain().any(|cause| matches!(cause.downcast_ref::<ConnectorError>(), Some(ConnectorError::Permanent { service: "kafka", .. })));
    if kafka_settings {
        err.context("a restart will not fix this: check [kafka] (brokers, [kafka.security]), the topics and this client's ACLs, then start again")
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> anyhow::Error {
        anyhow::Error::from(ConnectorError::Transient { service: "kafka", message: "AllBrokersDown".into() }).context("writing outputs")
    }

    #[test]
    fn broker_trouble_is_transient_even_under_context_and_bad_settings_are_not() {
        assert!(is_transient(&transient()));
        let denied = anyhow::Error::from(ConnectorError::Permanent { service: "kafka", message: "TopicAuthorizationFailed".into() });
        assert!(!is_transient(&denied));
        assert!(!is_transient(&anyhow::anyhow!("sql/20_expand.sql:3: no such column")));
        assert!(format!("{:#}", with_remedy(denied)).starts_with("a restart will not fix this"));
    }

    #[tokio::test]
    async fn a_permanent_error_ends_the_loop_at_once_and_success_is_returned() {
        let (_stop, shutdown) = watch::channel(false);
        let kafka = KafkaConfig::new("127.0.0.1:1");
        let mut calls = 0;
        let failed = restart_after_outages("test", &kafka, &shutdown, || {
            calls += 1;
            async { Err::<(), _>(anyhow::anyhow!("bad sql")) }
        })
        .await;
        assert_eq!((failed.unwrap_err().to_string(), calls), ("bad sql".to_string(), 1));
        let done = restart_after_outages("test", &kafka, &shutdown, || async { Ok(7) }).await.unwrap();
        assert_eq!(done, 7);
    }

    #[tokio::test]
    async fn a_stop_during_an_outage_ends_the_wait() {
        let (stop, shutdown) = watch::channel(false);
        let kafka = KafkaConfig::new("127.0.0.1:1"); // nothing listens: an outage that never ends
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.send_replace(true);
        });
        let outcome = restart_after_outages("test", &kafka, &shutdown, || async { Err::<(), _>(transient()) }).await;
        stopper.await.unwrap();
        assert!(format!("{:#}", outcome.unwrap_err()).starts_with("stopped during a broker outage"));
    }
}
