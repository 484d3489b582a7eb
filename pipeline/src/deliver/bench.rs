//! Priority hand-off benchmark: a high-priority delivery must not wait behind
//! a backlog of low ones. Measured in-process on the delivery scheduler with a
//! rate-limited provider that answers at once (what is measured is the
//! scheduler, not a network): high hand-off latency with 1,000,000 low
//! deliveries queued, against the same highs with nothing queued (baseline,
//! same run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_delivery::{Accepted, Channel, Delivery, Job, Lane, ProviderGroup, ProviderLimits, RetryPolicy, Scheduler, SendFuture};

use crate::bench::{CaseResult, percentile};

/// Accepts at once.
struct Instant_;

impl Channel for Instant_ {
    fn channel(&self) -> &str {
        "sms"
    }
    fn provider(&self) -> &str {
        "in-memory"
    }
    fn send<'a>(&'a self, _: &'a Delivery, _: u32) -> SendFuture<'a> {
        Box::pin(async { Ok(Accepted::default()) })
    }
}

fn delivery(id: usize) -> Delivery {
    Delivery {
        kind: "send".into(),
        delivery_id: Some(format!("d_{id}")),
        message_id: format!("m_{id}"),
        request_id: id.to_string(),
        tenant: "acme".into(),
        template: None,
        template_version: None,
        recipient: None,
        channel: Some("sms".into()),
        address: Some("+8613800138000".into()),
        priority: None,
        category: None,
        locale: None,
        subject: None,
        body: Some("code 123456".into()),
        html: None,
        expires_at: None,
        requested_at: None,
        reason: None,
    }
}

/// Hand-off latencies (ms, sorted) of `highs` high deliveries submitted one
/// every `spacing`, behind `lows` queued low ones, provider limited to `rate`/s.
async fn measure(lows: usize, highs: usize, rate: f64, spacing: Duration) -> anyhow::Result<(Vec<f64>, f64)> {
    let limits = ProviderLimits { rate_per_s: Some(rate), burst: 1, max_in_flight: 64, ..Default::default() };
    let group = Arc::new(ProviderGroup::new(vec![(Arc::new(Instant_) as Arc<dyn Channel>, limits)]).map_err(anyhow::Error::msg)?);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let scheduler = Scheduler::start(vec![group], RetryPolicy::default(), 16, lows.max(highs) + 1, tx);
    let collector = tokio::spawn(async move {
        let mut handoffs = Vec::with_capacity(highs);
        let mut lows_sent = 0usize;
        while handoffs.len() < highs {
            let Some(done) = rx.recv().await else { break };
            match done.job.lane {
                Lane::High => handoffs.push(done.handoff.as_secs_f64() * 1e3),
                _ => lows_sent += 1,
            }
        }
        (handoffs, lows_sent)
    });
    for i in 0..lows {
        scheduler.submit(Job { delivery: delivery(i), lane: Lane::Low, token: (), enqueued: Instant::now() }).await.ok();
    }
    let started = Instant::now();
    for i in 0..highs {
        scheduler.submit(Job { delivery: delivery(lows + i), lane: Lane::High, token: (), enqueued: Instant::now() }).await.ok();
        tokio::time::sleep(spacing).await;
    }
    let (mut handoffs, lows_sent) = collector.await?;
    let low_rate = lows_sent as f64 / started.elapsed().as_secs_f64();
    // Dropping the scheduler abandons the low backlog.
    drop(scheduler);
    handoffs.sort_by(f64::total_cmp);
    Ok((handoffs, low_rate))
}

pub async fn priority_handoff(lows: usize) -> anyhow::Result<Vec<CaseResult>> {
    let (highs, rate, spacing) = (1000, 5000.0, Duration::from_millis(2));
    let mut results = Vec::new();
    let started = Instant::now();
    let (alone, _) = measure(0, highs, rate, spacing).await?;
    results.push(CaseResult {
        name: "priority hand-off: 1,000 high, nothing queued (baseline)".into(),
        records: highs,
        seconds: started.elapsed().as_secs_f64(),
        p50_ms: percentile(&alone, 50.0),
        p99_ms: percentile(&alone, 99.0),
        peak_rss_mb: None,
        note: format!("provider limited to {rate}/s, one high every {spacing:?}; max {:.2} ms", alone.last().copied().unwrap_or_default()),
    });
    let started = Instant::now();
    let (behind, low_rate) = measure(lows, highs, rate, spacing).await?;
    let (p99, base) = (percentile(&behind, 99.0).unwrap_or_default(), percentile(&alone, 99.0).unwrap_or_default());
    results.push(CaseResult {
        name: format!("priority hand-off: 1,000 high behind {lows} queued low"),
        records: highs,
        seconds: started.elapsed().as_secs_f64(),
        p50_ms: percentile(&behind, 50.0),
        p99_ms: Some(p99),
        peak_rss_mb: crate::bench::peak_rss(),
        note: format!(
            "high p99 {p99:.2} ms (target <= 20 ms; baseline p99 {base:.2} ms); max {:.2} ms; lows meanwhile at {low_rate:.0}/s of the {rate}/s limit",
            behind.last().copied().unwrap_or_default()
        ),
    });
    Ok(results)
}
