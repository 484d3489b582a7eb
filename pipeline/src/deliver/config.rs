//! `[delivery]` in notiflow.toml: the delivery job and its providers.
//!
//! ```toml
//! [[delivery.providers]]
//! name = "sms-aliyun"        # in send results and metrics
//! weight = 3                 # share of the channel while all are healthy
//! rate_per_s = 100           # the account's limit, shared by all deliver instances
//! [delivery.providers.aliyun]
//! access_key_id = "LTAI..."
//! access_key_secret = { env = "ALIYUN_SMS_SECRET" }
//! sign_name = "Acme"
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use notiflow_delivery::{BreakerConfig, Channel, ProviderGroup, ProviderLimits, RetryPolicy, Secret, SecretRef};
use notiflow_email::{SmtpChannel, SmtpConfig};
use notiflow_push::{ApnsChannel, ApnsConfig, FcmChannel, FcmConfig, WebPushChannel, WebPushConfig};
use notiflow_im::{
    DingTalkChannel, DingTalkConfig, DingTalkWorkChannel, DingTalkWorkConfig, FeishuChannel, FeishuConfig, SlackChannel, SlackConfig, TeamsChannel,
    TeamsConfig, TelegramChannel, TelegramConfig, WeChatChannel, WeChatConfig, WeComAppChannel, WeComAppConfig, WeComChannel, WeComConfig,
};
use notiflow_sms::{AliyunChannel, AliyunConfig, TencentChannel, TencentConfig, TwilioChannel, TwilioConfig};
use notiflow_webhook::{SigningKey, WebhookChannel, WebhookConfig};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Consumer groups are `<group_id>.high`, `.normal`, `.low`: one per lane,
    /// so a backlog in one lane never slows reading another.
    pub group_id: String,
    /// Sends in progress at once per channel.
    pub workers_per_channel: usize,
    /// Deliveries read ahead per channel, lane and tenant; tenants take turns within a lane, and
    /// a tenant whose room is full has its further records parked, never another tenant's.
    pub lane_capacity: usize,
    /// Attempts per delivery across all providers, the first included.
    pub max_attempts: u32,
    /// First backoff after every provider failed a delivery; doubles, with jitter.
    pub min_delay_ms: u64,
    /// Longest backoff, also the cap on a provider's Retry-After.
    pub max_delay_ms: u64,
    /// How often finished offsets are committed.
    pub commit_interval_ms: u64,
    /// How provider APIs are reached: absent, straight out (proxy variables in the environment are
    /// ignored); `"env"`: HTTPS_PROXY / NO_PROXY from the environment; or a proxy URL (NO_PROXY
    /// still honoured). Webhooks never use a proxy (it would resolve targets past the SSRF guard).
    pub proxy: Option<String>,
    pub providers: Vec<ProviderConfig>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            group_id: "notiflow-delivery".into(),
            workers_per_channel: 16,
            lane_capacity: 10_000,
            max_attempts: 5,
            min_delay_ms: 200,
            max_delay_ms: 30_000,
            commit_interval_ms: 1000,
            proxy: None,
            providers: Vec::new(),
        }
    }
}

