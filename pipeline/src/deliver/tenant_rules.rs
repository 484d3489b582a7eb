//! What the tenant registry says about a tenant's deliveries: who they come
//! from (`senders`: email From, SMS signature), which provider account sends
//! them (`provider_accounts`) and how many may go per day.
//!
//! Daily message quotas per channel (`quotas.messages_per_day`) are enforced
//! where messages leave: a delivery over its
//! tenant's quota for the UTC day is not sent but dead-lettered as
//! `tenant_quota` (original bytes kept, to replay on another day).
//!
//! Counts are of deliveries handed to a provider today; at start they are
//! rebuilt from today's first attempts on notify.sends, so a restart does not
//! hand a tenant a fresh quota. One `deliver` process counts for itself:
//! several instances each allow the quota (see the docs).

use std::collections::HashMap;
use std::sync::Mutex;

use notiflow_connector::LogReader;
use notiflow_delivery::Scheduler;
use notiflow_kafka::{KafkaConfig, KafkaReader};

use crate::tenants::Registry;

pub struct TenantRules {
    registry: Registry,
    /// The registry version the scheduler's account split was last set from.
    accounts_synced: Mutex<Option<u64>>,
    /// (tenant, channel) -> (UTC day number, deliveries that day).
    used: Mutex<HashMap<(String, String), (i64, u64)>>,
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

impl TenantRules {
    /// Follows the registry and counts today's deliveries so far from `sends_topic`.
    pub async fn start(kafka: &KafkaConfig, tenants_topic: &str, sends_topic: &str) -> anyhow::Result<TenantRules> {
        let registry = Registry::follow(kafka, tenants_topic).await?;
        let now = chrono::Utc::now().timestamp_millis();
        let today = day_of(now);
        let reader = KafkaReader::new(kafka);
        let mut used: HashMap<(String, String), (i64, u64)> = HashMap::new();
        for (partition, from) in reader.offsets_at_time(sends_topic, today * 86_400_000).await? {
            for record in reader.read_from(sends_topic, partition, from).await? {
                #[derive(serde::Deserialize)]
                struct Attempt {
                    tenant: String,
                    channel: String,
                    attempt: u32,
                    at: String,
                }
                let Some(Ok(attempt)) = record.payload.as_deref().map(serde_json::from_slice::<Attempt>) else { continue };
                let at = chrono::DateTime::parse_from_rfc3339(&attempt.at).map(|t| t.timestamp_millis()).unwrap_or(0);
                if attempt.attempt == 1 && day_of(at) == today {
                    used.entry((attempt.tenant, attempt.channel)).or_insert((today, 0)).1 += 1;
                }
            }
        }
        tracing::info!(counted = used.values().map(|(_, n)| n).sum::<u64>(), "today's deliveries counted against tenant quotas");
        Ok(TenantRules { registry, accounts_synced: Mutex::new(None), used: Mutex::new(used) })
    }

    /// No registry: no tenant has senders, accounts or quotas (the embedded demo).
    pub fn none() -> TenantRules {
        TenantRules { registry: Registry::empty(), accounts_synced: Mutex::new(None), used: Mutex::new(HashMap::new()) }
    }

    /// The tenant's sender identity on the channel, if it registered one.
    pub fn sender(&self, tenant: &str, channel: &str) -> Option<String> {
        let tenant = self.registry.get(tenant)?;
        match channel {
            "email" => tenant.senders.email_from.clone(),
            "sms" => tenant.senders.sms_signature.clone(),
            _ => None,
        }
    }

    /// The tenant's own provider account on the channel, if it has one.
    pub fn account(&self, tenant: &str, channel: &str) -> Option<String> {
        self.registry.get(tenant)?.provider_accounts.get(channel).cloned()
    }

    /// Keeps the providers that are tenants' own accounts out of the shared
    /// rotation: set again whenever the registry changed (before a job is
    /// routed, so a new owner's account never serves others once it is read).
    pub fn sync_accounts<T: Send + 'static>(&self, scheduler: &Scheduler<T>) {
        let version = self.registry.version();
        let mut synced = self.accounts_synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced != Some(version) {
            scheduler.dedicate(&self.registry.provider_accounts());
            *synced = Some(version);
        }
    }

    /// Takes one of the tenant's messages for the channel today, or says why not.
    pub fn take(&self, tenant: &str, channel: &str) -> Result<(), String> {
        let limit = self.registry.get(tenant).and_then(|t| t.quotas.messages_per_day.get(channel).copied());
        let Some(limit) = limit else { return Ok(()) };
        let today = day_of(chrono::Utc::now().timestamp_millis());
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let entry = used.entry((tenant.to_string(), channel.to_string())).or_insert((today, 0));
        if entry.0 != today {
            *entry = (today, 0);
        }
        if entry.1 >= limit {
            return Err(format!("tenant {tenant} reached its quota of {limit} {channel} messages for today (UTC)"));
        }
        entry.1 += 1;
        Ok(())
    }
}
