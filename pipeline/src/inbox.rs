//! `notiflow inbox serve`: the in-app inbox API over the inbox log topic, and
//! `notiflow inbox token`: a user's token for it.
//!
//! ```toml
//! [inbox]
//! listen = "0.0.0.0:8090"
//! token_secret = { env = "NOTIFLOW_INBOX_SECRET" }
//! ```

use std::sync::Arc;

use anyhow::Context;
use notiflow_connector::{TopicAdmin, TopicSpec};
use notiflow_delivery::SecretRef;
use notiflow_inbox::{Inbox, InboxOp, InboxSettings, SinkJournal, UserTokens};
use notiflow_kafka::{KafkaAdmin, KafkaSink};
use serde::Deserialize;

use crate::config::Config;

/// `[inbox]` in notiflow.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    /// Where the inbox API listens.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Signs user tokens (at least 16 characters); rotating it logs every user out.
    pub token_secret: SecretRef,
    /// Newest messages kept per user; older ones drop out of the inbox.
    #[serde(default = "default_keep")]
    pub keep_per_user: usize,
    /// Largest page a list call returns.
    #[serde(default = "default_max_page")]
    pub max_page: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8090".into()
}
fn default_keep() -> usize {
    500
}
fn default_max_page() -> usize {
    200
}

pub const INBOX_TOPIC: &str = "notify.inbox";

impl InboxConfig {
    pub fn tokens(&self) -> anyhow::Result<UserTokens> {
        let secret = self.token_secret.resolve().map_err(|e| anyhow::anyhow!("[inbox] token_secret: {e}"))?;
        UserTokens::new(secret).map_err(|e| anyhow::anyhow!("[inbox] token_secret: {e}"))
    }
}

/// Serves until interrupted. Prints the bound address first (port 0 picks one).
pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let settings = config.inbox.as_ref().context("notiflow inbox needs [inbox] in the config")?;
    let kafka = config.kafka.as_ref().context("notiflow inbox needs [kafka] in the config")?;
    let (topic, receipts) = (config.topics.resolve(INBOX_TOPIC), config.topics.resolve(crate::receipts::RECEIPTS_TOPIC));
    let specs = [TopicSpec::new(&topic, config.topics.partitions), TopicSpec::new(&receipts, config.topics.partitions)];
    KafkaAdmin::new(kafka)?.ensure_topics(&specs).await?;

    let journal = Arc::new(SinkJournal::new(KafkaSink::new(kafka)?, &topic, Some(&receipts)));
    let inbox_settings = InboxSettings { keep_per_user: settings.keep_per_user, max_page: settings.max_page.max(1) };
    let inbox = Inbox::new(inbox_settings, journal, settings.tokens()?);

    // Replay the whole log, then follow it; ready once replayed to where it ended now.
    let apply = {
        let inbox = inbox.clone();
        move |record: &notiflow_connector::Record| match record.payload.as_deref().map(serde_json::from_slice::<InboxOp>) {
            Some(Ok(op)) => inbox.apply(op),
            other => tracing::warn!(partition = record.partition, offset = record.offset, error = ?other.map(|r| r.err()), "skipping an unreadable inbox record"),
        }
    };
    let mut ready = crate::follow::follow_topic(kafka, &topic, crate::follow::Replay::All, apply).await?;
    let ready_inbox = inbox.clone();
    tokio::spawn(async move {
        if ready.wait_for(|r| *r).await.is_ok() {
            ready_inbox.set_ready();
        }
    });

    let listener = tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("[inbox] listen {}", settings.listen))?;
    println!("inbox: listening on http://{}", listener.local_addr()?);
    crate::metrics_http::mark_ready();
    axum::serve(listener, notiflow_inbox::router(inbox)).with_graceful_shutdown(crate::shutdown::requested()).await?;
    Ok(())
}

/// A user's token, for the tenant's backend to hand to its app.
pub fn token(config: &Config, tenant: &str, user: &str) -> anyhow::Result<String> {
    let settings = config.inbox.as_ref().context("no [inbox] in the config")?;
    Ok(settings.tokens()?.mint(tenant, user))
}