/// One provider account. Exactly one kind table (`twilio`, `aliyun`,
/// `tencent`, `smtp`, `dingtalk_robot`, `dingtalk_work`, `feishu`,
/// `wecom_robot`, `wecom_app`, `slack`, `teams`, `telegram`, `wechat`, `fcm`,
/// `apns`, `webpush`, `webhook`) says which API it speaks, and so which
/// channel it serves.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    #[serde(default = "one")]
    pub weight: u32,
    /// The account's sends per second, for the whole cluster: each `deliver`
    /// instance takes the share its dispatch partitions are of all of them.
    /// Absent: unlimited.
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    #[serde(default = "one")]
    pub burst: u32,
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Consecutive provider failures that open its circuit.
    #[serde(default = "default_failures_to_open")]
    pub failures_to_open: u32,
    /// How long an open circuit rests before a probe, ms (doubles per failed probe, to 60 s).
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
    #[serde(default)]
    pub twilio: Option<TwilioConfig>,
    #[serde(default)]
    pub aliyun: Option<AliyunConfig>,
    /// An SMTP relay (channel `email`).
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Tencent Cloud SMS (channel `sms`).
    #[serde(default)]
    pub tencent: Option<TencentConfig>,
    /// DingTalk group robots (channel `dingtalk_robot`; the address names the robot).
    #[serde(default)]
    pub dingtalk_robot: Option<DingTalkConfig>,
    /// DingTalk work notices from an app (channel `dingtalk`; the address is the userid).
    #[serde(default)]
    pub dingtalk_work: Option<DingTalkWorkConfig>,
    /// Feishu/Lark bots (channel `feishu`).
    #[serde(default)]
    pub feishu: Option<FeishuConfig>,
    /// WeCom group robots (channel `wecom_robot`; the address names the robot).
    #[serde(default)]
    pub wecom_robot: Option<WeComConfig>,
    /// WeCom app messages (channel `wecom`; the address is the member's UserID).
    #[serde(default)]
    pub wecom_app: Option<WeComAppConfig>,
    /// Microsoft Teams workflow webhooks (channel `teams`; the address names the webhook).
    #[serde(default)]
    pub teams: Option<TeamsConfig>,
    /// Slack incoming webhooks (channel `slack`).
    #[serde(default)]
    pub slack: Option<SlackConfig>,
    /// A Telegram bot (channel `telegram`; the address is the chat id).
    #[serde(default)]
    pub telegram: Option<TelegramConfig>,
    /// A WeChat official account's template messages (channel `wechat`; the address is the openid).
    #[serde(default)]
    pub wechat: Option<WeChatConfig>,
    /// Firebase Cloud Messaging (channel `push`; the address is the registration token).
    #[serde(default)]
    pub fcm: Option<FcmConfig>,
    /// Apple Push Notification service (channel `apns`; the address is the device token).
    #[serde(default)]
    pub apns: Option<ApnsConfig>,
    /// Browser push with VAPID (channel `webpush`; the address is the subscription JSON).
    #[serde(default)]
    pub webpush: Option<WebPushConfig>,
    #[serde(default)]
    pub webhook: Option<WebhookSettings>,
}

/// The generic webhook channel (the target URL is the delivery's address).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// `whsec_...` signing secret.
    pub signing_secret: SecretRef,
    /// Private/loopback targets allowed anyway (IPs or CIDRs).
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn one() -> u32 {
    1
}
fn default_in_flight() -> usize {
    64
}
fn default_failures_to_open() -> u32 {
    5
}
fn default_open_ms() -> u64 {
    2000
}
fn default_timeout_ms() -> u64 {
    10_000
}

impl DeliveryConfig {
    /// The Twilio providers by name, for verifying their status callbacks.
    pub fn twilio_receivers(&self) -> Result<BTreeMap<String, TwilioChannel>, String> {
        let twilio = self.providers.iter().filter_map(|p| Some((p.name.clone(), p.twilio.clone()?)));
        twilio.map(|(name, config)| Ok((name.clone(), TwilioChannel::new(&name, config)?))).collect()
    }

    /// Aliyun providers that take report pushes (`report_token`), with their token.
    pub fn aliyun_receivers(&self) -> Result<BTreeMap<String, (AliyunChannel, Secret)>, String> {
        let mut receivers = BTreeMap::new();
        for (name, config) in self.providers.iter().filter_map(|p| Some((p.name.clone(), p.aliyun.clone()?))) {
            let channel = AliyunChannel::new(&name, config)?;
            if let Some(token) = channel.report_token()? {
                receivers.insert(name, (channel, token));
            }
        }
        Ok(receivers)
    }

    /// Tencent providers that pull their delivery reports (`pull_receipts_ms`).
    pub fn tencent_pollers(&self) -> Result<Vec<TencentChannel>, String> {
        let pulling = self.providers.iter().filter_map(|p| Some((p.name.clone(), p.tencent.clone().filter(|t| t.pull_receipts_ms.is_some())?)));
        pulling.map(|(name, config)| TencentChannel::new(&name, config)).collect()
    }

