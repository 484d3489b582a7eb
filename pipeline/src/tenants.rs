//! The tenant registry: one record per tenant on the compacted topic
//! `notify.tenants` (key = tenant id), managed with `notiflow tenant
//! put|list|key` and followed live by the gateway.
//!
//! API keys are stored as SHA-256 hashes only: a key is 32 random bytes, so a
//! plain hash cannot be brute-forced, and the registry topic never holds
//! anything that could send as the tenant. A key is shown once, when minted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::CHANNELS;

pub const TENANTS_TOPIC: &str = "notify.tenants";

/// Prefix of every API key: lets secret scanners and logs recognise one.
const KEY_PREFIX: &str = "nfk_";

/// One tenant as the registry holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The id producers put in `tenant` (the schema's tenant pattern).
    pub id: String,
    /// A human name for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A disabled tenant's keys are refused; its record stays for reports.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Channels the tenant may name in `channels`; empty: any channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_channels: Vec<String>,
    /// Templates the tenant may send; empty: any of its own. A trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_templates: Vec<String>,
    /// Who the tenant's messages come from.
    #[serde(default, skip_serializing_if = "Senders::is_empty")]
    pub senders: Senders,
    /// Provider account per channel (names of `[[delivery.providers]]`), e.g. `sms = "twilio-acme"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provider_accounts: BTreeMap<String, String>,
    #[serde(default)]
    pub quotas: Quotas,
    /// Hashes of the tenant's API keys (`notiflow tenant key` mints them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Senders {
    /// Email From, e.g. `Acme <no-reply@acme.example>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_from: Option<String>,
    /// SMS signature registered with the carrier, e.g. `Acme`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_signature: Option<String>,
}

