//! What the tenant registry says about a tenant's deliveries: who they come
//! from (`senders`: email From, SMS signature), which provider account sends
//! them (`provider_accounts`) and how many may go per day.
//!
//! Daily message quotas per channel (`quotas.messages_per_day`) are enforced
//! where messages leave: a delivery over its tenant's quota for the UTC day is
//! not sent but dead-lettered as `tenant_quota` (original bytes kept, to
//! replay on another day). The count is the cluster's, exact across instances
//! and restarts: see `quota_ledger`.

use std::collections::HashMap;
use std::sync::Mutex;

use notiflow_delivery::Scheduler;
use notiflow_kafka::KafkaConfig;

use super::quota_ledger::{Claim, QuotaLedger, day_of};
use crate::tenants::Registry;

pub struct TenantRules {
    registry: Registry,
    /// The registry version the scheduler's account split was last set from.
    accounts_synced: Mutex<Option<u64>>,
    /// The cluster's quota claims (None: no broker, no quotas to enforce).
    ledger: Option<QuotaLedger>,
}

/// A delivery that may count against a quota.
pub struct Quoted {
    pub tenant: String,
    pub channel: String,
    pub delivery_id: String,
}

impl TenantRules {
    /// Follows the registry and today's quota claims on `claims_topic`.
    pub async fn start(kafka: &KafkaConfig, tenants_topic: &str, claims_topic: &str) -> anyhow::Result<TenantRules> {
        let registry = Registry::follow(kafka, tenants_topic).await?;
        let ledger = QuotaLedger::open(kafka, claims_topic).await?;
        Ok(TenantRules { registry, accounts_synced: Mutex::new(None), ledger: Some(ledger) })
    }

    /// No registry: no tenant has senders, accounts or quotas (the embedded demo).
    pub fn none() -> TenantRules {
        TenantRules { registry: Registry::empty(), accounts_synced: Mutex::new(None), ledger: None }
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

    /// The tenant's daily quota on the channel, if it has one.
    pub fn quota(&self, tenant: &str, channel: &str) -> Option<u64> {
        self.ledger.as_ref()?;
        self.registry.get(tenant)?.quotas.messages_per_day.get(channel).copied()
    }

    /// Takes a unit of today's quota for each delivery (all of them under a quota, see `quota`);
    /// per delivery id, Ok or why not.
    pub async fn take(&self, deliveries: Vec<Quoted>) -> anyhow::Result<HashMap<String, Result<(), String>>> {
        let Some(ledger) = &self.ledger else { return Ok(HashMap::new()) };
        let day = day_of(chrono::Utc::now().timestamp_millis());
        let mut limits = Vec::with_capacity(deliveries.len());
        let claims: Vec<Claim> = deliveries
            .into_iter()
            .filter_map(|d| {
                let limit = self.quota(&d.tenant, &d.channel)?;
                limits.push((d.delivery_id.clone(), d.tenant.clone(), d.channel.clone(), limit));
                Some(Claim { tenant: d.tenant, channel: d.channel, day, delivery_id: d.delivery_id, limit })
            })
            .collect();
        let verdicts = ledger.claim(claims).await?;
        Ok(limits
            .into_iter()
            .map(|(delivery_id, tenant, channel, limit)| {
                let granted = verdicts.get(&(day, delivery_id.clone())).copied().unwrap_or(false);
                let verdict = if granted { Ok(()) } else { Err(format!("tenant {tenant} reached its quota of {limit} {channel} messages for today (UTC)")) };
                (delivery_id, verdict)
            })
            .collect())
    }
}