    /// Sets how the provider clients built from now on reach their APIs (`proxy`).
    pub fn use_proxy(&self) -> Result<(), String> {
        let proxy = self.proxy.as_deref().map(notiflow_delivery::http::Proxy::parse).transpose()?.unwrap_or_default();
        notiflow_delivery::http::use_proxy(proxy);
        Ok(())
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            min_delay: Duration::from_millis(self.min_delay_ms),
            max_delay: Duration::from_millis(self.max_delay_ms),
        }
    }

    /// Every provider built (secrets read now, so a missing one fails at
    /// start-up naming the provider), grouped by channel.
    pub fn provider_groups(&self) -> Result<Vec<Arc<ProviderGroup>>, String> {
        let mut by_channel: BTreeMap<String, Vec<(Arc<dyn Channel>, ProviderLimits)>> = BTreeMap::new();
        for provider in &self.providers {
            let channel = provider.build()?;
            by_channel.entry(channel.channel().to_string()).or_default().push((channel, provider.limits()));
        }
        by_channel.into_values().map(|providers| ProviderGroup::new(providers).map(Arc::new)).collect()
    }
}

impl ProviderConfig {
    fn limits(&self) -> ProviderLimits {
        ProviderLimits {
            weight: self.weight,
            rate_per_s: self.rate_per_s,
            burst: self.burst,
            max_in_flight: self.max_in_flight,
            breaker: BreakerConfig { failures_to_open: self.failures_to_open.max(1), open_for: Duration::from_millis(self.open_ms), ..BreakerConfig::default() },
        }
    }

    fn build(&self) -> Result<Arc<dyn Channel>, String> {
        fn shared<C: Channel + 'static>(channel: Result<C, String>) -> Result<Arc<dyn Channel>, String> {
            channel.map(|c| Arc::new(c) as Arc<dyn Channel>)
        }
        let name = &self.name;
        // Only the kinds that are set are built; exactly one must be.
        let mut built: Vec<Result<Arc<dyn Channel>, String>> = Vec::new();
        built.extend(self.twilio.as_ref().map(|c| shared(TwilioChannel::new(name, c.clone()))));
        built.extend(self.aliyun.as_ref().map(|c| shared(AliyunChannel::new(name, c.clone()))));
        built.extend(self.smtp.as_ref().map(|c| shared(SmtpChannel::new(name, c))));
        built.extend(self.tencent.as_ref().map(|c| shared(TencentChannel::new(name, c.clone()))));
        built.extend(self.dingtalk_robot.as_ref().map(|c| shared(DingTalkChannel::new(name, c))));
        built.extend(self.dingtalk_work.as_ref().map(|c| shared(DingTalkWorkChannel::new(name, c.clone()))));
        built.extend(self.feishu.as_ref().map(|c| shared(FeishuChannel::new(name, c))));
        built.extend(self.wecom_robot.as_ref().map(|c| shared(WeComChannel::new(name, c))));
        built.extend(self.wecom_app.as_ref().map(|c| shared(WeComAppChannel::new(name, c.clone()))));
        built.extend(self.teams.as_ref().map(|c| shared(TeamsChannel::new(name, c))));
        built.extend(self.slack.as_ref().map(|c| shared(SlackChannel::new(name, c))));
        built.extend(self.telegram.as_ref().map(|c| shared(TelegramChannel::new(name, c))));
        built.extend(self.wechat.as_ref().map(|c| shared(WeChatChannel::new(name, c.clone()))));
        built.extend(self.fcm.as_ref().map(|c| shared(FcmChannel::new(name, c))));
        built.extend(self.apns.as_ref().map(|c| shared(ApnsChannel::new(name, c.clone()))));
        built.extend(self.webpush.as_ref().map(|c| shared(WebPushChannel::new(name, c.clone()))));
        built.extend(self.webhook.as_ref().map(|w| shared(webhook(name, w))));
        match built.len() {
            1 => built.pop().expect("one"),
            _ => Err(format!("provider {name}: give exactly one kind table ([twilio], [aliyun], [tencent], [smtp], [dingtalk_robot], [dingtalk_work], [feishu], [wecom_robot], [wecom_app], [slack], [teams], [telegram], [wechat], [fcm], [apns], [webpush], [webhook])")),
        }
    }
}

fn webhook(name: &str, settings: &WebhookSettings) -> Result<WebhookChannel, String> {
    let secret = settings.signing_secret.resolve().map_err(|e| format!("webhook provider {name}: signing_secret: {e}"))?;
    let key = SigningKey::parse(secret.expose()).map_err(|e| format!("webhook provider {name}: {e}"))?;
    let config = WebhookConfig { provider: name.to_string(), timeout: Duration::from_millis(settings.timeout_ms), allow: settings.allow.clone() };
    WebhookChannel::new(config, key)
}