impl Senders {
    fn is_empty(&self) -> bool {
        self.email_from.is_none() && self.sms_signature.is_none()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Sustained HTTP requests per second (a batch counts each request); none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Requests allowed at once above the rate (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Messages per UTC day per channel, e.g. `{ sms = 100000 }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub messages_per_day: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Names the key so it can be revoked (`notiflow tenant key --revoke`).
    pub id: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    pub created_at: String,
}

impl Tenant {
    /// Rules the types cannot say; the message names the tenant and field.
    pub fn check(&self) -> Result<(), String> {
        let valid_id = !self.id.is_empty()
            && self.id.len() <= 64
            && self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && !self.id.starts_with(['_', '-']);
        if !valid_id {
            return Err(format!("tenant id {:?} must be 1-64 of a-z 0-9 _ - (not starting with _ or -)", self.id));
        }
        for channel in self.allowed_channels.iter().chain(self.provider_accounts.keys()).chain(self.quotas.messages_per_day.keys()) {
            if !CHANNELS.contains(&channel.as_str()) {
                return Err(format!("tenant {}: unknown channel {channel:?} (known: {})", self.id, CHANNELS.join(", ")));
            }
        }
        if let Some(from) = &self.senders.email_from {
            // `Name <address>` or a bare address.
            let address = from.rsplit_once('<').and_then(|(_, rest)| rest.strip_suffix('>')).unwrap_or(from);
            if !email_address::EmailAddress::is_valid(address.trim()) {
                return Err(format!("tenant {}: senders.email_from {from:?} is not `Name <address>` or an address", self.id));
            }
        }
        if self.quotas.requests_per_second == Some(0) {
            return Err(format!("tenant {}: quotas.requests_per_second must be >= 1 (leave it out for no limit)", self.id));
        }
        Ok(())
    }

    pub fn may_use_template(&self, template: &str) -> bool {
        self.allowed_templates.is_empty()
            || self.allowed_templates.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => template.starts_with(prefix),
                None => t == template,
            })
    }

    pub fn may_use_channel(&self, channel: &str) -> bool {
        self.allowed_channels.is_empty() || self.allowed_channels.iter().any(|c| c == channel)
    }
}

/// The `[[tenants]]` of a file given to `notiflow tenant put`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    tenants: Vec<Tenant>,
}

/// Reads and checks a tenant file; API keys cannot be set from a file (they are minted).
pub fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<Tenant>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let file: TenantFile = toml::from_str(&text).map_err(|e| {
        let (line, _) = e.span().map(|s| crate::config::line_column(&text, s.start)).unwrap_or((1, 1));
        anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
    })?;
    for tenant in &file.tenants {
        let (line, _) = text.find(&format!("\"{}\"", tenant.id)).map(|i| crate::config::line_column(&text, i)).unwrap_or((1, 1));
        tenant.check().map_err(|e| anyhow::anyhow!("{}:{line}: {e}", path.display()))?;
        if !tenant.api_keys.is_empty() {
            anyhow::bail!(
                "{}:{line}: tenant {}: api_keys are minted with `notiflow tenant key`, not written in a file",
                path.display(),
                tenant.id
            );
        }
    }
    Ok(file.tenants)
}

fn hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

/// Hex SHA-256 of a secret (API keys, analysts' passwords), as stored.
pub fn key_hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// `bytes` random bytes from the OS, hex: API keys and minted passwords.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|e| anyhow::anyhow!("no randomness for a secret: {e}"))?;
    Ok(hex(&buffer))
}

/// A new random key for `tenant`, and its registry entry.
pub fn mint_key(id: &str) -> anyhow::Result<(String, ApiKey)> {
    let key = format!("{KEY_PREFIX}{}", random_hex(32)?);
    let entry = ApiKey { id: id.to_string(), sha256: key_hash(&key), created_at: crate::events::now_rfc3339() };
    Ok((key, entry))
}

/// The registry as the gateway, deliver and run see it: updated from the topic while they serve.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<RegistryState>>,
}

#[derive(Default)]
struct RegistryState {
    /// Counts the records applied: readers of derived views see when to rebuild them.
    version: u64,
    tenants: HashMap<String, Arc<Tenant>>,
    /// Key hash -> tenant id.
    keys: HashMap<String, String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.read().expect("registry lock");
        write!(f, "Registry {{ tenants: {}, version: {} }}", state.tenants.len(), state.version)
    }
}

impl Registry {
    /// A registry with no tenants that never changes.
    pub fn empty() -> Registry {
        Registry { inner: Arc::default() }
    }

    /// The registry on `topic`, replayed (ready when this returns) and followed while the process runs.
    pub async fn follow(kafka: &notiflow_kafka::KafkaConfig, topic: &str) -> anyhow::Result<Registry> {
        let registry = Registry::default();
        let apply = {
            let registry = registry.clone();
            move |record: &notiflow_connector::Record| {
                let key = record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                if let Err(err) = registry.apply(&key, record.payload.as_deref()) {
                    tracing::warn!(%err, offset = record.offset, "skipping a tenant record");
                }
            }
        };
        let mut ready = crate::follow::follow_topic(kafka, topic, crate::follow::Replay::All, apply).await?;
        let wait = std::time::Duration::from_secs(120);
        tokio::time::timeout(wait, ready.wait_for(|r| *r))
            .await
            .map_err(|_| anyhow::anyhow!("replaying the tenant registry {topic} took over {wait:?}"))??;
        Ok(registry)
    }

    /// Folds one record of the topic in: a later record for a tenant replaces it, a tombstone removes it.
    pub fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let tenant = match value {
            None => None,
            Some(bytes) => {
                let tenant: Tenant = serde_json::from_slice(bytes).map_err(|e| format!("tenant record {key:?}: {e}"))?;
                tenant.check()?;
                Some(tenant)
            }
        };
        let mut state = self.inner.write().expect("registry lock");
        state.version += 1;
        if let Some(old) = state.tenants.remove(key) {
            for api_key in &old.api_keys {
                state.keys.remove(&api_key.sha256);
            }
        }
        if let Some(tenant) = tenant {
            for api_key in &tenant.api_keys {
                state.keys.insert(api_key.sha256.clone(), tenant.id.clone());
            }
            state.tenants.insert(tenant.id.clone(), Arc::new(tenant));
        }
        Ok(())
    }

    /// The tenant an API key belongs to, unless unknown or disabled.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Tenant>> {
        let state = self.inner.read().expect("registry lock");
        let id = state.keys.get(&key_hash(key))?;
        state.tenants.get(id).filter(|t| !t.disabled).cloned()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.inner.read().expect("registry lock").tenants.get(id).cloned()
    }

    pub fn version(&self) -> u64 {
        self.inner.read().expect("registry lock").version
    }

    /// Every provider account some tenant (enabled or not) owns, by provider name.
    pub fn provider_accounts(&self) -> std::collections::HashSet<String> {
        let state = self.inner.read().expect("registry lock");
        state.tenants.values().flat_map(|t| t.provider_accounts.values().cloned()).collect()
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.read().expect("registry lock").tenants.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// The registry's commands (`notiflow tenant ...`) against the topic.
pub mod admin {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use anyhow::Context;
    use notiflow_connector::{OutRecord, Sink, TopicAdmin, TopicSpec};
    use notiflow_kafka::{KafkaAdmin, KafkaConfig, KafkaSink, read_topic_to_end};

    use super::{TENANTS_TOPIC, Tenant, mint_key};
    use crate::config::Config;

    fn kafka(config: &Config) -> anyhow::Result<&KafkaConfig> {
        config.kafka.as_ref().context("the tenant registry lives on Kafka: the configuration needs [kafka]")
    }

    /// The registry now: the latest record per tenant (a tombstone removes it).
    pub async fn read(config: &Config) -> anyhow::Result<BTreeMap<String, Tenant>> {
        let kafka = kafka(config)?;
        let topic = config.topics.resolve(TENANTS_TOPIC);
        KafkaAdmin::new(kafka)?.ensure_topics(&[TopicSpec { compacted: true, ..TopicSpec::new(&topic, 1) }]).await?;
        let mut tenants = BTreeMap::new();
        for record in read_topic_to_end(kafka, &topic).await? {
            let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).to_string();
            match record.payload.as_deref().map(serde_json::from_slice::<Tenant>) {
                None => {
                    tenants.remove(&key);
                }
                Some(Ok(tenant)) => {
                    tenants.insert(key, tenant);
                }
                Some(Err(err)) => tracing::warn!(%key, %err, "skipping an unreadable tenant record"),
            }
        }
        Ok(tenants)
    }

    async fn publish(config: &Config, tenants: &[Tenant]) -> anyhow::Result<()> {
        let topic: Arc<str> = Arc::from(config.topics.resolve(TENANTS_TOPIC).as_str());
        let records = tenants
            .iter()
            .map(|t| OutRecord {
                topic: topic.clone(),
                key: Some(t.id.clone().into_bytes()),
                payload: serde_json::to_vec(t).expect("serializes"),
                headers: vec![],
            })
            .collect();
        KafkaSink::new(kafka(config)?)?.send_all(records).await?;
        Ok(())
    }

    /// Publishes the tenants of the files (all or none); keys already minted are kept.
    pub async fn put(config: &Config, files: &[std::path::PathBuf], dry_run: bool) -> anyhow::Result<Vec<String>> {
        let mut tenants = Vec::new();
        for file in files {
            tenants.extend(super::read_file(file)?);
        }
        if dry_run {
            return Ok(tenants.iter().map(|t| format!("{} valid (--dry-run: not published)", t.id)).collect());
        }
        let current = read(config).await?;
        for tenant in &mut tenants {
            if let Some(existing) = current.get(&tenant.id) {
                tenant.api_keys = existing.api_keys.clone();
            }
        }
        publish(config, &tenants).await?;
        Ok(tenants.iter().map(|t| format!("published {}", t.id)).collect())
    }

    /// Mints a key named `key_id` for the tenant and returns it (shown once; only its hash is kept).
    pub async fn mint(config: &Config, tenant: &str, key_id: &str) -> anyhow::Result<String> {
        let mut current = read(config).await?;
        let record = current
            .get_mut(tenant)
            .with_context(|| format!("tenant {tenant:?} is not in the registry (`notiflow tenant put` it first)"))?;
        if record.api_keys.iter().any(|k| k.id == key_id) {
            anyhow::bail!("tenant {tenant} already has a key {key_id:?}; revoke it first or pick another --id");
        }
        let (key, entry) = mint_key(key_id)?;
        record.api_keys.push(entry);
        publish(config, std::slice::from_ref(record)).await?;
        Ok(key)
    }

    pub async fn revoke(config: &Config, tenant: &str, key_id: &str) -> anyhow::Result<()> {
        let mut current = read(config).await?;
        let record = current.get_mut(tenant).with_context(|| format!("tenant {tenant:?} is not in the registry"))?;
        let before = record.api_keys.len();
        record.api_keys.retain(|k| k.id != key_id);
        if record.api_keys.len() == before {
            anyhow::bail!("tenant {tenant} has no key {key_id:?}");
        }
        publish(config, std::slice::from_ref(record)).await
    }

    /// One line per tenant, never a key (only key ids).
    pub fn describe(tenant: &Tenant) -> String {
        let list = |items: &[String]| if items.is_empty() { "any".to_string() } else { items.join(",") };
        format!(
            "{}\t{}{}\tchannels {}\ttemplates {}\trps {}\tper-day {:?}\tkeys {}",
            tenant.id,
            tenant.name.as_deref().unwrap_or("-"),
            if tenant.disabled { " (disabled)" } else { "" },
            list(&tenant.allowed_channels),
            list(&tenant.allowed_templates),
            tenant.quotas.requests_per_second.map(|r| r.to_string()).unwrap_or_else(|| "unlimited".into()),
            tenant.quotas.messages_per_day,
            tenant.api_keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(","),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: None,
            disabled: false,
            allowed_channels: vec![],
            allowed_templates: vec![],
            senders: Senders::default(),
            provider_accounts: BTreeMap::new(),
            quotas: Quotas::default(),
            api_keys: vec![],
        }
    }

    #[test]
    fn keys_authenticate_their_tenant_until_replaced_disabled_or_deleted() {
        let registry = Registry::default();
        let (key, entry) = mint_key("k1").unwrap();
        assert!(key.starts_with("nfk_") && key.len() == 4 + 64);
        assert_ne!(entry.sha256, key, "only the hash is kept");
        let mut acme = tenant("acme");
        acme.api_keys.push(entry);
        registry.apply("acme", Some(&serde_json::to_vec(&acme).unwrap())).unwrap();
        assert_eq!(registry.authenticate(&key).unwrap().id, "acme");
        assert!(registry.authenticate("nfk_guess").is_none());

        acme.disabled = true;
        registry.apply("acme", Some(&serde_json::to_vec(&acme).unwrap())).unwrap();
        assert!(registry.authenticate(&key).is_none(), "a disabled tenant's keys are refused");

        acme.disabled = false;
        acme.api_keys.clear();
        registry.apply("acme", Some(&serde_json::to_vec(&acme).unwrap())).unwrap();
        assert!(registry.authenticate(&key).is_none(), "a revoked key is refused");

        registry.apply("acme", None).unwrap();
        assert!(registry.get("acme").is_none());
    }

    #[test]
    fn bad_records_and_files_are_refused_with_the_reason() {
        let registry = Registry::default();
        assert!(registry.apply("x", Some(b"{\"id\": \"Bad Id\"}")).unwrap_err().contains("tenant id"));
        let mut t = tenant("acme");
        t.allowed_channels = vec!["fax".into()];
        assert!(t.check().unwrap_err().contains("unknown channel \"fax\""));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[[tenants]]\nid = \"acme\"\n\n[[tenants]]\nid = \"globex\"\nquotas = { requests_per_second = 0 }\n")
            .unwrap();
        let err = read_file(&path).unwrap_err().to_string();
        assert!(err.contains("t.toml:5:") && err.contains("requests_per_second"), "{err}");
    }

    #[test]
    fn the_example_registry_file_is_valid_and_bad_senders_are_refused() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tenants.toml");
        let tenants = read_file(&path).unwrap();
        assert_eq!(tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["acme", "globex"]);
        assert_eq!(tenants[0].senders.sms_signature.as_deref(), Some("Acme"));
        let mut t = tenant("acme");
        t.senders.email_from = Some("Acme <not an address>".into());
        assert!(t.check().unwrap_err().contains("email_from"));
        t.senders.email_from = Some("orders@acme.example".into());
        t.check().unwrap();
    }

    #[test]
    fn template_and_channel_allow_lists() {
        let mut t = tenant("acme");
        assert!(t.may_use_template("anything") && t.may_use_channel("sms"));
        t.allowed_templates = vec!["order_*".into(), "welcome".into()];
        t.allowed_channels = vec!["email".into()];
        assert!(t.may_use_template("order_shipped") && t.may_use_template("welcome"));
        assert!(!t.may_use_template("welcome2") && !t.may_use_template("promo"));
        assert!(t.may_use_channel("email") && !t.may_use_channel("sms"));
    }
}
