//! Priority hand-off benchmark: a high-priority delivery must not wait behind
//! a backlog of low ones. Measured in-process on the delivery scheduler with a
//! rate-limited provider that answers at once (what is measured is the
//! scheduler, not a network): high hand-off latency with 1,000,000 low
//! deliveries queued, against the same highs with nothing queued (baseline,
//! same run). Tenant fairness the same way: one tenant's messages while
//! another blasts 1,000,000 in the same lane, against them alone.

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

fn delivery(id: String, tenant: &str) -> Delivery {
    Delivery {
        kind: "send".into(),
        delivery_id: Some(id.clone()),
        message_id: id.replacen("d_", "m_", 1),
        request_id: id,
        tenant: tenant.into(),
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
        sender: None,
        expires_at: None,
        requested_at: None,
        reason: None,
    }
}

/// Deliveries of one tenant in one lane.
#[derive(Clone, Copy)]
struct Load {
    jobs: usize,
    lane: Lane,
    tenant: &'static str,
}

/// Hand-off latencies (ms, sorted) of the `measured` deliveries, submitted one
/// every `spacing` while `backlog` keeps its room full (fed as fast as the
/// scheduler takes it, as the parked reader does), provider limited to
/// `rate`/s; and the rate the backlog was sent at meanwhile.
async fn measure(backlog: Load, measured: Load, room: usize, rate: f64, spacing: Duration) -> anyhow::Result<(Vec<f64>, f64)> {
    let limits = ProviderLimits { rate_per_s: Some(rate), burst: 1, max_in_flight: 64, ..Default::default() };
    let group = Arc::new(ProviderGroup::new(vec![(Arc::new(Instant_) as Arc<dyn Channel>, limits)]).map_err(anyhow::Error::msg)?);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let scheduler = Arc::new(Scheduler::start(vec![group], RetryPolicy::default(), 16, room, tx));
    let collector = tokio::spawn(async move {
        let mut handoffs = Vec::with_capacity(measured.jobs);
        let mut backlog_sent = 0usize;
        while handoffs.len() < measured.jobs {
            let Some(done) = rx.recv().await else { break };
            match done.job.delivery.delivery_id.as_deref() {
                Some(id) if id.starts_with("d_measured") => handoffs.push(done.handoff.as_secs_f64() * 1e3),
                _ => backlog_sent += 1,
            }
        }
        (handoffs, backlog_sent)
    });
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let feeder = tokio::spawn({
        let (scheduler, queued) = (scheduler.clone(), queued.clone());
        async move {
            for i in 0..backlog.jobs {
                let job =
                    Job { delivery: delivery(format!("d_backlog{i}"), backlog.tenant), lane: backlog.lane, token: (), enqueued: Instant::now(), account: None, hold: notiflow_delivery::Hold::always() };
                if scheduler.submit(job).await.is_err() {
                    return;
                }
                queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // The backlog has filled its room (or is all queued) before the measured deliveries start.
    while queued.load(std::sync::atomic::Ordering::Relaxed) < backlog.jobs.min(room) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    for i in 0..measured.jobs {
        let job =
            Job { delivery: delivery(format!("d_measured{i}"), measured.tenant), lane: measured.lane, token: (), enqueued: Instant::now(), account: None, hold: notiflow_delivery::Hold::always() };
        scheduler.submit(job).await.ok();
        tokio::time::sleep(spacing).await;
    }
    let (mut handoffs, backlog_sent) = collector.await?;
    let backlog_rate = backlog_sent as f64 / started.elapsed().as_secs_f64();
    // Stopping the feeder and dropping the scheduler abandons the backlog.
    feeder.abort();
    drop(scheduler);
    handoffs.sort_by(f64::total_cmp);
    Ok((handoffs, backlog_rate))
}

const NOTHING: Load = Load { jobs: 0, lane: Lane::Low, tenant: "none" };

fn case(name: String, handoffs: &[f64], seconds: f64, note: String) -> CaseResult {
    CaseResult {
        name,
        records: handoffs.len(),
        seconds,
        p50_ms: percentile(handoffs, 50.0),
        p99_ms: percentile(handoffs, 99.0),
        max_ms: handoffs.last().copied(),
        samples: handoffs.len(),
        peak_rss_mb: crate::bench::peak_rss(),
        note,
    }
}

pub async fn priority_handoff(lows: usize) -> anyhow::Result<Vec<CaseResult>> {
    let (rate, spacing) = (5000.0, Duration::from_millis(2));
    let highs = Load { jobs: 1000, lane: Lane::High, tenant: "acme" };
    // Room for the whole low backlog: all of it queued ahead of the highs.
    let room = lows + 1;
    let started = Instant::now();
    let (alone, _) = measure(NOTHING, highs, room, rate, spacing).await?;
    let base = percentile(&alone, 99.0).unwrap_or_default();
    let mut results = vec![case(
        "priority hand-off: 1,000 high, nothing queued (baseline)".into(),
        &alone,
        started.elapsed().as_secs_f64(),
        format!("provider limited to {rate}/s, one high every {spacing:?}; max {:.2} ms", alone.last().copied().unwrap_or_default()),
    )];
    let started = Instant::now();
    let (behind, low_rate) = measure(Load { jobs: lows, lane: Lane::Low, tenant: "acme" }, highs, room, rate, spacing).await?;
    let p99 = percentile(&behind, 99.0).unwrap_or_default();
    results.push(case(
        format!("priority hand-off: 1,000 high behind {lows} queued low"),
        &behind,
        started.elapsed().as_secs_f64(),
        format!(
            "high p99 {p99:.2} ms (target <= 20 ms; baseline p99 {base:.2} ms); max {:.2} ms; lows meanwhile at {low_rate:.0}/s of the {rate}/s limit",
            behind.last().copied().unwrap_or_default()
        ),
    ));
    Ok(results)
}

/// Tenant fairness: tenant B's transactional messages (normal lane) while
/// tenant A blasts `blast` messages in the same lane, against B alone; and,
/// for contrast, B's messages queued as if they were A's (one FIFO, what
/// B would see without per-tenant turns).
pub async fn tenant_fairness(blast: usize) -> anyhow::Result<Vec<CaseResult>> {
    let (rate, spacing, room) = (5000.0, Duration::from_millis(2), 10_000);
    // 5,000 samples: each p99 is the 50th largest, not one VM stall among 1,000.
    let b = Load { jobs: 5000, lane: Lane::Normal, tenant: "globex" };
    let a = Load { jobs: blast, lane: Lane::Normal, tenant: "acme" };
    let started = Instant::now();
    let (alone, _) = measure(NOTHING, b, room, rate, spacing).await?;
    let base = percentile(&alone, 99.0).unwrap_or_default();
    let mut results = vec![case(
        format!("fairness: tenant B {} normal, alone (baseline)", b.jobs),
        &alone,
        started.elapsed().as_secs_f64(),
        format!("provider limited to {rate}/s, one B message every {spacing:?}; max {:.2} ms", alone.last().copied().unwrap_or_default()),
    )];
    let started = Instant::now();
    let (during, a_rate) = measure(a, b, room, rate, spacing).await?;
    let p99 = percentile(&during, 99.0).unwrap_or_default();
    results.push(case(
        format!("fairness: tenant B {} normal while tenant A blasts {blast} (same lane)", b.jobs),
        &during,
        started.elapsed().as_secs_f64(),
        format!(
            "B p99 {p99:.2} ms = {:.2}x alone (target <= 2x); max {:.2} ms; A meanwhile at {a_rate:.0}/s of the {rate}/s limit, {room} of A's queued, the rest waiting",
            p99 / base.max(1e-9),
            during.last().copied().unwrap_or_default()
        ),
    ));
    let started = Instant::now();
    let (fifo, _) = measure(a, Load { tenant: a.tenant, ..b }, room, rate, spacing).await?;
    let fifo_p99 = percentile(&fifo, 99.0).unwrap_or_default();
    results.push(case(
        "fairness contrast: B's messages in A's queue (no per-tenant turns)".into(),
        &fifo,
        started.elapsed().as_secs_f64(),
        format!("p99 {fifo_p99:.2} ms = {:.0}x alone: what the turns save", fifo_p99 / base.max(1e-9)),
    ));
    Ok(results)
}
